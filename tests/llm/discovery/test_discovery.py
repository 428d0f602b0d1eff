"""Discovery of running servers: candidates, fingerprints (sans-I/O), live probes against the
fake backends, timeouts, the cache, and the preference rule."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from papin.llm.discovery import (
    DiscoveredBackend,
    Discovery,
    DiscoveryResult,
    configured_discovery,
    get_discovery,
    hardware_matters,
    rank_providers,
    reset_discovery,
)
from papin.llm.discovery.candidates import (
    Candidate,
    default_candidates,
    env_candidates,
    parse_candidate,
)
from papin.llm.discovery.fingerprints import Reply, identify, next_paths
from papin.llm.errors import ConfigurationError
from papin.llm.wire.ollama import parse_host
from tests.contract.backends import closed_port_url
from tests.fakes.llama_server import FakeLlamaServer
from tests.fakes.lmstudio import FakeLMStudio
from tests.fakes.localai import FakeLocalAI
from tests.fakes.ollama import FakeOllama
from tests.fakes.ollama_models import FakeLoadedModel
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.vllm import FakeVLLM


class SilentServer:
    """Accepts connections and never answers (a hung process)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def discovery(*urls: str, **kw: Any) -> Discovery:
    return Discovery(candidates=list(urls), default_dirs=False, **kw)


def reply(status: int | None, body: Any = b"") -> Reply:
    data = (
        body
        if isinstance(body, bytes)
        else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    )
    return Reply(status, data)


NOT_FOUND = reply(404, "404 page not found")


# -- candidates -------------------------------------------------------------------------------------
def test_env_candidates_follow_each_backends_rules() -> None:
    env = {
        "OLLAMA_HOST": "0.0.0.0",
        "LLAMA_ARG_HOST": "0.0.0.0",
        "LLAMA_ARG_PORT": "9090",
        "LOCALAI_ADDRESS": ":8090",
        "OPENAI_BASE_URL": "http://192.168.1.20:5000/v1",
    }
    found = {c.hint: c for c in env_candidates(env)}
    assert found["ollama"].url == "http://127.0.0.1:11434" and found["ollama"].source == "OLLAMA_HOST"
    assert found["llamacpp_server"].url == "http://127.0.0.1:9090"
    assert found["localai"].url == "http://127.0.0.1:8090" and found["localai"].source == "LOCALAI_ADDRESS"
    assert found["openai_compatible"].url == "http://192.168.1.20:5000"
    assert all(c.explicit for c in found.values())
    # Ollama's own rules: an http:// host without a port means port 80; a bare :port is loopback.
    assert env_candidates({"OLLAMA_HOST": "http://box"})[0].url == "http://box:80"
    assert env_candidates({"OLLAMA_HOST": ":11500"})[0].url == "http://127.0.0.1:11500"
    # A cloud API is never probed; the legacy ADDRESS variable is LocalAI's.
    assert env_candidates({"OPENAI_BASE_URL": "https://api.openai.com/v1"}) == []
    assert env_candidates({"ADDRESS": "127.0.0.1:7070"})[0].url == "http://127.0.0.1:7070"
    assert env_candidates({"ADDRESS": "somewhere"}) == []


def test_default_candidates_and_override() -> None:
    urls = [c.url for c in default_candidates({})]
    for port in (11434, 8080, 8000, 1234):
        assert f"http://127.0.0.1:{port}" in urls
    assert len(urls) == len(set(urls))
    # OLLAMA_HOST naming the default address makes that candidate explicit, not a duplicate.
    merged = default_candidates({"OLLAMA_HOST": "127.0.0.1:11434"})
    assert [c.url for c in merged].count("http://127.0.0.1:11434") == 1
    assert next(c for c in merged if c.url.endswith(":11434")).explicit
    override = default_candidates({"PAPIN_DISCOVERY_CANDIDATES": "vllm=http://gpu:8000, :9999"})
    assert [(c.url, c.hint) for c in override] == [
        ("http://gpu:8000", "vllm"),
        ("http://127.0.0.1:9999", None),
    ]
    assert default_candidates({"PAPIN_DISCOVERY_CANDIDATES": ""}) == []
    # The override replaces the well-known ports; addresses the environment names still count.
    named = default_candidates({"PAPIN_DISCOVERY_CANDIDATES": "", "OLLAMA_HOST": "127.0.0.1:5555"})
    assert [(c.url, c.hint) for c in named] == [("http://127.0.0.1:5555", "ollama")]


