"""CUDA-graph replay of whole transformer passes once the cache is full, with an eager fallback.

A pass of the fused path is some 25 kernels per block (750 for Wan-1.3B), launched from Python one
by one. In the steady state of a bounded policy every pass of a chunk has the same shapes and
touches the same memory, so a pass can be captured once as a CUDA graph and replayed: one launch,
no Python. What a captured pass depends on, and how it stays valid:

- the latents: copied into the graph's static input before each replay;
- the time conditioning: memoised per timestep by the generator (fixed tensors), part of the key;
- the text: part of the key (a new prompt drops every graph);
- the cache: its tensors never move (allocated once), but *where* the chunk's keys go does (the
  slot-order cache writes after ``n_past`` slots; the ring cache into the physical slots the
  evicted frames freed, which cycle through a few layouts): the cache's ``pass_signature`` is part
  of the key, and is ``None`` whenever a pass is not safe to capture (cache filling, deferred
  compaction, replays after a prompt switch, policies with per-commit hooks);
- the query positions: copied into static RoPE tables before each replay (absolute-position
  policies see new positions every chunk, on the same layout);
- the Python side effects of a pass (the cache's commit bookkeeping) are redone by the cache's
  ``replayed`` after each replay.

A key's first pass runs eagerly (the warm-up capture needs; its result is used), its second is
captured and replayed, later ones only replayed. Capture failures (an operation that cannot be
captured, no CUDA device) are recorded per key and that key runs eagerly from then on; nothing
else changes. Graphs share one memory pool: they run one after the other on one stream and each
keeps its static output alive, so one graph's intermediates may reuse another's freed ones.
The replay is tested on the CPU with a backend that records the ATen operations of the pass and
re-executes them on the same tensors (``tests/models/test_graphs.py``); the CUDA backend itself
runs only on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..rope import RopeFreqs

MAX_GRAPHS = 64  # captured passes kept (5 per chunk layout; a steady state cycles through a few layouts)


class GraphBackend(Protocol):
    def warm(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` eagerly as a capture warm-up (its result is the pass's result)."""
        ...

    def capture(self, fn: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        """Record ``fn``; returns its outputs (filled by each replay) and the replay function."""
        ...


class CudaGraphBackend:
    """``torch.cuda.CUDAGraph`` capture on one device, warm-ups on a side stream (as capture wants)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.side = torch.cuda.Stream(device)

    def warm(self, fn: Callable[[], Any]) -> Any:
        main = torch.cuda.current_stream(self.device)
        self.side.wait_stream(main)
        with torch.cuda.stream(self.side):
            out = fn()
        main.wait_stream(self.side)
        return out

    def capture(self, fn: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device), torch.cuda.graph(graph, pool=self.pool):
            out = fn()
        return out, graph.replay


@dataclass
class Captured:
    x: torch.Tensor  # static input
    out: torch.Tensor  # static output (overwritten by every replay)
    freqs: RopeFreqs  # static query RoPE tables
    replay: Callable[[], None]


@dataclass
class PassGraphs:
    """The generator's captured passes; ``backend`` None: graphs off (``reason`` says why)."""

    backend: GraphBackend | None
    reason: str | None = None
    graphs: dict[Hashable, Captured] = field(default_factory=dict)
    warmed: set = field(default_factory=set)
    failed: dict[Hashable, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"eager": 0, "warm": 0, "captured": 0, "replayed": 0})
    _text: Any = None

    @classmethod
    def for_device(cls, device: torch.device, enabled: bool) -> PassGraphs:
        if not enabled:
            return cls(None, "not requested")
        if device.type != "cuda":
            return cls(None, f"CUDA graphs need a CUDA device; the model is on {device}: passes run eagerly")
        return cls(CudaGraphBackend(device))

    def clear(self) -> None:
        self.graphs.clear()
        self.warmed.clear()

    def run(self, key: Hashable | None, x: torch.Tensor, cache: Any, commit: bool, text: Any,
            fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """One pass ``fn(x)``: replayed when ``key`` has a graph, else eager (or warmed / captured)."""
        if text is not self._text:  # a new prompt: the graphs read the old text's keys and values
            self.clear()
            self._text = text
        if self.backend is None or key is None or key in self.failed:
            self.counts["eager"] += 1
            return fn(x)
        g = self.graphs.get(key)
        if g is not None:
            g.x.copy_(x)
            _copy_freqs(g.freqs, cache.query_freqs)
            g.replay()
            cache.replayed(commit)
            self.counts["replayed"] += 1
            return g.out
        if key not in self.warmed or len(self.graphs) >= MAX_GRAPHS:
            self.warmed.add(key)
            self.counts["warm"] += 1
            return self.backend.warm(lambda: fn(x))
        return self._capture(key, x, cache, fn)

    def _capture(self, key: Hashable, x: torch.Tensor, cache: Any, fn: Callable[[torch.Tensor], torch.Tensor]):
        static_x = x.clone()
        real = cache.query_freqs
        static_freqs = RopeFreqs(real.cos.clone(), real.sin.clone())
        static_freqs.rotation  # noqa: B018 (materialise the memoised rotation before capture)
        saved = cache.capture_state()
        cache.query_freqs = static_freqs
        try:
            out, replay = self.backend.capture(lambda: fn(static_x))
        except Exception as err:  # noqa: BLE001 (any refusal of the capture means: run this key eagerly)
            self.failed[key] = f"{type(err).__name__}: {str(err)[:200]}"
            cache.restore_capture_state(saved)
            cache.query_freqs = real
            self.counts["eager"] += 1
            return fn(x)
        cache.query_freqs = real
        replay()  # a capture records without running: this is the pass itself
        self.graphs[key] = Captured(static_x, out, static_freqs, replay)
        self.counts["captured"] += 1
        return out

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.backend is not None, "reason": self.reason, "graphs": len(self.graphs),
                "failed": dict(list({str(k): v for k, v in self.failed.items()}.items())[:3]), **self.counts}


def _copy_freqs(static: RopeFreqs, current: RopeFreqs) -> None:
    if current is static:
        return
    static.cos.copy_(current.cos)
    static.sin.copy_(current.sin)
    static.rotation.copy_(current.rotation)
