"""Prompt suites in the field's formats: each converted so the generator switches where the release does."""

from __future__ import annotations

import json
import math

import pytest

from memrope.prompt_suites import ChunkClock, infinity_rope_line, load_suite, longlive_line
from memrope.schedule import PromptSchedule

WAN = ChunkClock(chunk_frames=3, fps=16, stride=4)  # 0.75 s a chunk


def starts(segments) -> list[int]:
    """The chunks the generator switches at (run.prepare's own rule)."""
    return PromptSchedule(tuple(segments)).start_chunks(WAN.seconds_per_chunk)


def test_infinity_rope_durations_are_floored_blocks_and_cuts_move_to_the_next_scene():
    segs = infinity_rope_line("a cat[10s#] | a dog[5s] | a bird[7.5s#] | a fish; Cat | Dog | Bird | Fish", WAN)
    # the release: blocks = max(1, int(s * 16 / (4 * 3))): 10 s -> 13, 5 s -> 6, 7.5 s -> 10; no tag -> 14
    blocks = [13, 6, 10, 14]
    assert starts(segs) == [0, 13, 19, 29] == [sum(blocks[:i]) for i in range(4)]
    assert [s.prompt for s in segs] == ["a cat", "a dog", "a bird", "a fish"]  # tags and subtitles gone
    # '#' on scene i is a cut at the start of scene i + 1 (scene_cut_flags[i]); ours marks the scene it starts
    assert [s.cut for s in segs] == [False, True, False, True]
    assert segs[-1].seconds is None  # the last scene runs to the study's horizon


def test_infinity_rope_short_scene_is_one_block_and_last_hash_does_nothing():
    segs = infinity_rope_line("a[0.1s] | b[1s#]", WAN)
    assert starts(segs) == [0, 1] and [s.cut for s in segs] == [False, False]


def test_longlive_switches_at_the_first_block_at_or_past_each_index():
    segs = longlive_line(["a", "b", "c", "d"], [40, 80, 120], WAN)
    # interactive_causal_inference: switch when current_start_frame >= index; blocks start at 0, 3, 6, ...
    expected = [0, *(min(k for k in range(100) if 3 * k >= f) for f in (40, 80, 120))]
    assert starts(segs) == expected == [0, 14, 27, 40]
    assert not any(s.cut for s in segs)


def test_longlive_file_with_config_indices_and_per_line_override(tmp_path):
    path = tmp_path / "interactive.jsonl"
    path.write_text(json.dumps({"prompts": ["a", "b", "c"]}) + "\n"
                    + json.dumps({"prompts": ["x", "y", "z"], "switch_frame_indices": [3, 6]}) + "\n")
    suite = load_suite(path, "longlive", WAN, "9, 30")
    assert starts(suite[0].segments) == [0, 3, 10] and starts(suite[1].segments) == [0, 1, 2]
    assert suite[0].segments[-1].seconds is None  # the last prompt runs to the horizon
    assert [p.id for p in suite] == ["p00", "p01"]


def test_lines_and_yaml_suites(tmp_path):
    lines = tmp_path / "moviegen.txt"
    lines.write_text("# MovieGen\na cat walks\n\na dog[5s] | a bird[5s#]\n")
    suite = load_suite(lines, "lines", WAN)
    assert [p.text for p in suite] == ["a cat walks", "a dog | a bird"]
    assert suite[1].segments[1].cut and suite[1].segments[1].seconds is None
    yml = tmp_path / "suite.yaml"
    yml.write_text("- a cat\n- {id: dog, prompt: a dog}\n- {id: story, schedule: [{prompt: a, seconds: 3},"
                   " {prompt: b, cut: true}]}\n")
    suite = load_suite(yml, "yaml", WAN)
    assert [p.id for p in suite] == ["p00", "dog", "story"] and suite[2].segments[1].cut
    assert math.isclose(suite[2].segments[0].seconds, 3.0)


@pytest.mark.parametrize(("fmt", "text", "indices", "message"), [
    ("longlive", '{"prompts": ["a", "b"]}\n', None, "line 1: 2 prompts but no switch_frame_indices"),
    ("longlive", '{"prompts": ["a", "b"]}\n', "40, 80", "line 1: 2 prompts need 1 switch_frame_indices, got 2"),
    ("longlive", '{"prompts": ["a", "b", "c"]}\n', "40, 41", "must increase by at least one chunk"),
    ("longlive", "not json\n", "4", "line 1: not a JSON object"),
    ("longlive", '{"prompt": "a"}\n', None, "expected {\"prompts\""),
    ("longlive", '{"prompts": ["a", "b"]}\n', "forty", "expected whole latent frame numbers"),
    ("lines", "a cat[10x]\n", None, "line 1: prompt schedule: cannot read the duration tag"),
    ("lines", "a\n", "4", "switch_frame_indices belong to the longlive format"),
    ("infinity_rope", "[10s] | b\n", None, "has no text before its [duration] tag"),
    ("yaml", "{a: 1}\n", None, "expected a non-empty list of prompts"),
    ("yaml", "- {id: a, prompt: x}\n- {id: a, prompt: y}\n", None, "ids must be unique"),
    ("yaml", "- {id: 'a b', prompt: x}\n", None, "must be 1-40 letters"),
    ("yaml", "- {prompt: x, seconds: 3}\n", None, "entry 0: give a prompt string"),
    ("csv", "a\n", None, "format 'csv' is not one of"),
    ("lines", "# only a comment\n", None, "holds no prompt"),
])
def test_bad_suites_say_what_and_where(tmp_path, fmt, text, indices, message):
    path = tmp_path / "suite.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("{", r"\{")):
        load_suite(path, fmt, WAN, indices)


def test_missing_and_binary_suite_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_suite(tmp_path / "nope.txt", "lines", WAN)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not a text file"):
        load_suite(tmp_path / "bin.txt", "lines", WAN)
