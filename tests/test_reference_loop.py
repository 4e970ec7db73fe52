"""The chunk loop against an independent, slow one written out here, and a model whose outputs are known.

Everything else that generates video compares the generator with another run of itself (same seed
twice, fused against module path, ring against slot order), so a bug shared by both sides passes.
Here the Self-Forcing sampling is written out from its formulas (guandeh17/Self-Forcing@33593df
``pipeline/causal_inference.py``): per chunk the initial noise, four passes at the warped timesteps
(x0 = x - sigma v, then re-noised to the next level with the NEXT draw), then one pass at t = 0 on the
clean x0, the only one that commits. Nothing of ``memrope.generate`` or ``memrope.sampling`` is used;
the caches are the explicit-token re-implementations of ``tests/cache/released.py`` (no memrope cache
machinery), driven over the module path while the generator runs the fused path.
"""

from __future__ import annotations

import pytest
import torch

from memrope.cache import make_policy
from memrope.generate import GenerationConfig, StreamingGenerator
from memrope.models.wan import WanModel
from memrope.models.wan_config import wan_config

from .cache.test_released_semantics import CASES
from .conftest import TINY_LATENT_HW

STEPS, SHIFT = (1000, 750, 500, 250), 5.0  # Self-Forcing's denoising_step_list, Wan's shift
CHUNKS = 18
BATCH = 2
SEED = 3
# Soft switches while the windows fill and later, and two hard cuts: every method passes its first
# cache event (eviction, compression, flush, cut, recache) more than once within 18 chunks.
SWITCHES = {2: False, 6: True, 9: False, 13: True}
MASK = (1 << 64) - 1


def warped_timesteps() -> list[float]:
    """Self-Forcing's warp_denoising_step: t = 1000 sigma(s / 1000), sigma(s) = shift s / (1 + (shift - 1) s)."""
    return [1000.0 * SHIFT * (s / 1000) / (1 + (SHIFT - 1) * (s / 1000)) for s in STEPS]


def splitmix64(seed: int, chunk: int) -> int:
    """The per-chunk seed, from its definition (splitmix64 of seed * golden + chunk + 1, top 63 bits)."""
    z = (seed * 0x9E3779B97F4A7C15 + chunk + 1) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return (z ^ (z >> 31)) >> 1


