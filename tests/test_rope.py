import math

import pytest
import torch

from memrope.rope import Rope3D, apply_rope, axis_split, shift_time_, time_shift_rotation


def test_wan_head_dim_split_is_44_42_42():
    assert axis_split(128) == (44, 42, 42)


@pytest.mark.parametrize("head_dim", [6, 12, 16, 32, 64, 128])
def test_split_covers_head_in_whole_pairs(head_dim):
    parts = axis_split(head_dim)
    assert sum(parts) == head_dim and all(p % 2 == 0 for p in parts)


@pytest.mark.parametrize("head_dim", [5, 7, 4])
def test_split_rejects_bad_head_dims(head_dim):
    with pytest.raises(ValueError, match="head_dim"):
        axis_split(head_dim)


def complex_reference(x, frame_pos, grid, theta=10000.0):
    """Wan's rope_apply, written independently in float64 complex arithmetic."""
    b, n, h_, d = x.shape
    t_dim, h_dim, w_dim = axis_split(d)
    def freqs(pos, dim):
        inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        return torch.polar(torch.ones(len(inv), dtype=torch.float64), pos * inv)
    gh, gw = grid
    out = torch.empty_like(x, dtype=torch.float64)
    tok = 0
    for f in range(len(frame_pos)):
        for r in range(gh):
            for c in range(gw):
                rot = torch.cat([freqs(float(frame_pos[f]), t_dim), freqs(float(r), h_dim), freqs(float(c), w_dim)])
                xc = torch.view_as_complex(x[:, tok].double().reshape(b, h_, d // 2, 2).contiguous())
                out[:, tok] = torch.view_as_real(xc * rot).reshape(b, h_, d)
                tok += 1
    return out


def test_matches_complex_fp64_reference_with_arbitrary_positions():
    rope = Rope3D(16)
    grid, pos = (2, 3), torch.tensor([7, 0, 1023])
    x = torch.randn(2, 3 * 6, 2, 16)
    got = apply_rope(x, rope.freqs(pos, grid))
    ref = complex_reference(x, pos, grid)
    assert torch.allclose(got.double(), ref, atol=1e-5)


def test_rotation_preserves_norm_and_position_zero_is_identity_in_time():
    rope = Rope3D(12)
    x = torch.randn(1, 4, 1, 12)
    y = apply_rope(x, rope.freqs(torch.tensor([0]), (1, 4)))
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    # token (row 0, col 0) at time 0 is not rotated at all
    assert torch.allclose(y[:, 0], x[:, 0])


def test_rotating_frames_separately_equals_rotating_together_bitwise():
    rope = Rope3D(16)
    grid = (2, 2)
    x = torch.randn(1, 3 * 4, 2, 16)
    pos = torch.tensor([5, 6, 9])
    together = apply_rope(x, rope.freqs(pos, grid))
    apart = torch.cat([apply_rope(x[:, 4 * i:4 * (i + 1)], rope.freqs(pos[i:i + 1], grid)) for i in range(3)], 1)
    assert torch.equal(together, apart)


def test_relative_property_scores_depend_only_on_time_offset():
    rope = Rope3D(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    def score(pq, pk):
        rq = apply_rope(q, rope.freqs(torch.tensor([pq]), (1, 1)))
        rk = apply_rope(k, rope.freqs(torch.tensor([pk]), (1, 1)))
        return (rq * rk).sum().item()
    assert math.isclose(score(9, 4), score(1005, 1000), rel_tol=1e-4, abs_tol=1e-5)


def test_positions_outside_table_are_a_clear_error():
    rope = Rope3D(16, max_positions=32)
    with pytest.raises(ValueError, match="outside the RoPE table of 32"):
        rope.check_positions(32)
    rope.check_positions(31)


def test_tables_stay_fp32_when_the_model_is_cast_to_bf16():
    rope = Rope3D(16)
    ref = rope.cos_t.clone()
    rope.to(torch.bfloat16)
    assert rope.cos_t.dtype == torch.float32 and torch.equal(rope.cos_t, ref)


def test_meta_device_construction_costs_nothing():
    with torch.device("meta"):
        rope = Rope3D(128)
    assert rope.cos_t.is_meta


def test_in_place_time_shift_equals_a_fresh_rotation_in_every_layout():
    rope = Rope3D(12, 64)
    raw = torch.randn(2, 8, 3, 12)
    freqs = rope.freqs(torch.tensor([5, 5]), (2, 2))
    target = apply_rope(raw, rope.freqs(torch.tensor([2, 2]), (2, 2)))
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 2e-2)):
        rotated = apply_rope(raw, freqs).to(dtype)
        shift_time_(rotated, -3, rope)
        torch.testing.assert_close(rotated.float(), target, rtol=tol, atol=tol)
    wide = torch.zeros(2, 8, 3, 13)  # odd stride: the complex view fails, the copy path runs
    wide[..., :12] = apply_rope(raw, freqs)
    shift_time_(wide[..., :12], -3, rope, time_shift_rotation(-3, rope))
    torch.testing.assert_close(wide[..., :12], target, rtol=1e-6, atol=1e-6)


def test_inverse_rotation_recovers_the_unrotated_keys():
    """``inverse=True`` rotates back by the conjugate: what the ring does to fold keys it stores rotated."""
    rope = Rope3D(12)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3 * 6, 2, 12, generator=gen)
    freqs = rope.freqs(torch.tensor([5, 0, 17]), (2, 3))
    rotated = apply_rope(x, freqs)
    assert not torch.allclose(rotated, x)
    torch.testing.assert_close(apply_rope(rotated, freqs, inverse=True), x, atol=1e-6, rtol=0)
    again = apply_rope(apply_rope(x, freqs, inverse=True), freqs)  # the inverse of the inverse
    torch.testing.assert_close(again, x, atol=1e-6, rtol=0)
