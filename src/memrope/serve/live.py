"""One live stream of ``memrope serve``: a generation thread, its run directory, and its viewers.

The stream's chunks come from a :class:`~memrope.stream.LiveStream` on a thread of its own (PyTorch
releases the interpreter while it computes), so the web server's event loop never waits for the
model. Each chunk is written to the stream's run directory exactly as ``memrope generate`` writes one
(segments, the append-only chunk log, a checkpoint every ``checkpoint_every`` chunks, through
:class:`memrope.run.SessionSink`), encoded as one self-contained MP4 (:mod:`memrope.serve.fmp4`) and
handed to every viewer.

The run directory's manifest holds generate's settings with the prompt history as a schedule (each
prompt's seconds are whole chunks, so the schedule gives back the chunks at which the prompts
changed) and the length made so far; a stopped stream is a complete run of that length, which
``memrope generate --resume DIR --duration S`` extends, frame for frame as if it had gone on.

Drop policy (a slow or vanished viewer never stalls generation or grows memory): the thread hands
each chunk to the event loop and goes on; each viewer has a queue of at most
``Limits.queue_chunks`` chunks, and when a new chunk finds it full the *oldest* waiting chunk is
dropped (counted, and reported to that viewer). A viewer that takes longer than
``Limits.send_timeout_s`` to accept one message is disconnected. Status messages (paused, errors,
the end) are never dropped; there are a handful per stream and prompt change, the count of dropped
chunks waits as one message, and a viewer with more than ``STATUS_QUEUE`` of them waiting is
disconnected.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import struct
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..chunk_log import RunSummary
from ..errors import RunFailure, UserError
from ..generate_options import DEFAULT_CRF, settings_hash
from ..run import WARMUP_CHUNKS, SessionSink, load_init, prepare
from ..schedule import schedule_from_data
from ..session import RunDirectory, SessionError
from .fmp4 import ChunkEncoder
from .protocol import STREAM_ID_HEX, Limits

LEAD_S = 0.5
"""Real-time pacing keeps generation this far ahead of playback: the browser's buffer."""
FPS_WINDOW = 16  # chunks over which the live frame rate is measured
HEADER = struct.Struct(">I")  # a chunk message: header length, JSON header, MP4 bytes
STATUS_QUEUE = 64  # status messages waiting for one viewer (a handful per stream and prompt change)
RESUMED_VIDEO = "video"  # the assembled video inside a stream's run directory (as generate --resume names it)


