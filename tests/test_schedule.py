import json

import pytest

from memrope.schedule import PromptSegment, load_schedule, parse_inline


def test_inline_schedule_with_durations_and_a_cut():
    s = parse_inline("a cat walks[10s] | the cat sleeps[20s] | a new street[5s#]")
    assert [seg.prompt for seg in s.segments] == ["a cat walks", "the cat sleeps", "a new street"]
    assert [seg.seconds for seg in s.segments] == [10.0, 20.0, 5.0]
    assert [seg.cut for seg in s.segments] == [False, False, True]
    assert s.total_seconds == 35.0


def test_start_chunks_follow_durations():
    s = parse_inline("a[3s] | b[3s] | c")
    assert s.start_chunks(0.75) == [0, 4, 8]
    assert s.total_seconds is None


def test_plain_prompt_is_one_open_segment():
    s = parse_inline("just a prompt")
    assert s.segments == (PromptSegment("just a prompt"),)


@pytest.mark.parametrize("text,message", [
    ("a[10s] | ", "empty prompt"),
    ("a | b[3s]", "every segment but the last needs a duration"),
    ("a[0s]", "positive number"),
    ("a[ten s]", "cannot read the duration tag"),
    ("a[3s#]", "first segment cannot start with a cut"),
])
def test_malformed_schedules_are_explained(text, message):
    with pytest.raises(ValueError, match=message):
        parse_inline(text)


def test_json_and_yaml_files(tmp_path):
    data = [{"prompt": "a cat", "seconds": 4}, {"prompt": "a dog", "seconds": 2, "cut": True}]
    (tmp_path / "s.json").write_text(json.dumps(data))
    (tmp_path / "s.yaml").write_text("- prompt: a cat\n  seconds: 4\n- prompt: a dog\n  seconds: 2\n  cut: true\n")
    assert load_schedule(tmp_path / "s.json") == load_schedule(tmp_path / "s.yaml")
    for name in ("s.json", "s.yaml"):  # written out by hand: the cut is the second segment's only
        assert load_schedule(tmp_path / name).segments == (PromptSegment("a cat", 4.0, False),
                                                           PromptSegment("a dog", 2.0, True)), name
    (tmp_path / "bad.json").write_text(json.dumps([{"prompt": "a", "secs": 3}]))
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['secs'\\]"):
        load_schedule(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_schedule(tmp_path / "missing.json")
