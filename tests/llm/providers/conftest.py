"""Fixtures of the provider tests: a fake OpenAI-compatible server and the custom provider on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from papin.llm.providers.openai_compatible import OpenAICompatibleProvider
from tests.fakes.openai_server import FakeOpenAIServer
from tests.openai_helpers import MODEL, make_config


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    """A fake OpenAI-compatible server serving MODEL and "other"."""
    with FakeOpenAIServer(models=[MODEL, "other"]) as server:
        yield server


@pytest.fixture
async def custom(fake: FakeOpenAIServer) -> AsyncIterator[OpenAICompatibleProvider]:
    """The custom provider, open, pointed at ``fake`` (endpoint given with /v1)."""
    async with OpenAICompatibleProvider(make_config(fake.url + "/v1")) as provider:
        yield provider