class Viewer:
    """One WebSocket watching one stream: a bounded queue and the task that sends it."""

    def __init__(self, ws: Any, limits: Limits):
        self.ws, self.limits = ws, limits
        self.items: collections.deque[tuple[str, Any]] = collections.deque()
        self.ready = asyncio.Event()
        self.dropped = 0
        self.closed = False
        self.task: asyncio.Task | None = None

    def offer(self, kind: str, payload: Any) -> None:
        """Queue a message (on the event loop); a chunk finding the queue full drops the oldest chunk.
        The count of drops waits as one status message (updated, never repeated); a viewer with more
        than ``STATUS_QUEUE`` status messages waiting is disconnected (it reads nothing)."""
        if self.closed:
            return
        if kind == "chunk" and sum(1 for k, _ in self.items if k == "chunk") >= self.limits.queue_chunks:
            oldest = next(i for i, (k, _) in enumerate(self.items) if k == "chunk")
            del self.items[oldest]
            self.dropped += 1
            waiting = next((i for i, (k, p) in enumerate(self.items) if k == "status" and p["type"] == "dropped"),
                           None)
            if waiting is not None:
                del self.items[waiting]
            self.items.append(("status", {"type": "dropped", "dropped": self.dropped}))
        elif kind == "status" and sum(1 for k, _ in self.items if k == "status") >= STATUS_QUEUE:
            self.closed = True  # the sender task sees it and closes the socket
            self.items.clear()
            self.ready.set()
            return
        self.items.append((kind, payload))
        self.ready.set()

    async def run(self) -> None:
        try:
            while not self.closed:
                await self.ready.wait()
                self.ready.clear()
                while self.items and not self.closed:
                    kind, payload = self.items.popleft()
                    send = self.ws.send_bytes(payload) if kind == "chunk" else self.ws.send_str(json.dumps(payload))
                    await asyncio.wait_for(send, self.limits.send_timeout_s)
        except (TimeoutError, asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        await self.close()

    async def close(self) -> None:
        self.closed = True
        self.items.clear()
        if not self.ws.closed:
            await self.ws.close()


def new_stream_id() -> str:
    return secrets.token_hex(STREAM_ID_HEX // 2)


def span_schedule(spans: list, seconds_per_chunk: float) -> list[dict[str, Any]]:
    """A stream's prompt history as generate's schedule: each span's seconds are its whole chunks."""
    out = []
    for span, after in zip(spans, spans[1:] + [None]):
        seconds = None if after is None else (after.start - span.start) * seconds_per_chunk
        out.append({"prompt": span.prompt, "seconds": seconds, "cut": span.cut})
    starts = schedule_from_data(out).start_chunks(seconds_per_chunk)
    if starts != [s.start for s in spans]:  # never expected: seconds are exact multiples of a chunk
        raise RunFailure(f"the prompt history does not round-trip through a schedule ({starts})")
    return out


class LiveSession:
    """A stream being made: its thread, run directory, state and viewers (see the module docstring)."""

    def __init__(self, stream_id: str, settings: dict[str, Any], run_dir: Path, loop: asyncio.AbstractEventLoop,
                 limits: Limits, pace: str, upload: tuple[str, bytes] | None = None, init_chunks: int = 4):
        self.id, self.settings, self.run_dir, self.loop = stream_id, settings, run_dir, loop
        self.limits, self.pace, self.upload, self.init_chunks = limits, pace, upload, init_chunks
        self.viewers: set[Viewer] = set()
        self.dropped = 0  # chunks dropped for slow viewers, over the stream's life
        self.state = "starting"
        self.reason: str | None = None
        self.stream = None  # memrope.stream.LiveStream, once the model is loaded
        self.policy = settings["policy"]
        self.chunks = 0
        self._resume = threading.Event()
        self._resume.set()
        self._wake = threading.Event()  # interrupts pacing waits (pause, stop)
        self._stop = False
        self.thread = threading.Thread(target=self._work, name=f"memrope-stream-{stream_id}", daemon=True)

    # ------------------------------------------------------------------ control (event loop)
    def start(self) -> None:
        self.thread.start()

    def set_prompt(self, prompt: str, cut: bool) -> None:
        if self.stream is None or self.state not in ("running", "paused"):
            raise UserError(f"stream {self.id} is {self.state}: it takes no prompt now")
        try:
            self.stream.set_prompt(prompt, cut)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.publish_status({"type": "prompt_queued", "prompt": prompt, "cut": cut})

    def pause(self) -> None:
        if self.state == "running":
            self._resume.clear()
            self._wake.set()
            self._set_state("paused")

    def resume(self) -> None:
        if self.state == "paused":
            self._set_state("running")
            self._resume.set()

    def stop(self) -> None:
        self._stop = True
        if self.stream is not None:
            self.stream.stop()
        self._wake.set()
        self._resume.set()

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running", "paused", "stopping")

    def info(self) -> dict[str, Any]:
        return {"stream": self.id, "state": self.state, "policy": self.policy, "chunks": self.chunks,
                "viewers": len(self.viewers), "pace": self.pace, "prompt": self.stream.prompt if self.stream else
                self.settings["schedule"][0]["prompt"], "run": self.run_dir.name, "reason": self.reason,
                "dropped": self.dropped + sum(v.dropped for v in self.viewers)}

    # ------------------------------------------------------------------ viewers
    def add_viewer(self, viewer: Viewer) -> None:
        if len(self.viewers) >= self.limits.viewers:
            raise UserError(f"stream {self.id} has {len(self.viewers)} viewers, the most it takes")
        self.viewers.add(viewer)
        viewer.offer("status", {"type": "watching", **self.info()})

    def remove_viewer(self, viewer: Viewer) -> None:
        if viewer in self.viewers:
            self.viewers.discard(viewer)
            self.dropped += viewer.dropped

    def _on_loop(self, kind: str, payload: Any) -> None:
        for viewer in list(self.viewers):
            if viewer.closed:
                self.remove_viewer(viewer)
            else:
                viewer.offer(kind, payload)

    def publish(self, kind: str, payload: Any) -> None:
        """Hand a message to every viewer, from any thread, without waiting for any of them."""
        try:
            self.loop.call_soon_threadsafe(self._on_loop, kind, payload)
        except RuntimeError:  # the loop is closed: the server is going down
            pass

    def publish_status(self, message: dict[str, Any]) -> None:
        self.publish("status", {**message, "stream": self.id})

    def _set_state(self, state: str, reason: str | None = None) -> None:
        self.state, self.reason = state, reason
        self.publish_status({"type": "state", "state": state, "reason": reason, "run": self.run_dir.name})

    # ------------------------------------------------------------------ the generation thread
    def _open(self):
        """Model, stream, run directory: every check before the first write, as generate does."""
        settings = self.settings
        self.run_dir.mkdir(parents=True, exist_ok=False)
        if self.upload is not None:
            suffix, data = self.upload
            path = self.run_dir / f"init{suffix}"  # the server's own name; the client gave only the suffix
            path.write_bytes(data)
            settings["init"] = {"path": str(path.resolve()), "max_chunks": self.init_chunks}
            settings["latent_frames"] = (self.init_chunks + 1) * settings["chunk_frames"]  # room for the context
        prepared = prepare(settings)
        context = load_init(settings, prepared, 0)
        from ..stream import LiveStream

        texts = {0: prepared.texts[0]}
        self.stream = LiveStream(prepared.generator, prepared.encode_prompt, prepared.spans(), texts=texts,
                                 context=context, overlap_decode=settings.get("overlap_decode", True))
        run = RunDirectory(self.run_dir)
        try:
            manifest, *logs = run.create(settings, settings_hash(settings, length=False))
        except SessionError as e:
            raise UserError(str(e)) from None
        summary = RunSummary(WARMUP_CHUNKS)
        out = run.file(RESUMED_VIDEO + ".mp4")
        sink = SessionSink(run, manifest, logs, prepared.generator, out, settings, summary)
        return prepared, sink, summary

    def _record(self, sink: SessionSink, prepared) -> None:
        """The manifest's settings: the prompt history as a schedule and the length made so far."""
        gen = prepared.generator
        chunk, stride = self.settings["chunk_frames"], prepared.bundle.decoder.temporal_stride
        settings = dict(sink.manifest.settings)
        settings["schedule"] = span_schedule(self.stream.segments, chunk * stride / self.settings["fps"])
        settings["latent_frames"], settings["duration"] = gen.cache.clock.chunks * chunk, None
        sink.manifest.settings = settings
        sink.manifest.settings_hash = settings_hash(settings, length=False)

    def _work(self) -> None:
        try:
            self._generate()
        except (UserError, RunFailure) as e:
            self._set_state("failed", self._for_client(str(e)))
        except OSError as e:
            self._set_state("failed", f"writing the run directory failed ({e.strerror})")
        except Exception as e:  # a bug: keep the server up, say what happened
            self._set_state("failed", self._for_client(f"{type(e).__name__}: {e}"))

    def _for_client(self, message: str) -> str:
        """A message with the server's folders left out (the run directory is named by its id)."""
        return message.replace(str(self.run_dir.resolve()), self.id).replace(str(self.run_dir), self.id)

    def _generate(self) -> None:
        if self._stop:
            self._set_state("stopped", "stopped before it began")
            return
        prepared, sink, summary = self._open()  # outside inference mode, as generate loads its model
        with torch.inference_mode():
            self._loop(prepared, sink, summary)

    def _loop(self, prepared, sink: SessionSink, summary: RunSummary) -> None:
        fps = self.settings["fps"]
        encoder = ChunkEncoder(fps, self.settings["video"].get("crf", DEFAULT_CRF))  # viewers get H.264
        self._set_state("running" if self._resume.is_set() else "paused")
        if self._stop:
            self.stream.stop()
        recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=FPS_WINDOW)
        frames_out, t0 = 0, time.perf_counter()
        for result in self.stream:
            if not torch.isfinite(result.latents).all():  # one host sync per chunk, as in generate
                raise RunFailure(f"non-finite values in the latents of chunk {result.index}; stopped before "
                                 f"writing it, last good state kept in {self.run_dir}")
            sink.chunk(result, result.stats)
            summary.add(result.stats)
            if sink.checkpoint_due(result.index + 1):
                self._record(sink, prepared)
                sink.checkpoint()
            frames = result.frames[0].numpy()
            recent.append((time.perf_counter(), len(frames)))
            self.chunks = result.index + 1
            self.publish("chunk", self._message(result, encoder.encode(frames), encoder.codec, recent, frames_out))
            frames_out += len(frames)
            paused = not self._resume.is_set()
            self._resume.wait()
            if paused:  # playback paused too: pace from now on
                t0 = time.perf_counter() - frames_out / fps
            if self.pace == "realtime" and not self._stop:
                self._wake.clear()
                self._wake.wait(max(0.0, t0 + frames_out / fps - LEAD_S - time.perf_counter()))
                if not self._resume.is_set():
                    self._resume.wait()
                    t0 = time.perf_counter() - frames_out / fps
        self._set_state("stopping", self.stream.stopped_by)
        if self.chunks == 0:  # stopped before its first chunk: no video to assemble, nothing to resume
            for log in sink.logs:
                log.close()
            self._set_state("stopped", "stopped before its first chunk")
            return
        self._record(sink, prepared)
        sink.finish(complete=True)
        self._set_state("stopped", self.stream.stopped_by)

    def _prompt_of(self, stats: dict[str, Any]) -> str:
        """The prompt of the chunk yielded (the stream's own ``prompt`` may be a chunk ahead: the pending one)."""
        index = stats.get("prompt_index")
        return self.stream.prompt if index is None else self.stream.segments[index].prompt

    def _message(self, result, mp4: bytes, codec: str, recent, frames_before: int) -> bytes:
        stats = result.stats
        gen = self.stream.generator
        span = (recent[-1][0] - recent[0][0]) if len(recent) > 1 else 0.0
        fps = sum(n for _, n in list(recent)[1:]) / span if span > 0 else None
        policy = gen.cache.policy
        plan = policy.plan(gen.cache.slots, gen.cache.clock, gen.config.chunk_frames)  # pure: what comes next
        header = {
            "type": "chunk", "stream": self.id, "index": result.index, "frames": int(result.frames.shape[1]),
            "time_s": frames_before / self.settings["fps"], "codec": codec, "t_ready": time.time(),
            "ms": stats["ms"], "decode_ms": stats.get("decode_ms"), "fps": None if fps is None else round(fps, 2),
            "target_fps": self.settings["fps"], "policy": self.policy, "prompt": self._prompt_of(stats),
            "prompt_index": stats.get("prompt_index"), "switch": stats.get("switch"), "context": stats.get("context",
                                                                                                        False),
            "cache_frames": stats["cache_frames"], "cache_bytes": stats["cache_bytes"],
            "max_frame_pos": stats["max_frame_pos"], "query_pos": stats["query_pos"],
            "next_slots": [{"slot": s.label(), "pos": p} for s, p in zip(plan.past, plan.past_pos)],
            "next_query_pos": list(plan.query_pos), "state": self.state, "viewers": len(self.viewers),
        }
        head = json.dumps(header, separators=(",", ":"), default=str).encode("utf-8")
        return HEADER.pack(len(head)) + head + mp4
