"""Real Wan bundles end to end: every checkpoint layout x both Wan-folder layouts generate; the CLI runs;
a cached prompt never builds umT5; host memory stays flat over a long tiny real-architecture run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import memrope.models.text as text_module
from memrope.cache import make_policy
from memrope.generate import GenerationConfig, StreamingGenerator
from memrope.models.bundle import BundleOptions
from memrope.models.formats.diffusers import diffusers_key
from memrope.models.loading import load_bundle
from memrope.models.wan_bundle import (
    PROMPT_CACHE_DIRNAME,
    CachedPromptEncoder,
    WanFolder,
    encode_prompts_to_cache,
    latent_size,
    load_wan_bundle,
)
from memrope.models.weight_files import WeightFileError
from tests.models.tiny_wan_files import (
    PIXELS,
    TINY_REAL,
    diffusers_transformer,
    lora_pairs,
    lora_state,
    original_state,
    random_wan,
    self_forcing_dict,
    write_wan_dir,
)

PROMPT = "a cat walks on the grass"
CHUNKS = 2
CHUNK_FRAMES = 3
LORA_RANK = 4
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Tiny files in every real layout: two Wan folders and six transformer checkpoints."""
    root = tmp_path_factory.mktemp("stack")
    ema, gen, critic = (random_wan(TINY_REAL, seed) for seed in range(3))
    torch.save(self_forcing_dict(ema, gen, critic), root / "self_forcing_dmd.pt")
    torch.save(self_forcing_dict(ema, gen, critic, fsdp=True), root / "self_forcing_fsdp.pt")
    torch.save({"generator": {f"model.{k}": v for k, v in original_state(gen).items()}}, root / "longlive_base.pt")
    torch.save(
        {"generator_lora": lora_state(lora_pairs(TINY_REAL, LORA_RANK)), "critic_lora": {}, "step": 1},
        root / "lora.pt",
    )
    dif = diffusers_transformer(TINY_REAL, seed=4)
    dif.save_pretrained(root / "transformer", safe_serialization=True)
    dif.save_pretrained(root / "transformer_sharded", safe_serialization=True, max_shard_size="20KB")
    save_file({k: v.contiguous() for k, v in dif.state_dict().items()}, root / "transformer.safetensors")
    return {
        "root": root,
        "original": write_wan_dir(root / "Wan2.1-T2V-1.3B", "original"),
        "diffusers": write_wan_dir(root / "Wan2.1-T2V-1.3B-Diffusers", "diffusers"),
        "ema": ema,
        "diffusers_state": dif.state_dict(),
    }


def _options(stack, model: str, checkpoint: str, wan: str = "original", **kw) -> BundleOptions:
    return BundleOptions(
        model=model,
        checkpoint=stack["root"] / checkpoint,
        wan_dir=stack[wan],
        height=PIXELS,
        width=PIXELS,
        device="cpu",
        dtype="float32",
        **kw,
    )


def _generate(bundle) -> list:
    text = bundle.model.encode_text(bundle.text_encoder.encode([PROMPT]))
    config = GenerationConfig(latent_hw=bundle.latent_hw, chunk_frames=CHUNK_FRAMES)
    gen = StreamingGenerator(bundle.model, make_policy("memrope"), text, config, decoder=bundle.decoder)
    return list(gen.stream(CHUNKS))


LAYOUTS = [
    ("self-forcing", "self_forcing_dmd.pt", "original", {}),
    ("self-forcing", "self_forcing_fsdp.pt", "diffusers", {}),
    ("longlive", "longlive_base.pt", "original", {"lora": "lora.pt"}),
    ("diffusers", "transformer", "diffusers", {}),
    ("diffusers", "transformer.safetensors", "original", {}),
    ("diffusers", "transformer_sharded", "diffusers", {}),
]


