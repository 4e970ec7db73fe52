"""FP8 plumbing (torchao): which weights become float8, the fused path runs on them, errors name the fix.
Speed is measured only on a GPU (``memrope bench --fp8 dynamic``); nothing here times anything."""

from __future__ import annotations

import sys

import pytest
import torch

from memrope.cache import make_policy
from memrope.generate import GenerationConfig, StreamingGenerator
from memrope.models.fp8 import MATMUL_WEIGHTS, check_fp8
from tests.conftest import TINY_LATENT_HW

torchao = pytest.importorskip("torchao")


def test_weight_only_fp8_quantises_the_six_matmuls_and_stays_close(tiny_model, tiny_text):
    cfg = GenerationConfig(TINY_LATENT_HW)
    plain = StreamingGenerator(tiny_model, make_policy("memrope"), tiny_text, cfg)
    fp8 = StreamingGenerator(tiny_model, make_policy("memrope"), tiny_text, cfg, fp8="weight")
    for p, q in zip(plain._fused.blocks, fp8._fused.blocks, strict=True):
        for name in p._fields:
            before, after = getattr(p, name), getattr(q, name)
            if name in MATMUL_WEIGHTS:
                assert type(after).__name__ == "Float8Tensor" and after.shape == before.shape
                # e4m3 keeps 3 mantissa bits: every weight within 2^-4 of itself, relative (plus the scale)
                deq = after.dequantize()
                assert (deq - before).abs().max() <= 2**-4 * before.abs().max()
            else:
                assert after is before  # norms, biases: untouched
    assert fp8._fused.w_head is plain._fused.w_head and fp8._fused.w_patch is plain._fused.w_patch
    for _ in range(5):
        a, b = plain.next_chunk().latents, fp8.next_chunk().latents
        assert not torch.equal(a, b)
        assert (a - b).abs().max() < 0.1 * a.abs().max()  # float8 weights: close, not equal


def test_errors_say_what_to_change(monkeypatch):
    with pytest.raises(ValueError, match=r"--fp8 dynamic needs a CUDA GPU with compute capability >= 8.9 \(Ada, "
                                         r"Hopper\), not cpu; use --fp8 weight"):
        check_fp8("dynamic", torch.device("cpu"))
    with pytest.raises(ValueError, match="--fp8 must be one of dynamic, weight, got 'int4'"):
        check_fp8("int4", torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if not installed
    with pytest.raises(ValueError, match=r"--fp8 needs torchao: pip install 'memrope\[fp8\]'"):
        check_fp8("weight", torch.device("cpu"))


def test_fp8_needs_the_fused_path(tiny_model, tiny_text):
    with pytest.raises(ValueError, match="--fp8 runs on the fused inference path"):
        StreamingGenerator(tiny_model, make_policy("memrope"), tiny_text, GenerationConfig(TINY_LATENT_HW),
                           fused=False, fp8="weight")


@pytest.mark.gpu
def test_dynamic_fp8_runs_on_a_capable_gpu():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 matmuls need compute capability >= 8.9")
    from memrope.models.wan import WanModel
    from memrope.models.wan_config import wan_config

    torch.manual_seed(0)
    model = WanModel(wan_config("tiny")).eval().requires_grad_(False).to("cuda", torch.bfloat16)
    text = model.encode_text(torch.randn(1, 8, 24, device="cuda"))
    gen = StreamingGenerator(model, make_policy("memrope"), text, GenerationConfig(TINY_LATENT_HW), fp8="dynamic")
    assert all(torch.isfinite(gen.next_chunk().latents).all() for _ in range(5))


def test_cli_fp8_dynamic_on_the_cpu_is_one_line_before_any_file(tmp_path):
    import subprocess
    from pathlib import Path

    out = tmp_path / "v.mp4"
    proc = subprocess.run([sys.executable, "-m", "memrope.cli", "generate", "--fp8", "dynamic", "--device", "cpu",
                           "--latent-frames", "3", "--out", str(out), "--no-progress"], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "memrope: error: --fp8 dynamic needs a CUDA GPU with compute capability >= 8.9 (Ada, Hopper), not cpu; "
        "use --fp8 weight (float8 weights only) or leave --fp8 off"]
    assert not out.exists()
