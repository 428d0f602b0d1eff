"""A fake LM Studio local server that follows the wire reference (``backend-apis.md`` §5, §6, §8).

Example::

    from tests.fakes.lmstudio import FakeLMStudio

    with FakeLMStudio(models=["qwen/qwen3-4b"]) as fake:
        fake.catalog["google/gemma-3-1b"] = 3_000_000
        fake.jit = False
        ...  # talk to fake.url
        assert fake.loaded_ids() == []

Knobs (plain attributes) besides :class:`FakeOpenAIServer`'s: ``library`` (downloaded models,
``add_model``), ``rest_api`` (``"v1"``: LM Studio 0.4+, with v0 as legacy; ``"v0"``: 0.3.6+;
``"none"``: only ``/v1``), ``jit`` (JIT loading, on by default: ``/v1/models`` lists every
downloaded model and requests load what they name), ``auto_evict`` (a JIT load unloads the
other JIT-loaded models), ``catalog`` (downloadable model -> size), ``download_steps`` (status
polls until a download completes), ``pause_polls`` (polls that report ``paused`` first),
``failing`` (catalog models whose download fails), ``status_by_id`` (serve
``/download/status/:job_id``; else only the ``/download/status`` listing), ``api_key`` (LM
Studio API token).

What the docs leave open is modelled on answers LM Studio gives in the wild: unknown paths get
200 with ``{"error": "Unexpected endpoint or method. (GET /x)"}``; an unknown model 400 with
``Invalid model identifier "x"`` and ``code: model_not_found``; a missing token 401 with
``code: invalid_api_key``; with JIT off and nothing loaded, 400 ``{"error": "No models loaded..."}``.
"""

from __future__ import annotations

import itertools
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web

from tests.fakes.openai_server import JSON_UTF8, FakeOpenAIServer, compact

__all__ = ["FakeInstance", "FakeLMModel", "FakeLMStudio", "NO_MODELS_LOADED"]

NO_MODELS_LOADED = (
    "No models loaded. Please load a model in the developer page or use the 'lms load' command."
)
TOKEN_REQUIRED = (
    "An LM Studio API token is required to make requests to this server, but none was provided "
    "using the Authorization header using the 'Bearer' scheme (i.e., 'Authorization: Bearer "
    "$LM_API_TOKEN'). Learn more at: https://lmstudio.ai/docs/developer/core/authentication."
)


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(when))


@dataclass(slots=True)
class FakeInstance:
    """One loaded instance of a model."""

    id: str
    context_length: int
    jit: bool = False
    ttl: int | None = None


@dataclass(slots=True)
class FakeLMModel:
    """A downloaded model, as LM Studio describes it."""

    key: str
    type: str = "llm"  # "llm", "vlm" or "embedding"
    publisher: str = "lmstudio-community"
    architecture: str = "llama"
    quantization: str = "Q4_K_M"
    bits_per_weight: float = 4
    size_bytes: int = 1_234_567_890
    params_string: str | None = "1B"
    max_context_length: int = 32768
    format: str = "gguf"
    tool_use: bool = False
    instances: list[FakeInstance] = field(default_factory=list)

    def v1_entry(self) -> dict[str, Any]:
        """The model in ``GET /api/v1/models``."""
        embedding = self.type == "embedding"
        entry: dict[str, Any] = {
            "type": "embedding" if embedding else "llm",
            "publisher": self.publisher,
            "key": self.key,
            "display_name": self.key.rsplit("/", 1)[-1].replace("-", " ").title(),
        }
        if not embedding:
            entry["architecture"] = self.architecture
        entry.update(
            quantization={"name": self.quantization, "bits_per_weight": self.bits_per_weight},
            size_bytes=self.size_bytes,
            params_string=self.params_string,
            loaded_instances=[
                {"id": i.id, "config": {"context_length": i.context_length}} for i in self.instances
            ],
            max_context_length=self.max_context_length,
            format=self.format,
        )
        if not embedding:
            entry["capabilities"] = {"vision": self.type == "vlm", "trained_for_tool_use": self.tool_use}
            entry["description"] = None
        return entry

    def v0_entry(self) -> dict[str, Any]:
        """The model in ``GET /api/v0/models``."""
        entry: dict[str, Any] = {
            "id": self.key,
            "object": "model",
            "type": "embeddings" if self.type == "embedding" else self.type,
            "publisher": self.publisher,
            "arch": self.architecture,
            "compatibility_type": self.format,
            "quantization": self.quantization,
            "state": "loaded" if self.instances else "not-loaded",
            "max_context_length": self.max_context_length,
        }
        if self.tool_use:
            entry["capabilities"] = ["tool_use"]
        return entry


@dataclass(slots=True)
class FakeJob:
    """A download job."""

    job_id: str
    model: str
    total: int
    started: float
    done: int = 0
    status: str = "downloading"
    polls: int = 0
    completed: float | None = None

    def body(self, *, first: bool = False) -> dict[str, Any]:
        """The job status object (the download answer has no ``downloaded_bytes``)."""
        out: dict[str, Any] = {"job_id": self.job_id, "status": self.status,
                               "total_size_bytes": self.total}
        if not first:
            out["downloaded_bytes"] = self.done
        out["started_at"] = _iso(self.started)
        if self.status == "downloading" and not first:
            out["bytes_per_second"] = 1_048_576.0
            out["estimated_completion"] = _iso(time.time() + 60)
        if self.completed is not None:
            out["completed_at"] = _iso(self.completed)
        return out


