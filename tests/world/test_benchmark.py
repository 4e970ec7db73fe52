"""The toy benchmark: segment choice, confidence intervals, and a tiny end-to-end run."""

import json

import numpy as np
import pytest

from memrope.world.benchmark import BenchmarkConfig, main, mean_ci, scored_segments


def test_scored_segments_cover_the_short_horizon_and_every_horizon_end():
    segs = scored_segments(100, [10, 100])
    assert segs[0] == 0 and segs[-1] == 99 and 9 in segs
    assert segs == sorted(set(segs)) and len(segs) <= 10


def test_mean_ci_is_the_student_t_interval():
    stat = mean_ci(np.array([1.0, 2.0, 3.0, np.nan]))
    assert stat["n"] == 3 and stat["mean"] == pytest.approx(2.0)
    assert stat["ci95"] == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert mean_ci(np.array([np.nan]))["mean"] is None


def test_config_rejects_partial_chunks_and_single_seeds():
    with pytest.raises(ValueError, match="chunks"):
        BenchmarkConfig(policies=("memrope",), horizons=(13,))
    with pytest.raises(ValueError, match="seeds"):
        BenchmarkConfig(policies=("memrope",), horizons=(12,), seeds=1)


def test_tiny_run_writes_table_json_and_plots(tmp_path):
    main(["--policies", "memrope", "memrope_both", "memrope_switch_reset", "--horizons", "12", "24", "--seeds", "2",
          "--out", str(tmp_path)])
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["policies"]) == {"(ground truth)", "(autoencoder round trip)", "memrope"}
    # identical configuration, or differing only in what happens at a prompt switch (there is none)
    assert result["aliases"] == {"memrope_both": "memrope", "memrope_switch_reset": "memrope"}
    truth = result["policies"]["(ground truth)"]["horizons"]["24"]
    assert truth["identity"]["first"]["mean"] == 1.0 and truth["off_world"]["last"]["mean"] == 0.0
    assert "| memrope |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "drift_identity.png").stat().st_size > 0


def test_runs_split_over_processes_merge_into_one_table(tmp_path):
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "m"
    main(["--policies", "memrope", "--horizons", "12", "--seeds", "2", "--out", str(a)])
    main(["--policies", "attention_sink", "--horizons", "12", "--seeds", "2", "--no-references", "--out", str(b)])
    main(["--merge", str(a), str(b), "--out", str(merged)])
    result = json.loads((merged / "results.json").read_text())
    assert list(result["policies"]) == ["(ground truth)", "(autoencoder round trip)", "memrope", "attention_sink"]
    single = json.loads((b / "results.json").read_text())["policies"]["attention_sink"]
    assert result["policies"]["attention_sink"] == single
    assert "| attention_sink |" in (merged / "results.md").read_text()
    main(["--policies", "memrope", "--horizons", "24", "--seeds", "2", "--out", str(b)])
    with pytest.raises(ValueError, match="differ in settings"):
        main(["--merge", str(a), str(b), "--out", str(merged)])


def test_the_benchmark_rounds_frames_as_its_ground_truth_is_rendered(monkeypatch):
    """The ground truth is rounded (np.rint); the model's frames are too, whatever the generator's default."""
    from memrope.world import benchmark

    asked = {}

    def spy(**kwargs):
        asked.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(benchmark, "load_default", spy)
    with pytest.raises(RuntimeError, match="stop here"):
        benchmark.run_benchmark(BenchmarkConfig(policies=("memrope",), horizons=(12,), seeds=2))
    assert asked == {"pixels": "round"} == {"pixels": benchmark.BENCHMARK_PIXELS}


def test_the_table_reports_the_segments_of_a_synthetic_rollout_whose_answers_are_known(monkeypatch):
    """A rollout whose frame f is the constant image f (seed b adds 100 b), through the benchmark's own
    decoding of the scored segments and its table; a stand-in score (each segment's mean pixel) makes
    every cell known: segment s scores 100 b + seg s + (seg - 1) / 2, so "last" of a horizon is its last
    segment's, never the first's, and the curve lists the scored segments up to it."""
    from types import SimpleNamespace

    import torch

    from memrope.world import benchmark

    seg, horizons, seeds = 6, (12, 36), 2
    longest = max(horizons)

    def rollout(bundle, policy, prompts, n_frames, noise_seed, chunk_frames=3):
        assert n_frames == longest and len(prompts) == seeds
        f = torch.arange(n_frames, dtype=torch.float32)
        lat = f.view(1, 1, -1, 1, 1) + 100 * torch.arange(seeds, dtype=torch.float32).view(-1, 1, 1, 1, 1)
        return lat.expand(seeds, 4, n_frames, 2, 2).clone(), 1.0

    def decode(latents):  # [B, C, F, h, w] -> uint8 [B, F, H, W, 3]: frame f's pixels are its latent value
        return latents.mean(dim=(1, 3, 4)).round().to(torch.uint8)[:, :, None, None, None].expand(-1, -1, 4, 4, 3)

    def mean_pixel(frames, prompts):  # [B, S, seg, H, W, 3] -> [B, S]
        return {m: frames.reshape(*frames.shape[:2], -1).mean(-1).astype(float) for m in benchmark.METRICS}

    monkeypatch.setattr(benchmark, "generate_latents", rollout)
    monkeypatch.setattr(benchmark, "score", mean_pixel)
    bundle = SimpleNamespace(name="synthetic", decoder=SimpleNamespace(decode=decode))
    cfg = BenchmarkConfig(policies=("memrope",), horizons=horizons, seeds=seeds, segment_frames=seg, log_points=3)
    result = benchmark.run_benchmark(cfg, bundle=bundle, log=lambda msg: None, references=False)
    segments = result["config"]["scored_segments"]
    assert 0 in segments and horizons[0] // seg - 1 in segments and longest // seg - 1 in segments
    expected = lambda s: np.array([100 * b + seg * s + (seg - 1) / 2 for b in range(seeds)])  # noqa: E731
    for horizon in horizons:
        row = result["policies"]["memrope"]["horizons"][str(horizon)]["identity"]
        last = horizon // seg - 1
        assert row["first"]["mean"] == pytest.approx(expected(0).mean())
        assert row["last"]["mean"] == pytest.approx(expected(last).mean())
        assert row["per_seed_last"] == pytest.approx(list(expected(last)))
        assert row["last"]["ci95"] == pytest.approx(mean_ci(expected(last))["ci95"])
        assert [c["segment"] for c in row["curve"]] == [s for s in segments if s <= last]
        assert [c["mean"] for c in row["curve"]] == pytest.approx([expected(s).mean() for s in segments if s <= last])
    table = benchmark.markdown(result, "synthetic")
    assert f"{expected(0).mean():.3g}" in table and f"{expected(longest // seg - 1).mean():.3g}" in table