@pytest.mark.parametrize(("model", "checkpoint", "wan", "extra"), LAYOUTS, ids=[c for _, c, _, _ in LAYOUTS])
def test_each_layout_generates_end_to_end(stack, model, checkpoint, wan, extra):
    extra = {k: stack["root"] / v for k, v in extra.items()}
    bundle = load_bundle(_options(stack, model, checkpoint, wan, **extra))
    assert bundle.latent_hw == (PIXELS // 8, PIXELS // 8)
    assert bundle.decoder.temporal_stride == 4 and bundle.decoder.spatial_factor == 8
    assert bundle.model.config.dim == TINY_REAL.dim and bundle.model.config.num_heads == TINY_REAL.num_heads
    if model == "self-forcing":
        for k, v in original_state(stack["ema"]).items():
            assert torch.equal(bundle.model.state_dict()[k], v), k
    if model == "diffusers":
        for k, v in bundle.model.state_dict().items():
            assert torch.equal(v, stack["diffusers_state"][diffusers_key(k)]), k
    results = _generate(bundle)
    stride = bundle.decoder.temporal_stride
    assert [r.frames.shape[1] for r in results] == [1 + stride * (CHUNK_FRAMES - 1), stride * CHUNK_FRAMES]
    for r in results:
        assert r.frames.dtype == torch.uint8 and r.frames.shape[2:] == (PIXELS, PIXELS, 3)
        assert torch.isfinite(r.latents).all()


def test_fsdp_and_plain_self_forcing_give_the_same_video(stack):
    a = _generate(
        load_wan_bundle(_options(stack, "self-forcing", "self_forcing_dmd.pt"), torch.device("cpu"), torch.float32)
    )
    b = _generate(
        load_wan_bundle(
            _options(stack, "self-forcing", "self_forcing_fsdp.pt", "diffusers"),
            torch.device("cpu"),
            torch.float32,
        )
    )
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.latents, y.latents)


def test_both_wan_folder_layouts_decode_and_encode_identically(stack):
    opts = {w: _options(stack, "self-forcing", "self_forcing_dmd.pt", w) for w in ("original", "diffusers")}
    bundles = {w: load_wan_bundle(o, torch.device("cpu"), torch.float32) for w, o in opts.items()}
    emb = {w: b.text_encoder.encode([PROMPT]) for w, b in bundles.items()}
    torch.testing.assert_close(emb["original"], emb["diffusers"])  # same tiny umT5, bf16 in both
    latents = torch.randn(1, 16, 3, *bundles["original"].latent_hw, generator=torch.Generator().manual_seed(0))
    assert torch.equal(bundles["original"].decoder.decode(latents), bundles["diffusers"].decoder.decode(latents))


def test_cached_prompt_never_builds_the_text_encoder(stack, tmp_path, monkeypatch):
    cache = tmp_path / "prompts"
    paths = encode_prompts_to_cache(stack["original"], [PROMPT], cache, text_len=TINY_REAL.text_len)
    assert [p.parent for p in paths] == [cache] and paths[0].is_file()

    def must_not_load(*args, **kwargs):
        raise AssertionError("umT5 was constructed although the prompt is cached")

    monkeypatch.setattr(text_module.UMT5TextEncoder, "from_wan_pth", must_not_load)
    bundle = load_wan_bundle(
        _options(stack, "self-forcing", "self_forcing_dmd.pt", prompt_cache=cache),
        torch.device("cpu"),
        torch.float32,
    )
    emb = bundle.text_encoder.encode([PROMPT])
    assert emb.shape == (1, TINY_REAL.text_len, TINY_REAL.text_dim)
    assert bundle.text_encoder.truncated == []
    with pytest.raises(AssertionError, match="umT5 was constructed"):
        bundle.text_encoder.encode(["a prompt nobody cached"])


