"""Every fault of the developers' list, placed on the route ``initialize()`` checks first, gives
the documented typed error at start-up, for every HTTP backend (Ollama's ``/api/version``, the
OpenAI-compatible and LM Studio's ``/v1/models``, vLLM's ``/health``, LocalAI's ``/readyz``),
promptly, and leaves no session open. Broken HTTP framing (a chunk-size line
that is not hexadecimal, a status line that is not HTTP) is mapped too, at start-up and in a
generation."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from papin.llm import LLMConfig, LLMManager
from papin.llm.errors import (
    AuthenticationError,
    ProtocolError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from tests.fakes._server import FakeServer
from tests.fakes.lmstudio import FakeLMStudio
from tests.fakes.localai import FakeLocalAI
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.vllm import FakeVLLM
from tests.ollama_helpers import MODEL

pytestmark = pytest.mark.timeout(60)

#: fault kind, its parameters, and the error initialize() must raise
FAULTS: list[tuple[str, dict[str, object], type[ProviderError]]] = [
    ("status", {"status": 401}, AuthenticationError),
    ("status", {"status": 403}, AuthenticationError),
    ("status", {"status": 429, "headers": {"Retry-After": "3"}}, RateLimitedError),
    ("status", {"status": 503, "headers": {"Retry-After": "3"}}, RateLimitedError),
    ("never_answer", {"seconds": 5}, ProviderTimeoutError),
    ("reset", {}, ProviderUnavailableError),
    ("bad_chunked", {}, ProtocolError),
    ("bad_status_line", {}, ProtocolError),
    ("slow_drip", {"seconds": 0.4}, ProviderTimeoutError),
    ("stall_mid_stream", {"after": 0, "seconds": 5}, ProviderTimeoutError),
    ("wrong_content_type", {}, ProtocolError),
    ("empty_body", {}, ProtocolError),
    ("huge_response", {"mb": 80}, ProtocolError),
]


#: provider -> (its fake, the route its status check asks first)
SERVERS: dict[str, tuple[Callable[[], FakeServer], str]] = {
    "ollama": (lambda: FakeOllama(models=[MODEL]), "/api/version"),
    "openai_compatible": (lambda: FakeOpenAIServer(models=[MODEL]), "/v1/models"),
    "vllm": (FakeVLLM, "/health"),
    "lmstudio": (FakeLMStudio, "/v1/models"),
    "localai": (FakeLocalAI, "/readyz"),
}
#: Where a backend documents another meaning for a status on its health route.
BY_DESIGN: dict[tuple[str, int], type[ProviderError]] = {
    ("vllm", 503): ProviderUnavailableError,  # GET /health 503: the engine has died
    ("localai", 503): ProviderUnavailableError,  # GET /readyz 503: still starting up
}
#: Health routes whose body papin does not read (an empty 200 is the answer): a fault in the
#: body, or a body of another type, leaves the server healthy there (the next route, or the
#: generation, reports a wrong answer typed).
EMPTY_HEALTH_BODY = {"vllm", "localai"}
BODY_FAULTS = {"slow_drip", "stall_mid_stream", "wrong_content_type", "empty_body"}


@pytest.fixture(params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeServer, str]]:
    make, route = SERVERS[request.param]
    with make() as fake:
        yield request.param, fake, route


def _manager(provider: str, url: str) -> LLMManager:
    endpoint = url if provider in ("ollama", "vllm", "lmstudio", "localai") else f"{url}/v1"
    settings = {"endpoint": endpoint, "timeout_seconds": 0.3, "connect_timeout_seconds": 0.5}
    cfg = LLMConfig(provider_type=provider, provider_config=settings, auto_discover=False)
    return LLMManager.with_config(cfg)


def _id(value: object) -> str:
    return value if isinstance(value, str) else ""


@pytest.mark.parametrize(("kind", "params", "expected"), FAULTS, ids=_id)
async def test_fault_at_start_is_typed(
    server: tuple[str, FakeServer, str], kind: str, params: dict[str, object], expected: type[ProviderError]
) -> None:
    provider, fake, route = server
    expected = BY_DESIGN.get((provider, int(params.get("status", 0))), expected)  # type: ignore[call-overload]
    fake.fault(route, kind, times=3, **params)
    manager = _manager(provider, fake.url)
    if provider in EMPTY_HEALTH_BODY and kind in BODY_FAULTS:
        try:
            await manager.initialize()  # an empty body cannot stall: the server is fine
        finally:
            await manager.aclose()
        return
    try:
        with pytest.raises(ProviderError) as info:
            await manager.initialize()
    finally:
        await manager.aclose()
    assert type(info.value) is expected or isinstance(info.value, expected), repr(info.value)
    assert info.value.provider == provider
    if isinstance(info.value, RateLimitedError):
        assert info.value.retry_after == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["bad_chunked", "bad_status_line"])
async def test_broken_framing_in_a_generation_is_a_protocol_error(kind: str) -> None:
    with FakeOllama(models=[MODEL]) as fake:
        manager = _manager("ollama", fake.url)
        await manager.initialize()
        fake.fault("/api/generate", kind)
        with pytest.raises(ProtocolError, match="malformed HTTP response"):
            await manager.generate_text(MODEL, "hi")
        await manager.aclose()
