"""Wan 3D rotary position embedding, with temporal positions supplied per frame.

Wan splits each attention head's channel pairs into a temporal, a height and a width group
(44/42/42 channels for head dim 128) and rotates each group by its own axis coordinate. The
original code rotates with the absolute frame index. Here the temporal coordinate of every frame
is an explicit argument (``frame_pos``), because a cache policy - not the stream clock - decides at
which temporal position a cached frame is seen. Spatial coordinates are always the token's
(row, col) inside its frame.

The reference rotates in float64 complex numbers; fp32 cos/sin tables are accurate to ~1e-7 and
avoid fp64 work on the GPU, so tables are built in fp64 once and stored in fp32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

ROPE_THETA = 10000.0
"""Base of the inverse-frequency ladder (Wan2.1 ``rope_params``)."""

ROPE_MAX_POSITIONS = 1024
"""Length of the frequency table per axis in Wan2.1; positions must stay below it."""


def axis_split(head_dim: int) -> tuple[int, int, int]:
    """Channels given to the (time, height, width) axes for one head.

    Wan uses ``d - 4 (d // 6)`` channels for time and ``2 (d // 6)`` each for height and width
    (44/42/42 for d = 128). Every group must hold whole (even) channel pairs.
    """
    if head_dim % 2 != 0 or head_dim < 6:
        raise ValueError(f"head_dim must be even and >= 6 for 3D RoPE, got {head_dim}")
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _angles(n_positions: int, dim: int, theta: float) -> torch.Tensor:
    """Rotation angles [n_positions, dim / 2] for one axis of ``dim`` channels (fp64)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.outer(torch.arange(n_positions, dtype=torch.float64), inv_freq)


@dataclass(frozen=True)
class RopeFreqs:
    """cos/sin for a block of tokens, ready to apply: both [tokens, head_dim / 2], fp32, or
    [tokens, heads, head_dim / 2] when every head has its own frequencies (LoL's RoPE jitter)."""

    cos: torch.Tensor
    sin: torch.Tensor

    @property
    def tokens(self) -> int:
        return self.cos.shape[0]

    @functools.cached_property
    def rotation(self) -> torch.Tensor:
        """cos + i sin per channel pair, [1, tokens, 1 or heads, head_dim / 2], complex64 (complex128
        for fp64 tables): built once per table (tables are memoised per chunk), so a rotation is one
        multiply."""
        table = torch.complex(self.cos, self.sin)
        return table[None, :, None, :] if table.ndim == 2 else table[None]


class Rope3D(torch.nn.Module):
    """Per-axis cos/sin tables (non-persistent buffers) and the lookup for frames on a grid."""

    def __init__(self, head_dim: int, max_positions: int = ROPE_MAX_POSITIONS, theta: float = ROPE_THETA):
        super().__init__()
        if max_positions < 1:
            raise ValueError(f"max_positions must be >= 1, got {max_positions}")
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.theta = theta
        self.split = axis_split(head_dim)
        for name, table in self._tables(torch.device("cpu") if torch.get_default_device().type != "meta"
                                        else torch.device("meta")).items():
            self.register_buffer(name, table, persistent=False)

    def _tables(self, device: torch.device) -> dict[str, torch.Tensor]:
        out = {}
        for name, dim in zip(("t", "h", "w"), self.split):
            ang = _angles(self.max_positions, dim, self.theta).to(device)
            out[f"cos_{name}"], out[f"sin_{name}"] = ang.cos().float(), ang.sin().float()
        return out

    def _apply(self, fn, recurse=True):
        """Keep the tables in fp32 whatever ``model.to(dtype)`` asks: a bf16 cos/sin table would
        put ~1e-2 errors into every rotation. Rebuilt from fp64 angles, not cast back."""
        super()._apply(fn, recurse)
        if self.cos_t.dtype != torch.float32:
            for name, table in self._tables(self.cos_t.device).items():
                setattr(self, name, table)
        return self

    def check_positions(self, largest: int, what: str = "temporal position") -> None:
        """Host-side bound check: callers know positions as Python ints, so this never syncs."""
        if largest >= self.max_positions:
            raise ValueError(
                f"{what} {largest} is outside the RoPE table of {self.max_positions} positions the model "
                f"was built with; use a cache policy with bounded positions (e.g. --policy memrope) or a "
                f"shorter video"
            )

    def freqs(self, frame_pos: torch.Tensor, grid: tuple[int, int]) -> RopeFreqs:
        """cos/sin for ``len(frame_pos)`` frames of ``grid = (h, w)`` tokens, frame-major order.

        frame_pos: [F] integer temporal positions, one per frame (need not be contiguous).
        Returns tables of [F * h * w, head_dim / 2].
        """
        h, w = grid
        if h > self.max_positions or w > self.max_positions:
            raise ValueError(f"grid {grid} exceeds the RoPE table of {self.max_positions} positions")
        n_frames = frame_pos.shape[0]
        pos = frame_pos.to(device=self.cos_t.device, dtype=torch.long)
        parts_cos, parts_sin = [], []
        for cos_tab, sin_tab, index, view in (
            (self.cos_t, self.sin_t, pos, (n_frames, 1, 1, -1)),
            (self.cos_h, self.sin_h, torch.arange(h, device=pos.device), (1, h, 1, -1)),
            (self.cos_w, self.sin_w, torch.arange(w, device=pos.device), (1, 1, w, -1)),
        ):
            parts_cos.append(cos_tab[index].view(view).expand(n_frames, h, w, -1))
            parts_sin.append(sin_tab[index].view(view).expand(n_frames, h, w, -1))
        cos = torch.cat(parts_cos, dim=-1).reshape(n_frames * h * w, -1)  # [F*h*w, D/2]
        sin = torch.cat(parts_sin, dim=-1).reshape(n_frames * h * w, -1)
        return RopeFreqs(cos=cos, sin=sin)


def apply_rope(x: torch.Tensor, freqs: RopeFreqs, inverse: bool = False) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x`` [B, L, H, D] by ``freqs`` ([L, D/2], or [L, H', D/2] with
    H a multiple of H'); fp32 math (fp64 for fp64 tables). ``inverse``: rotate back (the conjugate),
    which recovers unrotated keys from rotated ones, a rotation being orthogonal.

    (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin) is one complex multiply of x0 + i x1 by
    cos + i sin: one operation on a complex view, not four (tiny shapes are bound by per-operation
    overhead). Pure elementwise work: rotating a block of tokens gives the same result whether the
    tokens are rotated together or one frame at a time.
    """
    if x.shape[1] != freqs.tokens:
        raise ValueError(f"x has {x.shape[1]} tokens but the RoPE table covers {freqs.tokens}")
    pairs = (x if x.dtype == torch.float32 else x.float()).unflatten(-1, (-1, 2))  # [B, L, H, D/2, 2]
    try:
        as_complex = torch.view_as_complex(pairs)
    except RuntimeError:  # strides that split a pair: copy first
        as_complex = torch.view_as_complex(pairs.contiguous())
    rotation = freqs.rotation.conj() if inverse else freqs.rotation
    if rotation.shape[2] not in (1, x.shape[2]):  # per-head tables, heads of several tensors side by side
        rotation = rotation.repeat(1, 1, x.shape[2] // rotation.shape[2], 1)  # (the fused path's q | k)
    rotated = as_complex * rotation  # [B, L, H, D/2]
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


def time_shift_rotation(delta: int, rope: Rope3D) -> torch.Tensor:
    """cos + i sin of a temporal move by ``delta`` positions, per temporal channel pair: complex64 [t / 2]."""
    if abs(delta) >= rope.max_positions:
        raise ValueError(f"temporal shift {delta} is outside the RoPE table of {rope.max_positions} positions")
    sign = 1.0 if delta > 0 else -1.0
    return torch.complex(rope.cos_t[abs(delta)], rope.sin_t[abs(delta)] * sign)


def shift_time_(x: torch.Tensor, delta: int, rope: Rope3D, rotation: torch.Tensor | None = None) -> None:
    """In place: move rotated keys ``x`` [..., D] by ``delta`` temporal positions (a Python int).

    Only the temporal channel pairs (the first ``rope.split[0]`` channels) are read and written, so
    moving a frame costs about a third of rotating it; the spatial pairs already hold the right
    (row, col). Rotations compose (R(p + d) = R(d) R(p)), so the result equals a fresh rotation at
    p + d up to one rounding in the storage dtype. ``rotation``: :func:`time_shift_rotation` of
    ``delta``, for callers that memoise it.
    """
    if delta == 0:
        return
    _rotate_time_(x, time_shift_rotation(delta, rope) if rotation is None else rotation, rope.split[0])


def _rotate_time_(x: torch.Tensor, rotation: torch.Tensor, t: int) -> None:
    """In place: multiply the first ``t`` channels of ``x``, as complex pairs, by ``rotation``
    (broadcast against [..., t / 2]). fp32 storage is multiplied through a complex view (one
    operation); other dtypes go through fp32 and are written back with one rounding."""
    part = x[..., :t].unflatten(-1, (-1, 2))  # [..., t / 2, 2]
    if x.dtype == torch.float32:
        try:
            torch.view_as_complex(part).mul_(rotation)
            return
        except RuntimeError:  # strides that split a pair
            pass
    rotated = torch.view_as_complex(part.float().contiguous()) * rotation
    x[..., :t] = torch.view_as_real(rotated).flatten(-2).to(x.dtype)