def draws(seed: int, chunk: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    """The chunk's initial noise, then one re-noise draw per later step, from one CPU generator."""
    gen = torch.Generator().manual_seed(splitmix64(seed, chunk))
    return [torch.randn(shape, generator=gen) for _ in STEPS]


def test_the_written_out_timesteps_are_self_forcings():
    assert warped_timesteps() == pytest.approx([1000.0, 937.5, 833.3333333, 625.0])


def frames_held(cache) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
    """frame -> per layer (unrotated keys, values) [B, ft, H, D] of a ``released`` cache (frames only)."""
    out: dict[int, list] = {}
    for layer in cache.cache:
        for i in range(0, layer["frame"].shape[0], cache.ft):
            f = int(layer["frame"][i])
            if f >= 0:
                out.setdefault(f, []).append((layer["k"][:, i:i + cache.ft], layer["v"][:, i:i + cache.ft]))
    return {f: kv for f, kv in out.items() if len(kv) == len(cache.cache)}


def reference_video(model: WanModel, cache, texts, switches: dict[int, bool], chunks: int, seed: int,
                    batch: int, taps=None, recached=None) -> list[torch.Tensor]:
    """The chunk loop, slowly: every pass of every chunk written out; a prompt switch re-encodes the
    frames the cache names from the clean latents kept here, in one t = 0 pass under the new prompt.
    ``recached[k]``: per frame re-encoded at the switch before chunk k, its (before, after) keys and values."""
    ts = warped_timesteps()
    n = 3
    clean: dict[int, torch.Tensor] = {}  # frame -> [B, C, 1, h, w], every frame ever generated
    out = []
    text = texts[0]
    for k in range(chunks):
        if k in switches:
            text = texts[1 + sorted(switches).index(k)]
            before = frames_held(cache)
            sw = cache.switch(switches[k])
            if sw.recache:
                cache.begin_replay(tuple(sw.recache))
                model(torch.cat([clean[f] for f in sw.recache], 2), torch.zeros(batch), text, cache,
                      commit=True, fused=False)
                cache.end_chunk()
                after = frames_held(cache)
                if recached is not None:
                    recached[k] = {f: (before[f], after[f]) for f in sw.recache}
            if taps is not None:
                taps.arm(k)
        plan = cache.begin_chunk(n)
        noise = draws(seed, k, (batch, model.config.in_dim, n, *TINY_LATENT_HW))
        x = noise[0]
        for i, t in enumerate(ts):
            v = model(x, torch.full((batch,), t), text, cache, commit=False, fused=False)
            x0 = (x.double() - (t / 1000) * v.double()).float()  # x0 = x_t - sigma v
            if i + 1 < len(ts):
                s = ts[i + 1] / 1000
                x = ((1 - s) * x0.double() + s * noise[i + 1].double()).float()  # the NEXT draw
        model(x0, torch.zeros(batch), text, cache, commit=True, fused=False)  # t = 0 on the clean x0
        cache.end_chunk()
        for j in range(n):
            clean[plan.first_frame + j] = x0[:, :, j:j + 1]
        out.append(x0)
    return out


class ContextTap:
    """Wraps a cache's ``update``: records, per layer, the context (keys as attended, values) that the
    first read pass after a prompt switch is handed, i.e. what the cache holds after the switch."""

    def __init__(self, cache):
        self.seen: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._armed: int | None = None
        real = cache.update

        def update(layer, k_rot, v, k_raw=None, commit=False, q_raw=None):
            k, vv = real(layer, k_rot, v, k_raw=k_raw, commit=commit, q_raw=q_raw)
            if self._armed is not None and not commit and layer not in self.seen[self._armed]:
                self.seen[self._armed][layer] = (k.detach().float().clone(), vv.detach().float().clone())
            return k, vv

        cache.update = update

    def arm(self, chunk: int) -> None:
        self._armed = chunk
        self.seen[chunk] = {}


def same_frames(ours: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor], ft: int,
                msg: str) -> None:
    """The two contexts hold the same frames (keys at the same positions, same values), in any order:
    the ring keeps frames where they were written, the references in logical order."""
    (k_a, v_a), (k_b, v_b) = ours, ref
    assert k_a.shape == k_b.shape, f"{msg}: context of {k_a.shape[1] // ft} vs {k_b.shape[1] // ft} frames"
    blocks = lambda t: t.unflatten(1, (-1, ft)).transpose(0, 1).flatten(1)  # noqa: E731  [frames, B*ft*H*D]
    a = torch.cat([blocks(k_a), blocks(v_a)], 1)
    b = torch.cat([blocks(k_b), blocks(v_b)], 1)
    dist = torch.cdist(b.double(), a.double(), p=float("inf"))  # [ref frames, our frames]
    match = dist.argmin(1)
    assert sorted(match.tolist()) == list(range(a.shape[0])), f"{msg}: frames do not pair up"
    worst = dist.gather(1, match[:, None]).max().item()
    assert worst < 1e-3, f"{msg}: a frame's keys or values differ by {worst:.3g}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_generation_equals_the_written_out_loop_and_the_cache_after_each_switch(tiny_model, case):
    """Every policy: the generator's latents equal the written-out loop's chunk by chunk, and after
    every switch the next chunk attends the same frames (same keys at the same positions, same values)
    as the explicit-token reference that re-encoded under the new prompt what it says it re-encodes."""
    name, options, reference = CASES[case]
    cfg = tiny_model.config
    gen_text = torch.Generator().manual_seed(11)
    texts = [tiny_model.encode_text(torch.randn(BATCH, cfg.text_len, cfg.text_dim, generator=gen_text))
             for _ in range(1 + len(SWITCHES))]
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, batch=BATCH, seed=SEED)
    ours = StreamingGenerator(tiny_model, make_policy(name, options), texts[0], config)
    ref = reference(dict(batch=BATCH, heads=cfg.num_heads, head_dim=cfg.head_dim, grid=ours.cache.geometry.grid,
                         layers=cfg.num_layers, chunk=config.chunk_frames))
    ref_taps, our_taps = ContextTap(ref), ContextTap(ours.cache)
    real_switch = ours.cache.switch

    def switch(cut=False):
        our_taps.arm(ours.cache.clock.chunks)
        return real_switch(cut)

    ours.cache.switch = switch
    # the replay pass commits, so the taps record only the next generated chunk's first read pass
    recached = {}
    expected = reference_video(tiny_model, ref, texts, SWITCHES, CHUNKS, SEED, BATCH, taps=ref_taps,
                               recached=recached)
    switches = {k: (texts[1 + i], cut) for i, (k, cut) in enumerate(sorted(SWITCHES.items()))}
    got = list(ours.stream(CHUNKS, switches))
    for k, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a.latents, b, atol=1e-4, rtol=1e-4, msg=f"{case}: chunk {k}")
    ft = ours.cache.geometry.frame_tokens
    assert sorted(our_taps.seen) == sorted(ref_taps.seen) == sorted(SWITCHES)
    for k in SWITCHES:
        assert sorted(our_taps.seen[k]) == list(range(cfg.num_layers))
        for layer in range(cfg.num_layers):
            same_frames(our_taps.seen[k][layer], ref_taps.seen[k][layer], ft, f"{case}: switch at {k}, layer {layer}")
        event = got[k].stats["switch"]
        assert event["at_chunk"] == k and event["cut"] == SWITCHES[k]
        assert event["recached"] == len(recached.get(k, {}))
        # A re-encoded frame's first-layer keys and values depend on its latents alone (t = 0 both
        # times): unchanged. Every later layer reads the new prompt (and the new context): changed.
        for f, (old, new) in recached.get(k, {}).items():
            torch.testing.assert_close(new[0], old[0], atol=1e-5, rtol=1e-5, msg=f"{case}: frame {f}, layer 0")
            for layer in range(1, cfg.num_layers):
                assert (new[layer][1] - old[layer][1]).abs().max() > 1e-4, f"{case}: frame {f} kept its old values"
    recaching = make_policy(name, options).recaches_on_switch
    assert recaching == bool(recached), f"{case}: recaches {sorted(recached)}"


