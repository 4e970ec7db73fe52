"""One stream's cache over two (or more) devices: each holds the layers of the blocks it runs.

``--split-blocks cuda:0,cuda:1`` puts the transformer's first half on one GPU and the second on
another (the MemRoPE reference's 2 x 24 GB mode, ``YoungRaeKimm/MemRoPE@b89bf5b inference_2gpu.py``:
blocks 0-14 and the embeddings on GPU 0, blocks 15-29 and the head on GPU 1). A layer's keys and
values must live where its block runs, so the cache is one ordinary cache per device (slot order
or ring, as ``make_cache`` picks), each for its own layers. Plans are pure functions of the slot
table and the clock, so every part plans the same chunk identically (checked); the device work of
each part is enqueued on its own device, in stream order after the passes that read it, so no part
waits for another. State dicts use the global layer indices: a split run resumes unsplit and back.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from ..rope import Rope3D, RopeFreqs
from .base import KVCache
from .plan import CacheGeometry, ChunkPlan, Slot, SwitchPlan
from .policy import CachePolicy


@dataclasses.dataclass(frozen=True)
class Stage:
    """Layers ``[first, last)`` run on ``device``."""

    first: int
    last: int
    device: torch.device


class SplitKVCache:
    """The ``KVCache`` protocol over per-device parts; ``parts()`` hands the model each part with the
    index of its first layer (the model runs a part's blocks against it, with local layer indices)."""

    def __init__(self, policy: CachePolicy, geometry: CacheGeometry, rope: Rope3D, stages: list[Stage],
                 make_part: Any):
        if [s.first for s in stages[1:]] != [s.last for s in stages[:-1]] or stages[0].first != 0 \
                or stages[-1].last != geometry.num_layers:
            raise ValueError(f"stages {stages} do not cover layers 0..{geometry.num_layers - 1} in order")
        self.policy = policy
        self.geometry = geometry
        self.stages = stages
        self._parts: list[KVCache] = []
        for s in stages:
            part_rope = rope if torch.device(s.device) == rope.cos_t.device else copy.deepcopy(rope).to(s.device)
            geo = dataclasses.replace(geometry, num_layers=s.last - s.first, device=s.device)
            self._parts.append(make_part(policy, geo, part_rope))
        self.rope = rope
        self.bounded = self._parts[0].bounded

    def parts(self) -> list[tuple[int, KVCache]]:
        return [(s.first, p) for s, p in zip(self.stages, self._parts, strict=True)]

    # ----------------------------------------------------------------- what the generator reads
    @property
    def plan(self) -> ChunkPlan | None:
        return self._parts[0].plan

    @property
    def slots(self) -> tuple[Slot, ...]:
        return self._parts[0].slots

    @property
    def clock(self):
        return self._parts[0].clock

    @property
    def query_freqs(self) -> RopeFreqs | None:
        return self._parts[0].query_freqs

    @property
    def static_writes(self) -> bool:
        return False

    @static_writes.setter
    def static_writes(self, value: bool) -> None:
        """Passes over split blocks are never captured (``pass_signature`` is None): nothing to set."""

    # ----------------------------------------------------------------- the protocol, on every part
    def _same(self, results: list) -> Any:
        if any(r != results[0] for r in results[1:]):
            raise RuntimeError(f"the cache parts planned differently: {results}")  # a bookkeeping bug
        return results[0]

    def begin_chunk(self, n_frames: int) -> ChunkPlan:
        return self._same([p.begin_chunk(n_frames) for p in self._parts])

    def begin_replay(self, frame_indices: tuple[int, ...]) -> ChunkPlan:
        return self._same([p.begin_replay(frame_indices) for p in self._parts])

    def end_chunk(self) -> ChunkPlan:
        return self._same([p.end_chunk() for p in self._parts])

    def switch(self, cut: bool = False) -> SwitchPlan:
        return self._same([p.switch(cut=cut) for p in self._parts])

    def update(self, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        stage = next(i for i, s in enumerate(self.stages) if s.first <= layer_idx < s.last)
        return self._parts[stage].update(layer_idx - self.stages[stage].first, *args, **kwargs)

    def full(self) -> bool:
        return self._parts[0].full()

    def pass_signature(self) -> None:
        """Never captured: a pass crosses devices."""
        return None

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self._parts)

    # ----------------------------------------------------------------- save / resume (global layer indices)
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        datas = []
        for s, part in zip(self.stages, self._parts, strict=True):
            t, data = part.state_dict()
            for key, value in t.items():
                layer, _, rest = key.partition(".")
                tensors[f"{int(layer) + s.first}.{rest}"] = value
            datas.append(data)
        return tensors, self._same(datas)

    def load_state_dict(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        for s, part in zip(self.stages, self._parts, strict=True):
            mine = {}
            for key, value in tensors.items():
                layer, _, rest = key.partition(".")
                if s.first <= int(layer) < s.last:
                    mine[f"{int(layer) - s.first}.{rest}"] = value
            part.load_state_dict(mine, data)
