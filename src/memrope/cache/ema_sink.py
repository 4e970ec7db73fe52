"""``ema_sink``: Reward Forcing's EMA-Sink, run training-free on any checkpoint.

Reward Forcing (Lu et al., arXiv 2512.04678) trains a student with a sink that does not stay the
first frames: every chunk the window evicts is averaged into the sink, token by token, by an
exponential moving average, so the sink carries long-range context that follows the video. Here the
cache mechanism alone runs on whatever checkpoint is loaded (the paper's Re-DMD training is not part
of it). Followed: the code release as copied in wangbei1/rlbaseline@48bbb96
``Reward-Forcing-main/wan/modules/causal_model.py`` (``CausalWanSelfAttention``, ``incremental_update``,
``compression_alpha`` = 0.999) and ``Reward-Forcing-main/configs/reward_forcing.yaml`` (window 9,
sink 3); the authors' own repository could not be fetched here.

- keys are cached unrotated; the window [sink | recent | chunk] is rotated at 0..n-1 with the
  queries at its end, as infinity-RoPE's block-relativistic RoPE;
- when a chunk evicts frames (at its first pass), sink token j of frame i becomes
  ``alpha sink + (1 - alpha) evicted`` with the j-th token of the i-th evicted frame, keys and values
  alike, in the cache's own dtype (as released: in bf16 an update of weight 1 - alpha = 0.001 is below
  its resolution, 2^-8, and rounds away; fp32 keeps it).

Deviations, and why: the release replaces the sink with the evicted tokens whenever their count
differs from the sink's; here the sink must be one chunk and the window whole chunks (checked), so
that every eviction is one chunk and that branch never runs. The released cache re-rotates on every
pass; here once per chunk (positions do not change between passes). A prompt change keeps the cache
and changes only the text (the release has no prompt switch). On the ring buffer (``ring.py``, the
default storage) the evicted frames' keys are un-rotated from bf16 storage before the update (one
rounding of 2^-9 more than the release's unrotated copy) and the sink keeps its own raw tensors;
the update itself, in fp32 and stored back in the cache dtype, is the release's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ema import ema_
from .plan import BY_SLOT, EMA_SINK, CacheGeometry, ChunkPlan, Clock, Slot
from .policy import CachePolicy, FrameReader, LayerKV, slot_order_frames
from .window import windowed_plan


@dataclass(frozen=True)
class EMASinkConfig:
    window: int = 9  # frames attended, sink and current chunk included
    sink: int = 3
    alpha: float = 0.999  # weight of the sink itself in each update (compression_alpha)

    def __post_init__(self) -> None:
        if self.sink < 1:
            raise ValueError(f"ema_sink: sink must be >= 1 frame, got {self.sink}")
        if self.window <= self.sink:
            raise ValueError(f"ema_sink: window ({self.window}) must exceed sink ({self.sink})")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"ema_sink: alpha must be in [0, 1], got {self.alpha}")


class EMASink(CachePolicy):
    name = "ema_sink"
    paper = "Reward Forcing's EMA-Sink, training-free (Lu et al., arXiv 2512.04678)"
    source = ("wangbei1/rlbaseline@48bbb96 Reward-Forcing-main/wan/modules/causal_model.py (a copy of the "
              "release), Reward-Forcing-main/configs/reward_forcing.yaml")
    rotate_at_read = True
    positions = BY_SLOT

    def __init__(self, config: EMASinkConfig | None = None):
        super().__init__(config or EMASinkConfig())

    def check_geometry(self, geo: CacheGeometry) -> None:
        c, f = self.config, geo.chunk_frames
        if c.sink != f or c.window % f:
            raise ValueError(f"ema_sink: the sink ({c.sink}) must be one chunk ({f} frames) and the window "
                             f"({c.window}) whole chunks, so that each eviction is averaged into the sink token "
                             "by token")

    def capacity_frames(self, chunk_frames: int) -> int | None:
        return self.config.window

    def plan(self, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
        plan = windowed_plan(self, slots, clock, n_frames, self.config.window, self.config.sink)
        if not plan.evicted:
            return plan
        s = self.config.sink  # the sink slots are rewritten by the policy: averages, not frames
        return ChunkPlan(chunk_index=plan.chunk_index, first_frame=plan.first_frame, n_frames=n_frames,
                         past=(Slot(EMA_SINK),) * s + plan.past[s:], sources=(None,) * s + plan.sources[s:],
                         past_pos=plan.past_pos, query_pos=plan.query_pos, evicted=plan.evicted)

    # ----------------------------------------------------------------- tensor work (once per chunk)
    # The sink's raw keys and values are kept in ``sink_k`` / ``sink_v`` ([B, sink tokens, H, D], the
    # cache's dtype, as released): slot order copies them into its unrotated slots, the ring rotates
    # them into its sink slots (``memory_value``); either way each update rounds once, as released.
    def allocate_extra(self, geo: CacheGeometry) -> dict[str, torch.Tensor]:
        shape = (geo.batch, self.config.sink * geo.frame_tokens, geo.heads, geo.head_dim)
        return {f"sink_{part}": torch.zeros(shape, dtype=geo.dtype, device=geo.device) for part in ("k", "v")}

    @property
    def ring_storage(self) -> bool:
        return True

    @property
    def ring_fold(self) -> str:
        return "frames"

    def first_eviction(self, plan: ChunkPlan) -> bool:
        """The sink still holds the first frames: chunks are whole and start at frame 0 (checked), so
        the first chunk that evicts starts at frame ``window``."""
        return plan.first_frame == self.config.window

    def _update(self, layer: LayerKV, sink: tuple[torch.Tensor, torch.Tensor] | None,
                evicted: tuple[torch.Tensor, torch.Tensor]) -> None:
        """alpha sink + (1 - alpha) evicted, token by token, in fp32, stored back in the cache dtype;
        ``sink`` (the first frames' raw keys and values) starts the accumulators at the first eviction."""
        for part, start, new in zip(("k", "v"), sink or (None, None), evicted, strict=True):
            acc = layer.extra[f"sink_{part}"]  # [B, sink tokens, H, D]
            if start is not None:
                acc.copy_(start.reshape(acc.shape))
            value = acc.float()
            ema_(value, new.reshape(acc.shape).float(), 1.0 - self.config.alpha)
            acc.copy_(value)

    def before_compaction(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry) -> None:
        self.fold_frames(layer, plan, slot_order_frames(layer, geo.frame_tokens))

    def after_compaction(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry) -> None:
        if not plan.evicted:
            return
        s = self.config.sink * geo.frame_tokens
        layer.k_raw[:, :s] = layer.extra["sink_k"]  # unrotated keys, values: [B, T, H, D]
        layer.v[:, :s] = layer.extra["sink_v"]

    def fold_frames(self, layer: LayerKV, plan: ChunkPlan, frames: FrameReader) -> None:
        if not plan.evicted:  # one chunk evicted: as many tokens as the sink
            return
        sink = frames(range(self.config.sink)) if self.first_eviction(plan) else None
        self._update(layer, sink, frames(plan.evicted))

    def memory_value(self, layer: LayerKV, kind: str, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        ft = layer.extra["sink_k"].shape[1] // self.config.sink
        span = slice(index * ft, (index + 1) * ft)  # sink frame ``index``: [B, ft, H, D]
        return layer.extra["sink_k"][:, span], layer.extra["sink_v"][:, span]

    def rebuild_extra(self, key: str, saved: dict[str, torch.Tensor], slots: tuple[Slot, ...],
                      geo: CacheGeometry) -> torch.Tensor | None:
        """States saved before the sink had its own tensors kept it in the slot-order cache's first
        slots (unrotated keys, values); before the first eviction it is not used yet."""
        s = self.config.sink * geo.frame_tokens
        part = {"sink_k": "k_raw", "sink_v": "v"}.get(key)
        if part is None or part not in saved:
            return None
        if slots and slots[0].kind == EMA_SINK:
            return saved[part][:, :s].clone()
        return torch.zeros_like(saved[part][:, :s])
