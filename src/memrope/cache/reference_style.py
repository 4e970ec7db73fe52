"""A baseline that reproduces the *costs* of the reference MemRoPE code, not its structure.

The reference code keeps keys unrotated and, on every transformer pass and in every layer, clones
the whole cache, re-rotates all cached keys (and the chunk's own) in float64 complex arithmetic
with a frequency table assembled per pass, rotates the queries in float64 too, and reads cache
indices held in device tensors with ``.item()`` / ``.tolist()`` (host syncs; ~810 per chunk at
30 layers; here 6 per layer and pass, 900 per chunk). Positions do not change between the passes
of a chunk, so all of that is redundant after the first pass; memrope's :class:`KVCache` rotates the
past once per chunk in fp32 and never clones or syncs. This module exists so that benchmarks can
report memrope's speed-up over the reference style on the same model and policy.

Outputs equal those of the wrapped policy up to float rounding (fp64 vs fp32 rotation), which the
tests check. Usage::

    policy = ReferenceStyle(make_policy("memrope"))
    cache = cache_for(policy, model.cache_geometry(...), model.rope)   # a ReferenceStyleCache
    # or, for an existing generator: install(generator)

Policies whose slots do not hold whole frames at plain RoPE positions (Deep Forcing's phase-shifted
token selections, ``deferred`` plans) are refused.
"""

from __future__ import annotations

from typing import Any

import torch

from ..rope import ROPE_THETA, Rope3D, RopeFreqs
from .base import KVCache
from .plan import SELECTED, CacheGeometry, ChunkPlan, Clock, Slot, SwitchPlan
from .policy import CachePolicy, LayerKV

SUFFIX = "_reference_style"
SYNCS_PER_LAYER = 5
"""Host syncs per layer and pass: the reference reads ~5.4 device-held indices per layer call
(~810 per chunk = 5 passes x 30 layers x 5.4)."""


class ReferenceStyle(CachePolicy):
    """Wraps a policy: same plans and tensor work, but marks the cache for reference-style reads.

    Forces ``rotate_at_read`` so the cache keeps unrotated keys to re-rotate on every pass.
    """

    rotate_at_read = True

    def __init__(self, inner: CachePolicy):
        if isinstance(inner, ReferenceStyle):
            raise ValueError("ReferenceStyle: the policy is already reference-style")
        super().__init__(inner.config)
        self.inner = inner
        self.name = inner.name + SUFFIX  # instance attributes shadow the class variables
        self.paper = f"reference-style costs (clone, fp64 re-rotation, host syncs per pass) of: {inner.paper}"
        self.positions = inner.positions
        self.recaches_on_switch = inner.recaches_on_switch
        self.source = inner.source

    def capacity_frames(self, chunk_frames: int) -> int | None:
        return self.inner.capacity_frames(chunk_frames)

    def check_geometry(self, geo: CacheGeometry) -> None:
        self.inner.check_geometry(geo)

    def plan(self, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
        plan = self.inner.plan(slots, clock, n_frames)
        if plan.deferred or any(s.kind == SELECTED for s in plan.past):
            raise ValueError(f"{self.name}: reference-style re-rotation needs whole frames at plain RoPE "
                             "positions; this policy selects or phase-shifts tokens")
        return plan

    def allocate_extra(self, geo: CacheGeometry) -> dict[str, torch.Tensor]:
        return self.inner.allocate_extra(geo)

    def before_compaction(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry) -> None:
        self.inner.before_compaction(layer, plan, geo)

    def after_compaction(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry) -> None:
        self.inner.after_compaction(layer, plan, geo)

    def position_of(self, index: int, slot: Slot) -> int:
        return self.inner.position_of(index, slot)

    def on_switch(self, slots: tuple[Slot, ...], clock: Clock, cut: bool) -> SwitchPlan:
        return self.inner.on_switch(slots, clock, cut)

    def after_commit(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry, q_raw: torch.Tensor) -> None:
        self.inner.after_commit(layer, plan, geo, q_raw)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "policy": self.name}


def complex_tables(rope: Rope3D, device: torch.device | str, theta: float = ROPE_THETA) -> list[torch.Tensor]:
    """Per-axis complex128 tables [max_positions, axis_dim / 2] (the reference's ``rope_params``)."""
    tables = []
    for dim in rope.split:
        inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        ang = torch.outer(torch.arange(rope.max_positions, dtype=torch.float64), inv)
        tables.append(torch.polar(torch.ones_like(ang), ang).to(device))
    return tables


