"""Base of papin's fake backend servers: an ``aiohttp.web`` app in a background thread.

Each fake (Ollama now; LocalAI, llama-server, vLLM later) subclasses :class:`FakeServer` and
adds its routes. The base gives every fake the same test plumbing:

* lifecycle: ``with FakeX() as fake:`` starts the server on ``127.0.0.1`` and a free port in
  a thread with its own event loop; :meth:`FakeServer.stop` never hangs (bounded waits, all
  handlers released, thread joined);
* recording: :attr:`FakeServer.requests` (method, path, headers, body, json);
* one-shot faults: :meth:`FakeServer.fault` (``status``, ``never_answer``, ``reset``...);
* stream writing with faults applied (:meth:`FakeServer.respond_stream`) and evidence that a
  client went away (:attr:`FakeServer.streams`, :attr:`FakeServer.disconnects`).

Time spent holding a connection open (``never_answer``, ``stall_mid_stream``) is bounded, and
ends at once when the client disconnects or the server stops.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self

from aiohttp import web
from multidict import CIMultiDict

from tests.fakes._records import (
    BODY_FAULTS,
    FAULT_KINDS,
    PRE_FAULTS,
    Fault,
    Frame,
    RecordedRequest,
    StreamRecord,
    split_mid_character,
)

__all__ = [
    "BODY_FAULTS",
    "FAULT_KINDS",
    "PRE_FAULTS",
    "Fault",
    "FakeServer",
    "Frame",
    "RecordedRequest",
    "StreamRecord",
    "split_mid_character",
]

_FAULT_KEY = web.RequestKey("papin_fault", object)
_HOLD_LIMIT = 30.0  # longest a fake ever holds a connection open without writing
_POLL = 0.01
_STATUS_TEXT = {
    401: "unauthorized",
    403: "forbidden",
    429: "too many requests",
    500: "an internal error occurred",
    503: "server busy, please try again.  maximum pending requests exceeded",
}



class FakeServer:
    """A threaded aiohttp server with recording, faults and disconnect accounting."""

    #: What ``__repr__`` and errors call this fake.
    label = "fake server"

    #: The loopback address to listen on (set before start: 127.0.0.2, 127.0.0.3... play
    #: other hosts).
    host = "127.0.0.1"

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.requests: list[RecordedRequest] = []
        self.streams: list[StreamRecord] = []
        self.connections_opened = 0
        self._faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        self._ssl = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.port = 0

    # -- to override ----------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        """Register the fake's routes."""
        raise NotImplementedError

    def not_found(self, request: web.Request) -> web.StreamResponse:
        """The answer for an unknown path."""
        return web.Response(status=404, text="404 page not found")

    def method_not_allowed(self, request: web.Request) -> web.StreamResponse:
        """The answer for a known path with the wrong method."""
        return web.Response(status=405, text="405 method not allowed")

    def check_auth(self, request: web.Request) -> web.StreamResponse | None:
        """An error answer when the request lacks credentials the fake requires."""
        return None

    def fault_body(self, kind: str, fault: Fault) -> bytes:
        """Bytes of a fault's frame: ``error`` (an in-stream error), ``keepalive`` (a blank
        NDJSON line) or ``malformed``."""
        if kind == "keepalive":
            return b"\n"
        if kind == "error":
            message = fault.get("message", "an error was encountered while running the model")
            return json.dumps({"error": message}).encode() + b"\n"
        return bytes(fault.get("line", b"this is not json\n"))

    def error_trailer(self, fault: Fault) -> bytes:
        """Bytes written after an ``error_in_stream`` frame, before the stream ends
        (``b""``: none; an SSE server may send ``data: [DONE]``)."""
        return b""

    def status_fault_body(self, status: int, message: str) -> Any:
        """The default body of a ``status`` fault (a JSON-able object, str or bytes)."""
        return {"error": message}

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL (``http://127.0.0.1:PORT``)."""
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> Self:
        """Start serving; returns once the port is bound."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._serve, name=f"{self.label}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0):
            raise RuntimeError(f"{self.label} did not start within 10 s")
        if self._startup_error is not None:
            raise RuntimeError(f"{self.label} failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Stop serving: release held connections, close everything, join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                future.result(timeout=5.0)
            except Exception:  # noqa: BLE001 - stopping must go on whatever happened
                future.cancel()
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)
        self._thread = None
        if thread.is_alive():  # pragma: no cover - would be a bug in the fake
            raise RuntimeError(f"{self.label} thread did not exit")

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._startup())
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                self._startup_error = exc
                self._ready.set()
                return
            self._ready.set()
            loop.run_forever()
        finally:
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=2.0))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            asyncio.set_event_loop(None)

    async def _startup(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        self.add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        server = runner.server
        assert server is not None
        original = server.connection_made

        def counting(handler: Any, transport: asyncio.Transport) -> None:
            self.connections_opened += 1
            original(handler, transport)

        server.connection_made = counting  # type: ignore[method-assign]
        self._runner = runner
        self.port = await self.open_site(runner)

    async def open_site(self, runner: web.AppRunner) -> int:
        """Start listening on 127.0.0.1 and return the port (a fake that must refuse
        connections for a while, as vLLM does while it starts, overrides this)."""
        site = web.TCPSite(runner, self.host, 0, ssl_context=self._ssl)
        await site.start()
        return int(runner.addresses[0][1])

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            try:
                async with asyncio.timeout(3.0):
                    await self._runner.cleanup()
            except TimeoutError:
                pass

    # -- faults ---------------------------------------------------------------------------
    def fault(self, path: str, kind: str, *, times: int = 1, **params: Any) -> None:
        """Make the next ``times`` requests to ``path`` misbehave in the way ``kind`` names.

        Kinds: ``status`` (``status``, ``body``, ``headers``, ``content_type``),
        ``never_answer`` (``seconds``), ``cold_load`` (``seconds``), ``reset``,
        ``wrong_content_type`` (``body``), ``empty_body``, ``huge_response`` (``mb``),
        ``bad_chunked`` (a chunk-size line that is not hexadecimal), ``bad_status_line``,
        ``stall_mid_stream`` (``after``, ``seconds``), ``disconnect_mid_stream``
        (``after``, ``rst``), ``malformed_frame`` (``after``, ``line``), ``truncated_frame``
        (``after``, ``abort``), ``split_utf8`` (``text``), ``error_in_stream`` (``after``,
        ``message``), ``no_done`` (``frames``: how many trailing frames to drop, default
        the end marker), ``slow_drip`` (``seconds``), ``keepalive_forever`` (``after``; then
        only keep-alive frames every ``every`` seconds, for at most ``seconds``). Subclasses may
        read more parameters.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(sorted(FAULT_KINDS))}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.setdefault(path, []).append(Fault(kind, dict(params), times))

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> dict[str, list[str]]:
        """Faults not yet used, by path."""
        with self._lock:
            return {p: [f.kind for f in fs] for p, fs in self._faults.items() if fs}

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(path)
            if not queue:
                return None
            fault = queue[0]
            fault.times -= 1
            if fault.times <= 0:
                queue.pop(0)
            return fault

    @staticmethod
    def fault_of(request: web.Request) -> Fault | None:
        """The body fault the middleware attached to ``request``, if any."""
        fault = request.get(_FAULT_KEY)
        return fault if isinstance(fault, Fault) else None

    # -- evidence -------------------------------------------------------------------------
    @property
    def disconnects(self) -> int:
        """How many answers the client abandoned before they ended."""
        return sum(1 for s in list(self.streams) if s.disconnected)

    @property
    def last_stream(self) -> StreamRecord | None:
        """The record of the latest answer body (``sent``, ``planned``, ``disconnected``...)."""
        return self.streams[-1] if self.streams else None

    @property
    def open_connections(self) -> int:
        """Connections currently open to the server."""
        runner = self._runner
        server = runner.server if runner is not None else None
        return len(server.connections) if server is not None else 0

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        """The recorded requests to ``path`` (and ``method``, when given)."""
        return [
            r for r in list(self.requests)
            if r.path == path and (method is None or r.method == method.upper())
        ]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate`` (from the test's thread) until true or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)

    async def async_wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """:meth:`wait_for` for async tests (does not block the test's event loop)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL)

    async def wait_for_disconnects(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait (asynchronously) until the fake has seen ``count`` client disconnects."""
        return await self.async_wait_for(lambda: self.disconnects >= count, timeout)

    # -- request pipeline -----------------------------------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed = json.loads(body) if body.strip() else None
        except ValueError:
            parsed = None
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=CIMultiDict(request.headers),
                body=body,
                json=parsed,
                received_at=time.monotonic(),
            )
        )
        fault = self._take_fault(request.path)
        if fault is not None and fault.kind in PRE_FAULTS:
            early = await self._pre_fault(request, fault)
            if early is not None:
                return early
        elif fault is not None:
            request[_FAULT_KEY] = fault
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return self.not_found(request)
        except web.HTTPMethodNotAllowed:
            return self.method_not_allowed(request)

    async def _pre_fault(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        kind = fault.kind
        if kind == "status":
            return self._status_response(fault)
        if kind == "cold_load":
            await self.sleep(float(fault.get("seconds", 1.0)))
            return None
        if kind == "never_answer":
            record = self._record(request, 0, fault)
            record.disconnected = await self.hold(request, float(fault.get("seconds", _HOLD_LIMIT)))
            if not record.disconnected:
                self._abort(request, record, rst=False)
            record.ended_at = time.monotonic()
            return web.Response()
        if kind == "reset":
            record = self._record(request, 0, fault)
            self._abort(request, record, rst=True)
            record.ended_at = time.monotonic()
            return web.Response()
        if kind == "wrong_content_type":
            page = fault.get(
                "body",
                "<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head>"
                "<body><h1>Welcome to nginx!</h1></body></html>",
            )
            return web.Response(status=200, text=page, content_type="text/html")
        if kind == "empty_body":
            return web.Response(
                status=200, body=b"", content_type=str(fault.get("content_type", "application/json"))
            )
        if kind == "huge_response":
            return await self._huge(request, fault)
        if kind in ("bad_chunked", "bad_status_line"):
            # Broken HTTP framing, written on the socket as is: a chunk-size line that is not
            # hexadecimal, or a status line that is not HTTP.
            raw = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n"
                if kind == "bad_chunked"
                else b"SSH-2.0-OpenSSH_9.6\r\n\r\n"
            )
            record = self._record(request, 0, fault)
            if request.transport is not None:
                request.transport.write(raw)
            await asyncio.sleep(0.05)
            self._abort(request, record, rst=False)
            record.ended_at = time.monotonic()
            return web.Response()
        raise AssertionError(kind)  # pragma: no cover

    def _status_response(self, fault: Fault) -> web.Response:
        status = int(fault.get("status", 500))
        body = fault.get("body")
        content_type = fault.get("content_type")
        if body is None:
            message = fault.get("message", _STATUS_TEXT.get(status, f"fake error {status}"))
            body = self.status_fault_body(status, message)
        if isinstance(body, dict | list):
            data = json.dumps(body, separators=(",", ":")).encode()
            content_type = content_type or "application/json"
        elif isinstance(body, str):
            data = body.encode()
            content_type = content_type or "text/plain"
        else:
            data = bytes(body)
            content_type = content_type or "application/octet-stream"
        response = web.Response(status=status, body=data, headers=fault.get("headers") or {})
        response.content_type = content_type
        return response

    async def _huge(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        size = int(float(fault.get("mb", 80)) * 1024 * 1024)
        piece = b"x" * 65536
        record = self._record(request, size // len(piece) + 2, fault)
        response = web.StreamResponse(status=200)
        response.content_type = str(fault.get("content_type", "application/json"))
        try:
            await response.prepare(request)
            await response.write(b'{"padding":"')
            record.sent += 1
            written = 0
            while written < size and not self._is_stopping():
                await response.write(piece)
                written += len(piece)
                record.sent += 1
            await response.write(b'"}')
            await response.write_eof()
            record.completed = True
        except ConnectionError:
            record.disconnected = True
        record.ended_at = time.monotonic()
        return response

    # -- helpers for handlers -------------------------------------------------------------
    def _is_stopping(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the server stops."""
        if seconds <= 0:
            return
        if self._stopping is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def hold(self, request: web.Request, limit: float = _HOLD_LIMIT) -> bool:
        """Keep the connection open without writing; True when the client went away."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(limit, _HOLD_LIMIT)
        while loop.time() < deadline and not self._is_stopping():
            transport = request.transport
            if transport is None or transport.is_closing():
                return True
            await self.sleep(_POLL)
        return False

    def _record(self, request: web.Request, planned: int, fault: Fault | None) -> StreamRecord:
        record = StreamRecord(request.path, planned, fault.kind if fault else None)
        self.streams.append(record)
        return record

    @staticmethod
    def _abort(request: web.Request, record: StreamRecord, *, rst: bool) -> None:
        transport = request.transport
        record.aborted = True
        if transport is None:
            return
        if rst:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    async def respond_stream(
        self,
        request: web.Request,
        frames: Sequence[Frame],
        *,
        content_type: str,
        delay: float = 0.0,
        end_frames: int = 1,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """Write ``frames`` as a streamed (chunked) answer, applying the request's body fault.

        ``end_frames`` is how many trailing frames make the end-of-stream marker (dropped by
        ``no_done``). Client disconnects are recorded, and stop the writing.
        """
        fault = self.fault_of(request)
        kind = fault.kind if fault is not None else None
        items = list(frames)
        if kind == "no_done" and fault is not None:
            drop = int(fault.get("frames", end_frames))  # how many trailing frames to drop
            items = items[:-drop] if drop else items
        record = self._record(request, len(items), fault)
        after = int(fault.get("after", 2)) if fault is not None else -1
        drip = float(fault.get("seconds", 0.05)) if kind == "slow_drip" and fault else 0.0
        response = web.StreamResponse(status=status, headers=headers)
        response.content_type = content_type
        try:
            await response.prepare(request)
            for index, frame in enumerate(items):
                if self._is_stopping():
                    return response
                if index > 0 and delay:
                    await self.sleep(delay)
                if drip:
                    await self.sleep(drip)
                data = frame() if callable(frame) else frame
                if fault is not None and index == min(after, len(items) - 1):
                    done = await self._mid_stream_fault(request, response, record, fault, data)
                    if done:
                        record.ended_at = time.monotonic()
                        return response
                if kind == "split_utf8":
                    for piece in split_mid_character(data):
                        await response.write(piece)
                        await asyncio.sleep(0.01)  # separate TCP segments
                else:
                    await response.write(data)
                record.sent += 1
            await response.write_eof()
            record.completed = True
        except ConnectionError:
            record.disconnected = True
        record.ended_at = time.monotonic()
        return response

    async def _mid_stream_fault(
        self,
        request: web.Request,
        response: web.StreamResponse,
        record: StreamRecord,
        fault: Fault,
        frame: bytes,
    ) -> bool:
        """Apply a mid-stream fault before ``frame``; True when the stream ends here."""
        kind = fault.kind
        if kind == "stall_mid_stream":
            record.disconnected = await self.hold(request, float(fault.get("seconds", _HOLD_LIMIT)))
            if not record.disconnected and not self._is_stopping():
                await response.write_eof()  # give up: end the stream without the rest
            return True
        if kind == "disconnect_mid_stream":
            self._abort(request, record, rst=bool(fault.get("rst", False)))
            return True
        if kind == "keepalive_forever":
            every, limit = float(fault.get("every", 0.05)), float(fault.get("seconds", _HOLD_LIMIT))
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline and not self._is_stopping():
                await response.write(self.fault_body("keepalive", fault))
                await self.sleep(every)
            record.ended_at = time.monotonic()
            return True
        if kind == "truncated_frame":
            await response.write(frame[: max(1, len(frame) // 2)])
            if fault.get("abort", False):
                self._abort(request, record, rst=False)
            else:
                await response.write_eof()
            return True
        if kind == "error_in_stream":
            await response.write(self.fault_body("error", fault))
            record.sent += 1
            trailer = self.error_trailer(fault)
            if trailer:
                await response.write(trailer)
            await response.write_eof()
            return True
        if kind == "malformed_frame":
            await response.write(self.fault_body("malformed", fault))
            record.sent += 1
        return False  # the stream goes on (malformed, split_utf8, slow_drip, no_done)

    async def respond_body(
        self,
        request: web.Request,
        body: bytes,
        *,
        content_type: str = "application/json; charset=utf-8",
        status: int = 200,
    ) -> web.StreamResponse:
        """A non-streamed answer; body faults apply to it as to a one-frame stream."""
        fault = self.fault_of(request)
        if fault is None:
            response = web.Response(status=status, body=body)
            response.headers["Content-Type"] = content_type
            return response
        if fault.kind in ("no_done", "error_in_stream"):
            fault = Fault("truncated_frame", fault.params) if fault.kind == "no_done" else fault
        kind, params = fault.kind, dict(fault.params)
        params["after"] = 0
        request[_FAULT_KEY] = Fault(kind, params)
        return await self.respond_stream(
            request, [body], content_type=content_type, status=status, end_frames=0
        )
