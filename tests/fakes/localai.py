"""A fake LocalAI server that follows the wire reference (``backend-apis.md`` §2, §7.4, §8.2).

Example::

    from tests.fakes.localai import FakeLocalAI, GalleryModel

    with FakeLocalAI(models=["phi-2"], version="4.9.0") as fake:
        fake.add_gallery_model("tinyllama", files=[("tinyllama.gguf", 4 * 1024 * 1024)])
        ...  # POST /models/apply {"id": "localai@tinyllama"}, then poll /models/jobs/<uuid>

Knobs (plain attributes), besides those of :class:`FakeOpenAIServer` (``models``, ``tokens``,
``token_delay``, ``keepalive_every``...):

* ``version`` (``"4.9.0"``): the behaviour profile. ``/readyz`` knows "starting" from 4.8;
  job ``error`` is ``{}``/``null`` up to 4.3, a string or absent from 4.4; an unknown model is
  404 from 4.1 (500 ``could not load model`` before); the 401 is JSON from 4.1, JSON or the
  HTML login page (by request ``Content-Type``) in 3.8–4.0, the login page in 3.0–3.7, and a
  flat ``{"message": ...}`` in 2.x; ``/backend/load`` exists from 4.6.
* ``api_key``: one key or ``"k1,k2"``; read from ``Authorization: Bearer``, ``x-api-key``,
  ``xi-api-key`` or the ``token`` cookie. ``starting``: ``/readyz`` answers 503.
* ``gallery``: name -> :class:`GalleryModel`; ``job_updates`` (progress polls per file),
  ``queued_polls`` (polls showing ``queued`` first), ``hidden_polls`` (polls answered "could not
  find any status for ID", as older servers do before a worker picks the job up),
  ``report_bytes`` (newer ``current_bytes``/``total_bytes``), ``cancel_supported``
  (``POST /api/operations/<uuid>/cancel``), ``opaque_errors`` (empty error bodies).

Jobs advance one step per ``GET /models/jobs/<uuid>`` (deterministic, no timers).
"""

from __future__ import annotations

import json
import re
import ssl
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web

from tests.fakes._server import Fault, RecordedRequest, StreamRecord
from tests.fakes.openai_server import JSON_UTF8, FakeOpenAIServer, compact

__all__ = [
    "LOGIN_PAGE",
    "FakeLocalAI",
    "Fault",
    "GalleryModel",
    "Job",
    "RecordedRequest",
    "StreamRecord",
    "format_bytes",
]

MIB = 1024 * 1024
#: The web UI's login page that v3.x answers a missing key with (title as the real one).
LOGIN_PAGE = (
    "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"UTF-8\"><title>LocalAI - Login</title>"
    "</head><body><form action=\"/login\" method=\"post\"><input type=\"password\" name=\"token\">"
    "<button type=\"submit\">Login</button></form></body></html>"
)
_PUBLIC = frozenset({"/healthz", "/readyz", "/", "/login", "/.well-known/localai.json"})
_PUBLIC_PREFIXES = ("/swagger", "/app", "/browse", "/static", "/api/auth/")


def format_bytes(size: int) -> str:
    """``pkg/downloader``'s ``formatBytes``: ``"512 B"``, ``"1.5 KiB"``, ``"1.2 GiB"``."""
    if size < 1024:
        return f"{size} B"
    div, exp, n = 1024, 0, size // 1024
    while n >= 1024:
        div, exp, n = div * 1024, exp + 1, n // 1024
    return f"{size / div:.1f} {'KMGTPE'[exp]}iB"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3]) or (0,)


@dataclass(slots=True)
class GalleryModel:
    """An entry of a model gallery; ``fail`` makes its install fail with that text."""

    name: str
    gallery: str = "localai"
    files: list[tuple[str, int]] = field(default_factory=list)
    description: str = "A small test model."
    license: str = "apache-2.0"
    tags: list[str] = field(default_factory=lambda: ["llm", "gguf"])
    backend: str = "llama-cpp"
    fail: str | None = None

    def metadata(self, installed: bool) -> dict[str, Any]:
        """The ``/models/available`` entry (``installed`` is omitempty)."""
        entry: dict[str, Any] = {
            "name": self.name,
            "url": f"github:mudler/LocalAI/gallery/{self.name}.yaml@master",
            "description": self.description,
            "license": self.license,
            "urls": [f"https://huggingface.co/papin/{self.name}"],
            "icon": "",
            "tags": self.tags,
            "files": [{"filename": f, "uri": f"huggingface://papin/{f}", "sha256": ""}
                      for f, _ in self.files],
            "gallery": {"name": self.gallery,
                        "url": "github:mudler/LocalAI/gallery/index.yaml@master"},
            "backend": self.backend,
        }
        if installed:
            entry["installed"] = True
        return entry