def complex_freqs(frame_pos: torch.Tensor, grid: tuple[int, int], tables: list[torch.Tensor]) -> torch.Tensor:
    """complex128 rotations [F*h*w, 1, D/2] for frames at ``frame_pos`` on ``grid``."""
    h, w = grid
    f = frame_pos.shape[0]
    ft, fh, fw = tables
    return torch.cat([
        ft[frame_pos].view(f, 1, 1, -1).expand(f, h, w, -1),
        fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
        fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, 1, -1)


def rotate_complex128(x: torch.Tensor, frame_pos: torch.Tensor, grid: tuple[int, int],
                      tables: list[torch.Tensor]) -> torch.Tensor:
    """The reference's RoPE (Wan's ``rope_apply``): per sample, with the grid read back to the host,
    x [B, F*h*w, H, D] to complex128 times a table assembled for this call, the tail past the frames
    concatenated back, samples stacked and returned as fp32 (``.float()``)."""
    h, w = grid
    f = frame_pos.shape[0]
    seq_len = f * h * w
    grid_sizes = torch.tensor([[f, h, w]] * x.shape[0], device=x.device)
    out = []
    for i, (_, hi, wi) in enumerate(grid_sizes.tolist()):  # a host sync, as in the reference
        freqs = complex_freqs(frame_pos, (hi, wi), tables)  # assembled per call: [L, 1, D/2]
        xi = torch.view_as_complex(x[i, :seq_len].to(torch.float64).unflatten(-1, (-1, 2)).contiguous())
        xi = torch.view_as_real(xi * freqs).flatten(-2)  # [L, H, D] fp64
        out.append(torch.cat([xi, x[i, seq_len:].to(torch.float64)]))
    return torch.stack(out).float()


class ReferenceStyleCache(KVCache):
    """KVCache whose every read clones the whole cache and re-rotates it in fp64, with host syncs."""

    def __init__(self, policy: CachePolicy, geometry: CacheGeometry, rope: Rope3D,
                 syncs_per_layer: int = SYNCS_PER_LAYER):
        if not isinstance(policy, ReferenceStyle):
            policy = ReferenceStyle(policy)
        super().__init__(policy, geometry, rope)
        self.syncs_per_layer = syncs_per_layer
        self._tables = complex_tables(rope, geometry.device)
        # The reference keeps its cache indices in device tensors and reads them with .item().
        self._indices = torch.zeros(geometry.num_layers, 2, dtype=torch.long, device=geometry.device)
        self._positions: list[int] = []

    def _start(self, plan: ChunkPlan) -> ChunkPlan:
        plan = super()._start(plan)
        self._positions = list(plan.past_pos + plan.query_pos)
        # The reference rotates the queries (and the chunk's keys) in float64 too: float64 cos/sin
        # make the model's own apply_rope compute in float64 on every pass.
        pos = torch.tensor(plan.query_pos, device=self.geometry.device)
        table = complex_freqs(pos, self.geometry.grid, self._tables)[:, 0]  # [L, D/2] complex128
        self.query_freqs = RopeFreqs(cos=table.real.contiguous(), sin=table.imag.contiguous())
        return plan

    def update(self, layer_idx: int, k_rot: torch.Tensor, v: torch.Tensor, k_raw: torch.Tensor | None = None,
               commit: bool = False, q_raw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if k_raw is None:
            raise ValueError(f"{self.policy.name} needs the unrotated keys on every pass")
        plan = self._require_plan()
        start = plan.n_past * self.geometry.frame_tokens
        end = start + k_raw.shape[1]
        self._indices[layer_idx, 0] = start
        self._indices[layer_idx, 1] = end
        for j in range(self.syncs_per_layer):  # host syncs in the per-layer loop, as the reference does
            int(self._indices[layer_idx, j % 2].item())
        _, v_ctx = super().update(layer_idx, k_rot, v, k_raw=k_raw, commit=commit, q_raw=q_raw)
        layer = self.layers[layer_idx]
        k_all = layer.k_raw.clone()  # the whole cache, every pass
        v_all = layer.v.clone()
        k_all[:, start:end] = k_raw
        pos = torch.tensor(self._positions, device=k_all.device)  # rebuilt per pass, like the reference
        k_ctx = rotate_complex128(k_all[:, :end], pos, self.geometry.grid, self._tables).type_as(v_all)
        return k_ctx, v_all[:, :end]


def cache_for(policy: CachePolicy, geometry: CacheGeometry, rope: Rope3D) -> KVCache:
    """The cache a policy needs: a :class:`ReferenceStyleCache` for reference-style policies."""
    if isinstance(policy, ReferenceStyle):
        return ReferenceStyleCache(policy, geometry, rope)
    return KVCache(policy, geometry, rope)


def install(generator: Any) -> Any:
    """Give a fresh ``StreamingGenerator`` (no chunk generated yet) a reference-style cache."""
    cache = generator.cache
    if cache.clock.chunks or cache.plan is not None or cache.slots:
        raise ValueError("install() needs a generator that has not generated anything yet")
    policy = cache.policy if isinstance(cache.policy, ReferenceStyle) else ReferenceStyle(cache.policy)
    generator.cache = ReferenceStyleCache(policy, cache.geometry, cache.rope)
    return generator


def make_reference_style(name: str, options: dict[str, Any] | None = None) -> ReferenceStyle:
    """``"memrope_reference_style"`` or ``"memrope"`` (+ options) -> ReferenceStyle(make_policy(...))."""
    from .registry import make_policy

    base = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return ReferenceStyle(make_policy(base, options))


def is_reference_style(name: str) -> bool:
    return name.endswith(SUFFIX)


def reference_style_names(bases: tuple[str, ...] = ("memrope", "sliding_window", "attention_sink",
                                                    "infinity_rope", "full")) -> list[str]:
    """Names the lead may expose (``memrope_reference_style`` is the benchmark baseline)."""
    return [b + SUFFIX for b in bases]