def test_long_prompt_is_reported_truncated_and_shapes_are_checked(stack, tmp_path):
    short_context = 8  # tokens: the long prompt below overflows it
    factory = WanFolder.inspect(stack["original"]).text_encoder_factory("cpu", short_context)
    encoder = CachedPromptEncoder(factory, tmp_path, TINY_REAL.text_dim)
    long_prompt = "the quick brown fox jumps over the lazy dog at night"
    assert encoder.encode([PROMPT[:5], long_prompt]).shape == (2, short_context, TINY_REAL.text_dim)
    assert encoder.truncated == [long_prompt]
    wrong = CachedPromptEncoder(factory, tmp_path, TINY_REAL.text_dim + 1)
    with pytest.raises(ValueError, match=r"gives \[8, 16\] embeddings, the transformer expects \[8, 17\]"):
        wrong.encode([PROMPT])


def test_default_prompt_cache_lives_in_the_wan_folder(stack):
    bundle = load_wan_bundle(
        _options(stack, "self-forcing", "self_forcing_dmd.pt", "diffusers"),
        torch.device("cpu"),
        torch.float32,
    )
    assert bundle.text_encoder.cache_dir == stack["diffusers"] / PROMPT_CACHE_DIRNAME


def test_latent_size_checks():
    assert latent_size(480, 832, 8, (1, 2, 2)) == (60, 104)
    with pytest.raises(
        ValueError, match=r"--height 484 / --width 832 must be multiples of 16 / 16 \(VAE factor 8 x patch 2x2\)"
    ):
        latent_size(484, 832, 8, (1, 2, 2))


def test_bundle_option_errors(stack, tmp_path):
    cpu, f32 = torch.device("cpu"), torch.float32
    with pytest.raises(ValueError, match="needs --lora"):
        load_wan_bundle(_options(stack, "longlive", "longlive_base.pt"), cpu, f32)
    with pytest.raises(ValueError, match="needs --checkpoint and --wan-dir"):
        load_wan_bundle(BundleOptions(model="self-forcing"), cpu, f32)
    with pytest.raises(WeightFileError, match=r"no Wan VAE found \(looked for Wan2\.1_VAE\.pth and vae/config\.json"):
        WanFolder.inspect(tmp_path)
    with pytest.raises(ValueError, match=r"--height 20 / --width 16 must be multiples of 8 / 8 \(VAE factor 8\)"):
        load_wan_bundle(replace(_options(stack, "self-forcing", "self_forcing_dmd.pt"), height=20), cpu, f32)


# --- the CLI, in a subprocess ----------------------------------------------------------------------------