def test_parse_candidate_forms_and_errors() -> None:
    assert parse_candidate(("http://h:1/", "localai")) == Candidate(
        "http://h:1", "localai", "configured", True
    )
    assert parse_candidate({"url": "h:2", "provider": "vllm"}).url == "http://h:2"
    with pytest.raises(ConfigurationError, match="Unknown provider 'nope'"):
        parse_candidate("nope=http://h:1")
    with pytest.raises(ConfigurationError, match="Empty URL"):
        parse_candidate("ollama=")
    with pytest.raises(ConfigurationError, match="read_timeout"):
        Discovery(read_timeout=0)


# -- fingerprints (sans-I/O) ------------------------------------------------------------------------
def test_next_paths_asks_root_first_then_by_what_answered() -> None:
    assert next_paths({}) == ("/",)
    assert next_paths({"/": Reply(None, error="connection refused")}) == ()
    ollama = {"/": reply(200, "Ollama is running")}
    assert next_paths(ollama) == ("/api/version", "/api/tags", "/api/ps", "/readyz")
    # LocalAI imitating Ollama's root: its /readyz gives it away; then LocalAI's own routes.
    localai = {**ollama, "/readyz": reply(200, b"")}
    assert set(next_paths(localai)) == {"/version", "/v1/models"}
    assert "/props" in next_paths({"/": NOT_FOUND})


def test_identify_each_backend() -> None:
    ollama = identify({
        "/": reply(200, "Ollama is running"), "/readyz": NOT_FOUND,
        "/api/version": reply(200, {"version": "0.12.6"}),
        "/api/tags": reply(200, {"models": [{"name": "llama3.2:latest"}, {"name": "qwen2.5:7b"}]}),
        "/api/ps": reply(200, {"models": [{"name": "qwen2.5:7b", "size_vram": 4_000_000_000}]}),
    })  # fmt: skip
    assert ollama is not None and (ollama.provider, ollama.version, ollama.health) == (
        "ollama",
        "0.12.6",
        "ready",
    )
    assert ollama.models == ("llama3.2:latest", "qwen2.5:7b") and ollama.loaded_models == ("qwen2.5:7b",)
    assert ollama.accelerated is True and ollama.details["vram_bytes"] == "4000000000"

    base = {"/": NOT_FOUND, "/props": NOT_FOUND, "/health": NOT_FOUND, "/version": NOT_FOUND,
            "/readyz": NOT_FOUND, "/api/v0/models": NOT_FOUND, "/api/v1/models": NOT_FOUND}  # fmt: skip
    llama = identify({**base, "/props": reply(200, {"build_info": "b6000-abc", "model_path": "/m/x.gguf"}),
                      "/health": reply(200, {"status": "ok"}),
                      "/v1/models": reply(200, {"data": [{"id": "x", "owned_by": "llamacpp"}]})})  # fmt: skip
    assert llama is not None and (llama.provider, llama.version, llama.models) == (
        "llamacpp_server",
        "b6000-abc",
        ("x",),
    )
    loading_body = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
    loading = identify(
        {path: reply(503, loading_body) for path in base} | {"/v1/models": reply(503, loading_body)}
    )
    assert loading is not None and (loading.provider, loading.health, loading.reason) == (
        "llamacpp_server",
        "loading",
        "Loading model",
    )
    legacy = identify({**base, "/health": reply(503, {"status": "loading model"})})
    assert legacy is not None and legacy.health == "loading"

    starting = reply(503, {"status": "starting", "reason": "startup preload in progress"})
    localai = identify({**base, "/readyz": starting, "/version": reply(200, {"version": "v4.9.0"})})
    assert localai is not None and (localai.provider, localai.health, localai.version) == (
        "localai",
        "loading",
        "v4.9.0",
    )
    assert localai.reason == "starting: startup preload in progress"

    vllm = identify(
        {
            **base,
            "/version": reply(200, {"version": "0.33.0"}),
            "/health": reply(503, b""),
            "/v1/models": reply(200, {"data": [{"id": "m", "owned_by": "vllm", "max_model_len": 8192}]}),
        }
    )
    assert vllm is not None and (vllm.provider, vllm.health, vllm.accelerated) == ("vllm", "error", True)
    assert "engine" in (vllm.reason or "") and vllm.details["max_model_len"] == "8192"

    lms = identify({**base, "/api/v0/models": reply(200, {"object": "list", "data": []})})
    assert lms is not None and lms.provider == "lmstudio" and lms.models == ()

    generic = identify(
        {**base, "/v1/models": reply(200, {"object": "list", "data": [{"id": "a"}]})}, "localai"
    )
    assert generic is not None and generic.provider == "localai"  # the variable's hint names it
    keyed = identify({**base, "/v1/models": reply(401, {"error": "Unauthorized"})})
    assert keyed is not None and keyed.provider == "openai_compatible" and keyed.details["auth"] == "required"
    # A web server that is not an LLM server.
    assert identify({**base, "/": reply(200, "<html>hello</html>")}) is None
    assert identify({"/": Reply(None, error="connection refused")}) is None


