"""Every fault of the developers' list, placed on the route ``initialize()`` checks, gives the
documented typed error at start-up (Ollama's ``/api/version``, the OpenAI-compatible
``/v1/models``), promptly, and leaves no session open. Broken HTTP framing (a chunk-size line
that is not hexadecimal, a status line that is not HTTP) is mapped too, at start-up and in a
generation."""

from __future__ import annotations

from collections.abc import Iterator

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
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_server import FakeOpenAIServer
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
]


@pytest.fixture(params=["ollama", "openai_compatible"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeServer, str]]:
    if request.param == "ollama":
        with FakeOllama(models=[MODEL]) as fake:
            yield "ollama", fake, "/api/version"
    else:
        with FakeOpenAIServer(models=[MODEL]) as fake:
            yield "openai_compatible", fake, "/v1/models"


def _manager(provider: str, url: str) -> LLMManager:
    endpoint = url if provider == "ollama" else f"{url}/v1"
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
    fake.fault(route, kind, times=3, **params)
    manager = _manager(provider, fake.url)
    try:
        with pytest.raises(ProviderError) as info:
            await manager.initialize()
    finally:
        await manager.aclose()
    assert type(info.value) is expected or isinstance(info.value, expected), repr(info.value)
    assert info.value.provider == provider
    if expected is RateLimitedError:
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
