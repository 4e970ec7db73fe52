"""memrope serve on loopback: messages, limits, viewers that stall or vanish, and run directories that
`memrope generate --resume` continues exactly."""

import asyncio
import base64
import json
import time
from pathlib import Path

import aiohttp
import pytest

from memrope.cli import main
from memrope.generate_options import DEFAULT_PROMPT
from memrope.serve.app import build_parser, server_from_args
from memrope.serve.live import STATUS_QUEUE, Viewer
from memrope.serve.load import ServerThread, parse_chunk, run_load
from memrope.serve.protocol import Limits, ProtocolError, RateLimit, parse_message

NEW_PROMPT = "a large yellow square bounce on a grey checker"
SECONDS_PER_CHUNK = 3 / 16  # the embedded model: 3 frames a chunk at 16 fps
WAIT_S = 15.0  # bound of every wait below


def make_server(tmp_path, *extra):
    args = build_parser().parse_args(["--runs-dir", str(tmp_path / "runs"), "--pace", "fast", "--max-streams", "2",
                                      "--max-viewers", "3", "--max-connections", "12", *extra])
    server, _, _ = server_from_args(args)
    return server


@pytest.fixture
def served(tmp_path):
    server = make_server(tmp_path)
    with ServerThread(server) as running:
        yield server, running


class Client:
    """A WebSocket client that keeps chunks and status messages apart."""

    def __init__(self, session, ws):
        self.session, self.ws = session, ws
        self.chunks, self.status = [], []

    @classmethod
    async def open(cls, url, prompt=DEFAULT_PROMPT, **kw):
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(url + "/ws", **kw)
        client = cls(session, ws)
        assert (await client.expect("hello"))["defaults"]["prompt"] == prompt
        return client

    async def next(self, timeout=WAIT_S):
        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            header, mp4 = parse_chunk(msg.data)
            self.chunks.append(header)
            return "chunk", header, mp4
        if msg.type == aiohttp.WSMsgType.TEXT:
            self.status.append(json.loads(msg.data))
            return "status", self.status[-1], None
        return "closed", msg, None

    async def expect(self, kind, **fields):
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            what, m, _ = await self.next()
            if what == "closed":
                raise AssertionError(f"closed while waiting for {kind}: {m}")
            if what == "status" and m["type"] == kind and all(m.get(k) == v for k, v in fields.items()):
                return m
        raise AssertionError(f"no {kind} message")

    async def chunks_until(self, n):
        while len(self.chunks) < n:
            what, m, _ = await self.next()
            assert what != "closed", m

    async def close(self):
        await self.ws.close()
        await self.session.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 3 * WAIT_S))


# ----------------------------------------------------------------------- messages
@pytest.mark.parametrize("text, message", [
    ("not json", "not valid JSON"),
    ("[1, 2]", 'a message is a JSON object with a "type"'),
    ('{"type": "dance"}', "unknown message type 'dance'; known: start, watch, prompt, pause, resume, stop, list"),
    ('{"type": "list", "path": "/etc/passwd"}', "list: unknown field(s) path"),
    ('{"type": "prompt", "prompt": "a red disc"}', "prompt: missing field 'stream'"),
    ('{"type": "prompt", "stream": "../../etc", "prompt": "x"}', "prompt: 'stream' is not a stream id"),
    ('{"type": "start", "seed": "7"}', "start: 'seed' must be int"),
    ('{"type": "start", "seed": true}', "start: 'seed' must be int"),
    ('{"type": "start", "seed": -1}', "start: 'seed' must be in 0..9223372036854775807"),
    ('{"type": "start", "pace": "warp"}', "start: 'pace' must be one of realtime, fast"),
    ('{"type": "start", "prompt": "   "}', "start: the prompt is empty"),
    ('{"type": "start", "prompt": "a\\u0000b"}', "start: the prompt holds control characters"),
    ('{"type": "start", "policy": "../x"}', "start: 'policy' must be a policy name (see `memrope policies`)"),
    ('{"type": "start", "init": {"suffix": ".exe", "data": "AA=="}}', "start: 'init' suffix must be one of"),
    ('{"type": "start", "init": {"suffix": ".png", "data": "***"}}', "start: 'init' data is not base64"),
    ('{"type": "start", "init": {"name": "/etc/passwd"}}', "start: 'init' must be"),
    (b'{"type": "list"}', "binary messages are not accepted: send JSON text"),
])
def test_malformed_messages_are_refused_with_their_reason(text, message):
    with pytest.raises(ProtocolError) as error:
        parse_message(text, Limits())
    assert str(error.value).startswith(message)


