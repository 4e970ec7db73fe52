"""The scoring of VBench's dimensions, with stub networks whose outputs are known: dynamic degree's
sampling, threshold and count rule; motion smoothness's even/odd interpolation and truncation;
imaging quality's resize and per-clip means; overall consistency's middle frames, clip length and
prompt schedule; the drift numbers (quality drift, LV-Bench VDE) in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from memrope.eval.long_drift import (
    frame_chunks,
    long_drift_from_frames,
    long_drift_from_segments,
    overlap_mean,
    vde,
)
from memrope.eval.vbench_motion import (
    DynamicDegreeMetric,
    MotionSmoothnessMetric,
    is_dynamic,
    required_moving_pairs,
    top_flow_score,
)
from memrope.eval.vbench_quality import (
    ImagingQualityMetric,
    OverallConsistencyMetric,
    middle_frame_indices,
    musiq_inputs,
    scheduled_text,
)


class Stub(nn.Module):
    """A 'network' with one parameter (so that metrics find its device) and a given forward."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


@pytest.mark.parametrize("frames,count", [(16, 4), (2, 0), (6, 2), (10, 2), (14, 4), (1, 0)])
def test_required_moving_pairs_uses_pythons_half_to_even_rounding(frames, count):
    assert required_moving_pairs(frames) == count


def test_check_move_rule():
    assert is_dynamic([0.1], 1.0, 0) is True  # count_num 0: any one pair
    assert is_dynamic([], 1.0, 0) is False
    assert is_dynamic([2.0, 0.5, 3.0], 1.0, 2) is True
    assert is_dynamic([2.0, 0.5, 1.0], 1.0, 2) is False  # strictly above the threshold


def test_top_flow_score_is_the_mean_of_the_top_five_percent():
    mags = np.arange(100, dtype=np.float64).reshape(10, 10)
    flow = np.stack([mags * 0.6, mags * 0.8])  # |flow| = mags
    assert top_flow_score(flow) == pytest.approx(97.0)  # int(0.05 * 100) = 5 largest: 95..99
    assert math.isnan(top_flow_score(np.zeros((2, 4, 4))))  # int(0.8) = 0 values: VBench's mean of nothing


def constant_frames(values, h=64, w=64):
    return [np.full((h, w, 3), v, dtype=np.uint8) for v in values]


def test_dynamic_degree_samples_within_clips_and_counts_pairs():
    # stub flow: |mean(b) - mean(a)| everywhere, so a pair moves when consecutive sampled values differ by > 1.5
    def flow(a, b):
        return (b.mean() - a.mean()).abs().expand(a.shape[0], 2, *a.shape[2:]) / math.sqrt(2)

    metric = DynamicDegreeMetric(Stub(flow), fps=16.0)  # interval round(16 / 8) = 2
    assert metric.interval == 2
    # clip 0 (32 frames, 16 sampled, 4 moving pairs needed): sampled values move 3 times; odd frames are noise
    sampled0 = [10] * 13 + [12, 14, 16]
    sampled1 = [50, 52, 54, 56, 58] + [58] * 11  # 4 moves
    clip0 = [v for s in sampled0 for v in (s, 200)]
    clip1 = [v for s in sampled1 for v in (s, 0)]
    for seg, values in ((0, clip0), (1, clip1)):
        for f in constant_frames(values):
            metric.add(seg, f)
    per, whole = metric.finish(2)
    assert per["dynamic_degree"].tolist() == [0.0, 1.0]  # the jump 16 -> 50 between clips is not a pair
    assert whole["dynamic_degree"] == 0.5
    # threshold 6 * min(H, W) / 256: at 32 px a move of 1 (> 0.75) counts
    small = DynamicDegreeMetric(Stub(flow), fps=16.0)
    for f in constant_frames([v for s in [0, 1, 2, 3, 4] + [4] * 11 for v in (s, 9)], 32, 32):
        small.add(0, f)
    assert small.finish(1)[0]["dynamic_degree"].tolist() == [1.0]


