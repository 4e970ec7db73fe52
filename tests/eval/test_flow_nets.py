"""RAFT and AMT-S: the correlation pyramid and its windowed lookup against slow loops, convex
upsampling against its closed forms and a per-pixel loop, AMT's warp and multi-flow merge in closed
form, and loading of files written in the original key layouts (with the one-line errors)."""

from __future__ import annotations

import math

import pytest
import torch

from memrope.eval.nets.amt import AmtS, load_amt_s, multi_flow_combine, warp
from memrope.eval.nets.flow_common import (
    all_pairs_correlation,
    correlation_pyramid,
    pad_to_multiple,
    pyramid_lookup,
    unpad,
)
from memrope.eval.nets.loading import CheckpointMismatch, expected_shapes
from memrope.eval.nets.raft import RAFT, convex_upsample, load_raft


def slow_pyramid_entry(f1, f2, level, py, px, qy, qx):
    """Level-`level` correlation of source pixel (py, px) with target cell (qy, qx): the mean of the
    raw correlations over the 2^l x 2^l block of target pixels the cell covers."""
    s = 2**level
    vals = [float(f1[0, :, py, px] @ f2[0, :, y, x]) / math.sqrt(f1.shape[1])
            for y in range(qy * s, qy * s + s) for x in range(qx * s, qx * s + s)]
    return sum(vals) / len(vals)


def test_correlation_pyramid_levels_are_block_means_of_dot_products():
    torch.manual_seed(0)
    f1, f2 = torch.randn(1, 5, 8, 8), torch.randn(1, 5, 8, 8)
    pyramid = correlation_pyramid(all_pairs_correlation(f1, f2), 4)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    for level, (py, px, qy, qx) in [(0, (3, 5, 1, 6)), (1, (7, 0, 2, 3)), (2, (4, 4, 1, 0)), (3, (0, 7, 0, 0))]:
        got = float(pyramid[level][py * 8 + px, 0, qy, qx])
        assert got == pytest.approx(slow_pyramid_entry(f1, f2, level, py, px, qy, qx), rel=1e-5, abs=1e-6)


def test_window_lookup_reads_x_along_the_first_window_axis():
    """At integer coordinates the lookup is a gather; channel i * (2r+1) + j is offset (x + i - r, y + j - r)
    (RAFT's meshgrid(dy, dx) order), zero outside the map."""
    torch.manual_seed(1)
    f1, f2 = torch.randn(1, 4, 6, 7), torch.randn(1, 4, 6, 7)
    corr = all_pairs_correlation(f1, f2)
    r = 2
    coords = torch.stack(torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")[::-1], 0)[None]
    coords = coords + torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)  # sample around (x + 1, y - 1)
    out = pyramid_lookup(correlation_pyramid(corr, 1), coords, r)
    assert out.shape == (1, (2 * r + 1) ** 2, 6, 7)
    for py, px in [(0, 0), (3, 4), (5, 6)]:
        for i in range(2 * r + 1):
            for j in range(2 * r + 1):
                x, y = px + 1 + i - r, py - 1 + j - r
                want = float(f1[0, :, py, px] @ f2[0, :, y, x]) / 2.0 if 0 <= x < 7 and 0 <= y < 6 else 0.0
                assert float(out[0, i * (2 * r + 1) + j, py, px]) == pytest.approx(want, abs=1e-5)


def slow_convex_upsample(flow, mask):
    """Per fine pixel: softmax over the 9 mask logits of its sub-position, weights on the 3x3 coarse
    neighbourhood (zero outside), times 8."""
    _, _, h, w = flow.shape
    out = torch.zeros(1, 2, 8 * h, 8 * w)
    m = mask.view(1, 9, 8, 8, h, w)
    for cy in range(h):
        for cx in range(w):
            for sy in range(8):
                for sx in range(8):
                    weights = torch.softmax(m[0, :, sy, sx, cy, cx], 0)
                    acc = torch.zeros(2)
                    for k in range(9):
                        ny, nx = cy + k // 3 - 1, cx + k % 3 - 1
                        if 0 <= ny < h and 0 <= nx < w:
                            acc += weights[k] * 8 * flow[0, :, ny, nx]
                    out[0, :, 8 * cy + sy, 8 * cx + sx] = acc
    return out


def test_convex_upsampling_matches_a_per_pixel_loop_and_its_closed_forms():
    torch.manual_seed(2)
    flow, mask = torch.randn(1, 2, 3, 4), torch.randn(1, 9 * 64, 3, 4)
    assert torch.allclose(convex_upsample(flow, mask), slow_convex_upsample(flow, mask), atol=1e-5)
    # all weight on the centre neighbour: nearest-neighbour upsampling of 8 x flow
    centre = torch.full((1, 9, 64, 3, 4), -1e4)
    centre[:, 4] = 0
    up = convex_upsample(flow, centre.view(1, 9 * 64, 3, 4))
    assert torch.allclose(up, 8 * flow.repeat_interleave(8, 2).repeat_interleave(8, 3), atol=1e-5)
    # a constant flow stays constant (x 8) wherever the whole neighbourhood is inside the map
    const = torch.tensor([1.5, -0.5]).view(1, 2, 1, 1).expand(1, 2, 3, 4).contiguous()
    inner = convex_upsample(const, mask)[:, :, 8:16, 8:24]
    assert torch.allclose(inner, torch.tensor([12.0, -4.0]).view(1, 2, 1, 1).expand_as(inner), atol=1e-4)