class FakeLMStudio(FakeOpenAIServer):
    """Fake LM Studio server on 127.0.0.1 and a free port."""

    label = "fake LM Studio"
    owner: ClassVar[str] = "organization_owner"

    def __init__(
        self,
        models: Iterable[str] = ("qwen/qwen3-4b",),
        *,
        tokens: Iterable[str] | None = None,
        api_key: str | None = None,
        rest_api: str = "v1",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__((), tokens=tokens, api_key=api_key, ssl_context=ssl_context)
        self.library: dict[str, FakeLMModel] = {}
        self.rest_api = rest_api
        self.jit = True
        self.auto_evict = True
        self.catalog: dict[str, int] = {}
        self.download_steps = 3
        self.pause_polls = 0
        self.failing: set[str] = set()
        #: Serve ``/download/status/:job_id`` (else only the ``/download/status`` listing).
        self.status_by_id = True
        self.jobs: dict[str, FakeJob] = {}
        self._job_ids = itertools.count(0x493C7C9DED)
        for name in models:
            self.add_model(name)

    # -- state ----------------------------------------------------------------------------
    def add_model(self, key: str, **fields: Any) -> FakeLMModel:
        """Put a downloaded model in the library (fields as :class:`FakeLMModel`)."""
        model = FakeLMModel(key, **fields)
        self.library[key] = model
        return model

    def load(self, key: str, *, context_length: int | None = None, jit: bool = False,
             ttl: int | None = None) -> FakeInstance:
        """Load an instance of ``key`` (a second one is ``key:2``, as in LM Studio)."""
        model = self.library[key]
        if jit and self.auto_evict:
            for other in self.library.values():
                other.instances = [i for i in other.instances if not i.jit]
        taken = {i.id for i in model.instances}
        instance_id = next(
            candidate for n in itertools.count(1)
            if (candidate := key if n == 1 else f"{key}:{n}") not in taken
        )
        ctx = context_length or min(model.max_context_length, 4096)
        instance = FakeInstance(instance_id, ctx, jit=jit, ttl=ttl)
        model.instances.append(instance)
        return instance

    def loaded_ids(self) -> list[str]:
        """Ids of every loaded instance."""
        return [i.id for m in self.library.values() for i in m.instances]

    def _instance(self, instance_id: str) -> tuple[FakeLMModel, FakeInstance] | None:
        for model in self.library.values():
            for instance in model.instances:
                if instance.id == instance_id:
                    return model, instance
        return None

    # -- envelopes ------------------------------------------------------------------------
    def lm_error(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None) -> web.Response:
        """LM Studio's OpenAI-like error answer."""
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param,
                          "code": code}}
        return web.Response(status=status, body=compact(body), content_type="application/json")

    def status_fault_body(self, status: int, message: str) -> Any:
        return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                          "code": None}}

    def flat_error(self, status: int, message: str) -> web.Response:
        """An error whose ``error`` is a plain string (what older code paths answer)."""
        return web.Response(status=status, body=compact({"error": message}),
                            content_type="application/json")

    def invalid_model(self, name: str, status: int = 400) -> web.Response:
        """The answer for a model LM Studio does not have."""
        examples = ", ".join(list(self.library)[:3])
        return self.lm_error(
            status,
            f'Invalid model identifier "{name}". Please specify a valid downloaded model '
            f"(e.g., {examples}).",
            code="model_not_found",
            param="model",
        )

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        token = self.key_of(request)
        message = TOKEN_REQUIRED if token is None else "Invalid LM Studio API token provided."
        body = {"error": {"type": "invalid_request", "code": "invalid_api_key", "message": message}}
        return web.Response(status=401, body=compact(body), content_type="application/json")

    def not_found(self, request: web.Request) -> web.StreamResponse:
        """LM Studio answers unknown paths with 200 and an error object."""
        return self.flat_error(200, f"Unexpected endpoint or method. ({request.method} {request.path})")

    def method_not_allowed(self, request: web.Request) -> web.StreamResponse:
        return self.not_found(request)

    async def _json(self, request: web.Request, obj: Any) -> web.StreamResponse:
        return await self.respond_body(request, compact(obj), content_type=JSON_UTF8)

    # -- OpenAI routes --------------------------------------------------------------------
    def models_body(self) -> dict[str, Any]:
        # with JIT on every downloaded model, else the loaded instances only
        ids = list(self.library) if self.jit else self.loaded_ids()
        return {"object": "list", "data": [self.model_entry(i) for i in ids]}

    def resolve_model(self, body: dict[str, Any]) -> str | web.StreamResponse:
        name = str(body.get("model") or "")
        if not self.jit:
            model = self.library.get(name)
            if self._instance(name) is not None or (model is not None and model.instances):
                return name
            if not self.loaded_ids():
                return self.flat_error(400, NO_MODELS_LOADED)
            return self.invalid_model(name)
        if self._instance(name) is not None:
            return name
        model = self.library.get(name)
        if model is None:
            return self.invalid_model(name)
        if model.type == "embedding":
            return self.lm_error(400, f'Model "{name}" is an embedding model and cannot generate.',
                                 param="model")
        if not model.instances:
            ttl = body.get("ttl")
            self.load(name, jit=True, ttl=ttl if isinstance(ttl, int) else None)
        return name

    # -- REST API -------------------------------------------------------------------------
    def add_extra_routes(self, app: web.Application) -> None:
        r = app.router
        if self.rest_api in ("v0", "v1"):
            r.add_get("/api/v0/models", self._v0_models)
            r.add_get("/api/v0/models/{model:.+}", self._v0_model)
        if self.rest_api == "v1":
            r.add_get("/api/v1/models", self._v1_models)
            r.add_post("/api/v1/models/load", self._load)
            r.add_post("/api/v1/models/unload", self._unload)
            r.add_post("/api/v1/models/download", self._download)
            r.add_get("/api/v1/models/download/status", self._all_jobs)
            r.add_get("/api/v1/models/download/status/{job_id}", self._job)

    async def _v0_models(self, request: web.Request) -> web.StreamResponse:
        data = [m.v0_entry() for m in list(self.library.values())]
        return await self._json(request, {"object": "list", "data": data})

    async def _v0_model(self, request: web.Request) -> web.StreamResponse:
        model = self.library.get(request.match_info["model"])
        if model is None:
            return self.invalid_model(request.match_info["model"], 404)
        return await self._json(request, model.v0_entry())

    async def _v1_models(self, request: web.Request) -> web.StreamResponse:
        return await self._json(request, {"models": [m.v1_entry() for m in list(self.library.values())]})

    async def _load(self, request: web.Request) -> web.StreamResponse:
        body = await self.parse_body(request)
        if isinstance(body, web.StreamResponse):
            return body
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return self.lm_error(400, "'model' is required", param="model")
        model = self.library.get(name)
        if model is None:
            return self.invalid_model(name, 404)
        ctx = body.get("context_length")
        if ctx is not None and (not isinstance(ctx, int) or ctx < 1):
            return self.lm_error(400, "'context_length' must be a positive integer",
                                 param="context_length")
        instance = self.load(name, context_length=ctx)
        answer: dict[str, Any] = {
            "type": "embedding" if model.type == "embedding" else "llm",
            "instance_id": instance.id,
            "load_time_seconds": 0.012,
            "status": "loaded",
        }
        if body.get("echo_load_config"):
            answer["load_config"] = {"context_length": instance.context_length}
        return await self._json(request, answer)

    async def _unload(self, request: web.Request) -> web.StreamResponse:
        body = await self.parse_body(request)
        if isinstance(body, web.StreamResponse):
            return body
        instance_id = body.get("instance_id")
        if not isinstance(instance_id, str) or not instance_id:
            return self.lm_error(400, "'instance_id' is required", param="instance_id")
        found = self._instance(instance_id)
        if found is None:
            return self.lm_error(404, f'No loaded model instance with id "{instance_id}" was found.',
                                 code="model_not_found", param="instance_id")
        model, instance = found
        model.instances.remove(instance)
        return await self._json(request, {"instance_id": instance_id})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        body = await self.parse_body(request)
        if isinstance(body, web.StreamResponse):
            return body
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return self.lm_error(400, "'model' is required", param="model")
        if name in self.library:
            return await self._json(request, {"status": "already_downloaded"})
        if name not in self.catalog:
            return self.lm_error(404, f'Model "{name}" not found in the LM Studio catalog.',
                                 code="model_not_found", param="model")
        job = FakeJob(f"job_{next(self._job_ids):x}", name, self.catalog[name], time.time())
        self.jobs[job.job_id] = job
        return await self._json(request, job.body(first=True))

    def _advance(self, job: FakeJob) -> None:
        if job.status in ("completed", "failed"):
            return
        job.polls += 1
        if job.polls <= self.pause_polls:
            job.status = "paused"
            return
        job.status = "downloading"
        steps = max(1, self.download_steps)
        job.done = min(job.total, job.done + -(-job.total // steps))
        if job.model in self.failing and job.done * 2 >= job.total:
            job.status = "failed"
        elif job.done >= job.total:
            job.status, job.completed = "completed", time.time()
            self.add_model(job.model, size_bytes=job.total)

    async def _job(self, request: web.Request) -> web.StreamResponse:
        if not self.status_by_id:
            return self.not_found(request)
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return self.lm_error(404, f"No download job with id \"{request.match_info['job_id']}\".")
        self._advance(job)
        return await self._json(request, job.body())

    async def _all_jobs(self, request: web.Request) -> web.StreamResponse:
        groups: dict[str, list[dict[str, Any]]] = {
            "downloading": [], "completed": [], "failed": [], "paused": []
        }
        for job in list(self.jobs.values()):
            self._advance(job)
            groups[job.status].append(job.body())
        return await self._json(request, groups)