def test_motion_smoothness_interpolates_even_frames_and_scores_odd_ones():
    rng = np.random.default_rng(0)
    frames = [(rng.integers(0, 2, (32, 48, 3)) * 255).astype(np.uint8) for _ in range(8)]
    # stub AMT: the prediction is the first input (values 0 or 1 exactly, so uint8 truncation is exact)
    metric = MotionSmoothnessMetric(Stub(lambda a, b, t: a))
    for f in frames:
        metric.add(0, f)
    per, _ = metric.finish(1)
    maes = [np.abs(frames[i].astype(int) - frames[i - 1].astype(int)).mean() for i in (1, 3, 5)]
    assert per["motion_smoothness"][0] == pytest.approx((255 - np.mean(maes)) / 255)
    again = MotionSmoothnessMetric(Stub(lambda a, b, t: a))
    for f in frames[:7] + [np.zeros_like(frames[7])]:  # the last odd frame has no right neighbour: unused
        again.add(0, f)
    assert again.finish(1)[0]["motion_smoothness"][0] == per["motion_smoothness"][0]


def test_musiq_input_resize_keeps_float_and_longer_side_512():
    frame = np.random.default_rng(1).integers(0, 256, (480, 832, 3), dtype=np.uint8)
    x = musiq_inputs(frame)
    assert x.shape == (1, 3, int(512 / 832 * 480), int(512 / 832 * 832)) == (1, 3, 295, 512)
    assert not torch.equal(x * 255, (x * 255).round())  # no rounding back to uint8
    small = musiq_inputs(frame[:300, :400])
    assert torch.equal(small * 255, torch.from_numpy(frame[:300, :400]).permute(2, 0, 1)[None].float())


