"""Cost model: closed forms, agreement with a meta-device FLOP count, the reference's numbers."""

from __future__ import annotations

import json

import pytest
import torch

from memrope.cache import make_policy
from memrope.cost_model import (
    REFERENCE_TFLOP_PER_CALL,
    REFERENCE_TFLOP_PER_CHUNK,
    cache_work,
    chunk_report,
    compare,
    format_table,
    meta_flops,
    pass_cost,
    shape_for,
    slot_order_work,
    steady_plan,
)
from memrope.models.wan import WanModel
from memrope.models.wan_config import wan_config

REAL = ((60, 104), "wan-1.3b")


def block_linear_weights(config_name: str) -> int:
    """Independent count: weights of the linears a pass runs per block, from a meta-device model."""
    with torch.device("meta"):
        model = WanModel(wan_config(config_name))
    names = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o",
             "ffn.0", "ffn.2")
    return sum(m.weight.numel() for n, m in model.blocks.named_modules()
               if isinstance(m, torch.nn.Linear) and n.split(".", 1)[1] in names)


@pytest.mark.parametrize("config_name, hw", [("tiny", (4, 4)), ("toy", (8, 8)), ("wan-1.3b", (60, 104))])
def test_linear_flops_are_two_per_token_per_weight(config_name, hw):
    shape = shape_for(config_name, hw)
    cost = pass_cost(shape, context_frames=12)
    assert cost.flops["linear"] == 2 * shape.query_tokens * block_linear_weights(config_name)


def test_attention_flops_closed_form():
    shape = shape_for("wan-1.3b", (60, 104))
    cfg = shape.config
    for ctx in (3, 12, 21):
        f = pass_cost(shape, ctx).flops
        nq, nk = shape.query_tokens, ctx * shape.frame_tokens
        assert f["self_attention"] == 2 * 2 * nq * nk * cfg.dim * cfg.num_layers
        assert f["cross_attention"] == 2 * 2 * nq * cfg.text_len * cfg.dim * cfg.num_layers


def test_real_shape_matches_reference_numbers():
    shape = shape_for("wan-1.3b", (60, 104))
    assert shape.frame_tokens == 30 * 52  # derived from the latent, not hard-coded in the model
    report = chunk_report(make_policy("memrope"), shape)
    assert report["context_frames"] == 12
    assert report["tflop_per_call"] == pytest.approx(REFERENCE_TFLOP_PER_CALL, rel=0.005)
    assert report["tflop_per_chunk"] == pytest.approx(REFERENCE_TFLOP_PER_CHUNK, rel=0.005)
    f = report["transformer"]["flops"]
    total = report["transformer"]["total_flops"]
    assert f["self_attention"] / total == pytest.approx(0.57, abs=0.01)
    assert f["linear"] / total == pytest.approx(0.41, abs=0.01)


def test_kv_bytes_match_reference():
    shape = shape_for("wan-1.3b", (60, 104))
    per_layer_frame_kv = 2 * shape.frame_bytes()  # K + V in bf16
    assert per_layer_frame_kv / 1e6 == pytest.approx(9.58, abs=0.01)


def test_meta_device_count_agrees_with_closed_form():
    shape = shape_for("toy", (8, 8))
    counted = meta_flops("toy", (8, 8), make_policy("memrope"), chunks=5)
    for ctx, flops in zip((3, 6, 9, 12, 12), counted, strict=True):
        analytic = {k: v for k, v in pass_cost(shape, ctx).flops.items() if k != "rope"}
        assert flops == pytest.approx(sum(analytic.values()), rel=1e-9)


def test_steady_plans():
    mem = steady_plan(make_policy("memrope"))
    assert (mem.n_past, len(mem.evicted), mem.dropped) == (9, 3, ())
    assert [s.kind for s in mem.past[3:5]] == ["long", "short"]
    sw = steady_plan(make_policy("sliding_window"))
    assert sw.n_past == 9 and len(sw.evicted) == 3