def known_velocity(x: torch.Tensor) -> torch.Tensor:
    """The stand-in model's output: v = x / 2 + 1/4, whatever the context."""
    return 0.5 * x + 0.25


@pytest.mark.parametrize("policy", ["memrope", "attention_sink", "deep_forcing", "infinity_rope", "full"])
def test_a_model_with_known_outputs_gives_the_closed_form_chunks(policy):
    """A model whose velocity is a known function of its input (the real passes still run, so every
    cache works as usual): each chunk's passes see noise0, then (1 - s') (x - s v(x)) + s' noise', and
    the committing pass sees the clean x0 of the last step at t = 0; the chunk's latents are that x0."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = WanModel(wan_config("tiny")).eval().requires_grad_(False)
    real = model.forward
    calls: list[tuple[torch.Tensor, bool]] = []

    def forward(x, t, text, cache, commit=False, **kw):
        real(x, t, text, cache, commit=commit, **kw)
        calls.append((x.clone(), commit))
        return known_velocity(x)

    model.forward = forward
    cfg = model.config
    text = model.encode_text(torch.randn(1, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(2)))
    gen = StreamingGenerator(model, make_policy(policy), text, GenerationConfig(latent_hw=TINY_LATENT_HW, seed=9))
    ts = warped_timesteps()
    for k, result in enumerate(gen.stream(3, {2: (text, False)})):
        chunk_calls = [c for c in calls if not c[1]][len(ts) * k:len(ts) * (k + 1)]
        commits = [c for c in calls if c[1]]
        noise = draws(9, k, (1, cfg.in_dim, 3, *TINY_LATENT_HW))
        x = noise[0].double()
        for i, t in enumerate(ts):
            torch.testing.assert_close(chunk_calls[i][0].double(), x, atol=1e-5, rtol=1e-5,
                                       msg=f"{policy}: chunk {k}, input of pass {i}")
            x0 = x - (t / 1000) * known_velocity(x)
            if i + 1 < len(ts):
                s = ts[i + 1] / 1000
                x = (1 - s) * x0 + s * noise[i + 1].double()
        torch.testing.assert_close(result.latents.double(), x0, atol=1e-5, rtol=1e-5, msg=f"{policy}: chunk {k}")
        # the last commit is this chunk's (a recaching switch commits a replay before it)
        torch.testing.assert_close(commits[-1][0].double(), x0, atol=1e-5, rtol=1e-5,
                                   msg=f"{policy}: chunk {k}, the committed input is not the clean x0")
        calls[:] = [c for c in calls if not c[1]]  # keep only the read passes' inputs counted above


def test_reference_noise_mode_is_the_references_draws_and_arithmetic_in_closed_form():
    """``noise="reference"`` (YoungRaeKimm/MemRoPE@b89bf5b ``inference.py``, ``pipeline/causal_inference.py``):
    one CPU generator seeded with the seed draws the whole video's initial noise [B, F, C, h, w] in
    bf16 first, then one [B * n, C, h, w] bf16 draw after every pass but the last of each chunk; sigma
    is the fp32 table's entry of each warped step; x0 = x - sigma v in fp64 cast to the prediction's
    dtype; the re-noise (1 - sigma) x0 + sigma eps in fp32 cast to the noise's dtype. With the known
    velocity every pass's input and every chunk follow."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = WanModel(wan_config("tiny")).eval().requires_grad_(False)
    real = model.forward
    reads: list[torch.Tensor] = []

    def forward(x, t, text, cache, commit=False, **kw):
        real(x, t, text, cache, commit=commit, **kw)
        if not commit:
            reads.append(x.clone())
        return known_velocity(x)

    model.forward = forward
    cfg, seed, n, chunks = model.config, 13, 3, 3
    text = model.encode_text(torch.randn(1, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(2)))
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, seed=seed, noise="reference", noise_frames=n * chunks)
    gen = StreamingGenerator(model, make_policy("memrope"), text, config)
    s = torch.linspace(1.0, 0.0, 1001, dtype=torch.float32)[:-1]
    sigmas = SHIFT * s / (1 + (SHIFT - 1) * s)  # fp32, as the reference's scheduler builds it
    sigma = [float(sigmas[1000 - step]) for step in STEPS]
    draw = torch.Generator().manual_seed(seed)
    frame = (cfg.in_dim, *TINY_LATENT_HW)
    initial = torch.randn((1, n * chunks, *frame), generator=draw, dtype=torch.bfloat16)
    for k, result in enumerate(gen.stream(chunks)):
        x = initial[:, k * n:(k + 1) * n].permute(0, 2, 1, 3, 4).float()  # [B, C, n, h, w]
        for i in range(len(STEPS)):
            torch.testing.assert_close(reads[len(STEPS) * k + i], x, atol=0, rtol=0, msg=f"chunk {k}, pass {i}")
            x0 = (x.double() - sigma[i] * known_velocity(x).double()).float()
            if i + 1 < len(STEPS):
                eps = torch.randn((n, *frame), generator=draw, dtype=torch.bfloat16).view(1, n, *frame)
                eps = eps.permute(0, 2, 1, 3, 4).float()
                x = ((1 - sigma[i + 1]) * x0 + sigma[i + 1] * eps).float()
        torch.testing.assert_close(result.latents, x0, atol=0, rtol=0, msg=f"chunk {k}")