@dataclass(slots=True)
class Job:
    """A gallery job: the ``OpStatus`` values it goes through, one per poll."""

    uuid: str
    name: str
    steps: list[dict[str, Any]]
    on_done: Callable[[], None] | None = None
    hidden: int = 0
    index: int = 0
    current: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.current is not None and bool(self.current.get("processed"))


class FakeLocalAI(FakeOpenAIServer):
    """Fake LocalAI (``local-ai run``) on 127.0.0.1 and a free port."""

    label = "fake LocalAI"
    route_prefixes: ClassVar[tuple[str, ...]] = ("/v1", "")
    done_after_error: ClassVar[bool] = True
    auth_headers: ClassVar[tuple[str, ...]] = ("authorization", "x-api-key", "xi-api-key")

    def __init__(
        self,
        models: Iterable[str] = ("phi-2",),
        *,
        version: str = "4.9.0",
        tokens: Iterable[str] | None = None,
        api_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(models, tokens=tokens, api_key=api_key, ssl_context=ssl_context)
        self.version = version
        self.starting = False
        self.gallery: dict[str, GalleryModel] = {}
        self.jobs: dict[str, Job] = {}
        self.loaded: set[str] = set()
        self.job_updates = 4
        self.queued_polls = 0
        self.hidden_polls = 0
        self.report_bytes = False
        self.cancel_supported = True
        self.opaque_errors = False

    # -- state ----------------------------------------------------------------------------
    @property
    def v(self) -> tuple[int, ...]:
        """The version as a tuple, for comparisons (``fake.v >= (4, 1)``)."""
        return _version_tuple(self.version)

    def add_gallery_model(self, name: str, **fields: Any) -> GalleryModel:
        """Add a gallery entry (``files`` defaults to one 8 MiB GGUF)."""
        fields.setdefault("files", [(f"{name}.gguf", 8 * MIB)])
        entry = GalleryModel(name, **fields)
        self.gallery[name] = entry
        return entry

    def find_gallery(self, ref: str) -> GalleryModel | None:
        """The entry ``gallery@name`` or ``name`` (any gallery, any case) means."""
        gallery, _, name = ref.rpartition("@")
        for entry in list(self.gallery.values()):
            if entry.name.lower() == name.lower() and (not gallery or gallery == entry.gallery):
                return entry
        return None

    # -- envelopes ------------------------------------------------------------------------
    def error_envelope(self, status: int, message: str, error_type: str | None = None) -> Any:
        if self.opaque_errors:
            return b""
        return {"error": {"code": status, "message": message, "type": error_type or ""}}

    def stream_error_object(self, message: str) -> Any:
        return {"code": "server_error", "message": message, "type": "server_error"}

    def json_response(self, obj: Any, status: int = 200) -> web.Response:
        """A JSON answer as echo writes it (``c.JSON``)."""
        response = web.Response(status=status, body=compact(obj) + b"\n")
        response.headers["Content-Type"] = JSON_UTF8
        return response

    def model_not_found(self, name: str) -> web.StreamResponse:
        if self.v >= (4, 1) and "/" not in name:
            return self.error(
                404,
                f'model "{name}" not found. To see available models, call GET /v1/models',
                "invalid_request_error",
            )
        return self.error(
            500,
            "could not load model - all backends returned error: [llama-cpp]: failed to load "
            f"model with internal loader: could not load model: rpc error: code = Unknown desc = "
            f"stat /models/{name}: no such file or directory",
        )

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        key = self.key_of(request)
        if self.v < (3, 0):
            auth = request.headers.get("Authorization")
            text = ("Authorization header missing" if auth is None and key is None
                    else "Invalid Authorization header format" if key is None
                    else "Invalid API key")
            return self.json_response({"message": text}, status=401)
        wants_json = "application/json" in request.headers.get("Content-Type", "")
        if self.v < (3, 8) or (self.v < (4, 1) and not wants_json):
            headers = {"WWW-Authenticate": "Bearer"} if self.v >= (3, 8) else None
            return web.Response(status=401, text=LOGIN_PAGE, content_type="text/html",
                                headers=headers)
        return self.error(401, "An authentication key is required", "invalid_request_error",
                          headers={"WWW-Authenticate": "Bearer"})

    def not_found(self, request: web.Request) -> web.StreamResponse:
        return self.json_response({"error": {"code": 404, "message": "Resource not found"}}, 404)

    def method_not_allowed(self, request: web.Request) -> web.StreamResponse:
        return self.error(405, "Method Not Allowed")

    def model_entry(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model"}

    # -- auth -----------------------------------------------------------------------------
    def is_protected(self, request: web.Request) -> bool:
        path = request.path
        return path not in _PUBLIC and not path.startswith(_PUBLIC_PREFIXES)

    def key_of(self, request: web.Request) -> str | None:
        return super().key_of(request) or request.cookies.get("token")

    def check_auth(self, request: web.Request) -> web.StreamResponse | None:
        if self.api_key is None or not self.is_protected(request):
            return None
        keys = {k.strip() for k in self.api_key.split(",") if k.strip()}
        if self.key_of(request) in keys:
            return None
        return self.unauthorized(request)

    # -- routes ---------------------------------------------------------------------------
    def add_extra_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/healthz", self._healthz)
        r.add_get("/readyz", self._readyz)
        r.add_get("/version", self._version)
        r.add_get("/models/available", self._available)
        r.add_get("/models/galleries", self._galleries)
        r.add_post("/models/apply", self._apply)
        r.add_post("/models/delete/{name}", self._delete)
        r.add_get("/models/jobs/{uuid}", self._job)
        r.add_get("/models/jobs", self._all_jobs)
        r.add_post("/api/operations/{uuid}/cancel", self._cancel)
        for prefix in ("", "/v1"):
            r.add_post(f"{prefix}/backend/load", self._backend_load)
            r.add_post(f"{prefix}/backend/shutdown", self._backend_shutdown)
        r.add_get("/api/tags", self._ollama_tags)  # since v4.2 (gotcha 10)

    async def parse_body(self, request: web.Request) -> dict[str, Any] | web.StreamResponse:
        raw = await request.read()
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:  # echo's HTTPError.Error() prefix (gotcha 12)
            return self.error(400, f"code=400, message=failed parsing request body: {exc}")
        if not isinstance(data, dict):
            return self.error(400, "code=400, message=Unmarshal type error: expected=object")
        if not data.get("model"):  # the Bearer token is tried as a model name (gotcha 13)
            token = self.key_of(request)
            if token and token in self.models:
                data["model"] = token
        return data

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="OK") if self.v < (3, 8) else web.Response(status=200)

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        if self.starting and self.v >= (4, 8):
            return self.json_response(
                {"status": "starting", "reason": "startup preload in progress"}, 503
            )
        return await self._healthz(request)

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return self.json_response({"version": f"v{self.version}"})

    async def _ollama_tags(self, request: web.Request) -> web.StreamResponse:
        if self.v < (4, 2):
            return self.not_found(request)
        return self.json_response({"models": [{"name": m, "model": m} for m in self.models]})

    async def _available(self, request: web.Request) -> web.StreamResponse:
        body = [g.metadata(g.name in self.models) for g in list(self.gallery.values())]
        return await self.respond_body(request, compact(body), content_type=JSON_UTF8)

    async def _galleries(self, request: web.Request) -> web.StreamResponse:
        names = sorted({g.gallery for g in self.gallery.values()} or {"localai"})
        return self.json_response(
            [{"name": n, "url": "github:mudler/LocalAI/gallery/index.yaml@master"} for n in names]
        )

    # -- gallery jobs ---------------------------------------------------------------------
    def op_status(self, name: str, **values: Any) -> dict[str, Any]:
        """An ``OpStatus`` as the server marshals it (``error`` per version)."""
        error = values.pop("error", None)
        status: dict[str, Any] = {"deletion": False, "file_name": ""}
        if self.v < (4, 4):
            status["error"] = None if error is None else {}
        elif error is not None:
            status["error"] = error
        status.update(processed=False, message="", progress=0, file_size="",
                      downloaded_size="", gallery_element_name=name, cancelled=False,
                      cancellable=True)
        status.update(values)
        return status

    def _start(self, name: str, steps: list[dict[str, Any]], on_done: Callable[[], None] | None,
               request: web.Request) -> web.Response:
        job_id = str(uuid.uuid1())
        self.jobs[job_id] = Job(job_id, name, steps, on_done, hidden=self.hidden_polls)
        status_url = f"http://{request.host}/models/jobs/{job_id}"
        return self.json_response({"uuid": job_id, "status": status_url})

    def install_steps(
        self, name: str, entry: GalleryModel | None, ref: str | None = None
    ) -> list[dict[str, Any]]:
        """The statuses of an install of ``ref`` (default ``name``): queued, processing,
        per-file progress, the end."""
        steps = [self.op_status(name, message="queued", phase="queued")
                 for _ in range(self.queued_polls)]
        first = "processing" if self.v < (3, 0) else f"processing model: {name}"
        steps.append(self.op_status(name, message=first))
        if entry is None:
            return [*steps, self.failed(name, f'no model found with name "{ref or name}"')]
        count, updates = len(entry.files), max(1, self.job_updates)
        grand = sum(size for _, size in entry.files)
        before = 0
        for number, (filename, size) in enumerate(entry.files):
            for k in range(1, updates + 1):
                current = size * k // updates
                percent = current / size * 100 if size else 0.0
                if count > 1:
                    percent = percent / count + number * 100 / count
                values: dict[str, Any] = {
                    "message": f"processing file: {filename}. Total: {format_bytes(size)}. "
                    f"Current: {format_bytes(current)}",
                    "file_name": filename, "progress": percent, "file_size": format_bytes(size),
                    "downloaded_size": format_bytes(current),
                }
                if self.report_bytes:
                    values.update(phase="downloading", current_bytes=before + current,
                                  total_bytes=grand)
                steps.append(self.op_status(name, **values))
                if entry.fail is not None and number == count - 1 and k == updates // 2:
                    return [*steps, self.failed(name, entry.fail)]
            before += size
        steps.append(self.op_status(name, processed=True, message="completed", progress=100,
                                    cancellable=False))
        return steps

    def failed(self, name: str, text: str) -> dict[str, Any]:
        """The status of a failed job: ``message: "error: <text>"``."""
        return self.op_status(name, processed=True, message=f"error: {text}", error=text,
                              cancellable=False)

    async def _apply(self, request: web.Request) -> web.StreamResponse:
        body = await self.parse_body(request)
        if isinstance(body, web.StreamResponse):
            return body
        ref = str(body.get("id") or body.get("url") or "")  # id wins over url
        entry = self.find_gallery(ref) if body.get("id") else next(
            (g for g in self.gallery.values() if g.metadata(False)["url"] == ref), None)
        name = str(body.get("name") or (entry.name if entry else ref.rpartition("@")[2]))

        def install() -> None:
            if name not in self.models:
                self.models.append(name)

        return self._start(ref, self.install_steps(name, entry, ref), install, request)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]

        def remove() -> None:
            if name in self.models:
                self.models.remove(name)
            self.loaded.discard(name)

        if name in self.models:
            final = self.op_status(name, deletion=True, processed=True, message="completed",
                                   progress=100, cancellable=False)
        else:
            final = self.failed(name, f"failed to delete model {name}: no such file or directory")
            final["deletion"] = True
        return self._start(name, [final], remove, request)

    async def _job(self, request: web.Request) -> web.StreamResponse:
        job = self.jobs.get(request.match_info["uuid"])
        if job is not None and job.hidden > 0:
            job.hidden -= 1
            job = None
        if job is None:
            return self.error(500, "could not find any status for ID")
        if not job.finished:
            job.current = job.steps[min(job.index, len(job.steps) - 1)]
            job.index += 1
            if job.finished and job.on_done is not None and not _failed(job.current):
                job.on_done()
        return await self.respond_body(request, compact(job.current), content_type=JSON_UTF8)

    async def _all_jobs(self, request: web.Request) -> web.StreamResponse:
        return self.json_response({k: j.current for k, j in self.jobs.items() if j.current})

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        if not self.cancel_supported:
            return self.not_found(request)
        job_id = request.match_info["uuid"]
        job = self.jobs.get(job_id)
        if job is not None and job.current is not None and job.current.get("cancelled"):
            return self.json_response({"error": f'operation "{job_id}" is already cancelled'}, 400)
        if job is None or job.finished:
            return self.json_response(
                {"error": f'operation "{job_id}" not found or already completed'}, 400)
        job.current = self.op_status(job.name, processed=True, cancelled=True,
                                     message="cancelled", cancellable=False)
        return self.json_response({"success": True, "message": "Operation cancelled"})

    # -- backends -------------------------------------------------------------------------
    async def _backend_load(self, request: web.Request) -> web.StreamResponse:
        if self.v < (4, 6):
            return self.not_found(request)
        body = await self.parse_body(request)
        if isinstance(body, web.StreamResponse):
            return body
        name = str(body.get("model") or "")
        if not name:
            return self.json_response({"message": "model is required"}, 400)
        if name not in self.models:
            return self.json_response(
                {"message": f"failed to load model: model config not found for {name!r}"}, 500)
        self.loaded.add(name)
        return self.json_response({"loaded": sorted(self.loaded), "message": "model loaded"})

    async def _backend_shutdown(self, request: web.Request) -> web.StreamResponse:
        body = await self.parse_body(request)
        if isinstance(body, web.StreamResponse):
            return body
        self.loaded.discard(str(body.get("model") or ""))
        return web.Response(status=200)


def _failed(status: dict[str, Any]) -> bool:
    return bool(status.get("cancelled")) or str(status.get("message", "")).startswith("error")