def test_prompt_length_and_upload_size_are_bounded():
    limits = Limits(prompt_chars=10, upload_bytes=8)
    with pytest.raises(ProtocolError, match="the prompt has 11 characters; at most 10"):
        parse_message(json.dumps({"type": "start", "prompt": "a" * 11}), limits)
    with pytest.raises(ProtocolError, match="larger than 8 bytes"):
        parse_message(json.dumps({"type": "start", "init": {"suffix": ".png", "data": "A" * 12}}), limits)
    assert parse_message('{"type": "start", "init": {"suffix": ".PNG", "data": "AAAA"}}', limits)["init"] == \
        (".png", b"\0\0\0")
    small = Limits(message_bytes=40, upload_bytes=100)
    with pytest.raises(ProtocolError, match="message of 41 characters; at most 40"):
        parse_message(json.dumps({"type": "list"}).ljust(41), small)
    upload = json.dumps({"type": "start", "init": {"suffix": ".png", "data": "A" * 40}})
    assert len(upload) > 40 and parse_message(upload, small)["init"][0] == ".png"  # an upload may be longer


def test_rate_limit_is_a_token_bucket():
    now = [0.0]
    rate = RateLimit(2.0, 3, clock=lambda: now[0])
    assert [rate.allow() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert [rate.allow(), rate.allow()] == [True, False]


@pytest.mark.parametrize("argv, message", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 would serve beyond this machine: give --token SECRET too"),
    (["--host", "0.0.0.0", "--token", "short"], "--token must be at least 8 printable characters"),
    (["--out", "x.mp4"], "--out: not for memrope serve"),
    (["--duration", "5"], "--duration: not for memrope serve"),
    (["--noise", "reference"], "--noise reference draws the whole video's noise first"),
    (["--prompt", "a red disc[2s] | a blue ring"], "--prompt for memrope serve is one prompt"),
    (["--checkpoint", "x.pt"], "--checkpoint needs --model"),
    (["--model", "self-forcing", "--checkpoint", "no.pt", "--wan-dir", "."], "--checkpoint {cwd}/no.pt does not exist"),
    (["--model", "longlive", "--checkpoint", ".", "--lora", "no-lora.pt", "--wan-dir", "."],
     "--lora {cwd}/no-lora.pt does not exist"),
])
def test_bad_server_options_are_one_line_errors_before_binding(argv, message, capsys, tmp_path):
    assert main(["serve", "--runs-dir", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"memrope: error: {message.format(cwd=Path.cwd())}") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------- streams
def test_several_viewers_watch_one_stream_that_is_steered_paused_and_stopped(served):
    server, running = served

    async def go():
        a = await Client.open(running.url)
        await a.ws.send_json({"type": "start", "prompt": DEFAULT_PROMPT, "seed": 3})
        sid = (await a.expect("started"))["stream"]
        b, c = await Client.open(running.url), await Client.open(running.url)
        for viewer in (b, c):
            await viewer.ws.send_json({"type": "watch", "stream": sid})
            await viewer.expect("watching_ok")
        await a.chunks_until(3)
        await a.ws.send_json({"type": "prompt", "stream": sid, "prompt": NEW_PROMPT, "cut": True})
        await a.expect("prompt_queued", prompt=NEW_PROMPT, cut=True)
        while not any(ch.get("switch") for ch in a.chunks):
            await a.next()
        switched = next(ch for ch in a.chunks if ch.get("switch"))
        assert switched["prompt"] == NEW_PROMPT and switched["switch"]["cut"] and switched["prompt_index"] == 1
        assert switched["policy"] == "memrope" and switched["next_slots"] and switched["codec"].startswith("avc1.")
        await a.ws.send_json({"type": "pause", "stream": sid})
        await a.expect("state", state="paused")
        held = len(a.chunks)
        await asyncio.sleep(0.5)
        while True:  # what was on its way arrives; then nothing while paused
            try:
                await a.next(timeout=0.3)
            except asyncio.TimeoutError:
                break
        assert len(a.chunks) <= held + 2
        paused_at = len(a.chunks)
        await asyncio.sleep(0.5)
        assert len(a.chunks) == paused_at and server.sessions[sid].state == "paused"
        await a.ws.send_json({"type": "resume", "stream": sid})
        await a.chunks_until(paused_at + 2)
        await a.ws.send_json({"type": "stop", "stream": sid})
        await a.expect("state", state="stopped")
        for viewer in (b, c):
            await viewer.expect("state", state="stopped")
            assert [ch["index"] for ch in viewer.chunks] == sorted({ch["index"] for ch in viewer.chunks})
        assert [ch["index"] for ch in a.chunks] == list(range(len(a.chunks)))
        for client in (a, b, c):
            await client.close()
        return sid, len(a.chunks)

    sid, chunks = run(go())
    manifest = json.loads((server.runs_dir / sid / "manifest.json").read_text())
    assert manifest["complete"] and manifest["chunks_done"] == chunks
    assert manifest["settings"]["latent_frames"] == 3 * chunks and manifest["settings"]["seed"] == 3
    assert (server.runs_dir / sid / "video.mp4").is_file()


def test_malformed_oversized_and_binary_messages_get_errors_and_the_server_stays_up(served):
    server, running = served

    async def go():
        a = await Client.open(running.url)
        for bad in ("{", '{"type": "watch", "stream": "0123456789ab"}', '{"type": "list", "x": 1}'):
            await a.ws.send_str(bad)
            assert (await a.expect("error"))["message"]
        await a.ws.send_bytes(b"\x00\x01")
        assert (await a.expect("error"))["message"] == "binary messages are not accepted: send JSON text"
        await a.ws.send_str(json.dumps({"type": "list", "pad": "x" * (server.limits.message_bytes + 10)}))
        assert (await a.expect("error"))["message"].startswith("message of ")
        await a.ws.send_str(json.dumps({"type": "list"}))
        assert (await a.expect("list"))["streams"] == []
        try:  # too big to read: the server closes the connection (1009) before it has it all
            await a.ws.send_str("x" * (server.limits.upload_bytes + server.limits.message_bytes + 1))
            lost = False
        except ConnectionError:  # ... which can come while this client is still writing
            lost = True
        what, msg, _ = await a.next()
        while what != "closed":
            what, msg, _ = await a.next()
        assert a.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG or lost or msg.type == aiohttp.WSMsgType.ERROR
        await a.close()
        async with aiohttp.ClientSession() as s:
            async with s.get(running.url + "/health") as r:
                assert r.status == 200 and (await r.json())["connections"] == 0
        b = await Client.open(running.url)  # a new client is served as before
        await b.ws.send_json({"type": "list"})
        await b.expect("list")
        await b.close()

    run(go())


def test_limits_on_streams_viewers_token_and_origin(tmp_path):
    server = make_server(tmp_path, "--token", "s3cret-token", "--max-viewers", "1", "--max-streams", "1")
    with ServerThread(server) as running:
        async def go():
            async with aiohttp.ClientSession() as s:
                for path in ("/", "/health", "/ws"):
                    async with s.get(running.url + path) as r:
                        assert r.status == 403
                    async with s.get(running.url + path + "?token=wrong-token") as r:
                        assert r.status == 403
                async with s.get(running.url + "/?token=s3cret-token") as r:
                    assert r.status == 200 and "memrope serve" in await r.text()
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await s.ws_connect(running.url + "/ws?token=s3cret-token", headers={"Origin": "http://evil.example"})
            url = running.url + "/ws?token=s3cret-token"
            a = Client(aiohttp.ClientSession(), None)
            a.ws = await a.session.ws_connect(url, headers={"Origin": running.url})
            await a.expect("hello")
            await a.ws.send_json({"type": "start", "pace": "fast"})
            sid = (await a.expect("started"))["stream"]
            await a.ws.send_json({"type": "start"})
            assert "the most this server makes at once" in (await a.expect("error"))["message"]
            b = Client(aiohttp.ClientSession(), None)
            b.ws = await b.session.ws_connect(url)
            await b.expect("hello")
            await b.ws.send_json({"type": "watch", "stream": sid})
            assert (await b.expect("error"))["message"] == f"stream {sid} has 1 viewers, the most it takes"
            await b.ws.send_json({"type": "start", "prompt": "a purple cat"})
            assert "does not know 'purple'" in (await b.expect("error"))["message"]
            await a.ws.send_json({"type": "stop", "stream": sid})
            await a.expect("state", state="stopped")
            await a.close()
            await b.close()

        run(go())


def test_viewers_that_vanish_mid_stream_leave_it_running(served):
    server, running = served

    async def go():
        a = await Client.open(running.url)
        await a.ws.send_json({"type": "start"})
        sid = (await a.expect("started"))["stream"]
        gone = []
        for _ in range(2):
            v = await Client.open(running.url)
            await v.ws.send_json({"type": "watch", "stream": sid})
            await v.expect("watching_ok")
            await v.chunks_until(2)
            gone.append(v)
        gone[0].ws._response.connection.transport.abort()  # dropped link: no close handshake
        await gone[0].session.close()
        await gone[1].close()
        before = len(a.chunks)
        await a.chunks_until(before + 10)
        assert len(server.sessions[sid].viewers) == 1 and server.sessions[sid].state == "running"
        await a.ws.send_json({"type": "stop", "stream": sid})
        await a.expect("state", state="stopped")
        await a.close()

    run(go())


class StalledSocket:
    """A WebSocket whose sends never complete (a frozen reader)."""

    closed = False

    async def send_bytes(self, data):
        await asyncio.sleep(3600)

    send_str = send_bytes

    async def close(self):
        self.closed = True


def test_a_stalled_viewer_drops_its_oldest_chunks_and_is_cut_off():
    async def go():
        viewer = Viewer(StalledSocket(), Limits(queue_chunks=4, send_timeout_s=0.2))
        viewer.task = asyncio.get_running_loop().create_task(viewer.run())
        viewer.offer("chunk", bytes([0]))
        await asyncio.sleep(0.01)  # the sender takes chunk 0 and blocks on it
        for k in range(1, 50):
            viewer.offer("chunk", bytes([k]))
        chunks = [p for kind, p in viewer.items if kind == "chunk"]
        assert chunks == [bytes([k]) for k in range(46, 50)] and viewer.dropped == 45  # one is being sent
        assert [p for kind, p in viewer.items if kind == "status"] == [{"type": "dropped", "dropped": 45}]  # one
        await asyncio.wait_for(viewer.task, 5)
        assert viewer.closed and not viewer.items and viewer.ws.closed

    asyncio.run(go())


def test_a_viewer_that_lets_status_messages_pile_up_is_disconnected():
    async def go():
        viewer = Viewer(StalledSocket(), Limits(send_timeout_s=0.2))
        viewer.task = asyncio.get_running_loop().create_task(viewer.run())
        viewer.offer("status", {"type": "hello"})
        await asyncio.sleep(0.01)  # the sender blocks on it
        for k in range(STATUS_QUEUE):
            viewer.offer("status", {"type": "state", "k": k})
        assert not viewer.closed and len(viewer.items) == STATUS_QUEUE
        viewer.offer("status", {"type": "state", "k": STATUS_QUEUE})
        assert viewer.closed and not viewer.items
        await asyncio.wait_for(viewer.task, 5)
        assert viewer.ws.closed

    asyncio.run(go())


def test_a_bounded_load_on_loopback(tmp_path):
    """2 streams x 3 viewers for 3 s and one stalled viewer: every viewer gets its chunks in order."""
    server = make_server(tmp_path, "--max-viewers", "5")  # 3 + the stalled one + the starter, closing
    with ServerThread(server) as running:
        result = asyncio.run(run_load(running.url, running.port, 2, 3, 3.0, "fast", 1, DEFAULT_PROMPT))
        assert result["in_order"] and not result["errors"] and result["chunks_per_viewer_min"] >= 3
        deadline = time.monotonic() + WAIT_S
        while server.active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.active()


# ----------------------------------------------------------------------- run directories
def chunk_hashes(run_dir):
    return [json.loads(line)["frames_sha256"] for line in (run_dir / "chunks.jsonl").read_text().splitlines()]


def test_a_stopped_stream_continued_by_generate_resume_equals_an_uninterrupted_run(served, tmp_path):
    server, running = served

    async def go():
        a = await Client.open(running.url)
        await a.ws.send_json({"type": "start", "seed": 4})
        sid = (await a.expect("started"))["stream"]
        await a.chunks_until(3)
        await a.ws.send_json({"type": "prompt", "stream": sid, "prompt": NEW_PROMPT, "cut": True})
        while not any(ch.get("switch") for ch in a.chunks):
            await a.next()
        await a.chunks_until(next(ch["index"] for ch in a.chunks if ch.get("switch")) + 3)
        await a.ws.send_json({"type": "stop", "stream": sid})
        await a.expect("state", state="stopped")
        await a.close()
        return sid, next(ch["index"] for ch in a.chunks if ch.get("switch")), len(a.chunks)

    sid, switch, stopped = run(go())
    run_dir = server.runs_dir / sid
    total = stopped + 6
    assert main(["generate", "--resume", str(run_dir), "--latent-frames", str(3 * total), "--no-progress"]) == 0
    straight = tmp_path / "straight.mp4"
    schedule = f"{DEFAULT_PROMPT}[{switch * SECONDS_PER_CHUNK}s] | {NEW_PROMPT}[1s#]"
    assert main(["generate", "--prompt", schedule, "--seed", "4", "--latent-frames", str(3 * total),
                 "--checkpoint-every", "16", "--out", str(straight), "--no-progress"]) == 0
    assert len(chunk_hashes(run_dir)) == total
    assert chunk_hashes(run_dir) == chunk_hashes(tmp_path / "straight.mp4.run")


def test_a_stream_starts_from_an_uploaded_image(served, tmp_path):
    import av
    import numpy as np

    from memrope.world.clips import ClipConfig, sample_clip

    server, running = served
    frame = sample_clip(5, ClipConfig(n_frames=1, dtype="uint8")).video.permute(0, 2, 3, 1).numpy()[0]
    path = tmp_path / "frame.png"
    with av.open(str(path), "w", format="image2") as c:
        s = c.add_stream("png")
        s.width, s.height, s.pix_fmt = 64, 64, "rgb24"
        for packet in list(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))) + \
                list(s.encode()):
            c.mux(packet)
    png = path.read_bytes()

    async def go():
        a = await Client.open(running.url)
        data = base64.b64encode(png).decode()
        await a.ws.send_json({"type": "start", "init": {"suffix": ".png", "data": data}})
        sid = (await a.expect("started"))["stream"]
        await a.chunks_until(3)
        await a.ws.send_json({"type": "stop", "stream": sid})
        await a.expect("state", state="stopped")
        await a.close()
        return sid, a.chunks

    async def bad():
        a = await Client.open(running.url)
        not_png = base64.b64encode(b"no png").decode()
        await a.ws.send_json({"type": "start", "init": {"suffix": ".png", "data": not_png}})
        sid = (await a.expect("started"))["stream"]
        reason = (await a.expect("state", state="failed"))["reason"]
        await a.ws.send_json({"type": "list"})
        listed = (await a.expect("list"))["streams"]
        await a.close()
        return sid, reason, listed

    sid, chunks = run(go())
    assert [ch["context"] for ch in chunks[:2]] == [True, False]
    failed, reason, listed = run(bad())
    assert reason.startswith(f"--init: {failed}/init.png cannot be read as an image or a video")
    assert str(server.runs_dir) not in reason and [s["state"] for s in listed if s["stream"] == failed] == ["failed"]
    manifest = json.loads((server.runs_dir / sid / "manifest.json").read_text())
    init = manifest["settings"]["init"]
    assert init["kind"] == "image" and init["chunks"] == 1 and init["path"] == str(server.runs_dir / sid / "init.png")


