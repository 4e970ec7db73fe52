"""Training recipe of the embedded default: the smoke configuration runs and the objective learns."""

import json

import torch
from safetensors.torch import load_file

from memrope.models.toy.autoencoder import FrameAutoencoder
from memrope.models.toy.text import WorldTextEncoder
from memrope.world.clips import ClipConfig, ClipSource
from memrope.world.train import main, train
from memrope.world.train_stages import (
    SMOKE,
    TrainConfig,
    build_transformer,
    clip_batch,
    diffusion_loss,
    encode_clips,
)


def test_smoke_run_writes_loadable_weights_and_a_record(tmp_path):
    out = tmp_path / "w.safetensors"
    record = train(TrainConfig(**SMOKE), out, tmp_path / "ckpt", log=lambda msg: None)
    assert record["steps_done"] == SMOKE["steps"] and record["ae_steps_done"] == SMOKE["ae_steps"]
    assert torch.isfinite(torch.tensor(record["final_loss"]))
    tensors = load_file(str(out))
    assert any(k.startswith("transformer.blocks.0.") for k in tensors)
    assert "autoencoder.latent_std" in tensors
    assert json.loads((tmp_path / "ckpt" / "train_record.json").read_text())["steps_done"] == SMOKE["steps"]


def test_cli_smoke_refuses_to_overwrite_the_shipped_weights():
    import pytest

    with pytest.raises(SystemExit, match="--out"):
        main(["--smoke"])


def test_chunkwise_objective_decreases_on_a_fixed_batch():
    cfg = TrainConfig(**{**SMOKE, "context_noise": 0.0})
    torch.manual_seed(0)
    ae = FrameAutoencoder().eval().requires_grad_(False)
    video, prompts = clip_batch(ClipSource(ClipConfig(n_frames=cfg.window), seed=0), 0, 2)
    latents = encode_clips(ae, video)
    latents = (latents - latents.mean()) / latents.std()
    model = build_transformer(cfg)
    context = WorldTextEncoder(model.config.text_len, model.config.text_dim).encode(prompts)

    def loss() -> torch.Tensor:  # same noise levels and noise every call
        return diffusion_loss(model, latents, context, cfg, torch.Generator().manual_seed(0))

    with torch.no_grad():
        before = loss().item()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(12):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.8 * before, (before, after)


def test_gradients_reach_the_keys_of_committed_context():
    """The clean commit pass is differentiable: the loss of a later chunk trains how context is written.
    Checked on the committed keys and values themselves (and on the committed chunk's latents, which
    reach the loss only through them), not on a weight the current chunk reaches anyway."""
    cfg = TrainConfig(**{**SMOKE, "context_noise": 0.0})
    torch.manual_seed(0)
    model = build_transformer(cfg)
    latents = torch.randn(1, model.config.in_dim, 6, 8, 8)
    first = latents[:, :, :3].clone().requires_grad_(True)
    context = torch.zeros(1, model.config.text_len, model.config.text_dim)
    text = model.encode_text(context)
    from memrope.cache import KVCache, make_policy

    cache = KVCache(make_policy("full"), model.cache_geometry(1, (8, 8), 3), model.rope)
    from memrope.world.train_stages import _fresh_cache_tensors

    cache.begin_chunk(3)
    _fresh_cache_tensors(cache)
    model(first, torch.zeros(1), text, cache, commit=True)
    cache.end_chunk()
    committed = [(layer.k, layer.v) for layer in cache.layers]  # what the commit pass wrote
    for k, v in committed:
        k.retain_grad()
        v.retain_grad()
    tokens = 3 * cache.geometry.frame_tokens
    cache.begin_chunk(3)
    _fresh_cache_tensors(cache)
    v = model(latents[:, :, 3:], torch.full((1,), 500.0), text, cache)
    v.square().mean().backward()
    for i, (k, val) in enumerate(committed):
        assert k.grad is not None and val.grad is not None, f"layer {i}: no gradient reaches the committed K/V"
        assert k.grad[:, :tokens].abs().sum() > 0 and val.grad[:, :tokens].abs().sum() > 0, f"layer {i}"
    assert first.grad is not None and first.grad.abs().sum() > 0  # only through the cache
    del context


