"""The streaming API: a live stream of decoded chunks, without a fixed length, steered while it runs.

A :class:`LiveStream` wraps a :class:`~memrope.generate.StreamingGenerator` and yields its chunks
(:class:`~memrope.generate.ChunkResult`: clean latents, uint8 frames, statistics) one at a time, for
as long as the caller keeps asking. While it runs, from any thread:

- :meth:`LiveStream.set_prompt` changes the prompt (``cut=True``: a hard scene cut). The change is
  applied at the next chunk boundary with the policy's own switch semantics
  (``StreamingGenerator.switch_prompt``: recache, flush, RoPE cut, keep). Changes that arrive between
  two boundaries coalesce: the last prompt wins, and it is a cut if any of them was. With the
  overlapped decode the generator is one chunk ahead of the caller, so a change made while the
  caller holds chunk k reaches chunk k + 2 (k + 1 is already generated); without it, chunk k + 1.
- :meth:`LiveStream.stop` ends the stream at the next boundary: the chunk pending decode, if any,
  is still yielded, then the iteration ends. Pausing is the caller not asking for the next chunk.

A stream may begin with *context* chunks: clean latents of an image or a video
(:mod:`memrope.context`) committed into the cache instead of generated, so that what follows
continues them. Prompt segments (:class:`PromptSpan`) say which prompt held from which chunk: the
history of a live stream, or the schedule of ``memrope generate`` (which is a client of this class:
:mod:`memrope.run`). :meth:`LiveStream.state_dict` is the generator's state plus that history,
taken between chunks; :meth:`LiveStream.resume` continues it exactly.

Policies whose temporal positions grow with the stream (full, sliding window, attention sink: absolute
positions) leave the model's RoPE table at some chunk; :func:`position_limit` finds it by walking the
plans (pure Python) and the stream ends there instead of failing mid-chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .cache.plan import Clock, after_chunk
from .cache.policy import CachePolicy
from .generate import ChunkOrder, ChunkResult, StreamingGenerator
from .models.wan import TextContext
from .rope import Rope3D


@dataclass(frozen=True)
class PromptSpan:
    """``prompt`` holds from chunk ``start`` on (``cut``: a hard scene cut at its start)."""

    start: int
    prompt: str
    cut: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.start, int) or self.start < 0:
            raise ValueError(f"a segment starts at a chunk index >= 0, got {self.start!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("a segment needs a non-empty prompt")
        if self.start == 0 and self.cut:
            raise ValueError("the first segment cannot start with a cut")


def check_spans(segments: list[PromptSpan]) -> None:
    if not segments or segments[0].start != 0:
        raise ValueError("a stream's segments begin at chunk 0")
    if any(b.start <= a.start for a, b in zip(segments, segments[1:])):
        raise ValueError("a stream's segments must start at increasing chunks")


def position_limit(policy: CachePolicy, rope: Rope3D, chunk_frames: int) -> int | None:
    """The number of chunks after which ``policy`` would ask for a temporal position outside the RoPE
    table, or ``None`` when its positions stay inside forever.

    Positions grow by at most ``chunk_frames`` per chunk, so a policy that is still inside after
    ``max_positions / chunk_frames + 1`` chunks has stopped growing or grows by slot (bounded)."""
    slots, clock = (), Clock()
    for k in range(rope.max_positions // chunk_frames + 2):
        plan = policy.plan(slots, clock, chunk_frames)
        if plan.max_frame_pos >= rope.max_positions:
            return k
        slots, clock = after_chunk(plan, clock)
    return None


@dataclass(frozen=True)
class _Change:
    prompt: str
    text: TextContext
    cut: bool


class LiveStream:
    """Chunks of one stream, yielded as they are made; see the module docstring.

    ``encode(prompt)`` gives a prompt's text context (and raises ``ValueError`` for a prompt the model
    cannot take); ``segments`` the prompts known in advance (the first at chunk 0; the generator's
    text is the first's unless ``texts`` says otherwise); ``context[k]`` clean latents committed as
    chunk k; ``until`` the number of chunks after which the stream ends (``None``: it never does, up
    to the policy's :func:`position_limit`).
    """

    def __init__(self, generator: StreamingGenerator, encode: Callable[[str], TextContext],
                 segments: list[PromptSpan], *, texts: dict[int, TextContext] | None = None,
                 context: dict[int, torch.Tensor] | None = None, until: int | None = None,
                 overlap_decode: bool = True):
        check_spans(segments)
        self.generator = generator
        self.encode = encode
        self.segments = list(segments)
        self._texts = dict(texts or {})
        self.context = dict(context or {})
        for latents in self.context.values():
            generator.check_context(latents)
        self.until = until
        self.limit = position_limit(generator.cache.policy, generator.model.rope, generator.config.chunk_frames)
        self.overlap_decode = overlap_decode
        self._lock = threading.Lock()
        self._change: _Change | None = None
        self._stop = False
        self.stopped_by: str | None = None  # why the stream ended: "stop", "length", "positions"

    # ------------------------------------------------------------------ steering (any thread)
    def set_prompt(self, prompt: str, cut: bool = False) -> None:
        """Change the prompt at the next chunk boundary; ``ValueError`` for a prompt the model refuses."""
        text = self.encode(prompt)  # here, in the caller's thread: a bad prompt is the caller's error
        with self._lock:
            cut = cut or (self._change is not None and self._change.cut)
            self._change = _Change(prompt, text, cut)

    def stop(self) -> None:
        """End the stream at the next chunk boundary (a chunk pending decode is still yielded)."""
        with self._lock:
            self._stop = True

    # ------------------------------------------------------------------ reading
    @property
    def chunks_made(self) -> int:
        """Chunks generated so far (one more than yielded while one awaits decoding)."""
        return self.generator.cache.clock.chunks

    @property
    def prompt(self) -> str:
        """The prompt of the last chunk generated (or of the first chunk, before any)."""
        made = self.chunks_made
        return next(s.prompt for s in reversed(self.segments) if s.start < max(made, 1))

    def segment_index(self, chunk: int) -> int:
        return max(i for i, s in enumerate(self.segments) if s.start <= chunk)

    def text(self, index: int) -> TextContext:
        """The text context of segment ``index`` (encoded once)."""
        start = self.segments[index].start
        if start not in self._texts:
            self._texts[start] = self.encode(self.segments[index].prompt)
        return self._texts[start]

    def _order(self, k: int) -> ChunkOrder | None:
        with self._lock:
            change, self._change = self._change, None
            stop = self._stop
        if stop:
            self.stopped_by = "stop"
            return None
        if self.until is not None and k >= self.until:
            self.stopped_by = "length"
            return None
        if self.limit is not None and k >= self.limit:
            self.stopped_by = "positions"
            return None
        if change is not None and k > 0:
            self.segments = [s for s in self.segments if s.start < k] + [PromptSpan(k, change.prompt, change.cut)] + \
                [s for s in self.segments if s.start > k]
            self._texts[k] = change.text
        elif change is not None:  # before the first chunk: the first prompt itself
            self.segments[0] = PromptSpan(0, change.prompt)
            self._texts[0] = change.text
            self.generator.text = change.text
        index = self.segment_index(k)
        starts_here = self.segments[index].start == k and k > 0
        switch = (self.text(index), self.segments[index].cut) if starts_here else None
        return ChunkOrder(switch=switch, context=self.context.get(k), prompt_index=index)

    def __iter__(self) -> Iterator[ChunkResult]:
        return self.generator.chunks(self._order, self.overlap_decode)

    # ------------------------------------------------------------------ saving
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The generator's state and the prompt history, taken between chunks (see ``chunks``)."""
        tensors, data = self.generator.state_dict()
        data["stream"] = {"segments": [asdict(s) for s in self.segments]}
        return tensors, data

    @classmethod
    def resume(cls, generator: StreamingGenerator, encode: Callable[[str], TextContext],
               tensors: dict[str, torch.Tensor], data: dict[str, Any], **options) -> LiveStream:
        """A stream continuing the one whose ``state_dict`` gave ``tensors`` and ``data``."""
        generator.load_state_dict(tensors, data)
        segments = [PromptSpan(**s) for s in data["stream"]["segments"]]
        stream = cls(generator, encode, segments, **options)
        stream.align_text()
        return stream

    def align_text(self) -> None:
        """Give the generator the text of the last chunk it generated (after loading a saved state)."""
        made = self.chunks_made
        if made:
            self.generator.text = self.text(self.segment_index(made - 1))
