"""Benchmark harness and the reference-style baseline (same outputs, reference costs)."""

from __future__ import annotations

import json

import pytest
import torch

from memrope.bench import bench_main, matmul_peak, percentile, run_bench
from memrope.cache import make_policy
from memrope.cache.reference_style import (
    ReferenceStyle,
    ReferenceStyleCache,
    cache_for,
    complex_tables,
    install,
    make_reference_style,
    rotate_complex128,
)
from memrope.generate import GenerationConfig, StreamingGenerator
from memrope.rope import apply_rope

HW = (4, 4)


def _latents(model, text, policy, chunks, reference=False):
    gen = StreamingGenerator(model, policy, text, GenerationConfig(latent_hw=HW, seed=3))
    if reference:
        install(gen)
    return [gen.next_chunk().latents for _ in range(chunks)], gen


@pytest.mark.parametrize("name", ["memrope", "sliding_window", "attention_sink", "infinity_rope"])
def test_reference_style_matches_policy(tiny_model, tiny_text, name):
    ours, _ = _latents(tiny_model, tiny_text, make_policy(name), 7)  # past the first evictions
    ref, gen = _latents(tiny_model, tiny_text, ReferenceStyle(make_policy(name)), 7, reference=True)
    assert isinstance(gen.cache, ReferenceStyleCache)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_reference_style_works_every_pass(tiny_model, tiny_text, monkeypatch):
    calls = {"rotate": 0}
    import memrope.cache.reference_style as rs

    real = rs.rotate_complex128

    def counting(*args, **kwargs):
        calls["rotate"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(rs, "rotate_complex128", counting)
    _, gen = _latents(tiny_model, tiny_text, ReferenceStyle(make_policy("memrope")), 2, reference=True)
    layers = tiny_model.config.num_layers
    assert calls["rotate"] == 2 * 5 * layers  # every pass of every layer, not once per chunk


def test_complex128_rotation_equals_fp32_rope(tiny_model):
    rope = tiny_model.rope
    grid = (2, 3)
    pos = torch.tensor([0, 4, 7])
    x = torch.randn(2, 3 * 6, 4, rope.head_dim)
    ours = apply_rope(x, rope.freqs(pos, grid))
    ref = rotate_complex128(x, pos, grid, complex_tables(rope, "cpu"))
    assert ref.dtype == torch.float32
    torch.testing.assert_close(ref, ours, rtol=1e-5, atol=1e-6)


def test_reference_style_refuses_token_selection():
    policy = make_reference_style("deep_forcing")
    geo_policy = make_policy("deep_forcing")
    assert policy.name == "deep_forcing_reference_style"
    assert policy.capacity_frames(3) == geo_policy.capacity_frames(3)
    from memrope.cache.plan import Clock, after_chunk

    slots, clock = (), Clock()
    with pytest.raises(ValueError, match="whole frames"):
        for _ in range(20):
            plan = policy.plan(slots, clock, 3)
            slots, clock = after_chunk(plan, clock)


def test_cache_for_and_install_guard(tiny_model, tiny_text):
    geo = tiny_model.cache_geometry(1, HW, 3)
    assert type(cache_for(make_policy("memrope"), geo, tiny_model.rope)).__name__ == "KVCache"
    assert isinstance(cache_for(make_reference_style("memrope"), geo, tiny_model.rope), ReferenceStyleCache)
    gen = StreamingGenerator(tiny_model, make_policy("memrope"), tiny_text, GenerationConfig(latent_hw=HW))
    gen.next_chunk()
    with pytest.raises(ValueError, match="not generated"):
        install(gen)


def test_percentile():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0], 90) == pytest.approx(1.9)
    assert percentile([7.0], 90) == 7.0


def test_matmul_peak_positive():
    peak = matmul_peak(torch.device("cpu"), n=128, min_seconds=0.01)
    assert peak["best_tflops"] > 0 and peak["iters"] >= 3


def test_run_bench_reports_every_quantity():
    policies = ["memrope", "sliding_window", "memrope_reference_style"]
    report = run_bench(policies, "tiny", HW, chunks=7, warmup=5, device="cpu", matmul_n=128,
                       matmul_seconds=0.01)
    json.dumps(report)
    assert report["settings"]["order"] == "interleaved"
    for name in policies:
        r = report["results"][name]
        assert len(r["chunk_ms"]) == 7 and r["steady_chunks"] == 2
        assert r["denoise_p90_ms"] >= r["denoise_median_ms"] > 0
        assert r["fps_denoise"] == pytest.approx(12 / (r["denoise_median_ms"] / 1e3))  # the Wan VAE's 12 frames
        assert r["fps_end_to_end"] is None and r["decode_median_ms"] is None  # no decoder: no end to end
        assert r["achieved_tflops"] > 0 and r["fraction_of_matmul_peak"] > 0
        assert r["rss_peak_bytes_process"] > 0
        assert r["context_frames"] == 12
    assert set(report["ratios"]["vs_sliding_window"]) == {"memrope", "memrope_reference_style"}
    assert set(report["ratios"]["vs_memrope_reference_style"]) == {"memrope", "sliding_window"}


