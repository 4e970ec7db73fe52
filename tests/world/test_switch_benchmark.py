"""The prompt-switch benchmark: its scenes, its measures on exact renderings, and a tiny run."""

import json

import numpy as np
import pytest

from memrope.world.prompts import parse_prompt
from memrope.world.script import render_script
from memrope.world.switch_benchmark import (
    SwitchBenchmarkConfig,
    first_turn,
    main,
    new_background_share,
    score_scene,
    switch_prompts,
)


@pytest.mark.parametrize("scene", range(40))
def test_prompt_b_keeps_every_object_adds_one_and_moves_the_background(scene):
    before, after = map(parse_prompt, switch_prompts(scene))
    assert after.objects[: len(before.objects)] == before.objects
    assert len(after.objects) == len(before.objects) + 1
    assert after.objects[-1].colour not in {o.colour for o in before.objects}
    assert after.background.colour != before.background.colour and after.speed == before.speed


def test_background_share_is_zero_on_the_old_world_and_one_on_the_new():
    before, after = switch_prompts(3)
    old = render_script([(0, before)], seed=0, n_frames=4).frames
    new = render_script([(0, after)], seed=0, n_frames=4).frames
    np.testing.assert_array_equal(new_background_share(old, parse_prompt(before), parse_prompt(after)), 0.0)
    np.testing.assert_array_equal(new_background_share(new, parse_prompt(before), parse_prompt(after)), 1.0)


def test_first_turn_counts_steps_and_censors_at_the_horizon():
    assert first_turn(np.array([0.1, np.nan, 0.5, 0.9]), 3, 12) == (6.0, True)
    assert first_turn(np.array([0.1, 0.2]), 3, 12) == (12.0, False)


def test_an_exact_switch_turns_at_once_and_keeps_every_identity():
    cfg = SwitchBenchmarkConfig(scenes=2, switch_frame=12, after_frames=12, window=12)
    before, after = switch_prompts(5)
    clip = render_script([(0, before), (cfg.window, after)], seed=1, n_frames=cfg.window + cfg.after_frames)
    got = score_scene(clip.frames, before, after, cfg)
    assert got["background_latency"] == 0 and got["background_turned"] == 1
    assert got["object_latency"] == 0 and got["object_appeared"] == 1
    assert got["kept_identity"] == 1 and got["kept_identity_change"] == 0 and got["kept_present_change"] == 0
    # The same scene never switched: nothing turns within the horizon.
    frozen = render_script([(0, before)], seed=1, n_frames=cfg.window + cfg.after_frames).frames
    got = score_scene(frozen, before, after, cfg)
    assert (got["background_latency"], got["background_turned"]) == (cfg.after_frames, 0)
    assert (got["object_latency"], got["object_appeared"]) == (cfg.after_frames, 0)


@pytest.mark.parametrize("options,message", [
    ({"scenes": 1}, "scenes"), ({"switch_frame": 10}, "switch-frame"), ({"window": 5}, "window"),
])
def test_config_rejects_what_cannot_be_measured(options, message):
    with pytest.raises(ValueError, match=message):
        SwitchBenchmarkConfig(**options)


def test_tiny_run_writes_every_policy_with_paired_differences(tmp_path):
    main(["--policies", "memrope", "attention_sink", "--scenes", "2", "--switch-frame", "12", "--after-frames",
          "12", "--window", "6", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "results.json").read_text())
    assert list(result["policies"]) == ["memrope", "attention_sink"]
    sink = result["policies"]["attention_sink"]
    assert sink["background_turned"]["successes"] in (0, 1, 2) and len(sink["per_scene"]["object_latency"]) == 2
    assert "kept_present" in sink["paired_vs_memrope"]
    assert "| attention_sink |" in (tmp_path / "results.md").read_text()