def test_replicate_padding_to_multiples_splits_evenly_and_unpads():
    x = torch.arange(2 * 3 * 10 * 13.0).view(2, 3, 10, 13)
    padded, pad = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (16, 16) and pad == (1, 2, 3, 3)
    assert torch.equal(unpad(padded, pad), x)
    assert torch.equal(padded[..., 0, 1:-2], x[..., 0, :])  # replicate: the first row repeats
    same, none = pad_to_multiple(torch.zeros(1, 3, 16, 24), 8)
    assert none == (0, 0, 0, 0) and same.shape == (1, 3, 16, 24)


def test_amt_warp_translates_by_integer_flow():
    torch.manual_seed(3)
    img = torch.rand(1, 3, 9, 11)
    flow = torch.zeros(1, 2, 9, 11)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # output(p) = img(x + 2, y - 1)
    out = warp(img, flow)
    assert torch.allclose(out[..., 1:, :-2], img[..., :-1, 2:], atol=1e-5)
    assert torch.allclose(out[..., 1:, -1], img[..., :-1, -1], atol=1e-5)  # border padding


def test_multi_flow_merge_with_zero_flows_is_the_mask_blend():
    torch.manual_seed(4)
    n, img0, img1 = 3, torch.rand(1, 3, 5, 6), torch.rand(1, 3, 5, 6)
    comb = torch.nn.Sequential(torch.nn.Conv2d(3 * n, 3, 1))
    torch.nn.init.zeros_(comb[0].weight)
    torch.nn.init.zeros_(comb[0].bias)
    mask = torch.rand(1, n, 5, 6)
    mean = torch.full((1, 1, 1, 1), 0.25)
    out = multi_flow_combine(comb, img0, img1, torch.zeros(1, 2 * n, 5, 6), torch.zeros(1, 2 * n, 5, 6), mask,
                             torch.zeros(1, 3 * n, 5, 6), mean)
    want = (mask.unsqueeze(2) * img0.unsqueeze(1) + (1 - mask.unsqueeze(2)) * img1.unsqueeze(1)).mean(1) + 0.25
    assert torch.allclose(out, want, atol=1e-6)


def test_real_sizes_on_the_meta_device():
    """The published sizes: RAFT 5.3 M parameters, AMT-S 3.0 M."""
    raft_n = sum(s.numel() for k, s in expected_shapes(RAFT).items() if not k.endswith("num_batches_tracked"))
    amt_n = sum(s.numel() for s in expected_shapes(AmtS).values())
    assert round(raft_n / 1e6, 1) == 5.3 and round(amt_n / 1e6, 1) == 3.0


def test_raft_loads_its_dataparallel_file_and_reports_bad_keys(tmp_path):
    torch.manual_seed(5)
    model = RAFT().eval()
    path = tmp_path / "raft-things.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    loaded = load_raft(path)
    a, b = torch.rand(1, 3, 128, 136) * 255, torch.rand(1, 3, 128, 136) * 255  # level 3 >= 2 cells
    with torch.inference_mode():
        assert torch.equal(loaded(a, b, iters=3), model(a, b, iters=3))
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    sd.pop("module.fnet.conv1.weight")
    sd["module.cnet.conv2.bias"] = torch.zeros(7)
    sd["module.extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatch) as e:
        load_raft(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "not a RAFT checkpoint" in msg
    assert "missing keys ['fnet.conv1.weight']" in msg and "unexpected keys ['extra.weight']" in msg
    assert "cnet.conv2.bias (7,) (expected (256,))" in msg


def test_amt_loads_the_trainer_checkpoint(tmp_path):
    torch.manual_seed(6)
    model = AmtS().eval()
    path = tmp_path / "amt-s.pth"
    torch.save({"epoch": 300, "state_dict": model.state_dict()}, path)
    loaded = load_amt_s(path)
    a, b, t = torch.rand(1, 3, 128, 144), torch.rand(1, 3, 128, 144), torch.full((1, 1, 1, 1), 0.5)
    with torch.inference_mode():
        out = loaded(a, b, t)
        assert torch.equal(out, model(a, b, t))
    assert out.shape == a.shape and out.min() >= 0 and out.max() <= 1
    torch.save({"state_dict": {k: v for k, v in model.state_dict().items() if not k.startswith("update2.")}}, path)
    with pytest.raises(CheckpointMismatch, match=r"not a AMT-S checkpoint: missing keys \['update2\."):
        load_amt_s(path)