def test_run_bench_sequential_with_decoder():
    report = run_bench(["memrope"], "tiny", HW, chunks=3, warmup=1, device="cpu", decoder="toy",
                       order="sequential", matmul_n=64, matmul_seconds=0.01)
    r = report["results"]["memrope"]
    assert r["steady_chunks"] == 2 and r["video_frames_per_chunk"] == 12
    # end to end = denoising + decoding, chunk by chunk; the two FPS are reported apart
    assert r["end_to_end_median_ms"] > r["denoise_median_ms"] > 0 and r["decode_median_ms"] > 0
    assert r["fps_end_to_end"] == pytest.approx(12 / (r["end_to_end_median_ms"] / 1e3))
    assert r["fps_end_to_end"] < r["fps_denoise"]


def test_overlapped_decode_is_timed_between_yielded_chunks():
    report = run_bench(["memrope"], "tiny", HW, chunks=4, warmup=1, device="cpu", decoder="toy",
                       overlap_decode=True, matmul_n=64, matmul_seconds=0.01)
    assert report["settings"]["order"] == "sequential" and report["settings"]["overlap_decode"]
    r = report["results"]["memrope"]
    assert r["steady_chunks"] == 3 and r["fps_end_to_end"] > 0
    with pytest.raises(ValueError, match="--overlap-decode needs a decoder"):
        run_bench(["memrope"], "tiny", HW, chunks=3, warmup=1, device="cpu", overlap_decode=True)


def test_every_table_names_hardware_resolution_steps_decoder_and_warmup():
    from memrope.bench import format_table

    report = run_bench(["memrope"], "tiny", HW, chunks=3, warmup=2, device="cpu", decoder="toy",
                       matmul_n=64, matmul_seconds=0.01)
    head = format_table(report).splitlines()[:3]
    assert head[0].startswith("hardware: ") and "torch 2." in head[0]
    assert "latent 4x4 (= 32x32 pixels through an 8x decoder); 4 denoising steps + 1 commit pass" in head[1]
    assert head[1].endswith("decoder: toy (after the passes)")
    assert head[2].startswith("3 chunks per policy, the first 2 excluded as warm-up (cache fill)")


def test_run_bench_rejects_bad_input():
    with pytest.raises(ValueError, match="exceed warmup"):
        run_bench(["memrope"], "tiny", HW, chunks=3, warmup=3, device="cpu")
    with pytest.raises(ValueError, match="unknown cache policy"):
        run_bench(["nope"], "tiny", HW, chunks=3, warmup=1, device="cpu")


def test_bench_main_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    assert bench_main(["--config", "tiny", "--latent", "4x4", "--chunks", "3", "--warmup", "1",
                       "--policies", "memrope,sliding_window", "--device", "cpu", "--matmul-n", "64",
                       "--cost-model", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"memrope", "sliding_window"}
    real = report["cost_model_real_shape"]["policies"]["memrope"]
    assert real["tflop_per_call"] == pytest.approx(28.3, rel=0.01)


@pytest.mark.gpu
def test_run_bench_on_gpu():
    report = run_bench(["memrope", "sliding_window", "memrope_reference_style"], "toy", (8, 8), chunks=7,
                       warmup=5, device="cuda", matmul_n=2048, matmul_seconds=0.05)
    for r in report["results"].values():
        assert r["cuda_max_allocated_bytes"] > 0
        assert r["denoise_median_ms"] > 0
    assert report["settings"]["dtype"] == "bfloat16"


@pytest.mark.gpu
def test_run_bench_steady_state_options_on_gpu():
    report = run_bench(["memrope"], "toy", (8, 8), chunks=9, warmup=6, device="cuda", matmul_n=1024,
                       matmul_seconds=0.05, cuda_graphs=True, compile=True)
    r = report["results"]["memrope"]
    assert r["steady_state"]["cuda_graphs"]["replayed"] > 0 and r["steady_state"]["kernels"].startswith("compiled")


def test_interleaving_is_balanced():
    from collections import Counter

    from memrope.bench import round_order

    policies = ["a", "b", "c"]
    sequence = [name for k in range(60) for name in round_order(policies, k)]
    assert all(sorted(round_order(policies, k)) == policies for k in range(12))
    firsts = Counter(round_order(policies, k)[0] for k in range(60))
    assert set(firsts.values()) == {20}
    follows = Counter((a, b) for a, b in zip(sequence, sequence[1:]) if a != b)
    assert len(follows) == 6 and max(follows.values()) - min(follows.values()) <= 2  # every ordered pair