def test_replaying_a_record_reproduces_the_weights(tmp_path):
    first = train(TrainConfig(**SMOKE), tmp_path / "a.safetensors", tmp_path / "a", log=lambda msg: None)
    train(TrainConfig(**SMOKE), tmp_path / "b.safetensors", tmp_path / "b", log=lambda msg: None,
          replay=first)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_warms_up_decays_and_stops():
    from memrope.world.train_stages import LRSchedule

    s = LRSchedule(1.0, warmup=10, max_steps=100)
    assert s.lr(0) == 0.1 and 0.95 < s.lr(9) <= 1.0
    assert s.lr(50) < s.lr(20) < 1.0 and s.lr(99) < 0.06 and s.lr(100) is None
    assert LRSchedule(1.0, 10, 100, budget_s=1e-9).lr(0) is None  # budget spent: nothing more
    replay = LRSchedule(1.0, 10, 100, replay=[0.5, 0.25])
    assert [replay.lr(0), replay.lr(1), replay.lr(2)] == [0.5, 0.25, None]


def test_canonical_start_is_valid_and_set_by_the_prompt_alone():
    from memrope.world.prompts import sample_spec
    from memrope.world.train_stages import canonical_state
    from memrope.world.world import check_state

    for i in range(50):
        spec = sample_spec(i)
        state = canonical_state(spec)
        check_state(spec, state)  # in frame, in the speed band
        assert state == canonical_state(spec)


def test_stage2_batch_scores_the_first_chunk_only_for_canonical_starts():
    from memrope.world.train_stages import stage2_batch

    cfg = TrainConfig(**{**SMOKE, "batch": 16, "canonical_share": 0.5})
    source = ClipSource(ClipConfig(n_frames=cfg.window), seed=0)
    video, prompts, first = stage2_batch(source, 3, cfg)
    assert video.shape[:2] == (16, cfg.window) and len(prompts) == 16
    assert first.dtype == torch.bool and 0 < int(first.sum()) < 16
    before = TrainConfig(**{**SMOKE, "batch": 4, "canonical_from_step": 10})
    assert bool(stage2_batch(source, 3, before)[2].all())


def test_warm_start_replay_rebuilds_the_whole_chain(tmp_path):
    """A run warm-started from another keeps that run's record, and replaying it rebuilds both runs
    bit for bit (the init run with its own, older words-only text encoder)."""
    from memrope.world.train import replay_chain

    first = train(TrainConfig(**{**SMOKE, "text_roles": False}), tmp_path / "a.safetensors", tmp_path / "a",
                  log=lambda msg: None)
    second = train(TrainConfig(**SMOKE), tmp_path / "b.safetensors", tmp_path / "b", log=lambda msg: None,
                   init=tmp_path / "a.safetensors")
    assert second["init"]["steps_done"] == first["steps_done"] and second["ae_steps_done"] == 0
    from memrope.world.train import chain_summary

    assert chain_summary(second) == {"runs": 2, "transformer_steps": 2 * SMOKE["steps"]}
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("autoencoder."))  # kept as it is
    assert not torch.equal(a["transformer.head.head.weight"], b["transformer.head.head.weight"])
    replay_chain(second, tmp_path / "c.safetensors", tmp_path / "c", log=lambda msg: None)
    c = load_file(str(tmp_path / "c.safetensors"))
    assert b.keys() == c.keys() and all(torch.equal(b[k], c[k]) for k in b)


def test_degrade_is_identity_at_zero_and_blurs_and_fades_at_one():
    from memrope.world.train_stages import degrade

    x = torch.randn(2, 8, 3, 8, 8)
    assert torch.equal(degrade(x, torch.zeros(2, 1, 1, 1, 1)), x)
    y = degrade(x, torch.ones(2, 1, 1, 1, 1))
    assert y.std() < 0.5 * x.std()  # smeared and washed out
    torch.testing.assert_close(y.mean(dim=(3, 4)), x.mean(dim=(3, 4)), atol=0.05, rtol=0)
