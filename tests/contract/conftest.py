"""The ``backend`` fixture: one parametrization per entry of :data:`BACKENDS`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.contract.backends import BACKENDS, ContractBackend


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[ContractBackend]:
    """A ready backend under contract (each test gets a fresh one)."""
    async with BACKENDS[request.param]() as ready:
        yield ready
