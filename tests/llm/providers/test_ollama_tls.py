"""HTTPS to Ollama (e.g. behind a TLS proxy): verification, a private CA, and the error a
person sees for a self-signed certificate. The certificate comes from the ``openssl`` CLI."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from papin.llm.errors import ConfigurationError, ProviderUnavailableError
from papin.llm.providers.ollama import OllamaProvider
from tests.fakes.ollama import FakeOllama
from tests.ollama_helpers import MODEL, make_config

pytestmark = [
    pytest.mark.timeout(20),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]


@pytest.fixture
def tls_fake(certificate: tuple[Path, Path]) -> Iterator[FakeOllama]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    with FakeOllama(models=[MODEL], ssl_context=context) as fake:
        yield fake


async def test_self_signed_certificate_is_refused_with_a_hint(tls_fake: FakeOllama) -> None:
    assert tls_fake.url.startswith("https://")
    async with OllamaProvider(make_config(tls_fake.url)) as provider:
        with pytest.raises(ProviderUnavailableError) as info:
            await provider.generate(MODEL, "hi")
        status = await provider.status()
    message = str(info.value)
    assert "TLS error" in message and "verify_ssl" in message and "ca_bundle" in message
    assert not status.available


async def test_verify_ssl_false(tls_fake: FakeOllama) -> None:
    async with OllamaProvider(make_config(tls_fake.url, verify_ssl=False)) as provider:
        assert (await provider.generate(MODEL, "hi")).text


async def test_ca_bundle(tls_fake: FakeOllama, certificate: tuple[Path, Path]) -> None:
    config = make_config(tls_fake.url, ca_bundle=str(certificate[0]))
    async with OllamaProvider(config) as provider:
        assert (await provider.status()).available
        assert (await provider.generate(MODEL, "hi")).text


async def test_missing_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    config = make_config("https://127.0.0.1:1", ca_bundle=str(tmp_path / "nope.pem"))
    async with OllamaProvider(config) as provider:
        with pytest.raises(ConfigurationError, match="CA bundle"):
            await provider.list_downloaded_models()


async def test_https_to_a_plain_http_server_says_use_http() -> None:
    with FakeOllama(models=[MODEL]) as plain:
        url = plain.url.replace("http://", "https://")
        async with OllamaProvider(make_config(url)) as provider:
            with pytest.raises(ProviderUnavailableError) as info:
                await provider.generate(MODEL, "hi")
    assert "does not answer TLS" in str(info.value)
    assert "use an http:// endpoint" in str(info.value)
    assert "verify_ssl" not in str(info.value)
