"""Which provider papin uses: the preference rule (:func:`rank_providers`), in one place.

:meth:`papin.llm.manager.LLMManager.initialize` tries the configured provider first, then the
providers in the order given here, and takes the first whose own status check succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from papin.llm.discovery.results import DiscoveredBackend, DiscoveryResult

__all__ = ["SERVER_PREFERENCE", "Preference", "hardware_matters", "rank_providers"]

#: Order among running servers that are otherwise equally good.
SERVER_PREFERENCE: tuple[str, ...] = (
    "ollama",
    "llamacpp_server",
    "lmstudio",
    "localai",
    "vllm",
    "openai_compatible",
)


@dataclass(frozen=True, slots=True)
class Preference:
    """One provider to try, in order: a discovered server (with its address) or a fallback."""

    provider: str
    why: str
    backend: DiscoveredBackend | None = None

    @property
    def address(self) -> str | None:
        """The server's address (``None`` for an in-process fallback)."""
        return self.backend.address if self.backend is not None else None


def _gpu_evidence(b: DiscoveredBackend) -> str:
    if b.provider == "vllm":
        return "vLLM serves models from the GPU"
    vram = b.details.get("vram_bytes")
    if vram:
        return f"it has models in GPU memory ({int(vram) / 1e9:.1f} GB)"
    return "it runs on the GPU"


def hardware_matters(result: DiscoveryResult) -> bool:
    """Whether :func:`rank_providers` needs ``embedded_gpu``: only when every running server
    is seen running on the CPU (then an in-process llama.cpp that can use a GPU beats them)."""
    running = result.running()
    return bool(running) and all(b.accelerated is False for b in running)


def rank_providers(
    result: DiscoveryResult,
    *,
    configured: str | None = None,
    fallbacks: Sequence[str] = ("llamacpp",),
    embedded_gpu: bool | None = None,
) -> list[Preference]:
    """The providers to try, best first: **papin's preference rule** (the one place it lives).

    After the configured provider (which :meth:`LLMManager.initialize` tries first, at its
    configured address), running servers found by discovery, then the in-process fallbacks:

    1. a running server of the **configured type** found at another address (the user wants
       that backend; its configured address was wrong or it moved);
    2. servers **on a GPU** (vLLM; Ollama with models in VRAM);
    3. servers that do not say where they run (llama-server, LM Studio, LocalAI, an idle
       Ollama): a server the user started, with the models they chose, beats loading a model
       into this process;
    4. the in-process fallback (``llamacpp``), *if* this machine has a GPU and the installed
       llama.cpp can offload to it (``embedded_gpu``);
    5. servers seen running on the **CPU** (Ollama with its loaded models outside VRAM);
    6. the in-process fallback (CPU).

    Within a step: servers with models before empty ones, ready before loading, those not
    asking for an API key first, then :data:`SERVER_PREFERENCE`, then probing order. Servers in
    error are left out. ``embedded_gpu`` is only consulted when :func:`hardware_matters`.
    """
    configured_found = result.running(configured) if configured else []

    def order(b: DiscoveredBackend) -> tuple[int, int, int, int]:
        kind = (
            SERVER_PREFERENCE.index(b.provider) if b.provider in SERVER_PREFERENCE else len(SERVER_PREFERENCE)
        )
        return (not b.models, b.health != "ready", b.details.get("auth") == "required", kind)

    def describe(b: DiscoveredBackend) -> str:
        version = f" {b.version}" if b.version else ""
        models = f"{len(b.models)} model{'s' if len(b.models) != 1 else ''}"
        return f"{b.provider}{version} running at {b.address} ({b.health}, {models})"

    steps: list[list[Preference]] = [[] for _ in range(6)]
    for b in sorted(result.running(), key=order):
        if b in configured_found:
            steps[0].append(Preference(b.provider, f"found {describe(b)}, the configured kind of server", b))
        elif b.accelerated is True:
            steps[1].append(
                Preference(b.provider, f"found {describe(b)}; preferred as GPU-backed: {_gpu_evidence(b)}", b)
            )
        elif b.accelerated is None:
            steps[2].append(
                Preference(
                    b.provider,
                    f"found {describe(b)}; a running server is preferred "
                    "over loading a model into this process",
                    b,
                )
            )
        else:
            steps[4].append(Preference(b.provider, f"found {describe(b)}, running on the CPU", b))
    cpu_servers = bool(steps[4])
    for name in fallbacks:
        if cpu_servers and embedded_gpu:
            steps[3].append(
                Preference(
                    name,
                    "this machine has a GPU that the in-process llama.cpp can use, "
                    "while the running servers use the CPU",
                )
            )
        elif cpu_servers:
            steps[5].append(Preference(name, "the running servers failed; running models in-process"))
        elif result.running():
            steps[5].append(Preference(name, "no running server was usable; running models in-process"))
        else:
            probed = len(result.probed)
            steps[5].append(
                Preference(
                    name,
                    f"no running LLM server found ({probed} address"
                    f"{'es' if probed != 1 else ''} probed); running models in-process",
                )
            )
    return [p for step in steps for p in step]