def test_imaging_quality_is_the_clip_mean_over_100_and_keeps_frame_scores():
    musiq = Stub(lambda x: x.mean((1, 2, 3)) * 100)
    metric = ImagingQualityMetric(musiq, fps=4.0, batch=3)
    values = [0, 51, 102, 255, 153, 204, 0, 0, 0]
    for i, f in enumerate(constant_frames(values, 16, 16)):
        metric.add(i // 4, f)
    per, whole = metric.finish(3)
    v = np.array(values) / 255
    assert per["imaging_quality"] == pytest.approx([v[:4].mean(), v[4:8].mean(), v[8:].mean()])
    assert whole["imaging_quality"] == pytest.approx(np.mean(per["imaging_quality"]))
    times, scores = metric.frame_series()["imaging_quality"]
    assert times.tolist() == [i / 4 for i in range(9)] and scores == pytest.approx(v)


@pytest.mark.parametrize("n,want", [(32, [1, 5, 9, 13, 17, 21, 25, 29]), (5, [0, 1, 2, 3, 4, 4, 4, 4]),
                                    (160, [9, 29, 49, 69, 89, 109, 129, 149]), (9, [0, 1, 2, 3, 4, 5, 6, 7])])
def test_viclip_frames_are_the_middles_of_eight_intervals(n, want):
    assert middle_frame_indices(n) == want


class StubViclip(Stub):
    """encode_vision: the mean pixel of each chosen frame (8 numbers); encode_text: a fixed vector per id."""

    def __init__(self) -> None:
        super().__init__(None)
        self.cfg = type("cfg", (), {"context_length": 4})()
        self.seen = []

    def encode_vision(self, frames):
        self.seen.append(frames.shape)
        return frames.mean((2, 3, 4))  # (1, 8)

    def encode_text(self, ids):
        return torch.arange(8.0).view(1, 8) + ids[:, :1].float()


def test_overall_consistency_scores_ten_second_clips_against_their_prompt():
    tokenizer = lambda text, context: torch.tensor([[len(text), 0, 0, 0]])  # noqa: E731
    model = StubViclip()
    text_for = scheduled_text([(0.0, "a cat"), (10.0, "a dog running")])
    metric = OverallConsistencyMetric(model, tokenizer, text_for, fps=2.0, clip_seconds=10.0)
    values = list(range(0, 200, 5))[:30]  # 15 s at 2 fps: one 10 s clip (20 frames), one 5 s clip (10 frames)
    for i, f in enumerate(constant_frames(values, 40, 60)):
        metric.add(i // 4, f)  # 2 s segments
    per, whole = metric.finish(8)
    assert model.seen == [(1, 8, 3, 224, 224)] * 2
    from memrope.eval.preprocess import clip_inputs

    def expected(idx, prompt):
        vid = torch.stack([clip_inputs([constant_frames([values[i]], 40, 60)[0]])[0].mean()
                           for i in idx]).view(1, 8)
        txt = torch.arange(8.0).view(1, 8) + len(prompt)
        return float(torch.nn.functional.cosine_similarity(vid, txt))

    first = expected(middle_frame_indices(20), "a cat")
    second = expected([20 + i for i in middle_frame_indices(10)], "a dog running")
    assert per["overall_consistency"][:8].tolist()[:5] == pytest.approx([first] * 5)
    assert per["overall_consistency"][5:8].tolist() == pytest.approx([second] * 3)
    assert whole["overall_consistency"] == pytest.approx((first + second) / 2)


def test_vde_closed_forms():
    assert vde([2.0, 3.0, 1.0], "linear") == pytest.approx(2 * 0.5 + 1 * 0.5)
    assert vde([2.0, 3.0, 1.0], "log") == pytest.approx(math.log(2) * 0.5 + math.log(1) * 0.5)
    assert vde([5.0]) == 0.0 and vde([0.0, 1.0]) == math.inf
    m = [1.0] * 10
    m[1] = 1.5
    assert vde(m, "linear") == pytest.approx(9 * 0.5) and vde(m, "log") == pytest.approx(math.log(9) * 0.5)
    with pytest.raises(ValueError, match="weights='square'"):
        vde(m, "square")


def test_lv_bench_chunks_drop_the_remainder_and_windows_weigh_overlap():
    assert frame_chunks(np.arange(23.0)).tolist() == [0.5 + 2 * i for i in range(10)]  # 2 per chunk, 3 dropped
    assert frame_chunks(np.arange(7.0)).size == 0
    assert overlap_mean([0, 2, 4], [2, 4, 6], [1.0, 2.0, 4.0], 1.0, 5.0) == pytest.approx((1 + 4 + 4) / 4)
    assert math.isnan(overlap_mean([0], [2], [np.nan], 0, 2))


def test_quality_drift_from_frames_and_from_segments():
    fps, seconds = 4.0, 20.0
    t = np.arange(int(fps * seconds)) / fps
    v = np.where(t < 10, 1.0, 0.5)
    d = long_drift_from_frames("imaging_quality", t, v, seconds)
    assert (d.first_5s, d.last_5s, d.quality_drift) == (1.0, 0.5, 0.5)
    assert d.basis == "frames" and d.vde_name == "VDE-Clarity"
    assert d.vde_linear == pytest.approx(sum((10 - i + 1) * 0.5 for i in range(6, 11)))
    starts = np.arange(0, 20, 2.0)
    s = long_drift_from_segments("dynamic_degree", starts, starts + 2, np.where(starts < 10, 1.0, 0.0), seconds)
    assert (s.first_5s, s.last_5s, s.quality_drift, s.basis, s.vde_name) == (1.0, 0.0, 1.0, "segments", "VDE-Dynamic")


def test_vbench_quality_score_closed_form():
    from memrope.eval.vbench_scores import quality_score

    scores = {"subject_consistency": 1.0, "background_consistency": 1.0, "temporal_flickering": 1.0,
              "motion_smoothness": 0.9975, "dynamic_degree": 0.0, "aesthetic_quality": 0.5, "imaging_quality": 0.5}
    assert quality_score(scores) == pytest.approx((1 + 1 + 1 + 1 + 0 * 0.5 + 0.5 + 0.5) / 6.5)
    scores["subject_consistency"] = 0.1462
    assert quality_score(scores) == pytest.approx((0 + 1 + 1 + 1 + 0 + 0.5 + 0.5) / 6.5)
    assert math.isnan(quality_score({**scores, "imaging_quality": math.nan}))
