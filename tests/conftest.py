"""Shared test fixtures: every test runs with an isolated config dir and a clean environment."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from papin.llm.factory import reset_provider_factory

_ENV_PREFIXES = ("PAPIN_", "OLLAMA_", "LOCALAI_", "LLAMA_", "VLLM_", "LM_", "LMSTUDIO_", "HF_", "XDG_")
_ENV_NAMES = ("HUGGINGFACE_HUB_CACHE", "MODELS_PATH", "API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL")


@pytest.fixture(scope="session")
def session_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """papin's data directory for the whole session: the llama.cpp crash probe's verdicts are
    kept there, so the probe runs once per combination in a test run, as it does for a user."""
    return tmp_path_factory.mktemp("papin-data")


@pytest.fixture(autouse=True)
def isolated_env(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    session_data_dir: Path,
) -> Iterator[Path]:
    """Point papin's config at a temporary directory, give each test an empty home directory
    (so discovery and migration never see the real ~/.ollama, Hugging Face cache or legacy
    config), and drop the backends' environment variables. papin's data directory (probe
    verdicts) is shared by the session."""
    for key in list(os.environ):
        if key.startswith(_ENV_PREFIXES) or key in _ENV_NAMES:
            monkeypatch.delenv(key, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    # Discovery probes no well-known port unless a test names addresses: a developer's running
    # Ollama or llama-server must not change what a test sees.
    monkeypatch.setenv("PAPIN_DISCOVERY_CANDIDATES", "")
    config_dir = tmp_path / "papin-config"
    monkeypatch.setenv("PAPIN_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("PAPIN_DATA_DIR", str(session_data_dir))
    reset_provider_factory()
    yield config_dir
    reset_provider_factory()


@pytest.fixture(autouse=True)
def unlimited_cpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests to an Ollama on this machine carry ``num_thread`` only when this process may
    use fewer CPUs than the physical cores (a container quota, an affinity mask). Tests that
    compare exact request bodies must not depend on the CI machine's limits, so papin sees an
    unlimited CPU here; tests of that rule inject their own CPU (``tests/test_tuning.py``) and
    tests of real detection call the probes directly."""
    import dataclasses

    from papin.llm import hardware as hw_platform

    real = hw_platform.detect_cpu
    monkeypatch.setattr(hw_platform, "detect_cpu", lambda: dataclasses.replace(real(), available_cores=None))


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the ``openssl`` CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key
