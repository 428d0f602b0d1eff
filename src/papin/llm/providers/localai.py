"""LocalAI provider: OpenAI's ``/v1`` API plus LocalAI's health, gallery and backend routes.

Wire reference: LocalAI's API docs (https://localai.io/features/) and its OpenAI-compatible
routes; the readiness, auth and gallery-job details below were checked against its source.

* Readiness is ``GET /readyz`` (since v4.8 it answers ``503 {"status":"starting",...}`` while
  startup preloading runs: reported as ``details["state"] == "loading"``); the version comes
  from ``GET /version``, which also checks the API key (``/readyz`` is public).
* Completion, chat and the model list are the shared OpenAI-compatible implementation.
* Downloads go through the model gallery: ``POST /models/apply {"id": ...}`` returns a job
  uuid, and ``GET /models/jobs/<uuid>`` is polled into the common :class:`DownloadStatus`
  stream. Deleting is a gallery job too (``POST /models/delete/<name>``).
* Loading is ``POST /backend/load`` (v4.6+; older servers get a one-token completion),
  unloading ``POST /backend/shutdown``.

Example::

    from papin.llm.providers.localai import LocalAIConfig, LocalAIProvider

    async with LocalAIProvider(LocalAIConfig(api_key="sk-local")) as localai:
        async for status in localai.pull_model("localai@qwen3-0.6b"):
            print(status.status, status.progress)
        print(await localai.generate_text("qwen3-0.6b", "Why is the sky blue?"))
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import Field

from papin.llm.datatypes import Capability, DownloadStatus, ModelInfo, ProviderStatus, ProviderType
from papin.llm.errors import (
    AuthenticationError,
    DownloadError,
    ModelNotFoundError,
    ProtocolError,
    ProviderAPIError,
    ProviderError,
    RateLimitedError,
)
from papin.llm.progress import ProgressMeter
from papin.llm.provider import ProviderConfig
from papin.llm.providers._openai import OpenAIBase, OpenAICompatibleConfig
from papin.llm.wire import localai as localai_wire
from papin.llm.wire import openai as wire
from papin.llm.wire.localai import error_text, parse_size

__all__ = ["LocalAIConfig", "LocalAIProvider", "parse_size"]

#: How long a fresh job may be unknown to ``/models/jobs`` (older servers publish its status
#: only once a worker picks it up).
_JOB_GRACE_SECONDS = 10.0


class LocalAIConfig(OpenAICompatibleConfig):
    """Settings of the LocalAI provider.

    ``endpoint`` defaults to ``http://127.0.0.1:8080`` (with or without ``/v1``). ``api_key``
    defaults to ``LOCALAI_API_KEY`` (the first key when it is a comma-separated list, as the
    server accepts).
    """

    gallery_poll_interval_seconds: float = Field(
        0.5, gt=0, description="How often a gallery job (download, delete) is polled."
    )

    api_key_env: ClassVar[str | None] = "LOCALAI_API_KEY"


class LocalAIProvider(OpenAIBase):
    """Talks to a LocalAI server (https://localai.io)."""

    provider_type: ClassVar[ProviderType] = ProviderType.LOCALAI
    display_name: str = "LocalAI"
    description: str = "LocalAI, a drop-in OpenAI-compatible server with a model gallery."
    capabilities: frozenset[Capability] = frozenset(
        {
            Capability.GENERATE,
            Capability.CHAT,
            Capability.STREAMING,
            Capability.LIST_MODELS,
            Capability.MODEL_INFO,
            Capability.DOWNLOAD,
            Capability.DELETE,
            Capability.LOAD,
            Capability.UNLOAD,
        }
    )
    config_class: ClassVar[type[ProviderConfig]] = LocalAIConfig
    config: LocalAIConfig
    default_endpoint: ClassVar[str] = "http://127.0.0.1:8080"
    start_hint: ClassVar[str] = (
        "Start it (e.g. 'local-ai run' or 'docker run -p 8080:8080 localai/localai'), "
        "or set the endpoint to where it runs."
    )

    auth_hint: ClassVar[str] = (
        "Set api_key (or LOCALAI_API_KEY) to one of the keys the server was started "
        "with (its LOCALAI_API_KEY / API_KEY)."
    )

    def error_text(self, body: bytes, content_type: str | None) -> str:
        """LocalAI's error shapes (see the module-level :func:`error_text`)."""
        return error_text(body, content_type)

    def model_hint(self, model: str) -> str:
        """What to do about a missing model."""
        return (
            f"Install it from the gallery with 'papin models pull {model}', or list the installed "
            "models with 'papin models list'. (Before v4.1 LocalAI also reports a model that fails "
            "to load this way: check its log.)"
        )

    def is_model_missing(self, status: int, text: str) -> bool:
        """404 ``model "x" not found`` (v4.1+), or 500 ``could not load model`` (before).

        >>> p = LocalAIProvider()
        >>> p.is_model_missing(404, 'model "x" not found. To see available models, call GET /v1/models')
        True
        >>> p.is_model_missing(500, "could not load model - all backends returned error: x")
        True
        >>> p.is_model_missing(404, "Resource not found")
        False
        """
        lowered = text.lower()
        if status == 404:
            return "model" in lowered and "not found" in lowered
        return status == 500 and "could not load model" in lowered

    # -- status ---------------------------------------------------------------------------
    def _short_timeout(self) -> float:
        return min(self.config.timeout_seconds or 5.0, 5.0)

    async def status(self) -> ProviderStatus:
        """Probe ``/readyz`` then ``/version``; never raises.

        While LocalAI (v4.8+) preloads models at startup, ``available`` is False and
        ``details["state"]`` is ``"loading"``.
        """
        try:
            starting = await self._readiness()
            if starting is not None:
                return ProviderStatus(
                    self.name,
                    False,
                    endpoint=self.endpoint,
                    error=f"LocalAI at {self.endpoint} is still starting up ({starting}); retry in a moment.",
                    details={"state": "loading", "reason": starting},
                )
            version = await self._version()
        except ProviderError as exc:
            return ProviderStatus(self.name, False, endpoint=self.endpoint, error=str(exc), exception=exc)
        return ProviderStatus(
            self.name, True, endpoint=self.endpoint, version=version, details={"state": "ready"}
        )

    async def _readiness(self) -> str | None:
        """``None`` when ready, else why not (the ``starting`` phase); raises otherwise."""
        try:
            await self.transport.request("GET", "/readyz", timeout=self._short_timeout())
        except RateLimitedError as exc:
            if exc.status_code != 503:
                raise
            reason = str(exc.body or "starting")
            return reason.removeprefix("starting: ")
        except ProviderAPIError as exc:
            if exc.status_code != 404 or isinstance(exc, AuthenticationError):
                raise
            await self._probe()  # a server without /readyz: is the API there at all?
        return None

    async def _version(self) -> str | None:
        """``GET /version`` (it needs the key, so this also checks the key)."""
        try:
            data = await self.transport.request_json("GET", "/version", timeout=self._short_timeout())
        except ProviderAPIError as exc:
            if exc.status_code != 404 or isinstance(exc, AuthenticationError):
                raise
            await self._probe()  # no /version: check the key on /v1/models instead
            return None
        version = data.get("version") if isinstance(data, dict) else None
        return str(version) if version else None

    # -- models ---------------------------------------------------------------------------
    async def _installed_ids(self) -> set[str]:
        return {m.id for m in await self.list_downloaded_models()}

    async def list_available_models(self) -> list[ModelInfo]:
        """The gallery (``GET /models/available``, with ``installed``), plus installed models
        that come from no gallery. A server with the gallery endpoint disabled gives the
        installed models only."""
        installed = await self.list_downloaded_models()
        try:
            data = await self.transport.request_json("GET", "/models/available")
        except ProviderAPIError as exc:
            if exc.status_code == 404 and not isinstance(exc, AuthenticationError):
                return installed  # LOCALAI_DISABLE_GALLERY_ENDPOINT
            raise
        if not isinstance(data, list):
            raise ProtocolError(
                f"LocalAI at {self.endpoint} answered /models/available with something other "
                "than a list of gallery models.",
                provider=self.name,
            )
        entries = (localai_wire.gallery_model(e, self.name) for e in data if isinstance(e, Mapping))
        gallery = [m for m in entries if m is not None]
        names = {m.name for m in gallery}
        return gallery + [m for m in installed if m.id not in names]

    async def get_model_info(self, model: str) -> ModelInfo:
        """An installed model from ``/v1/models``, else its gallery entry."""
        for info in await self.list_downloaded_models():
            if info.id == model:
                return info
        return await super().get_model_info(model)

    # -- gallery jobs ---------------------------------------------------------------------
    async def _start_job(self, path: str, body: dict[str, Any] | None, model: str) -> str:
        data = await self.transport.request_json("POST", path, json=body, model=model)
        job = data.get("uuid") if isinstance(data, dict) else None
        if not isinstance(job, str) or not job:
            raise ProtocolError(
                f"LocalAI at {self.endpoint} answered {path} without a job uuid: {data!r:.200}",
                provider=self.name,
                model=model,
            )
        return job

    async def _poll_job(self, job: str, model: str, started: float) -> dict[str, Any] | None:
        """The job's ``OpStatus``, or ``None`` while a fresh job is not yet known."""
        try:
            data = await self.transport.request_json("GET", f"/models/jobs/{job}", model=model)
        except ProviderAPIError as exc:
            text = str(exc.body or "").lower()
            fresh = asyncio.get_running_loop().time() - started < _JOB_GRACE_SECONDS
            if fresh and "could not find any status" in text:
                return None
            if "could not find any status" in text:
                raise DownloadError(
                    f"LocalAI at {self.endpoint} lost track of job {job} for '{model}' (was the "
                    "server restarted?). Run the operation again.",
                    provider=self.name,
                    model=model,
                ) from exc
            raise
        if not isinstance(data, dict):
            raise ProtocolError(
                f"LocalAI at {self.endpoint} answered /models/jobs/{job} with {data!r:.200}",
                provider=self.name,
                model=model,
            )
        return data

    async def _cancel_job(self, job: str) -> None:
        """Ask the server to cancel a job (``POST /api/operations/<uuid>/cancel``); best effort."""
        with contextlib.suppress(ProviderError, TimeoutError):
            async with asyncio.timeout(self._short_timeout()):
                await self.transport.request(
                    "POST", f"/api/operations/{job}/cancel", timeout=self._short_timeout()
                )

    async def pull_model(self, model: str) -> AsyncGenerator[DownloadStatus, None]:
        """Install ``model`` from the gallery, yielding progress until the job completes.

        ``model`` is a gallery id (``gallery@name``, or ``name`` to search every gallery), or
        a config URL (``github:org/repo/file.yaml@branch``, ``https://...``). One status is
        yielded per poll (``gallery_poll_interval_seconds``); the last has ``complete=True``.

        Cancelling (closing the iterator, :meth:`cancel_download`, cancelling the task) asks
        LocalAI to cancel the job with ``POST /api/operations/<uuid>/cancel``. Servers without
        that endpoint (or whose job is no longer cancellable) keep downloading in the
        background until the job ends; papin only stops following it.

        Raises:
            ModelNotFoundError: no gallery has a model of that name.
            DownloadError: the job failed (the server's message is kept) or was cancelled on
                the server.
        """
        job = await self._start_job("/models/apply", localai_wire.apply_body(model), model)
        loop = asyncio.get_running_loop()
        started = loop.time()
        meter = ProgressMeter(model)
        tracker = localai_wire.JobTracker()
        finished = False
        try:
            while True:
                data = await self._poll_job(job, model, started)
                if data is None:
                    yield meter.update(0, None, "queued")
                elif data.get("processed"):
                    finished = True
                    self._raise_if_failed(data, model, "download")
                    yield meter.finish("completed")
                    return
                else:
                    done, total = tracker.bytes(data)
                    yield meter.update(done, total, localai_wire.job_text(data))
                await asyncio.sleep(self.config.gallery_poll_interval_seconds)
        finally:
            if not finished:
                await self._cancel_job(job)

    def _raise_if_failed(self, data: Mapping[str, Any], model: str, what: str) -> None:
        if data.get("cancelled"):
            raise DownloadError(
                f"LocalAI's {what} job for '{model}' was cancelled on the server.",
                provider=self.name,
                model=model,
            )
        if not localai_wire.job_failed(data):
            return
        reason = localai_wire.job_reason(data)
        if "no model found with name" in reason.lower():
            raise ModelNotFoundError(
                f"LocalAI has no model '{model}' in its galleries ({reason}). Check the name "
                "against the gallery (GET /models/available), or give it as gallery@name.",
                provider=self.name,
                model=model,
                body=reason,
            )
        raise DownloadError(f"LocalAI could not {what} '{model}': {reason}", provider=self.name, model=model)

    async def delete_model(self, model: str) -> None:
        """Delete an installed model (``POST /models/delete/<name>``, then wait for the job)."""
        if model not in await self._installed_ids():
            raise ModelNotFoundError(
                f"Model '{model}' is not installed on LocalAI at {self.endpoint}. "
                "List the installed models with 'papin models list'.",
                provider=self.name,
                model=model,
            )
        job = await self._start_job(f"/models/delete/{quote(model, safe='')}", None, model)
        started = asyncio.get_running_loop().time()
        while True:
            data = await self._poll_job(job, model, started)
            if data is not None and data.get("processed"):
                if localai_wire.job_failed(data) or data.get("cancelled"):
                    raise ProviderAPIError(
                        f"LocalAI could not delete '{model}': {localai_wire.job_reason(data)}",
                        provider=self.name,
                        model=model,
                    )
                return
            await asyncio.sleep(self.config.gallery_poll_interval_seconds)

    # -- loading --------------------------------------------------------------------------
    async def load_model(self, model: str) -> None:
        """Load ``model`` now: ``POST /backend/load`` (v4.6+), else a one-token completion."""
        try:
            await self.transport.request(
                "POST",
                "/backend/load",
                json={"model": model},
                model=model,
                timeout=self.config.first_byte_timeout_seconds,
            )
        except ProviderAPIError as exc:
            if isinstance(exc, AuthenticationError | ModelNotFoundError | RateLimitedError):
                raise
            if exc.status_code == 404:  # before v4.6: a tiny request loads the model
                body = wire.build_completion(model, "Hi", None, stream=False)
                body["max_tokens"] = 1
                await self.transport.request_json(
                    "POST",
                    "/v1/completions",
                    json=body,
                    model=model,
                    timeout=self.config.first_byte_timeout_seconds,
                )
                return
            if model not in await self._installed_ids():
                raise ModelNotFoundError(
                    f"Model '{model}' is not available on LocalAI at {self.endpoint} "
                    f"({exc.body or exc}). {self.model_hint(model)}",
                    provider=self.name,
                    model=model,
                    status_code=exc.status_code,
                    body=exc.body,
                ) from exc
            raise

    async def unload_model(self, model: str) -> None:
        """Stop the backend process serving ``model`` (``POST /backend/shutdown``)."""
        await self.transport.request("POST", "/backend/shutdown", json={"model": model}, model=model)
