"""Training clips: deterministic per seed, right shapes and ranges, collate into batches."""

import numpy as np
import pytest
import torch

from memrope.world.clips import (
    ClipConfig,
    ClipSource,
    from_model_range,
    sample_batch,
    sample_clip,
    to_model_range,
)
from memrope.world.prompts import parse_prompt
from memrope.world.raster import render_clip
from memrope.world.truth import TruthConfig, evaluate


def test_clip_is_a_pure_function_of_its_seed():
    config = ClipConfig(n_frames=12)
    a, b, c = sample_clip(3, config), sample_clip(3, config), sample_clip(4, config)
    assert torch.equal(a.video, b.video) and a.prompt == b.prompt
    assert not torch.equal(a.video, c.video)
    assert a.video.shape == (12, 3, 64, 64) and a.video.dtype == torch.float32
    assert a.video.min() >= -1.0 and a.video.max() <= 1.0
    assert parse_prompt(a.prompt) == a.spec
    np.testing.assert_array_equal(from_model_range(a.video), render_clip(a.spec, a.state, 12).frames)


def test_uint8_clips_and_range_round_trip():
    clip = sample_clip(1, ClipConfig(n_frames=8, height=64, width=96, dtype="uint8"))
    assert clip.video.shape == (8, 3, 64, 96) and clip.video.dtype == torch.uint8
    frames = clip.video.permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(from_model_range(to_model_range(frames)), frames)


def test_clips_score_as_ground_truth():
    clip = sample_clip(9, ClipConfig(n_frames=32, max_objects=2))
    report = evaluate(from_model_range(clip.video), clip.spec, TruthConfig(segment_frames=16))
    assert np.nanmin(report.identity) == 1.0
    np.testing.assert_array_equal(report.off_world, 0.0)


def test_source_collates_with_a_dataloader():
    source = ClipSource(ClipConfig(n_frames=4, max_objects=1), seed=7, size=6)
    loader = torch.utils.data.DataLoader(source, batch_size=3)
    videos, prompts = next(iter(loader))
    assert videos.shape == (3, 4, 3, 64, 64) and len(prompts) == 3
    assert all(len(parse_prompt(p).objects) == 1 for p in prompts)
    batch, batch_prompts = sample_batch(3, 7, ClipConfig(n_frames=4, max_objects=1))
    assert torch.equal(batch, videos) and batch_prompts == list(prompts)
    with pytest.raises(IndexError):
        source.clip(6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_frames": 0}, "n_frames"),
        ({"height": 48}, "height"),
        ({"max_objects": 5}, "max_objects"),
        ({"dtype": "float16"}, "dtype"),
    ],
)
def test_clip_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClipConfig(**kwargs)
