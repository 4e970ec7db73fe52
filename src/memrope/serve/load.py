"""Load test of ``memrope serve`` on loopback: M streams, N viewers each, for a bounded time.

    python -m memrope.serve.load --streams 2 --viewers 4 --seconds 20 [--pace realtime|fast] [--slow 1]

Starts a server in this process (the embedded model, on 127.0.0.1, an ephemeral port), starts the
streams, connects the viewers, and after ``--seconds`` stops everything and prints: chunks and
frames delivered per viewer, delivery latency (from the moment a chunk is ready on the server to its
arrival at the viewer; one clock: same machine) as median / p90 / max, the generation rate, chunks
dropped for ``--slow`` viewers that read nothing, and the process's memory (RSS): before the load, at
half time, the most while it ran, and after (a flat second half is the bounded queues at work).
Every loop is bounded in count and time, and only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HEADER = struct.Struct(">I")
CONNECT_TIMEOUT_S = 10.0
RSS_EVERY_S = 0.5  # memory samples while the load runs
SLOW_RCVBUF = 4096  # bytes: a stalled viewer's receive buffer (the kernel may round it up)


class ServerThread:
    """A ``memrope serve`` app on its own event loop and thread, on 127.0.0.1 and a free port."""

    def __init__(self, server):
        from aiohttp import web

        from .app import make_app

        self.server = server
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(make_app(server), handle_signals=False)
        self.loop.run_until_complete(self.runner.setup())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        self.loop.run_until_complete(site.start())
        self.thread = threading.Thread(target=self.loop.run_forever, name="memrope-serve-test", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_chunk(data: bytes) -> tuple[dict, bytes]:
    """A chunk message -> (header, MP4 bytes)."""
    (n,) = HEADER.unpack_from(data)
    return json.loads(data[4:4 + n]), data[4 + n:]


@dataclass
class ViewerLog:
    indices: list[int] = field(default_factory=list)
    delays_ms: list[float] = field(default_factory=list)
    frames: int = 0
    errors: list[str] = field(default_factory=list)


async def watch(url: str, stream: str, until: float, log: ViewerLog) -> None:
    """One viewer: watch ``stream`` until the monotonic time ``until``."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url + "/ws", timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
            await ws.send_json({"type": "watch", "stream": stream})
            while (left := until - time.monotonic()) > 0:
                try:
                    msg = await ws.receive(timeout=left)
                except asyncio.TimeoutError:
                    break
                if msg.type == aiohttp.WSMsgType.BINARY:
                    header, _ = parse_chunk(msg.data)
                    log.indices.append(header["index"])
                    log.delays_ms.append((time.time() - header["t_ready"]) * 1e3)
                    log.frames += header["frames"]
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    m = json.loads(msg.data)
                    if m["type"] == "error":
                        log.errors.append(m["message"])
                else:
                    break


async def stalled_viewer(port: int, stream: str, until: float) -> None:
    """A viewer that asks for a stream and then never reads: a raw socket with a small receive buffer,
    so that the server's sends back up (what a frozen tab or a dead link does)."""
    import base64
    import os

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                                   f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    payload = json.dumps({"type": "watch", "stream": stream}).encode()
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    await loop.sock_sendall(sock, frame)  # (payloads under 126 bytes: the one-byte length form)
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    sock.close()


async def start_stream(url: str, prompt: str, pace: str, seed: int) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url + "/ws") as ws:
            await ws.send_json({"type": "start", "prompt": prompt, "pace": pace, "seed": seed})
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while time.monotonic() < deadline:
                msg = await ws.receive(timeout=CONNECT_TIMEOUT_S)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    m = json.loads(msg.data)
                    if m["type"] == "started":
                        return m["stream"]
                    if m["type"] == "error":
                        raise RuntimeError(m["message"])
    raise RuntimeError("the server did not start a stream in time")


async def control(url: str, messages: list[dict]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url + "/ws") as ws:
            for message in messages:
                await ws.send_json(message)
            await asyncio.sleep(0.2)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


