"""LM Studio provider: its OpenAI-compatible ``/v1`` API plus its native REST API for models.

LM Studio (https://lmstudio.ai) serves, by default on ``http://127.0.0.1:1234``:

* OpenAI's ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models``. With just-in-time
  (JIT) loading on (the default) ``/v1/models`` lists every *downloaded* model, loaded or not,
  and a request for a model that is not loaded loads it first.
* REST API v1 (LM Studio 0.4.0+): ``GET /api/v1/models`` (each model with its
  ``loaded_instances``), ``POST /api/v1/models/load``, ``POST /api/v1/models/unload``,
  ``POST /api/v1/models/download`` and ``GET /api/v1/models/download/status/:job_id``.
* REST API v0 (0.3.6+, legacy): ``GET /api/v0/models`` (each model with ``state``).

The provider finds out once which REST API the server has (v1, else v0, else none) and uses
the richest: model lists with loaded state and context length come from it, and loading,
unloading and downloading need v1. What only LM Studio's SDK (``lmstudio-python``), ``lms``
or the app can do raises :class:`~papin.llm.errors.UnsupportedOperationError` saying so.

Example::

    from papin.llm.providers.lmstudio import LMStudioConfig, LMStudioProvider

    async with LMStudioProvider(LMStudioConfig(api_key="sk-lm-...")) as lms:
        await lms.load_model("qwen/qwen3-4b-2507")
        print(await lms.generate_text("qwen/qwen3-4b-2507", "Why is the sky blue?"))
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from pydantic import Field

from papin.llm.datatypes import (
    Capability,
    DownloadStatus,
    GenerationChunk,
    LoadedModel,
    ModelInfo,
    ProviderStatus,
    ProviderType,
)
from papin.llm.errors import (
    DownloadError,
    ModelNotFoundError,
    ProtocolError,
    ProviderAPIError,
    ProviderError,
    UnsupportedOperationError,
)
from papin.llm.options import GenerationOptions
from papin.llm.progress import ProgressMeter
from papin.llm.provider import Messages, ProviderConfig, as_messages
from papin.llm.providers._openai import OpenAIBase, OpenAICompatibleConfig
from papin.llm.wire import lmstudio as lms_wire
from papin.llm.wire import openai as wire
from papin.llm.wire.lmstudio import RestApi

if TYPE_CHECKING:
    from papin.llm.transport.base import HttpProviderConfig
    from papin.llm.transport.client import HttpClient

__all__ = ["DEFAULT_ENDPOINT", "TOKEN_ENV", "LMStudioConfig", "LMStudioProvider"]

DEFAULT_ENDPOINT = "http://127.0.0.1:1234"
#: The environment variable LM Studio's docs use for an API token.
TOKEN_ENV = "LM_API_TOKEN"

_SDK = "LM Studio's SDK (lmstudio-python, over its websocket API)"


class LMStudioConfig(OpenAICompatibleConfig):
    """Settings of the LM Studio provider.

    ``endpoint`` defaults to ``http://127.0.0.1:1234`` (with or without ``/v1``). ``api_key``
    is an LM Studio API token (only needed when "Require Authentication" is on in LM Studio's
    server settings); left unset it comes from ``LM_API_TOKEN``.
    """

    ttl_seconds: int | None = Field(
        None,
        ge=1,
        description="Idle time after which LM Studio unloads a model that a request JIT-loaded "
        "(sent as 'ttl'; LM Studio's default is 60 minutes).",
    )
    context_length: int | None = Field(
        None, ge=1, description="Context length when papin loads a model (LM Studio's default if unset)."
    )
    download_poll_interval_seconds: float = Field(
        1.0, gt=0, description="How often a download's progress is polled."
    )

    api_key_env: ClassVar[str | None] = TOKEN_ENV


class LMStudioProvider(OpenAIBase):
    """Talks to LM Studio's local server (OpenAI endpoints plus its REST API)."""

    provider_type: ClassVar[ProviderType] = ProviderType.LMSTUDIO
    display_name: str = "LM Studio"
    description: str = (
        "LM Studio's local server (https://lmstudio.ai): OpenAI-compatible API plus its REST API."
    )
    capabilities: frozenset[Capability] = frozenset(Capability) - {Capability.DELETE}
    config_class: ClassVar[type[ProviderConfig]] = LMStudioConfig
    config: LMStudioConfig
    default_endpoint: ClassVar[str] = DEFAULT_ENDPOINT
    start_hint: ClassVar[str] = (
        "Start it in LM Studio (Developer tab, 'Start server') or with 'lms server start'."
    )

    def __init__(
        self, config: HttpProviderConfig | None = None, *, http_client: HttpClient | None = None
    ) -> None:
        if config is not None and not isinstance(config, LMStudioConfig):
            config = LMStudioConfig.model_validate(config.model_dump(exclude_unset=True))
        super().__init__(config, http_client=http_client)
        self._api: RestApi | None = None  # which REST API the server has, once known

    # -- messages -------------------------------------------------------------------------
    auth_hint: ClassVar[str] = (
        f"Set api_key (or {TOKEN_ENV}) to an LM Studio API token (Developer tab, "
        "Server Settings, Manage Tokens)."
    )

    def model_hint(self, model: str) -> str:
        """What to do about a model LM Studio does not have."""
        return (
            "See the models LM Studio has with 'papin models list'; download one with "
            f"'papin models pull <catalog id>' (or 'lms get'). If JIT loading is off in LM "
            f"Studio, load it first with 'papin models load {model}'."
        )

    def is_model_missing(self, status: int, text: str) -> bool:
        """LM Studio says ``Invalid model identifier "x"`` (400, newer versions) or
        ``Model "x" not found`` (404, older ones)."""
        from papin.llm.transport.client import model_missing

        lowered = text.lower()
        if status in (400, 404) and (
            "invalid model identifier" in lowered or ("model" in lowered and "not found" in lowered)
        ):
            return True
        return model_missing(status, text)

    def _needs(self, operation: str, how: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(
            f"The {self.display_name} provider does not support {operation} here: {how}",
            provider=self.name,
        )

    # -- status ---------------------------------------------------------------------------
    async def status(self) -> ProviderStatus:
        """Probe ``GET /v1/models``, then tell which REST API the server has; never raises."""
        status = await super().status()
        if not status.available:
            return status
        try:
            api: str = await self._rest_api()
        except ProviderError:
            api = "unknown"
        return dataclasses.replace(status, details={**status.details, "rest_api": api})

    # -- REST API detection ---------------------------------------------------------------
    async def _rest_api(self) -> RestApi:
        if self._api is None:
            await self._listing()
        return self._api or "none"

    async def _listing(self) -> tuple[RestApi, Any]:
        """The richest model list the server has, and which API gave it (once detected,
        the same API is asked first)."""
        if self._api == "none":
            return "none", None
        order: list[RestApi] = ["v1", "v0"]
        if self._api is not None:
            order.sort(key=lambda api: api != self._api)
        for api in order:
            data = await self._optional_get(lms_wire.LIST_PATHS[api])
            if isinstance(data, Mapping) and isinstance(data.get(lms_wire.LIST_KEYS[api]), list):
                self._api = api
                return api, data
        self._api = "none"
        return "none", None

    async def _optional_get(self, path: str) -> Any:
        """``GET path``, or ``None`` when the server has no such endpoint (a 4xx other than
        401/403/429, or an answer that is not JSON). LM Studio answers unknown paths with
        200 and ``{"error": "Unexpected endpoint or method. (GET /x)"}``; callers check the
        shape."""
        try:
            return await self.transport.request_json("GET", path)
        except ProtocolError:
            return None
        except ProviderAPIError as exc:
            code = exc.status_code or 0
            if 400 <= code < 500 and code not in (401, 403, 429):
                return None
            raise

    async def _require_v1(self, operation: str, alternative: str) -> None:
        if await self._rest_api() != "v1":
            raise self._needs(
                operation,
                f"it needs LM Studio's REST API v1 (LM Studio 0.4.0 or newer), which "
                f"{self.endpoint} does not offer. Update LM Studio, or use {alternative}.",
            )

    async def _rest_post(
        self, path: str, body: dict[str, Any], *, model: str, timeout: float | None = None
    ) -> dict[str, Any]:
        """POST to the REST API; an ``error`` in a 200 answer is raised too."""
        data = await self.transport.request_json("POST", path, json=body, model=model, timeout=timeout)
        if not isinstance(data, dict):
            raise ProtocolError(
                f"LM Studio answered {path} with {type(data).__name__} instead of an object.",
                provider=self.name,
                model=model,
            )
        message = wire.stream_error(data)
        if message is not None:
            if "unexpected endpoint" in message.lower():
                raise self._needs(f"POST {path}", f"LM Studio at {self.endpoint} says: {message}")
            raise ProviderAPIError(
                f"LM Studio at {self.endpoint} refused {path} for '{model}': {message}",
                provider=self.name,
                model=model,
                status_code=200,
                body=data.get("error"),
            )
        return data

    # -- models ---------------------------------------------------------------------------
    async def list_downloaded_models(self) -> list[ModelInfo]:
        """Every downloaded model (REST API), LLMs before embedding models. Without a REST
        API, the OpenAI list: the downloaded models with JIT loading on, else the loaded ones."""
        api, data = await self._listing()
        if api == "none":
            return await super().list_downloaded_models()
        parse = lms_wire.v1_model if api == "v1" else lms_wire.v0_model
        models = [parse(e, self.name) for e in data[lms_wire.LIST_KEYS[api]] if lms_wire.valid_entry(e, api)]
        return sorted(models, key=lambda m: "embedding" in m.capabilities)

    async def get_model_info(self, model: str) -> ModelInfo:
        """Details of one downloaded model (type, architecture, quantization, context length,
        loaded state in ``metadata["state"]``)."""
        for info in await self.list_downloaded_models():
            if info.id == model:
                return info
        raise ModelNotFoundError(
            f"Model '{model}' is not among the models LM Studio at {self.endpoint} has. "
            f"{self.model_hint(model)}",
            provider=self.name,
            model=model,
        )

    async def delete_model(self, model: str) -> None:
        """Not possible: LM Studio's REST API cannot delete models."""
        raise self._needs(
            "deleting models",
            f"LM Studio's REST API has no way to delete a model; delete '{model}' in the LM "
            "Studio app (My Models) or remove its folder from LM Studio's models directory.",
        )

    async def pull_model(self, model: str) -> AsyncGenerator[DownloadStatus, None]:
        """Download ``model`` (a catalog id such as ``qwen/qwen3-4b-2507``, or a Hugging Face
        URL) through ``POST /api/v1/models/download``, polling the job's status.

        Closing the iterator stops following the download, but LM Studio's REST API cannot
        cancel it: it goes on in LM Studio. A paused download (paused in the app) is
        reported with ``status="paused"`` and followed until it resumes.
        """
        await self._require_v1("downloading models", "'lms get' or the LM Studio app")
        meter = ProgressMeter(model)
        job = await self._rest_post("/api/v1/models/download", {"model": model}, model=model)
        job_id = job.get("job_id")
        status = self._job_status(job, model, meter)
        yield status
        while not status.complete:
            if not isinstance(job_id, str) or not job_id:
                raise ProtocolError(
                    f"LM Studio started downloading '{model}' without giving a job id to follow.",
                    provider=self.name,
                    model=model,
                )
            await asyncio.sleep(self.config.download_poll_interval_seconds)
            data = await self._job_answer(job_id, model)
            status = self._job_status(lms_wire.find_job(data, job_id), model, meter)
            yield status

    async def _job_answer(self, job_id: str, model: str) -> Any:
        """``GET /api/v1/models/download/status/:job_id``; where the server lacks that path
        (LM Studio answers 200 ``Unexpected endpoint``, or 404), the ``/status`` listing of
        every job that earlier 0.4 builds documented."""
        by_id = f"/api/v1/models/download/status/{quote(job_id, safe='')}"
        data = await self._optional_get(by_id)
        message = wire.stream_error(data) or ""
        if data is None or "unexpected endpoint" in message.lower():
            data = await self.transport.request_json("GET", "/api/v1/models/download/status", model=model)
        return data

    def _job_status(self, job: Any, model: str, meter: ProgressMeter) -> DownloadStatus:
        """Map one LM Studio download job object onto :class:`DownloadStatus`."""
        if not isinstance(job, Mapping) or not isinstance(job.get("status"), str):
            message = wire.stream_error(job)
            raise ProtocolError(
                f"Unexpected download status from LM Studio for '{model}': {message or repr(job)[:200]}",
                provider=self.name,
                model=model,
            )
        state = job["status"]
        done = lms_wire.int_field(job.get("downloaded_bytes")) or 0
        total = lms_wire.int_field(job.get("total_size_bytes"))
        if state in ("completed", "already_downloaded"):
            if total is not None:
                meter.status = dataclasses.replace(meter.status, total_bytes=total)
            return meter.finish(state.replace("_", " "))
        if state == "failed":
            got = f" after {done} of {total} bytes" if total else ""
            raise DownloadError(
                f"LM Studio could not download '{model}' (job {job.get('job_id', '?')} "
                f"failed{got}). Check the name on https://lmstudio.ai/models and LM Studio's "
                "downloads panel.",
                provider=self.name,
                model=model,
            )
        status = meter.update(done, total, state)
        speed = job.get("bytes_per_second")
        if state == "downloading" and isinstance(speed, int | float) and speed > 0:
            eta = (total - done) / speed if total is not None else None
            status = dataclasses.replace(status, speed_bps=float(speed), eta_seconds=eta)
            meter.status = status  # LM Studio's own measure beats one from polled readings
        return status

    # -- loading --------------------------------------------------------------------------
    async def list_loaded_models(self) -> list[LoadedModel]:
        """Models in memory: v1 ``loaded_instances`` (one entry per instance, with its
        context length) or v0 ``state == "loaded"``. ``/v1/models`` cannot tell (JIT)."""
        api, data = await self._listing()
        if api == "none":
            raise self._needs(
                "listing loaded models",
                "with JIT loading on, /v1/models lists every downloaded model, and this "
                "server has no REST API (LM Studio 0.3.6 or newer) that tells which are loaded.",
            )
        loaded: list[LoadedModel] = []
        for entry in data[lms_wire.LIST_KEYS[api]]:
            if not lms_wire.valid_entry(entry, api):
                continue
            size = lms_wire.int_field(entry.get("size_bytes"))
            if api == "v0":
                if entry.get("state") == "loaded":
                    ctx = lms_wire.int_field(entry.get("loaded_context_length"))
                    loaded.append(LoadedModel(str(entry["id"]), self.name, size, context_size=ctx))
                continue
            for inst in entry.get("loaded_instances") or ():
                if isinstance(inst, Mapping) and inst.get("id"):
                    config = inst.get("config")
                    ctx = (
                        lms_wire.int_field(config.get("context_length"))
                        if isinstance(config, Mapping)
                        else None
                    )
                    loaded.append(LoadedModel(str(inst["id"]), self.name, size, context_size=ctx))
        return loaded

    async def _instances(self, model: str) -> tuple[bool, list[str]]:
        """(whether LM Studio knows ``model``, ids of its loaded instances). ``model`` may be
        a model key (every instance) or one instance id (``key:2``)."""
        api, data = await self._listing()
        if api != "v1":
            return False, [m.id for m in await self.list_loaded_models() if m.id == model]
        known = False
        ids: list[str] = []
        for entry in data["models"]:
            if not lms_wire.valid_entry(entry, api):
                continue
            instances = [
                str(i["id"])
                for i in entry.get("loaded_instances") or ()
                if isinstance(i, Mapping) and i.get("id")
            ]
            if entry["key"] == model:
                known = True
                ids.extend(instances)
            elif model in instances:
                known = True
                ids.append(model)
        return known, ids

    async def is_model_loaded(self, model: str) -> bool:
        """Whether ``model`` (a key or an instance id) has an instance in memory."""
        return bool((await self._instances(model))[1])

    async def load_model(self, model: str) -> None:
        """Load ``model`` (``POST /api/v1/models/load``) unless an instance is loaded already
        (LM Studio would load a second one). Uses ``config.context_length`` when set."""
        await self._require_v1("loading models", f"'lms load', {_SDK} or the app")
        if await self.is_model_loaded(model):
            return
        body: dict[str, Any] = {"model": model}
        if self.config.context_length is not None:
            body["context_length"] = self.config.context_length
        data = await self._rest_post(
            "/api/v1/models/load", body, model=model, timeout=self.config.first_byte_timeout_seconds
        )
        if data.get("status") not in (None, "loaded"):
            raise ProtocolError(
                f"LM Studio answered the load of '{model}' with status {data.get('status')!r}.",
                provider=self.name,
                model=model,
            )

    async def unload_model(self, model: str) -> None:
        """Unload every instance of ``model`` (or the one instance it names) through
        ``POST /api/v1/models/unload``; a model that is not loaded is left as it is."""
        await self._require_v1("unloading models", f"'lms unload', {_SDK} or the app")
        known, ids = await self._instances(model)
        if not known:
            raise ModelNotFoundError(
                f"Model '{model}' is not among the models LM Studio at {self.endpoint} has. "
                f"{self.model_hint(model)}",
                provider=self.name,
                model=model,
            )
        for instance in ids:
            try:
                await self._rest_post("/api/v1/models/unload", {"instance_id": instance}, model=model)
            except ProviderAPIError as exc:
                if exc.status_code != 404:  # 404: gone already (TTL, auto-evict, the app)
                    raise

    # -- generation -----------------------------------------------------------------------
    def _with_ttl(self, body: dict[str, Any], options: GenerationOptions | None) -> dict[str, Any]:
        ttl = lms_wire.ttl_seconds(options.keep_alive) if options is not None else None
        if ttl is None:
            ttl = self.config.ttl_seconds
        if ttl is not None:
            body.setdefault("ttl", ttl)
        return body

    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a completion from ``POST /v1/completions`` (LM Studio JIT-loads the model
        if needed; ``options.keep_alive`` or ``config.ttl_seconds`` goes out as ``ttl``)."""
        body = self._with_ttl(wire.build_completion(model, prompt, options), options)
        return self._sse("/v1/completions", body, model)

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a chat reply from ``POST /v1/chat/completions`` (with ``ttl`` as above)."""
        body = wire.build_chat(model, as_messages(messages), options)
        return self._sse("/v1/chat/completions", self._with_ttl(body, options), model)
