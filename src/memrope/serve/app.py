"""``memrope serve``: the web app (aiohttp) - the page, one WebSocket per client, the streams.

The model comes from the command line exactly as for ``memrope generate`` (the same options:
``--model``, ``--checkpoint``, ``--wan-dir``, ``--device``, ...; ``--policy``, ``--seed``, ``--prompt``
become the page's defaults), never from a client: no message names a file (:mod:`.protocol`). Each
stream is written to a run directory of its own under ``--runs-dir``, named by the stream's id.

Safety: the server binds 127.0.0.1 unless ``--host`` says otherwise, and any host beyond loopback
needs ``--token`` (a one-line error, exit 2, otherwise); with a token every request must carry it
(``?token=``), compared in constant time. WebSocket upgrades from another origin are refused (a web
page elsewhere cannot drive a local server through the user's browser). Limits on streams, viewers,
connections, message sizes and rates are :class:`.protocol.Limits`.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import socket
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError, guarded
from ..errors.parser import Parser, positive_float, positive_int
from ..errors.paths import check_output_dir
from ..generate_options import DEFAULTS, add_generate_arguments, explicit, option_name, settings_from_args
from .live import LiveSession, Viewer, new_stream_id
from .protocol import PACES, Limits, ProtocolError, RateLimit, parse_message

DEFAULT_PORT = 8018
LOOPBACK_NAMES = ("localhost",)
PAGE = Path(__file__).with_name("page.html")
FINISHED_KEPT = 32  # stopped or failed streams still listed
NOT_FOR_SERVE = ("out", "stats", "resume", "run_dir", "latent_frames", "duration", "schedule", "prompts", "init",
                 "no_progress", "save_latents", "lossless")
"""generate options that mean nothing to a server (its streams have no fixed length or destination)."""
SERVE_CHECKPOINT_EVERY = 16
VIEWER_SEND_BUFFER = 256 * 1024
"""Kernel send buffer of a viewer's socket, fixed (Linux would grow it to megabytes for a reader that stalls)."""


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    p = Parser(prog="memrope serve", description=doc[0].split(": ", 1)[1],
               epilog="The generate options below load the model (as for `memrope generate`); --policy, --seed "
                      "and --prompt are the defaults of new streams.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; beyond loopback it needs --token")
    p.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help="TCP port")
    p.add_argument("--token", help="secret every request must carry (?token=...); required beyond loopback")
    p.add_argument("--runs-dir", type=Path, default=Path("memrope-runs"),
                   help="folder of the streams' run directories (each resumable with memrope generate --resume)")
    p.add_argument("--pace", choices=PACES, default="realtime",
                   help="default pace of new streams: realtime (paced to playback) or fast (as fast as it can)")
    p.add_argument("--max-streams", type=positive_int, default=Limits.streams, help="streams running at once")
    p.add_argument("--max-viewers", type=positive_int, default=Limits.viewers, help="viewers of one stream")
    p.add_argument("--max-connections", type=positive_int, default=Limits.connections,
                   help="WebSocket connections at once")
    p.add_argument("--max-prompt-chars", type=positive_int, default=Limits.prompt_chars, help="longest prompt")
    p.add_argument("--max-upload-mb", type=positive_float, default=Limits.upload_bytes / 2**20,
                   help="largest image or video a stream may start from (base64 MB)")
    add_generate_arguments(p)
    return p


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Server:
    """Every stream and connection of one ``memrope serve``."""

    settings: dict[str, Any]  # generate's settings for a new stream (the model, defaults)
    runs_dir: Path
    limits: Limits
    pace: str
    token: str | None = None
    toy: bool = True
    sessions: dict[str, LiveSession] = field(default_factory=dict)
    finished: deque = field(default_factory=lambda: deque(maxlen=FINISHED_KEPT))
    connections: int = 0
    sockets: set = field(default_factory=set)  # open WebSockets, closed when the server shuts down

    def active(self) -> list[LiveSession]:
        return [s for s in self.sessions.values() if s.active]

    def reap(self) -> None:
        """Forget all but the last ``FINISHED_KEPT`` finished streams (their run directories stay)."""
        for sid in [sid for sid, s in self.sessions.items() if not s.active and sid not in self.finished]:
            self.finished.append(sid)
        keep = set(self.finished)
        for sid in [sid for sid, s in self.sessions.items() if not s.active and sid not in keep]:
            del self.sessions[sid]

    def session(self, stream_id: str) -> LiveSession:
        if stream_id not in self.sessions:
            raise UserError(f"no stream {stream_id}")
        return self.sessions[stream_id]

    def start(self, message: dict[str, Any], loop: asyncio.AbstractEventLoop) -> LiveSession:
        from ..cache import make_policy
        from ..vocabulary import check_toy_prompt

        settings = {**self.settings, "model": dict(self.settings["model"])}
        prompt = message.get("prompt", settings["schedule"][0]["prompt"])
        policy = message.get("policy", settings["policy"])
        try:
            make_policy(policy, settings["policy_options"] if policy == settings["policy"] else {})
            if self.toy:
                check_toy_prompt(prompt)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.reap()  # (a bad prompt or policy is told first)
        if len(self.active()) >= self.limits.streams:
            raise UserError(f"{self.limits.streams} stream(s) are running, the most this server makes at once: "
                            f"stop one first")
        settings.update(policy=policy, seed=message.get("seed", settings["seed"]), duration=None,
                        latent_frames=settings["chunk_frames"], schedule=[{"prompt": prompt, "seconds": None,
                                                                           "cut": False}])
        if policy != self.settings["policy"]:
            settings["policy_options"] = {}
        stream_id = new_stream_id()
        session = LiveSession(stream_id, settings, self.runs_dir / stream_id, loop, self.limits,
                              message.get("pace", self.pace), upload=message.get("init"),
                              init_chunks=DEFAULTS["init_chunks"])
        self.sessions[stream_id] = session
        session.start()
        return session

    def handle(self, message: dict[str, Any], viewer: Viewer, watching: list, loop) -> dict[str, Any]:
        """Act on one checked message; the reply to send (errors raise ``UserError``)."""
        kind = message["type"]
        if kind == "list":
            return {"type": "list", "streams": [s.info() for s in self.sessions.values()]}
        if kind in ("start", "watch"):
            session = self.start(message, loop) if kind == "start" else self.session(message["stream"])
            if watching and watching[0] is not session:
                watching[0].remove_viewer(viewer)
                watching.clear()
            if not watching:
                session.add_viewer(viewer)
                watching.append(session)
            return {"type": "started" if kind == "start" else "watching_ok", "stream": session.id,
                    "run": session.run_dir.name}
        session = self.session(message["stream"])
        if kind == "prompt":
            session.set_prompt(message["prompt"], message.get("cut", False))
        elif kind == "pause":
            session.pause()
        elif kind == "resume":
            session.resume()
        elif kind == "stop":
            session.stop()
        return {"type": "ok", "for": kind, "stream": session.id}

    def hello(self) -> dict[str, Any]:
        """What a new connection is told first: the defaults of a new stream and the policies."""
        from ..cache.registry import policy_names

        s = self.settings
        return {"type": "hello", "policies": policy_names(), "limits": {"prompt_chars": self.limits.prompt_chars,
                "upload_bytes": self.limits.upload_bytes},
                "defaults": {"prompt": s["schedule"][0]["prompt"], "policy": s["policy"], "seed": s["seed"],
                             "pace": self.pace}}

    def authorised(self, request) -> bool:
        if self.token is None:
            return True
        given = request.query.get("token", "")
        return hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))


