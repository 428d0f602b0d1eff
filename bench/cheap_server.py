"""The cheapest fake Ollama and OpenAI-compatible server we could write, for client benchmarks.

Run it as its own process::

    python bench/cheap_server.py [--port 0]

It prints ``PORT <n>`` once it listens and exits when its stdin (a pipe) closes, on SIGTERM or
SIGINT, or after ``--max-seconds``. It is an ``asyncio.Protocol`` that speaks just enough
HTTP/1.1 (keep-alive, ``Content-Length`` request bodies, chunked responses) and answers from
bodies built once and cached, so a request costs it a few tens of microseconds: a benchmark
then measures the client, not the server (an aiohttp.web server costs several hundred).

The model name picks how a streamed body is written, so that clients call it exactly as they
would call a real server (no extra options):

* ``bench-batched``: 256 frames per write (one HTTP chunk);
* ``bench-frames``: one frame per write, as Ollama and llama.cpp flush every token.

Routes (127.0.0.1, or another loopback address with ``--host``; the tests of recovery run
several, stop them with SIGSTOP and SIGKILL and resume them with SIGCONT):

* ``GET /api/version``, ``GET /api/tags``, ``GET /api/ps``, ``GET /v1/models``;
* ``POST /api/generate``: NDJSON (``"stream"`` defaults to true, as in Ollama) with
  ``options.num_predict`` text frames and a ``done`` frame with statistics, or one JSON object
  with ``"stream": false``;
* ``POST /v1/completions``: SSE with ``max_tokens`` text events, a finish event, a usage event
  (``stream_options.include_usage``) and ``data: [DONE]``, or one ``text_completion`` object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from typing import Any

TOKEN = " hello"
MODELS = ("bench-batched", "bench-frames")
BATCH = 256
_CREATED = "2024-01-01T00:00:00.000000000Z"
_MAX_FRAMES = 1_000_000
_MAX_HEAD = 64 * 1024
_CACHE: dict[tuple[Any, ...], list[bytes]] = {}


def _json_response(obj: Any, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(obj).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return [head + body]


def _chunked(content_type: str, frames: list[bytes], per_write: int) -> list[bytes]:
    """A chunked response: the head with the first HTTP chunk, then one write per chunk."""
    writes: list[bytes] = []
    for i in range(0, len(frames), per_write):
        data = b"".join(frames[i : i + per_write])
        writes.append(b"%x\r\n%s\r\n" % (len(data), data))
    writes.append(b"0\r\n\r\n")
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    writes[0] = head + writes[0]
    return writes


def _per_write(model: str) -> int:
    return 1 if model == "bench-frames" else BATCH


def ollama_generate(model: str, n: int, stream: bool) -> list[bytes]:
    key = ("ollama", model, n, stream)
    if key in _CACHE:
        return _CACHE[key]
    head = {"model": model, "created_at": _CREATED}
    stats = {
        "done": True, "done_reason": "stop", "total_duration": 1_000_000, "load_duration": 1_000,
        "prompt_eval_count": 4, "prompt_eval_duration": 1_000, "eval_count": n,
        "eval_duration": 1_000_000,
    }
    if stream:
        line = (json.dumps({**head, "response": TOKEN, "done": False}) + "\n").encode()
        last = (json.dumps({**head, "response": "", **stats}) + "\n").encode()
        out = _chunked("application/x-ndjson", [line] * n + [last], _per_write(model))
    else:
        out = _json_response({**head, "response": TOKEN * n, **stats})
    _CACHE[key] = out
    return out


def openai_completion(model: str, n: int, stream: bool, usage: bool) -> list[bytes]:
    key = ("openai", model, n, stream, usage)
    if key in _CACHE:
        return _CACHE[key]
    base = {"id": "cmpl-bench", "object": "text_completion", "created": 1, "model": model}
    counts = {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": n + 4}
    if stream:
        def event(obj: Any) -> bytes:
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        text = event({**base, "choices": [{"index": 0, "text": TOKEN, "finish_reason": None}]})
        frames = [text] * n
        frames.append(event({**base, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}))
        if usage:
            frames.append(event({**base, "choices": [], "usage": counts}))
        frames.append(b"data: [DONE]\n\n")
        out = _chunked("text/event-stream", frames, _per_write(model))
    else:
        choice = {"index": 0, "text": TOKEN * n, "finish_reason": "stop"}
        out = _json_response({**base, "choices": [choice], "usage": counts})
    _CACHE[key] = out
    return out


_MODEL_ENTRY = {"size": 1, "digest": "0" * 64, "modified_at": _CREATED,
                "details": {"format": "gguf", "family": "bench"}}
_GET = {
    b"/api/version": _json_response({"version": "0.0.0-bench"}),
    b"/api/tags": _json_response({"models": [{"name": m, "model": m, **_MODEL_ENTRY} for m in MODELS]}),
    b"/api/ps": _json_response({"models": []}),
    b"/v1/models": _json_response(
        {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "bench"} for m in MODELS]}
    ),
}
_NOT_FOUND = _json_response({"error": "not found"}, "404 Not Found")


def answer(method: bytes, path: bytes, body: bytes) -> list[bytes]:
    """The writes that answer one request."""
    if method == b"GET":
        return _GET.get(path, _NOT_FOUND)
    try:
        req = json.loads(body) if body else {}
    except ValueError:
        return _json_response({"error": "bad json"}, "400 Bad Request")
    model = str(req.get("model") or "bench-batched")
    if path == b"/api/generate":
        n = int((req.get("options") or {}).get("num_predict") or 1)
        return ollama_generate(model, min(max(n, 1), _MAX_FRAMES), bool(req.get("stream", True)))
    if path == b"/v1/completions":
        n = int(req.get("max_tokens") or 16)
        usage = bool((req.get("stream_options") or {}).get("include_usage"))
        return openai_completion(model, min(max(n, 1), _MAX_FRAMES), bool(req.get("stream")), usage)
    return _NOT_FOUND


class Http(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one request at a time per connection (pipelining tolerated)."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD and self.transport is not None:
                    self.transport.close()
                return
            head = self.buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            method, path, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            assert self.transport is not None
            for part in answer(method, path.split(b"?", 1)[0], body):
                self.transport.write(part)


async def serve(port: int, max_seconds: float, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:  # exit when the parent closes our stdin
        loop.add_reader(0, lambda: stop.set() if not os.read(0, 4096) else None)
    except (OSError, ValueError, NotImplementedError):
        pass
    sock_port = server.sockets[0].getsockname()[1]
    print(f"PORT {sock_port}", flush=True)
    try:
        async with asyncio.timeout(max_seconds):
            await stop.wait()
    except TimeoutError:
        pass
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (127.0.0.0/8)")
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args()
    if not args.host.startswith("127."):
        parser.error("--host must be a loopback address (127.x.y.z)")
    asyncio.run(serve(args.port, args.max_seconds, args.host))


if __name__ == "__main__":
    main()