# Runs the CLI with umT5 construction booby-trapped: any build of the encoder fails the run.
_NO_TEXT_ENCODER = """
import sys
import transformers
import memrope.models.text as text

def boom(*args, **kwargs):
    raise SystemExit("umT5 text encoder constructed on a cached prompt")

transformers.UMT5EncoderModel.__init__ = boom
text.UMT5TextEncoder.from_wan_pth = boom
text.UMT5TextEncoder.from_diffusers_dir = boom
from memrope.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(args: list[str], cwd: Path, trap_text_encoder: bool = False, timeout: float = 300):
    # the checkout under test, not whatever memrope the interpreter has installed
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    head = ["-c", _NO_TEXT_ENCODER] if trap_text_encoder else ["-m", "memrope.cli"]
    return subprocess.run(
        [sys.executable, *head, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _generate_args(stack, out: Path, latent_frames: int, extra=()) -> list[str]:
    return [
        "generate",
        "--model",
        "self-forcing",
        "--checkpoint",
        str(stack["root"] / "self_forcing_dmd.pt"),
        "--wan-dir",
        str(stack["original"]),
        "--height",
        str(PIXELS),
        "--width",
        str(PIXELS),
        "--latent-frames",
        str(latent_frames),
        "--prompt",
        PROMPT,
        "--out",
        str(out / "v.mp4"),
        "--stats",
        str(out / "s.json"),
        "--no-progress",
        *extra,
    ]


def test_cli_end_to_end_and_second_run_skips_the_text_encoder(stack, tmp_path):
    cache = tmp_path / "prompt-cache"
    first = _cli(_generate_args(stack, tmp_path / "a", 6, ["--prompt-cache", str(cache)]), tmp_path)
    assert first.returncode == 0, first.stderr
    entries = sorted(cache.iterdir())
    assert len(entries) == 1
    stamp = entries[0].stat().st_mtime_ns
    summary = json.loads((tmp_path / "a" / "s.json").read_text())["summary"]
    assert summary["latent_frames"] == 6 and summary["video_frames"] == 1 + 4 * 5

    second = _cli(
        _generate_args(stack, tmp_path / "b", 6, ["--prompt-cache", str(cache)]),
        tmp_path,
        trap_text_encoder=True,
    )
    assert second.returncode == 0, second.stderr
    assert sorted(cache.iterdir()) == entries and entries[0].stat().st_mtime_ns == stamp
    assert (tmp_path / "b" / "v.mp4").stat().st_size > 0

    trapped = _cli(
        _generate_args(stack, tmp_path / "c", 6, ["--prompt-cache", str(tmp_path / "empty")]),
        tmp_path,
        trap_text_encoder=True,
    )
    assert trapped.returncode != 0 and "umT5 text encoder constructed" in trapped.stderr  # the trap works


def test_cli_reports_a_bad_checkpoint_in_one_line(stack, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    args = _generate_args(stack, tmp_path, 6)
    args[args.index("--checkpoint") + 1] = str(tmp_path / "bad.pt")
    run = _cli(args, tmp_path)
    assert run.returncode == 2
    assert "bad.pt: not a loadable PyTorch checkpoint" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_peak_rss_is_flat_over_2000_latent_frames(stack, tmp_path, request):
    """Host memory must not grow with the video: peak RSS at ~2000 latent frames within 10% of ~500.

    Two CLI runs of ~2.5 minutes on 2 cores: like the slow tests in tests/eval, only with ``-m slow``.
    """
    peaks = {}
    for frames in (501, 2001):  # whole 3-frame chunks
        run = _cli(_generate_args(stack, tmp_path / str(frames), frames), tmp_path, timeout=1200)
        assert run.returncode == 0, run.stderr
        summary = json.loads((tmp_path / str(frames) / "s.json").read_text())["summary"]
        assert summary["latent_frames"] == frames
        peaks[frames] = summary["peak_rss_mb"]
    print(f"peak RSS MB: {peaks}")
    assert peaks[2001] <= 1.10 * peaks[501], peaks


def test_encode_prompts_command_fills_the_cache(tmp_path, capsys):
    from memrope.cli import main

    wan_dir = write_wan_dir(tmp_path / "wan", "original")
    cache = tmp_path / "cache"
    assert main(["encode-prompts", "--wan-dir", str(wan_dir), "--prompt-cache", str(cache), "--device", "cpu",
                 "--prompt", "a red cat[2s] | a blue dog"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["a blue dog", "a red cat"]
    assert all(Path(line.split("\t")[0]).is_file() for line in lines)


def test_lora_mode_and_pixels_reach_the_bundle(stack):
    from memrope.models.lora_linear import LoraLinear

    lora = {"lora": stack["root"] / "lora.pt"}
    merged = load_bundle(_options(stack, "longlive", "longlive_base.pt", **lora))
    unmerged = load_bundle(_options(stack, "longlive", "longlive_base.pt", lora_mode="unmerged", pixels="round",
                                    **lora))
    assert isinstance(unmerged.model.blocks[0].ffn[2], LoraLinear)
    assert type(merged.model.blocks[0].ffn[2]) is torch.nn.Linear
    assert "lora.pt (unmerged)" in unmerged.name and "lora.pt (merged)" in merged.name
    assert (merged.decoder.pixels, unmerged.decoder.pixels) == ("truncate", "round")
    a, b = _generate(merged), _generate(unmerged)
    for x, y in zip(a, b, strict=True):  # fp32: the two LoRA modes agree to rounding
        torch.testing.assert_close(x.latents, y.latents, rtol=1e-4, atol=1e-4)
        assert (y.frames.int() - x.frames.int()).abs().max() <= 2  # one level of rounding, one of latents