# -- live probes --------------------------------------------------------------------------------------
async def test_finds_every_fake_backend_by_what_it_answers() -> None:
    with (
        FakeOllama(models=["llama3.2:latest"], version="0.12.6") as ollama,
        FakeLocalAI(models=["phi-2"], version="4.9.0") as localai,
        FakeVLLM(models=["meta-llama/Llama-3.2-1B-Instruct"]) as vllm,
        FakeLMStudio(models=["qwen/qwen3-4b"]) as lmstudio,
        FakeLlamaServer() as llama,
        FakeOpenAIServer(models=["tiny"]) as generic,
    ):
        ollama.loaded["llama3.2:latest"] = FakeLoadedModel("llama3.2:latest", 10, 0, 4096, None)
        urls = [ollama.url, localai.url, vllm.url, lmstudio.url, llama.url, generic.url]
        result = await discovery(*urls).discover(files=False, installed=False)
    found = {b.address: b for b in result.backends}
    assert found[ollama.url].provider == "ollama" and found[ollama.url].version == "0.12.6"
    assert found[ollama.url].accelerated is False  # loaded, but not in VRAM
    assert found[localai.url].provider == "localai" and found[localai.url].models == ("phi-2",)
    assert found[vllm.url].provider == "vllm" and found[vllm.url].version == "0.33.0"
    assert found[lmstudio.url].provider == "lmstudio" and found[lmstudio.url].models == ("qwen/qwen3-4b",)
    assert found[llama.url].provider == "llamacpp_server" and found[llama.url].version == "b6000-abcdef12"
    assert found[generic.url].provider == "openai_compatible" and found[generic.url].models == ("tiny",)
    assert all(b.health == "ready" for b in result.backends)
    assert result.servers_scanned and not result.files_scanned and result.probed == tuple(urls)
    json.dumps(result.to_dict())  # serialisable


async def test_loading_and_starting_states_are_reported() -> None:
    with FakeLlamaServer(api_key="k") as llama, FakeLocalAI(version="4.9.0") as localai:
        llama.loading = True
        localai.starting = True
        result = await discovery(llama.url, localai.url).discover(files=False, installed=False)
        by = {b.provider: b for b in result.backends}
        assert by["llamacpp_server"].health == "loading" and by["llamacpp_server"].reason == "Loading model"
        assert by["localai"].health == "loading" and "preload" in (by["localai"].reason or "")
        llama.loading = False
        keyed = await discovery(llama.url).find_backends()
        assert keyed[0].provider == "llamacpp_server" and keyed[0].details["auth"] == "required"


async def test_nothing_running_is_fast_and_named_addresses_are_reported() -> None:
    urls = [closed_port_url() for _ in range(6)]
    started = time.perf_counter()
    result = await discovery(*urls).discover(files=False, installed=False)
    assert time.perf_counter() - started < 0.5
    assert result.backends == ()  # candidates replacing the defaults are reported only when found
    named = Discovery(candidates=[], endpoints=[f"ollama={urls[0]}"], default_dirs=False)
    entry = (await named.find_backends())[0]
    assert (entry.provider, entry.health, entry.reason, entry.source) == (
        "ollama",
        "error",
        "connection refused",
        "configured",
    )