def test_cache_work_accounts_every_term():
    shape = shape_for("wan-1.3b", (60, 104))
    policy = make_policy("memrope")
    plan = steady_plan(policy)
    fb, layers = shape.frame_bytes(), shape.config.num_layers
    work = slot_order_work(policy, plan, shape).bytes
    assert work["rotate_past"] == 2 * 9 * fb * layers
    assert work["moves"] == 2 * 4 * 3 * fb * layers  # 4 recent frames, k + v + k_raw
    assert work["ema_read"] == 2 * 3 * fb * layers
    assert work["memory_write"] == 2 * 2 * fb * layers
    ring = cache_work(policy, plan, shape).bytes  # what memrope runs on
    assert "moves" not in ring and "rotate_past" not in ring
    assert ring["shift_temporal"] == 2 * 4 * fb * 44 / 128 * layers  # 4 recent frames, 44 of 128 channels
    assert ring["memory_write"] == 2 * 2 * fb * layers
    assert ring["means"] == 2 * (3 + 3) * shape.config.dim * 4 * layers  # 3 folded + 3 committed frames
    state = 2 * 2 * shape.config.dim * 4  # long and short memory, k and v: one fp32 vector per head each
    assert work["fold_state"] == ring["fold_state"] == 2 * state * layers  # read and written once


def test_per_position_folds_on_the_ring_cost_their_frames_and_state():
    """``ring_fold == "frames"`` (no per-frame means): the 3 evicted frames' keys and values are read,
    the policy's state read and written, its memory slots written; nothing else but the shifts of
    the frames that change position. Closed forms at 832x480, bf16, chunk 3:

    - memrope_adaptive (cache 12 = sink 3 + 2 memories + 4 recent + chunk): state = long and short
      memories, k and v, one fp32 vector per token (2 frames' bytes each); 4 recent frames shift.
    - ema_sink (window 9 = sink 3 + 3 recent + chunk): state = the raw sink, 3 frames of k and of v in
      bf16; the 3 sink slots are written; the 3 recent frames shift by one chunk.

    The fold's own reads and writes alone (evicted frames read, memory written) are more than 1% of
    the transformer's traffic for both, on any layout: 10 and 12 frames' bytes per layer, against
    1% = 9.7 (12 frames of context) and 9.4 (9 frames)."""
    shape = shape_for("wan-1.3b", (60, 104))
    fb, layers = shape.frame_bytes(), shape.config.num_layers
    t = 44 / 128
    expected = {
        "memrope_adaptive": {"fold_read": 2 * 3, "fold_state": 2 * 4 * 2, "memory_write": 2 * 2,
                             "shift_temporal": 2 * 4 * t},
        "ema_sink": {"fold_read": 2 * 3, "fold_state": 2 * 2 * 3, "memory_write": 2 * 3, "shift_temporal": 2 * 3 * t},
    }
    rows = compare([make_policy(n) for n in expected], shape, names=list(expected))["policies"]
    for name, frames in expected.items():
        assert rows[name]["storage"] == "ring"
        got = {k: v for k, v in rows[name]["cache"]["bytes"].items() if v}
        assert got == pytest.approx({k: v * fb * layers for k, v in frames.items()}), name
        own = (frames["fold_read"] + frames["memory_write"]) * fb * layers
        assert own > 0.01 * rows[name]["transformer"]["total_bytes"], name


def test_compare_reports_fractions():
    shape = shape_for("wan-1.3b", (60, 104))
    report = compare([make_policy("sliding_window"), make_policy("memrope")], shape)
    json.dumps(report)
    mem = report["policies"]["memrope"]
    assert mem["storage"] == "ring" and report["policies"]["sliding_window"]["storage"] == "ring"
    assert 0 < mem["cache_bytes_fraction"] < 0.01  # issue 7: below 1% of the transformer's traffic
    assert report["policies"]["sliding_window"]["extra_bytes_vs_sliding_window"] == 0
    assert "memrope" in format_table(report)


def test_reference_style_work():
    shape = shape_for("wan-1.3b", (60, 104))
    report = chunk_report(make_policy("memrope"), shape)
    ref = report["reference_style"]
    assert ref["host_syncs"] == 6 * 5 * 30
    assert ref["bytes"]["clone_k_raw_v"] == 5 * 30 * 2 * 2 * 12 * shape.frame_bytes()
    assert ref["total_bytes"] > 10 * report["cache"]["total_bytes"]


