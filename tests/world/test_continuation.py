"""The toy-world continuation measurement: what it commits, what it scores, its bad inputs."""

import numpy as np
import pytest
import torch

from memrope.context import encode_frames
from memrope.models.toy.autoencoder import to_uint8
from memrope.models.toy.default import load_default
from memrope.world.benchmark import BENCHMARK_PIXELS, seed_prompts
from memrope.world.clips import to_model_range
from memrope.world.continuation import CHUNK_FRAMES, ContinuationConfig, generate, main, track_px
from memrope.world.prompts import build_world
from memrope.world.raster import render, render_clip

SHIFT = np.array([2.0, 0.0])  # px


@pytest.fixture(scope="module")
def bundle():
    return load_default(pixels=BENCHMARK_PIXELS)


def test_the_context_chunks_show_the_true_clip_through_the_autoencoder_and_the_rest_is_generated(bundle):
    prompts = seed_prompts(2)
    truths = [render_clip(*build_world(p, i), 2 * CHUNK_FRAMES).frames for i, p in enumerate(prompts)]
    encoder = bundle.decoder.encoder()
    context = {0: torch.cat([encode_frames(t[:CHUNK_FRAMES], encoder, CHUNK_FRAMES)[0] for t in truths])}
    with_context = generate(bundle, prompts, context, 2, "memrope")
    without = generate(bundle, prompts, {}, 2, "memrope")
    ae = bundle.decoder.autoencoder
    with torch.no_grad():
        round_trip = np.stack([to_uint8(ae.decode(ae.encode(to_model_range(t[:CHUNK_FRAMES]))), BENCHMARK_PIXELS)
                               .numpy() for t in truths])
    assert with_context.shape == (2, 2 * CHUNK_FRAMES, 64, 64, 3)
    gap = np.abs(with_context[:, :CHUNK_FRAMES].astype(int) - round_trip)  # committed as given, decoded as is
    assert gap.max() <= 1 and (gap == 0).mean() > 0.99  # (up to the latent normalisation's float rounding)
    assert not np.array_equal(with_context[:, CHUNK_FRAMES:], without[:, CHUNK_FRAMES:])  # the context is seen


def test_track_error_is_zero_on_the_truth_and_the_shift_of_a_shifted_clip():
    spec, state = build_world(seed_prompts(1)[0], 0)
    truth = render_clip(spec, state, 6)
    assert track_px(truth.frames, truth.frames, spec) == 0.0
    shifted = render(spec, truth.trajectory.positions + SHIFT)  # every object moved
    assert track_px(shifted, truth.frames, spec) == pytest.approx(np.linalg.norm(SHIFT), abs=0.1)


@pytest.mark.parametrize("kw, message", [
    ({"seeds": 1}, "--seeds must be 2..256"),
    ({"frames": 4}, "--frames must be a positive multiple of the chunk (3)"),
    ({"track_frames": 99}, "--track-frames must be 1..--frames (48)"),
    ({"context_chunks": 0}, "--context-chunks must be 1..64"),
])
def test_bad_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        ContinuationConfig(**kw)


def test_the_command_refuses_a_bad_policy_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--policy", "no_such_policy"])
    assert exit_.value.code == 2 and "no_such_policy" in capsys.readouterr().err