async def test_a_port_that_never_answers_costs_one_timeout(silent: SilentServer) -> None:
    with FakeOllama(models=["a:latest"]) as ollama:
        d = discovery(silent.url, ollama.url, connect_timeout=0.2, read_timeout=0.3)
        started = time.perf_counter()
        result = await d.discover(files=False, installed=False)
        took = time.perf_counter() - started
    assert 0.3 <= took < 0.9
    assert [b.provider for b in result.backends] == ["ollama"]  # the silent port is not named: left out
    named = Discovery(candidates=[], endpoints=[silent.url], default_dirs=False, read_timeout=0.3)
    entry = (await named.find_backends())[0]
    assert entry.provider == "unknown" and entry.health == "error"
    assert entry.reason == "no answer within 0.3 s" and entry.elapsed < 0.7


async def test_results_are_cached_shared_and_refreshable() -> None:
    with FakeOllama(models=["a:latest"]) as ollama:
        d = discovery(ollama.url, cache_ttl=30)
        first, second = await asyncio.gather(d.find_backends(), d.find_backends())
        assert first is second
        roots = len(ollama.requests_to("/"))
        assert roots == 1  # two concurrent callers, one probe
        await d.find_backends()
        assert len(ollama.requests_to("/")) == 1  # cached
        ollama.add_model("b:latest")
        fresh = await d.find_backends(refresh=True)
        assert len(ollama.requests_to("/")) == 2 and fresh[0].models == ("a:latest", "b:latest")
        d.invalidate()
        await d.find_backends()
        assert len(ollama.requests_to("/")) == 3


async def test_cache_is_keyed_by_the_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOllama(models=["a:latest"]) as one, FakeOllama(models=["b:latest"]) as two:
        d = Discovery(default_dirs=False, cache_ttl=60)
        monkeypatch.setenv("PAPIN_DISCOVERY_CANDIDATES", one.url)
        assert (await d.find_backends())[0].models == ("a:latest",)
        monkeypatch.setenv("PAPIN_DISCOVERY_CANDIDATES", two.url)
        assert (await d.find_backends())[0].models == ("b:latest",)  # other addresses: not stale data


def test_process_wide_discovery_is_a_resettable_singleton() -> None:
    reset_discovery()
    first = get_discovery()
    assert get_discovery() is first
    custom = Discovery(candidates=[])
    reset_discovery(custom)
    assert get_discovery() is custom
    reset_discovery()
    assert get_discovery() is not custom


# -- the preference rule ------------------------------------------------------------------------------
def backend(
    provider: str,
    port: int,
    *,
    accelerated: bool | None = None,
    health: str = "ready",
    models: tuple[str, ...] = ("m",),
) -> DiscoveredBackend:
    return DiscoveredBackend(provider, f"http://127.0.0.1:{port}", health=health, models=models,
                             accelerated=accelerated)  # fmt: skip


def ranked(*backends: DiscoveredBackend, **kw: Any) -> list[tuple[str, str | None]]:
    result = DiscoveryResult(backends=backends, probed=("x",) * 6, servers_scanned=True)
    return [(p.provider, p.address) for p in rank_providers(result, **kw)]


def test_rank_prefers_gpu_then_running_servers_then_embedded() -> None:
    ollama_cpu = backend("ollama", 11434, accelerated=False)
    vllm = backend("vllm", 8000, accelerated=True)
    llama = backend("llamacpp_server", 8080)
    lms = backend("lmstudio", 1234, models=())
    broken = backend("localai", 8081, health="error")
    loading = backend("ollama", 11500, health="loading")
    order = ranked(ollama_cpu, lms, llama, broken, vllm, loading)
    assert order == [
        ("vllm", vllm.address),  # GPU-backed
        ("llamacpp_server", llama.address),  # ready, has models
        ("ollama", loading.address),  # loading: after the ready ones
        ("lmstudio", lms.address),  # no models
        ("ollama", ollama_cpu.address),  # seen on the CPU
        ("llamacpp", None),
    ]
    # The configured kind of server, found elsewhere, comes first.
    assert ranked(vllm, llama, configured="llamacpp_server")[0] == ("llamacpp_server", llama.address)