def test_a_real_model_layout_is_served_and_steered(tmp_path):
    """Self-Forcing's checkpoint layout and a Wan folder (tiny files in the real formats): the stream
    runs through the Wan VAE and umT5, and a typed prompt (not in the prompt cache) reaches it."""
    import torch

    from .models.tiny_wan_files import PIXELS, TINY_REAL, random_wan, self_forcing_dict, write_wan_dir

    wan = write_wan_dir(tmp_path / "wan", "original")
    m = random_wan(TINY_REAL, 0)
    torch.save(self_forcing_dict(m, m, m), tmp_path / "sf.pt")
    server = make_server(tmp_path, "--model", "self-forcing", "--checkpoint", str(tmp_path / "sf.pt"), "--wan-dir",
                         str(wan), "--height", str(PIXELS), "--width", str(PIXELS), "--device", "cpu",
                         "--prompt", "a cat in the snow")
    with ServerThread(server) as running:
        async def go():
            a = await Client.open(running.url, "a cat in the snow")
            await a.ws.send_json({"type": "start", "prompt": "a cat in the snow"})
            sid = (await a.expect("started"))["stream"]
            await a.chunks_until(2)
            await a.ws.send_json({"type": "prompt", "stream": sid, "prompt": "a dog on a beach"})
            await a.expect("prompt_queued")
            while not any(ch.get("switch") for ch in a.chunks):
                await a.next()
            await a.ws.send_json({"type": "stop", "stream": sid})
            await a.expect("state", state="stopped")
            await a.close()
            return a.chunks

        chunks = run(go())
    switched = next(ch for ch in chunks if ch.get("switch"))
    assert switched["prompt"] == "a dog on a beach" and chunks[0]["prompt"] == "a cat in the snow"
    assert chunks[0]["frames"] == 1 + 4 * (3 - 1)  # the Wan VAE: 9 frames from the first 3 latent frames
