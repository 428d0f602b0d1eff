"""A minimal, fast fake Ollama server for benchmarks (aiohttp.web, 127.0.0.1 only).

Run it as its own process::

    python bench/fake_server.py [--port 0]

It prints ``PORT <n>`` on stdout once it listens, and exits when its stdin (a pipe) closes, so
it never outlives the benchmark that started it, on SIGTERM/SIGINT, or after ``--max-seconds``.

Endpoints:

* ``GET /api/version`` -> ``{"version": "0.0.0-fake"}``
* ``POST /api/generate`` -> with ``"stream": true`` (Ollama's default, and what papin always
  sends), NDJSON: one line per chunk, then a ``done`` line with statistics; with
  ``"stream": false``, one JSON object holding the whole text.

  The number of text chunks is ``options.num_predict`` (default 1). The streamed body is
  written ``options.bench_lines_per_write`` lines at a time (default 256: the server then
  costs far less than any client, so a benchmark measures the client; 1 imitates Ollama,
  which flushes every token). Bodies are built once and cached.
* ``GET /v1/models``, ``POST /v1/completions`` -> the OpenAI protocol (``bench_openai.py``):
  with ``"stream": true`` an SSE stream of ``max_tokens`` text chunks, a finish chunk, a
  usage chunk (with ``stream_options.include_usage``) and ``data: [DONE]``, written
  ``bench_lines_per_write`` events at a time; otherwise one ``text_completion`` object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import stat
from typing import Any

from aiohttp import web

TOKEN = " hello"
_CREATED = "2024-01-01T00:00:00.000000000Z"
_CACHE: dict[tuple[Any, ...], Any] = {}
_MAX_CHUNKS = 1_000_000


def _stats(n: int) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": "stop",
        "total_duration": 1_000_000,
        "load_duration": 1_000,
        "prompt_eval_count": 4,
        "prompt_eval_duration": 1_000,
        "eval_count": n,
        "eval_duration": 1_000_000,
    }


def stream_parts(model: str, n: int, per_write: int) -> list[bytes]:
    """The NDJSON body of a streamed generation, split into the server's writes."""
    key = ("stream", model, n, per_write)
    parts: list[bytes] | None = _CACHE.get(key)
    if parts is None:
        head = {"model": model, "created_at": _CREATED}
        line = (json.dumps({**head, "response": TOKEN, "done": False}) + "\n").encode()
        last = (json.dumps({**head, "response": "", **_stats(n)}) + "\n").encode()
        lines = [line] * n + [last]
        parts = [b"".join(lines[i : i + per_write]) for i in range(0, len(lines), per_write)]
        if len(_CACHE) < 256:
            _CACHE[key] = parts
    return parts


def whole_body(model: str, n: int) -> bytes:
    """The JSON body of a non-streamed generation."""
    key = ("whole", model, n)
    body: bytes | None = _CACHE.get(key)
    if body is None:
        obj = {"model": model, "created_at": _CREATED, "response": TOKEN * n, **_stats(n)}
        body = json.dumps(obj).encode()
        if len(_CACHE) < 256:
            _CACHE[key] = body
    return body


def sse_parts(model: str, n: int, per_write: int, usage: bool) -> list[bytes]:
    """The SSE body of a streamed OpenAI completion, split into the server's writes."""
    key = ("sse", model, n, per_write, usage)
    parts: list[bytes] | None = _CACHE.get(key)
    if parts is None:
        head = {"id": "cmpl-bench", "object": "text_completion", "created": 0, "model": model}

        def event(obj: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps({**head, **obj}, separators=(",", ":")).encode() + b"\n\n"

        line = event({"choices": [{"index": 0, "text": TOKEN, "finish_reason": None}]})
        events = [line] * n + [event({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})]
        if usage:
            events.append(event({"choices": [], "usage": _usage(n)}))
        events.append(b"data: [DONE]\n\n")
        parts = [b"".join(events[i : i + per_write]) for i in range(0, len(events), per_write)]
        if len(_CACHE) < 256:
            _CACHE[key] = parts
    return parts


def _usage(n: int) -> dict[str, int]:
    return {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": n + 4}


async def openai_models(request: web.Request) -> web.Response:
    body = b'{"object":"list","data":[{"id":"bench-model","object":"model","owned_by":"bench"}]}'
    return web.Response(body=body, content_type="application/json")


async def openai_completions(request: web.Request) -> web.StreamResponse:
    try:
        data = json.loads(await request.read())
        model = str(data["model"])
        n = max(0, min(int(data.get("max_tokens", 1)), _MAX_CHUNKS))
        per_write = max(1, int(data.get("bench_lines_per_write", 256)))
        usage = bool((data.get("stream_options") or {}).get("include_usage"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return web.json_response({"error": {"message": f"bad request: {exc}"}}, status=400)
    if not data.get("stream"):
        key = ("openai_whole", model, n)
        body: bytes | None = _CACHE.get(key)
        if body is None:
            obj = {"id": "cmpl-bench", "object": "text_completion", "created": 0, "model": model,
                   "choices": [{"index": 0, "text": TOKEN * n, "finish_reason": "stop"}],
                   "usage": _usage(n)}
            body = json.dumps(obj).encode()
            if len(_CACHE) < 256:
                _CACHE[key] = body
        return web.Response(body=body, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for part in sse_parts(model, n, per_write, usage):
        await response.write(part)
    await response.write_eof()
    return response


async def version(request: web.Request) -> web.Response:
    return web.Response(body=b'{"version":"0.0.0-fake"}', content_type="application/json")


async def generate(request: web.Request) -> web.StreamResponse:
    try:
        data = json.loads(await request.read())
        model = str(data["model"])
        options = data.get("options") or {}
        n = max(0, min(int(options.get("num_predict", 1)), _MAX_CHUNKS))
        per_write = max(1, int(options.get("bench_lines_per_write", 256)))
    except (ValueError, KeyError, TypeError) as exc:
        return web.json_response({"error": f"bad request: {exc}"}, status=400)
    if not data.get("stream", True):
        return web.Response(body=whole_body(model, n), content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for part in stream_parts(model, n, per_write):
        await response.write(part)
    await response.write_eof()
    return response


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/api/version", version)
    app.router.add_post("/api/generate", generate)
    app.router.add_get("/v1/models", openai_models)
    app.router.add_post("/v1/completions", openai_completions)
    return app


async def serve(port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stdin() -> None:  # the parent went away (or closed our stdin): stop
        try:
            if os.read(0, 4096):
                return
        except OSError:
            pass
        loop.remove_reader(0)
        stop.set()

    if stat.S_ISFIFO(os.fstat(0).st_mode):
        loop.add_reader(0, on_stdin)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None and isinstance(server, asyncio.base_events.Server)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        try:
            await asyncio.wait_for(stop.wait(), max_seconds)
        except TimeoutError:
            pass
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 = a free port (the default)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="exit after this long")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.max_seconds))


if __name__ == "__main__":
    main()