def same_origin(request) -> bool:
    """A browser's WebSocket upgrade names the page's origin; it must be this server's own."""
    origin = request.headers.get("Origin")
    if origin is None:  # not a browser (a script, the load test)
        return True
    return origin.split("://", 1)[-1] == request.host


def make_app(server: Server):
    from aiohttp import WSCloseCode, WSMsgType, web

    async def page(request):
        if not server.authorised(request):
            return web.Response(status=403, text="memrope serve: this server needs ?token=...\n")
        return web.FileResponse(PAGE, headers={"Cache-Control": "no-store"})

    async def health(request):
        if not server.authorised(request):
            return web.Response(status=403, text="forbidden\n")
        return web.json_response({"streams": len(server.active()), "connections": server.connections})

    async def websocket(request):
        if not server.authorised(request):
            return web.Response(status=403, text="forbidden\n")
        if not same_origin(request):
            return web.Response(status=403, text="cross-origin WebSocket refused\n")
        if server.connections >= server.limits.connections:
            return web.Response(status=503, text="too many connections\n")
        ws = web.WebSocketResponse(max_msg_size=server.limits.upload_bytes + server.limits.message_bytes,
                                   heartbeat=30.0)
        await ws.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None:  # a fixed kernel buffer: a stalled viewer backs up into its bounded queue at once
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, VIEWER_SEND_BUFFER)
        server.connections += 1
        server.sockets.add(ws)
        viewer = Viewer(ws, server.limits)
        viewer.task = asyncio.get_running_loop().create_task(viewer.run())
        rate = RateLimit(server.limits.messages_per_s, server.limits.message_burst)
        watching: list[LiveSession] = []
        loop = asyncio.get_running_loop()
        viewer.offer("status", server.hello())
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                if not rate.allow():
                    viewer.offer("status", {"type": "error", "message": "too many messages: slow down"})
                    continue
                try:
                    message = parse_message(msg.data, server.limits)
                    if message["type"] == "prompt":  # a real model's text encoder may take a while: off the loop
                        reply = await loop.run_in_executor(None, server.handle, message, viewer, watching, loop)
                    else:
                        reply = server.handle(message, viewer, watching, loop)
                except (ProtocolError, UserError) as e:
                    reply = {"type": "error", "message": str(e)}
                viewer.offer("status", reply)
        finally:
            server.connections -= 1
            server.sockets.discard(ws)
            for session in watching:
                session.remove_viewer(viewer)
            await viewer.close()
            if viewer.task is not None:
                viewer.task.cancel()
        return ws

    async def shutdown(app):
        for session in list(server.sessions.values()):
            session.stop()
        for ws in list(server.sockets):  # (else the server waits for every client to hang up)
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        loop = asyncio.get_running_loop()
        for session in list(server.sessions.values()):
            if session.thread.is_alive():
                await loop.run_in_executor(None, session.thread.join)

    app = web.Application(client_max_size=server.limits.message_bytes)
    app.router.add_get("/", page)
    app.router.add_get("/health", health)
    app.router.add_get("/ws", websocket)
    app.on_shutdown.append(shutdown)
    return app