def test_every_bounded_policy_on_the_ring_works_below_one_percent():
    """Issue 19: the window policies on the ring too. Absolute positions never change, so the sliding
    window and the attention sink do no cache work at all; infinity_rope shifts the frames it keeps;
    deep_forcing's token selection still needs slot order (its compaction hooks read that layout)."""
    from memrope.cache.ring import ring_supported

    shape = shape_for("wan-1.3b", (60, 104))
    names = ["sliding_window", "attention_sink", "infinity_rope", "memrope", "deep_forcing", "deep_forcing_sink_only"]
    rows = compare([make_policy(n) for n in names], shape, names=names)["policies"]
    for name in names:
        on_ring = ring_supported(make_policy(name), 3)
        assert rows[name]["storage"] == ("ring" if on_ring else "slot order")
        if on_ring:
            assert rows[name]["cache_bytes_fraction"] < 0.01, name
    assert not ring_supported(make_policy("deep_forcing"), 3)
    for name in ("sliding_window", "attention_sink"):
        assert rows[name]["cache"]["total_bytes"] == 0
    # infinity_rope: the two frames kept after the sink slide 3 positions back each chunk (window 6, chunk 3)
    fb, layers = shape.frame_bytes(), shape.config.num_layers
    assert rows["infinity_rope"]["cache"]["bytes"]["shift_temporal"] == 2 * 2 * fb * 44 / 128 * layers
    # Deep Sink alone: its 14-frame sink moves 3 positions every chunk, nothing else changes
    assert {k: v for k, v in rows["deep_forcing_sink_only"]["cache"]["bytes"].items() if v} == {
        "shift_temporal": 2 * 14 * fb * 44 / 128 * layers}


def test_deep_forcing_costs_its_selection_and_sink_moves_averaged_over_its_cycle():
    """Deep Forcing compresses every other chunk (cache 19 then 16 frames with the chunk). At a
    compression (budget 16, sink 10, recent 4, chunk 3): the 8 candidate frames' keys are read for
    the scores, 2 frames' worth of tokens gathered (k and v, read and written), the one old recent
    frame moved (k and v), and the 10 sink frames moved in time (44 of 128 channels); the chunk
    in between does no cache work. The report is the mean of the two."""
    from memrope.cost_model import steady_cycle

    shape = shape_for("wan-1.3b", (60, 104))
    fb, layers = shape.frame_bytes(), shape.config.num_layers
    policy = make_policy("deep_forcing")
    cycle = steady_cycle(policy, 3)
    assert [plan.n_past + plan.n_frames for _, plan in cycle] == [19, 16]
    quiet, compression = (cache_work(policy, plan, shape, previous) for previous, plan in cycle)
    assert quiet.total_bytes == 0
    expected = {"moves": 2 * 1 * 2 * fb * layers, "shift_temporal": 2 * 10 * fb * 44 / 128 * layers,
                "selection_scores": 8 * fb * layers, "selection_gather": 2 * 2 * 2 * fb * layers}
    assert {k: v for k, v in compression.bytes.items() if v} == expected
    row = compare([policy], shape)["policies"]["deep_forcing"]
    assert row["context_frames_cycle"] == [19, 16]
    assert row["cache"]["total_bytes"] == sum(expected.values()) / 2


def test_cost_model_rows_keep_preset_names_and_its_command_checks_input(capsys):
    from memrope.cost_model import main

    shape = shape_for("wan-1.3b", (60, 104))
    presets = ["deep_forcing", "deep_forcing_sink_only"]
    rows = compare([make_policy(n) for n in presets], shape, names=presets)["policies"]
    assert list(rows) == presets and rows["deep_forcing_sink_only"]["context_frames"] == 21
    with pytest.raises(ValueError, match="distinct names"):
        compare([make_policy(n) for n in presets], shape)
    main(["--policies", "memrope,full"])
    out = capsys.readouterr().out
    assert "| memrope | ring | 12 |" in out and "| full |" not in out  # unbounded: no steady chunk
    for bad, message in (["--latent", "3"], "--latent takes HxW"), (["--policies", "nope"], "unknown cache policy"):
        with pytest.raises(SystemExit) as exit_info:
            main(bad)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
