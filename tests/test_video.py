import numpy as np
import pytest

from memrope.video import VideoWriter, count_frames, read_frames


def test_writer_streams_chunks_into_a_playable_file(tmp_path):
    path = tmp_path / "v.mp4"
    with VideoWriter(path, fps=16) as writer:
        for k in range(5):
            writer.write(np.full((4, 32, 48, 3), 40 * k, dtype=np.uint8))
    assert count_frames(path) == 20
    frames = read_frames(path)
    assert frames.shape == (20, 32, 48, 3)
    assert abs(int(frames[-1].mean()) - 160) <= 2 and abs(int(frames[0].mean())) <= 2


def test_fragmented_file_is_readable_before_close(tmp_path):
    """A crash after some chunks must leave the flushed fragments playable."""
    path = tmp_path / "v.mp4"
    writer = VideoWriter(path, fps=16)
    writer.write(np.zeros((64, 32, 32, 3), dtype=np.uint8))  # 4 keyframe intervals
    # every fragment closed by a later keyframe is on disk: all but the last interval
    assert count_frames(path) >= 64 - 16
    writer.close()


def test_odd_sizes_are_padded(tmp_path):
    path = tmp_path / "odd.mp4"
    with VideoWriter(path) as writer:
        writer.write(np.zeros((2, 31, 33, 3), dtype=np.uint8))
    assert read_frames(path).shape == (2, 32, 34, 3)


def test_bad_frames_and_paths_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=".mp4"):
        VideoWriter(tmp_path / "x.avi")
    with VideoWriter(tmp_path / "y.mp4") as writer, pytest.raises(ValueError, match="uint8"):
        writer.write(np.zeros((1, 8, 8, 3), dtype=np.float32))