def server_from_args(args: argparse.Namespace) -> tuple[Server, str, int]:
    """Every check of ``memrope serve``'s options, before it binds or writes anything."""
    if not is_loopback(args.host) and not args.token:
        raise UserError(f"--host {args.host} would serve beyond this machine: give --token SECRET too (every "
                        f"request then needs ?token=SECRET), or keep the default 127.0.0.1")
    if args.token is not None and (len(args.token) < 8 or not args.token.isprintable()):
        raise UserError("--token must be at least 8 printable characters")
    given = [option_name(k) for k in explicit(args) if k in NOT_FOR_SERVE]
    if given:
        raise UserError(f"{', '.join(given)}: not for memrope serve (a stream has no fixed length or output file; "
                        f"it writes a run directory under --runs-dir)")
    if args.noise == "reference":
        raise UserError("--noise reference draws the whole video's noise first, so it needs a fixed length; "
                        "a live stream has none")
    args.prompt = args.prompt or DEFAULTS["prompt"]
    settings = settings_from_args(args)
    if len(settings["schedule"]) != 1 or settings["schedule"][0]["seconds"] is not None:
        raise UserError("--prompt for memrope serve is one prompt (the default of new streams), not a schedule")
    for option in ("checkpoint", "wan_dir", "lora", "decoder_weights"):  # each stream loads the model when
        given = settings["model"].get(option)  # it starts: a missing file would only show at the first start
        if given is not None and not Path(given).exists():
            raise UserError(f"{option_name(option)} {given} does not exist")
    settings["checkpoint_every"] = args.checkpoint_every or SERVE_CHECKPOINT_EVERY
    check_output_dir(args.runs_dir, "--runs-dir")
    limits = Limits(streams=args.max_streams, viewers=args.max_viewers, connections=args.max_connections,
                    prompt_chars=args.max_prompt_chars, upload_bytes=int(args.max_upload_mb * 2**20))
    server = Server(settings, args.runs_dir.resolve(), limits, args.pace, args.token, toy=args.model is None)
    return server, args.host, args.port


def serve_main(argv: list[str] | None = None) -> int:
    return guarded(lambda: _serve(argv), prog="memrope")


def _serve(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    server, host, port = server_from_args(args)
    from aiohttp import web

    server.runs_dir.mkdir(parents=True, exist_ok=True)
    query = f"?token={server.token}" if server.token else ""
    shown = f"[{host}]" if ":" in host else host
    print(f"memrope: serving on http://{shown}:{port}/{query} (streams in {server.runs_dir}); Ctrl-C stops",
          file=sys.stderr)
    web.run_app(make_app(server), host=host, port=port, print=None, handle_signals=True)
    return 0
