"""`memrope generate --policy X` for 200 chunks for every registered policy and preset."""

import json

import pytest

from memrope.cache import make_policy, policy_names
from memrope.cache.plan import BY_SLOT
from memrope.cli import main

CHUNKS, CHUNK = 200, 3


@pytest.mark.parametrize("name", policy_names())
def test_200_chunks_constant_bytes_and_bounded_positions(tmp_path, capsys, name):
    stats = tmp_path / "s.json"
    code = main(["generate", "--policy", name, "--latent-frames", str(CHUNKS * CHUNK), "--out",
                 str(tmp_path / "v.mp4"), "--stats", str(stats), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    chunks = json.loads(stats.read_text())["chunks"]
    assert len(chunks) == CHUNKS
    policy = make_policy(name)
    capacity = policy.capacity_frames(CHUNK)
    if capacity is None:  # `full` promises neither
        assert chunks[-1]["cache_bytes"] > chunks[0]["cache_bytes"]
        return
    assert len({c["cache_bytes"] for c in chunks}) == 1
    largest = [c["max_frame_pos"] for c in chunks]
    if policy.positions == BY_SLOT:
        gap = getattr(policy.config, "sink_gap", 0)  # the memrope_far_sink diagnostic
        assert max(largest) < capacity + gap  # positions never leave the window (plus the gap)
    else:  # absolute positions grow with the video, as in the base models
        assert largest[-1] == CHUNKS * CHUNK - 1
