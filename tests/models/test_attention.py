"""Attention kernel preference: names are checked, ``auto`` picks among kernels that serve the
stream's shapes, every kernel gives the same video to rounding, and SDPA's settings are restored."""

from __future__ import annotations

import json

import pytest
import torch

from memrope import generate_options
from memrope.cache import make_policy
from memrope.cli import main
from memrope.generate import GenerationConfig, StreamingGenerator
from memrope.models.attention import CHOICES, AttentionChoice, AttentionShape, accepts, choose

from ..conftest import TINY_LATENT_HW

CPU = torch.device("cpu")
SHAPES = [AttentionShape(1, 4, 12, 12, 48), AttentionShape(1, 4, 12, 12, 8)]


def test_cli_spells_the_same_choices():
    assert generate_options.ATTENTION_CHOICES == CHOICES


@pytest.mark.parametrize("name", ["bogus", "auto"])
def test_unknown_or_unresolved_names_are_refused(name):
    with pytest.raises(ValueError, match="attention backend must be one of"):
        AttentionChoice(name)


def test_auto_times_only_the_kernels_that_serve_the_shapes():
    served = [k for k in ("flash", "efficient", "cudnn", "math") if accepts(k, SHAPES, CPU, torch.float32)]
    assert "math" in served and "cudnn" not in served  # no cuDNN attention on a CPU
    choice = choose("auto", SHAPES, CPU, torch.float32, repeats=2)
    assert set(choice.timings_ms) == set(served)
    assert choice.name == min(choice.timings_ms, key=choice.timings_ms.get)


def sdp_flags() -> tuple[bool, ...]:
    b = torch.backends.cuda
    return b.flash_sdp_enabled(), b.math_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.cudnn_sdp_enabled()


def test_a_cpu_preference_takes_effect_inside_the_passes_and_is_undone_after():
    before = sdp_flags()
    with AttentionChoice("math", device_type="cpu").preferred():
        flash, math = sdp_flags()[:2]
        assert math and not flash  # the CPU ignores priorities: the fused kernel is switched off
    assert sdp_flags() == before


def video(model, text, attention: str) -> tuple[torch.Tensor, set[str]]:
    """Six chunks' latents, and the names of the SDPA kernels that ran."""
    gen = StreamingGenerator(model, make_policy("memrope"), text, GenerationConfig(latent_hw=TINY_LATENT_HW),
                             attention=attention)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        latents = torch.cat([gen.next_chunk().latents for _ in range(6)], dim=2)
    return latents, {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_the_math_kernel_runs_when_preferred_and_gives_the_same_video(tiny_model, tiny_text):
    math, math_kernels = video(tiny_model, tiny_text, "math")
    default, default_kernels = video(tiny_model, tiny_text, "default")
    fused_cpu = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert fused_cpu in default_kernels and fused_cpu not in math_kernels
    torch.testing.assert_close(math, default, rtol=1e-4, atol=1e-4)


def test_auto_generates_with_a_kernel_it_timed(tiny_model, tiny_text):
    gen = StreamingGenerator(tiny_model, make_policy("memrope"), tiny_text,
                             GenerationConfig(latent_hw=TINY_LATENT_HW), attention="auto")
    assert gen.attention.name in gen.attention.timings_ms and gen.attention.device_type == "cpu"
    torch.testing.assert_close(video(tiny_model, tiny_text, "auto")[0], video(tiny_model, tiny_text, "default")[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["flash", "efficient", "cudnn", "math"])
def test_cuda_kernels_agree_in_bf16(kernel):
    shapes = [AttentionShape(1, 12, 128, 3 * 1560, 12 * 1560), AttentionShape(1, 12, 128, 3 * 1560, 512)]
    if not accepts(kernel, shapes, torch.device("cuda"), torch.bfloat16):
        pytest.skip(f"{kernel} does not serve these shapes on this GPU")
    q, k, v = shapes[0].tensors(torch.device("cuda"), torch.bfloat16)
    with AttentionChoice(kernel).preferred():
        got = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)


def test_generate_resolves_auto_once_and_freezes_it_for_resume(tmp_path, capsys):
    out, stats = tmp_path / "v.mp4", tmp_path / "s.json"
    code = main(["generate", "--attention", "auto", "--latent-frames", "6", "--out", str(out), "--stats", str(stats),
                 "--checkpoint-every", "1", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    kernel = json.loads(stats.read_text())["attention"]["kernel"]
    assert kernel in ("flash", "efficient", "math")
    manifest = json.loads((tmp_path / "v.mp4.run" / "manifest.json").read_text())
    assert manifest["settings"]["attention"] == kernel  # a resume runs the kernel the run started with


def test_unknown_kernel_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--attention", "fastest", "--out", str(tmp_path / "v.mp4")])
    assert exc.value.code == 2
