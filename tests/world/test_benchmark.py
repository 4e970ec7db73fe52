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
