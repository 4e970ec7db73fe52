"""What a client may say to ``memrope serve``, checked before anything acts on it.

Every WebSocket message is JSON text, one object with a ``type``. A message is refused with an
``{"type": "error", "message": ...}`` reply (the connection and the server stay up) when it is not
valid UTF-8 JSON, not an object, of an unknown type, has unknown or missing fields, a field of the
wrong type or out of range, a prompt longer than :attr:`Limits.prompt_chars`, or arrives faster than
the connection's rate (a token bucket of :attr:`Limits.messages_per_s`, burst
:attr:`Limits.message_burst`), or is longer than :attr:`Limits.message_bytes` (only a ``start`` with an
image or a video may be longer, up to :attr:`Limits.upload_bytes`). The WebSocket layer itself closes
a connection whose message exceeds the sum of the two (close code 1009, before reading it all);
binary messages from clients are refused. No message names a file: an uploaded image or video is
stored by the server under a name of its own in the stream's run directory, keeping only its suffix
from a fixed list.

Messages (client -> server):

- ``{"type": "start", "prompt": str, "policy"?: str, "seed"?: int, "pace"?: "realtime"|"fast",
  "init"?: {"suffix": ".png", "data": base64}}`` -> ``started`` (then the stream's chunks);
- ``{"type": "watch", "stream": id}``: receive a running stream's chunks;
- ``{"type": "prompt", "stream": id, "prompt": str, "cut"?: bool}``: change the prompt (a cut);
- ``{"type": "pause" | "resume" | "stop", "stream": id}``; ``{"type": "list"}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

from ..context import IMAGE_SUFFIXES, VIDEO_SUFFIXES

PACES = ("realtime", "fast")
STREAM_ID_HEX = 12  # stream ids: 12 hex digits from the server's own random source
SEED_MAX = 2**63 - 1


@dataclass(frozen=True)
class Limits:
    """Bounds of one server (``memrope serve`` options); each is checked where a client could exceed it."""

    streams: int = 2  # streams running at once
    viewers: int = 8  # viewers of one stream
    connections: int = 32  # WebSocket connections at once
    prompt_chars: int = 1000
    message_bytes: int = 64 * 1024  # a control message
    upload_bytes: int = 8 * 1024 * 1024  # a start message carrying an image or a video (base64)
    messages_per_s: float = 20.0
    message_burst: int = 40
    queue_chunks: int = 16  # chunks waiting for one viewer before the oldest are dropped
    send_timeout_s: float = 10.0  # a viewer that takes longer to accept one message is disconnected

    def __post_init__(self) -> None:
        for name in ("streams", "viewers", "connections", "prompt_chars", "message_bytes", "upload_bytes",
                     "message_burst", "queue_chunks"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if not self.messages_per_s > 0 or not self.send_timeout_s > 0:
            raise ValueError("Limits.messages_per_s and send_timeout_s must be positive")


class ProtocolError(ValueError):
    """A message refused; its text is sent back to the client."""


FIELDS: dict[str, dict[str, tuple[type, bool]]] = {
    # type -> field -> (python type, required)
    "start": {"prompt": (str, False), "policy": (str, False), "seed": (int, False), "pace": (str, False),
              "init": (dict, False)},
    "watch": {"stream": (str, True)},
    "prompt": {"stream": (str, True), "prompt": (str, True), "cut": (bool, False)},
    "pause": {"stream": (str, True)},
    "resume": {"stream": (str, True)},
    "stop": {"stream": (str, True)},
    "list": {},
}


def parse_message(text: str | bytes, limits: Limits) -> dict[str, Any]:
    """A checked message (fields of the right types and ranges), or :class:`ProtocolError`."""
    if isinstance(text, bytes):
        raise ProtocolError("binary messages are not accepted: send JSON text")
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError("not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message is a JSON object with a \"type\"")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in FIELDS:
        raise ProtocolError(f"unknown message type {str(kind)[:40]!r}; known: {', '.join(FIELDS)}")
    if len(text) > limits.message_bytes and not (kind == "start" and "init" in message):
        raise ProtocolError(f"message of {len(text)} characters; at most {limits.message_bytes} (only a start "
                            f"with an image or a video may be larger)")
    fields = FIELDS[kind]
    unknown = sorted(set(message) - set(fields) - {"type"})
    if unknown:
        raise ProtocolError(f"{kind}: unknown field(s) {', '.join(u[:40] for u in unknown[:5])}")
    for name, (kind_of, required) in fields.items():
        if name not in message:
            if required:
                raise ProtocolError(f"{kind}: missing field {name!r}")
            continue
        value = message[name]
        if not isinstance(value, kind_of) or (kind_of is int and isinstance(value, bool)):
            raise ProtocolError(f"{kind}: {name!r} must be {kind_of.__name__}")
    if "stream" in message and not _is_stream_id(message["stream"]):
        raise ProtocolError(f"{kind}: 'stream' is not a stream id")
    if "prompt" in message:
        prompt = message["prompt"]
        if not prompt.strip():
            raise ProtocolError(f"{kind}: the prompt is empty")
        if len(prompt) > limits.prompt_chars:
            raise ProtocolError(f"{kind}: the prompt has {len(prompt)} characters; at most {limits.prompt_chars}")
        if any(ord(c) < 32 and c not in "\t\n" for c in prompt):
            raise ProtocolError(f"{kind}: the prompt holds control characters")
    if "seed" in message and not 0 <= message["seed"] <= SEED_MAX:
        raise ProtocolError(f"start: 'seed' must be in 0..{SEED_MAX}")
    if "pace" in message and message["pace"] not in PACES:
        raise ProtocolError(f"start: 'pace' must be one of {', '.join(PACES)}")
    if "policy" in message and (len(message["policy"]) > 64 or not message["policy"].replace("_", "").isalnum()):
        raise ProtocolError("start: 'policy' must be a policy name (see `memrope policies`)")
    if "init" in message:
        message["init"] = parse_upload(message["init"], limits)
    return message


def parse_upload(init: dict[str, Any], limits: Limits) -> tuple[str, bytes]:
    """``{"suffix", "data"}`` -> (suffix, bytes): a suffix from the fixed list, base64 within the size limit."""
    if set(init) != {"suffix", "data"} or not all(isinstance(init[k], str) for k in init):
        raise ProtocolError("start: 'init' must be {\"suffix\": \".png\", \"data\": \"<base64>\"}")
    suffix = init["suffix"].lower()
    if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise ProtocolError(f"start: 'init' suffix must be one of {', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}")
    if len(init["data"]) > limits.upload_bytes:
        raise ProtocolError(f"start: the image or video is larger than {limits.upload_bytes} bytes (base64)")
    try:
        data = base64.b64decode(init["data"], validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("start: 'init' data is not base64") from None
    if not data:
        raise ProtocolError("start: 'init' data is empty")
    return suffix, data


def _is_stream_id(value: str) -> bool:
    return len(value) == STREAM_ID_HEX and all(c in "0123456789abcdef" for c in value)


class RateLimit:
    """Token bucket: ``rate`` messages per second, at most ``burst`` at once."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.at = float(burst), clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