def test_rank_uses_the_hardware_only_between_cpu_servers_and_embedded() -> None:
    cpu = backend("ollama", 11434, accelerated=False)
    result = DiscoveryResult(backends=(cpu,), servers_scanned=True)
    assert hardware_matters(result)
    assert ranked(cpu, embedded_gpu=True) == [("llamacpp", None), ("ollama", cpu.address)]
    assert ranked(cpu, embedded_gpu=False) == [("ollama", cpu.address), ("llamacpp", None)]
    assert not hardware_matters(DiscoveryResult(backends=(backend("ollama", 1),)))
    assert not hardware_matters(DiscoveryResult())
    reasons = rank_providers(DiscoveryResult(probed=("a", "b")), fallbacks=("llamacpp",))
    assert reasons[0].why == "no running LLM server found (2 addresses probed); running models in-process"


# -- settings from the configuration --------------------------------------------------------------
def test_configured_discovery_takes_the_config_section_and_is_shared() -> None:
    from pathlib import Path

    reset_discovery()
    section = {"extra_endpoints": ["vllm=http://gpu:8000"], "model_dirs": ["/m"], "cache_seconds": 3,
               "probe_timeout_seconds": 0.2}  # fmt: skip
    d = configured_discovery(section)
    assert d.endpoints == [Candidate("http://gpu:8000", "vllm", "configured", True)]
    assert (d.connect_timeout, d.read_timeout, d.model_dirs) == (0.2, 0.2, [Path("/m")])
    assert get_discovery() is d and configured_discovery(dict(section)) is d  # one cache for all
    other = configured_discovery({"probe_timeout_seconds": 0.4})
    assert other is not d and other.read_timeout == 0.4
    mine = Discovery(candidates=[])
    reset_discovery(mine)
    assert configured_discovery(section) is mine  # one given explicitly stays
    reset_discovery()


def test_the_manager_uses_the_config_discovery_section() -> None:
    from papin.llm.config import LLMConfig
    from papin.llm.manager import LLMManager

    if "discovery" not in LLMConfig.model_fields:
        pytest.skip("this LLMConfig has no discovery section")
    reset_discovery()
    cfg = LLMConfig.model_validate({"discovery": {"extra_endpoints": ["localai=http://127.0.0.1:9"],
                                                  "probe_timeout_seconds": 0.25}})  # fmt: skip
    d = LLMManager(cfg).discovery
    assert d.endpoints[0].hint == "localai" and d.read_timeout == 0.25
    assert LLMManager(cfg).discovery is d
    reset_discovery()


def test_discovery_is_usable_from_several_threads_and_sync_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from papin.llm.sync import discover_sync

    with FakeOllama(models=["a:latest"]) as ollama:
        d = discovery(ollama.url, cache_ttl=30)
        results: list[tuple[DiscoveredBackend, ...]] = []
        threads = [
            threading.Thread(target=lambda: results.append(asyncio.run(d.find_backends()))) for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(results) == 4 and all(r[0].provider == "ollama" for r in results)
        assert len(ollama.requests_to("/")) <= 4  # each loop probes at most once; later ones reuse the cache
        reset_discovery()
        monkeypatch.setenv("PAPIN_DISCOVERY_CANDIDATES", ollama.url)
        result = discover_sync(files=False, installed=False)
        assert [b.address for b in result.backends] == [ollama.url]
    reset_discovery()


def test_malformed_addresses_in_the_environment() -> None:
    """A backend's own variable that cannot be parsed is skipped (the backend would refuse it
    too); papin's own override says what is wrong, naming the variable."""
    bad = {"LOCALAI_ADDRESS": "[::1", "LLAMA_ARG_HOST": "[::1", "OPENAI_BASE_URL": "http://[::1"}
    assert env_candidates({**bad, "OLLAMA_HOST": "http://[::1"}) == []
    assert [c.url for c in env_candidates({**bad, "OLLAMA_HOST": "127.0.0.1:5"})] == ["http://127.0.0.1:5"]
    with pytest.raises(ConfigurationError, match="PAPIN_DISCOVERY_CANDIDATES: Invalid address"):
        default_candidates({"PAPIN_DISCOVERY_CANDIDATES": "http://[::1"})
    with pytest.raises(ConfigurationError, match="Invalid Ollama host"):
        parse_host("http://[::1")
