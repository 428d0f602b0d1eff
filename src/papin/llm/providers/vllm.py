"""vLLM provider: vLLM's OpenAI-compatible server (``vllm serve``,
https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html).

What it adds to the shared OpenAI base (:class:`~papin.llm.providers._openai.OpenAIBase`):

* status from ``GET /health`` (an empty 200 once the model is loaded; the socket refuses
  connections while vLLM starts, so "refused" means "not running or still starting") and the
  version from ``GET /version``;
* model lists with ``max_model_len`` as the context size, LoRA adapters (``parent``, ``root``),
  and the served models as the loaded ones;
* token counts from ``POST /tokenize`` (:meth:`VLLMProvider.count_tokens`);
* LoRA hot-loading (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``), which vLLM offers
  only when started with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and ``--enable-lora``;
* vLLM's parameter names (``repetition_penalty``), and its error bodies in both envelopes (flat
  before v0.10.1, nested since), the flat ``{"error":"Unauthorized"}`` and FastAPI's
  ``{"detail":"Not Found"}`` for a route the server does not have.

vLLM loads its model(s) when it starts and has no API to download or delete models, so
``pull_model``/``delete_model`` raise :class:`~papin.llm.errors.UnsupportedOperationError`.

Example::

    from papin.llm.providers.vllm import VLLMConfig, VLLMProvider

    config = VLLMConfig(lora_adapters={"sql": "/adapters/sql-lora"})
    async with VLLMProvider(config) as vllm:  # http://127.0.0.1:8000 unless endpoint is set
        print(await vllm.count_tokens("meta-llama/Llama-3.2-1B", "Hello there"))
        await vllm.load_model("sql")  # a LoRA adapter, used as a model name afterwards
        print(await vllm.generate_text("sql", "SELECT"))
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from typing import Any, ClassVar, NoReturn

from pydantic import Field

from papin.llm.datatypes import (
    Capability,
    DownloadStatus,
    GenerationChunk,
    LoadedModel,
    ModelInfo,
    ProviderType,
)
from papin.llm.errors import (
    ModelNotFoundError,
    ProtocolError,
    ProviderAPIError,
    ProviderError,
    ProviderUnavailableError,
    UnsupportedOperationError,
)
from papin.llm.options import GenerationOptions
from papin.llm.provider import Messages, ProviderConfig, as_messages
from papin.llm.providers._openai import OpenAIBase, OpenAICompatibleConfig
from papin.llm.wire import openai as wire
from papin.llm.wire import vllm as vllm_wire

__all__ = ["DEFAULT_ENDPOINT", "VLLMConfig", "VLLMProvider"]

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
#: How to turn LoRA hot-loading on, for error messages.
_LORA_HOW = "start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment and --enable-lora"


class VLLMConfig(OpenAICompatibleConfig):
    """Settings of the vLLM provider.

    ``endpoint`` defaults to ``http://127.0.0.1:8000`` (with or without ``/v1``); ``api_key``
    defaults to ``VLLM_API_KEY``, as ``vllm serve`` reads it.
    """

    lora_adapters: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA adapter name -> path or Hugging Face id, loaded at runtime by "
        "load_model(name) (the server needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).",
    )

    api_key_env: ClassVar[str | None] = "VLLM_API_KEY"


class VLLMProvider(OpenAIBase):
    """Talks to a vLLM server (``vllm serve MODEL``) through its OpenAI-compatible API."""

    provider_type: ClassVar[ProviderType] = ProviderType.VLLM
    display_name: str = "vLLM"
    description: str = "vLLM serves models on GPUs behind an OpenAI-compatible API (https://docs.vllm.ai)."
    capabilities: frozenset[Capability] = OpenAIBase.capabilities | {Capability.LIST_LOADED}
    config_class: ClassVar[type[ProviderConfig]] = VLLMConfig
    config: VLLMConfig
    default_endpoint: ClassVar[str] = DEFAULT_ENDPOINT
    start_hint: ClassVar[str] = (
        "vLLM refuses connections until its model has loaded, so it may also be still "
        "starting: wait until GET /health answers. Otherwise start it with 'vllm serve MODEL', "
        "or fix the endpoint."
    )

    auth_hint: ClassVar[str] = "Set api_key (or VLLM_API_KEY) to a key given to 'vllm serve --api-key'."

    def model_hint(self, model: str) -> str:
        """What to do about a model the server does not serve."""
        return (
            "vLLM serves only the model it was started with ('vllm serve MODEL', named by "
            "--served-model-name) and loaded LoRA adapters; list them with 'papin models list'."
        )

    def is_model_missing(self, status: int, text: str) -> bool:
        """vLLM's unknown-model and unknown-adapter 404s (not FastAPI's ``Not Found``).

        >>> p = VLLMProvider()
        >>> p.is_model_missing(404, "The model `x` does not exist.")
        True
        >>> p.is_model_missing(404, "The lora adapter 'sql' cannot be found.")
        True
        >>> p.is_model_missing(404, "Not Found")
        False
        """
        lowered = text.lower()
        return status == 404 and any(
            s in lowered for s in ("does not exist", "cannot be found", "no adapter found")
        )

    # -- status ---------------------------------------------------------------------------
    def _short_timeout(self) -> float:
        return min(self.config.timeout_seconds or 5.0, 5.0)

    async def _probe(self) -> None:
        """``GET /health``: an empty 200 once ready, 503 when the engine has died."""
        try:
            await self.transport.request("GET", "/health", timeout=self._short_timeout())
        except ProviderAPIError as exc:
            if exc.status_code != 503:
                raise
            raise ProviderUnavailableError(
                f"vLLM at {self.endpoint} is up, but its engine has stopped (GET /health "
                "answered 503). Restart the server; its log says why.",
                provider=self.name,
                status_code=503,
            ) from exc

    async def _version(self) -> str | None:
        """The server version from ``GET /version`` (``None`` if it does not say)."""
        try:
            data = await self.transport.request_json("GET", "/version", timeout=self._short_timeout())
        except ProviderError:
            return None
        version = data.get("version") if isinstance(data, dict) else None
        return str(version) if version else None

    # -- models ---------------------------------------------------------------------------
    async def _model_entries(self) -> list[ModelInfo]:
        models = wire.parse_models(await self.transport.request_json("GET", "/v1/models"), self.name)
        contexts = {m.id: m.context_size for m in models}
        out: list[ModelInfo] = []
        for info in models:
            parent = info.metadata.get("parent")
            if parent:
                info = dataclasses.replace(
                    info,
                    description=f"LoRA adapter on {parent}",
                    context_size=info.context_size or contexts.get(parent),
                )
            out.append(info)
        return out

    async def list_downloaded_models(self) -> list[ModelInfo]:
        """The served models and loaded LoRA adapters (``GET /v1/models``).

        ``context_size`` is ``max_model_len``; an adapter has ``metadata["parent"]`` (its base
        model; it inherits the base's context size) and ``metadata["root"]`` (its path).
        """
        return await self._model_entries()

    async def list_loaded_models(self) -> list[LoadedModel]:
        """Everything vLLM has in memory: its served models plus loaded LoRA adapters."""
        return [
            LoadedModel(id=m.id, provider=self.name, context_size=m.context_size)
            for m in await self._model_entries()
        ]

    def pull_model(self, model: str) -> AsyncGenerator[DownloadStatus, None]:
        """Unsupported: vLLM fetches its model itself when it starts."""
        raise UnsupportedOperationError(
            f"The vLLM provider cannot download models: vLLM loads (and, from Hugging Face, "
            f"downloads) its model when it starts. Restart it with 'vllm serve {model}'.",
            provider=self.name,
            model=model,
        )

    async def delete_model(self, model: str) -> None:
        """Unsupported: vLLM has no API to remove a model."""
        raise UnsupportedOperationError(
            "The vLLM provider cannot delete models: vLLM serves the model it was started "
            "with and has no API to remove one. Stop the server, and delete the files (e.g. "
            "from the Hugging Face cache) yourself.",
            provider=self.name,
            model=model,
        )

    # -- LoRA adapters --------------------------------------------------------------------
    async def load_model(
        self, model: str, *, lora_path: str | None = None, load_inplace: bool = False
    ) -> None:
        """Load the LoRA adapter ``model`` (``POST /v1/load_lora_adapter``).

        The adapter's path is ``lora_path``, else ``lora_adapters[model]`` from the settings.
        Loading an adapter that is already loaded does nothing (``load_inplace=True``
        reloads it). vLLM loads base models only at startup.

        Raises:
            UnsupportedOperationError: no adapter path is known, or the server does not
                allow runtime LoRA updates.
            ModelNotFoundError: vLLM found no adapter at the path.
        """
        path = lora_path or self.config.lora_adapters.get(model)
        if not path:
            raise UnsupportedOperationError(
                f"The vLLM provider cannot load '{model}': vLLM loads its models when it starts "
                f"('vllm serve MODEL'). Only LoRA adapters can be loaded at runtime: give the "
                f"adapter's path (load_model('{model}', lora_path=...) or lora_adapters in the "
                f"vllm provider settings), and {_LORA_HOW}.",
                provider=self.name,
                model=model,
            )
        body = {"lora_name": model, "lora_path": path, "load_inplace": load_inplace}
        try:
            await self.transport.request(
                "POST",
                "/v1/load_lora_adapter",
                json=body,
                model=model,
                timeout=self.config.first_byte_timeout_seconds,
            )
        except ProviderError as exc:
            if vllm_wire.route_missing(exc):
                self._no_runtime_lora("load", model, exc)
            if isinstance(exc, ModelNotFoundError):
                raise ModelNotFoundError(
                    f"vLLM at {self.endpoint} found no LoRA adapter '{model}' at {path!r}: "
                    f"{exc.body}. Check the path (a directory or Hugging Face id that the "
                    "server can read).",
                    provider=self.name,
                    model=model,
                    status_code=exc.status_code,
                    body=exc.body,
                ) from exc
            if exc.status_code == 400 and "already been loaded" in str(exc.body or ""):
                return  # loaded already: nothing to do
            raise

    async def unload_model(self, model: str) -> None:
        """Unload the LoRA adapter ``model`` (``POST /v1/unload_lora_adapter``).

        Raises:
            UnsupportedOperationError: ``model`` is a base model (vLLM frees it only when
                it stops), or the server does not allow runtime LoRA updates.
            ModelNotFoundError: no adapter of that name is loaded.
        """
        try:
            await self.transport.request(
                "POST", "/v1/unload_lora_adapter", json={"lora_name": model}, model=model
            )
        except ProviderError as exc:
            if vllm_wire.route_missing(exc):
                self._no_runtime_lora("unload", model, exc)
            if not isinstance(exc, ModelNotFoundError):
                raise
            served = {m.id: m for m in await self._model_entries()}
            if model in served and not served[model].metadata.get("parent"):
                raise UnsupportedOperationError(
                    f"The vLLM provider cannot unload '{model}': it is the model vLLM was "
                    "started with, which stays loaded until the server stops. Only LoRA "
                    "adapters can be unloaded at runtime.",
                    provider=self.name,
                    model=model,
                ) from exc
            raise ModelNotFoundError(
                f"vLLM at {self.endpoint} has no LoRA adapter '{model}' loaded: {exc.body}. "
                f"Loaded adapters and models: {', '.join(served) or 'none'}.",
                provider=self.name,
                model=model,
                status_code=exc.status_code,
                body=exc.body,
            ) from exc

    def _no_runtime_lora(self, action: str, model: str, exc: ProviderError) -> NoReturn:
        raise UnsupportedOperationError(
            f"The vLLM provider cannot {action} '{model}': vLLM at {self.endpoint} does not "
            f"allow runtime LoRA updates (/v1/{action}_lora_adapter answered 404), and it "
            f"loads base models only when it starts. To {action} LoRA adapters at runtime, "
            f"{_LORA_HOW}.",
            provider=self.name,
            model=model,
        ) from exc

    # -- tokens ---------------------------------------------------------------------------
    async def tokenize(
        self, model: str | None, text: str | Messages, *, add_special_tokens: bool | None = None
    ) -> list[int]:
        """The token ids of ``text`` (a prompt, or chat messages with the chat template
        applied) for ``model`` (``None``: the server's default model), via ``POST /tokenize``.

        ``add_special_tokens`` (BOS...) is left to the server unless given: vLLM adds them to
        a prompt, not to chat messages (the template has them).
        """
        return list((await self._tokenize(model, text, add_special_tokens))["tokens"])

    async def count_tokens(
        self, model: str | None, text: str | Messages, *, add_special_tokens: bool | None = None
    ) -> int:
        """How many tokens ``text`` (a prompt, or chat messages) is for ``model``."""
        return int((await self._tokenize(model, text, add_special_tokens))["count"])

    async def _tokenize(
        self, model: str | None, text: str | Messages, add_special_tokens: bool | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {} if model is None else {"model": model}
        if isinstance(text, str):
            body["prompt"] = text
        else:
            body["messages"] = [m.to_dict() for m in as_messages(text)]
        if add_special_tokens is not None:
            body["add_special_tokens"] = add_special_tokens
        try:
            data = await self.transport.request_json("POST", "/tokenize", json=body, model=model)
        except ProviderError as exc:
            if vllm_wire.route_missing(exc):
                raise UnsupportedOperationError(
                    f"vLLM at {self.endpoint} has no /tokenize endpoint (it needs vLLM 0.5 "
                    "or newer); the vLLM provider cannot count tokens there.",
                    provider=self.name,
                    model=model,
                ) from exc
            raise
        if not (
            isinstance(data, dict)
            and isinstance(data.get("count"), int)
            and isinstance(data.get("tokens"), list)
        ):
            raise ProtocolError(
                f"vLLM at {self.endpoint} answered /tokenize without a token count: {str(data)[:120]!r}",
                provider=self.name,
                model=model,
            )
        return data

    # -- generation -----------------------------------------------------------------------
    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a completion from ``POST /v1/completions``."""
        body = vllm_wire.request_body(wire.build_completion(model, prompt, options))
        return self._sse("/v1/completions", body, model)

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a chat reply from ``POST /v1/chat/completions``."""
        body = vllm_wire.request_body(wire.build_chat(model, as_messages(messages), options))
        return self._sse("/v1/chat/completions", body, model)
