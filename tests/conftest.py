"""Shared test fixtures: every test runs with an isolated config dir and a clean environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from papin.llm.factory import reset_provider_factory

_ENV_PREFIXES = ("PAPIN_", "OLLAMA_")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point papin's config at a temporary directory and drop PAPIN_*/OLLAMA_* variables."""
    for key in list(os.environ):
        if key.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(key, raising=False)
    config_dir = tmp_path / "papin-config"
    monkeypatch.setenv("PAPIN_CONFIG_DIR", str(config_dir))
    reset_provider_factory()
    yield config_dir
    reset_provider_factory()