async def run_load(url: str, port: int, streams: int, viewers: int, seconds: float, pace: str, slow: int,
                   prompt: str) -> dict:
    ids = [await start_stream(url, prompt, pace, seed) for seed in range(streams)]
    until = time.monotonic() + seconds
    logs = {sid: [ViewerLog() for _ in range(viewers)] for sid in ids}
    tasks = [watch(url, sid, until, log) for sid in ids for log in logs[sid]]
    tasks += [stalled_viewer(port, ids[0], until) for _ in range(slow)]
    await asyncio.gather(*tasks)
    await control(url, [{"type": "stop", "stream": sid} for sid in ids])
    delays = [d for sid in ids for log in logs[sid] for d in log.delays_ms]
    per_viewer = [len(log.indices) for sid in ids for log in logs[sid]]
    ordered = all(log.indices == sorted(set(log.indices)) for sid in ids for log in logs[sid])
    return {"streams": streams, "viewers_per_stream": viewers, "slow_viewers": slow, "seconds": seconds,
            "pace": pace, "ids": ids, "chunks_per_viewer_min": min(per_viewer),
            "chunks_per_viewer_max": max(per_viewer),
            "frames_per_viewer_min": min(log.frames for sid in ids for log in logs[sid]),
            "in_order": ordered, "errors": sorted({e for sid in ids for log in logs[sid] for e in log.errors}),
            "delay_ms_median": statistics.median(delays) if delays else None,
            "delay_ms_p90": statistics.quantiles(delays, n=10)[-1] if len(delays) > 1 else None,
            "delay_ms_max": max(delays) if delays else None}


def main(argv: list[str] | None = None) -> int:
    from ..errors import guarded

    p = argparse.ArgumentParser(prog="python -m memrope.serve.load", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--viewers", type=int, default=4, help="viewers per stream")
    p.add_argument("--slow", type=int, default=1, help="extra viewers of the first stream that never read")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--pace", choices=("realtime", "fast"), default="realtime")
    p.add_argument("--runs-dir", type=Path, default=None, help="where the streams' run directories go (a temp dir)")
    args = p.parse_args(argv)
    if not (1 <= args.streams <= 8 and 1 <= args.viewers <= 64 and 0 <= args.slow <= 16 and 0 < args.seconds <= 600):
        p.error("bounded load only: 1-8 streams, 1-64 viewers each, 0-16 slow viewers, at most 600 s")
    return guarded(lambda: _main(args))


def _main(args) -> int:
    import tempfile

    from .app import build_parser, server_from_args

    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="memrope-load-"))
    total = args.streams * args.viewers + args.slow + args.streams + 2  # (+1 viewer, + connections: the
    # starters and the stop message's, closing while the viewers connect)
    server, _, _ = server_from_args(build_parser().parse_args(
        ["--runs-dir", str(runs), "--max-streams", str(args.streams),
         "--max-viewers", str(args.viewers + args.slow + 1),
         "--max-connections", str(total)]))
    before = rss_mb()
    samples: list[tuple[float, float]] = []  # (seconds since the load began, RSS MB)
    done = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not done.wait(RSS_EVERY_S):
            samples.append((time.monotonic() - t0, rss_mb()))

    with ServerThread(server) as running:
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = asyncio.run(run_load(running.url, running.port, args.streams, args.viewers, args.seconds,
                                      args.pace, args.slow, server.settings["schedule"][0]["prompt"]))
        done.set()
        sampler.join()
        deadline = time.monotonic() + 60
        while server.active() and time.monotonic() < deadline:
            time.sleep(0.1)
        peak = rss_mb()
        sessions = [server.sessions[sid] for sid in result["ids"]]
        result["chunks_generated"] = [s.chunks for s in sessions]
        result["chunks_dropped_for_stalled_viewers"] = sessions[0].info()["dropped"]
        result["generation_fps"] = [round(s.chunks * server.settings["chunk_frames"] / args.seconds, 1)
                                    for s in sessions]
    half = [mb for t, mb in samples if t <= args.seconds / 2] or [before]
    result.update(rss_mb_before=round(before, 1), rss_mb_at_half=round(half[-1], 1),
                  rss_mb_max=round(max([mb for _, mb in samples] or [peak]), 1), rss_mb_after=round(peak, 1),
                  runs_dir=str(runs))
    result.pop("ids")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
