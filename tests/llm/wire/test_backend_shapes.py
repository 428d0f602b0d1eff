"""The backend-specific parsers that moved out of the provider modules into ``wire/``:
LM Studio's REST listings and jobs, LocalAI's gallery and job status, vLLM's request body."""

from __future__ import annotations

import pytest

from papin.llm.errors import ModelNotFoundError, ProviderAPIError
from papin.llm.wire import lmstudio, localai, vllm


def test_lmstudio_v1_entry_becomes_model_info_with_loaded_state() -> None:
    entry = {
        "key": "qwen/qwen3-4b",
        "type": "vlm",
        "size_bytes": 2.5e9,
        "max_context_length": 32768,
        "capabilities": {"trained_for_tool_use": True, "reasoning": True},
        "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
        "loaded_instances": [{"id": "qwen/qwen3-4b", "config": {"context_length": 4096}}],
    }
    info = lmstudio.v1_model(entry, "lmstudio")
    assert info.id == "qwen/qwen3-4b" and info.provider == "lmstudio"
    assert info.size_bytes == 2_500_000_000 and info.context_size == 32768
    assert info.capabilities == ("completion", "vision", "tools", "thinking")
    assert info.quantization == "Q4_K_M"
    assert info.metadata["state"] == "loaded"
    assert info.metadata["loaded_context_length"] == "4096"


def test_lmstudio_v0_entry_and_validity() -> None:
    info = lmstudio.v0_model({"id": "e5", "type": "embeddings", "state": "loaded"}, "lms")
    assert info.capabilities == ("embedding",) and info.metadata["state"] == "loaded"
    assert lmstudio.valid_entry({"key": "a"}, "v1") and not lmstudio.valid_entry({"id": "a"}, "v1")
    assert not lmstudio.valid_entry({"id": ""}, "v0") and not lmstudio.valid_entry("a", "v0")


def test_lmstudio_finds_a_job_in_the_grouped_listing() -> None:
    listing = {"downloading": [{"job_id": "x"}], "completed": [{"job_id": "j", "total_size_bytes": 3}]}
    assert lmstudio.find_job(listing, "j") == {"status": "completed", "job_id": "j", "total_size_bytes": 3}
    direct = {"status": "downloading", "job_id": "j"}
    assert lmstudio.find_job(direct, "j") is direct
    assert lmstudio.int_field(True) is None and lmstudio.int_field(3.9) == 3


@pytest.mark.parametrize(
    ("value", "seconds"), [(0.2, 1), ("1.5h", 5400), ("250ms", 1), (0, None), ("", None)]
)
def test_lmstudio_ttl_seconds(value: float | str, seconds: int | None) -> None:
    assert lmstudio.ttl_seconds(value) == seconds


def test_localai_gallery_entry() -> None:
    entry = {
        "name": "qwen3-0.6b",
        "gallery": {"name": "localai"},
        "installed": True,
        "size": "1.5 GiB",
        "tags": ["llm", "gguf"],
        "url": "github:mudler/LocalAI/gallery/qwen.yaml@master",
        "license": "apache-2.0",
    }
    info = localai.gallery_model(entry, "localai")
    assert info is not None
    assert info.id == "localai@qwen3-0.6b" and info.name == "qwen3-0.6b" and info.installed
    assert info.size_bytes == int(1.5 * 1024**3)
    assert info.metadata["tags"] == "llm,gguf" and info.metadata["gallery"] == "localai"
    assert localai.gallery_model({"name": ""}, "localai") is None


def test_localai_job_shapes_of_every_version() -> None:
    assert localai.job_failed({"error": {}, "message": ""})  # up to v4.3: a marshalled Go error
    assert localai.job_failed({"message": "error: no model found with name x"})
    assert not localai.job_failed({"error": None, "message": "downloading"})
    assert localai.job_reason({"message": "error: disk full"}) == "disk full"
    assert localai.job_reason({"error": "boom"}) == "boom"
    assert localai.job_text({"file_name": "m.gguf"}) == "downloading m.gguf"
    assert localai.apply_body("https://x/y.yaml") == {"url": "https://x/y.yaml"}
    assert localai.apply_body("localai@m") == {"id": "localai@m"}


def test_localai_job_tracker_sums_files() -> None:
    tracker = localai.JobTracker()
    assert tracker.bytes({"file_name": "a", "file_size": "1 KB", "downloaded_size": "500 B"}) == (500, 1000)
    assert tracker.bytes({"file_name": "b", "file_size": "2 KB", "downloaded_size": "1 KB"}) == (2000, 3000)
    assert tracker.bytes({"current_bytes": 7, "total_bytes": 9}) == (7, 9)


def test_vllm_body_and_missing_route() -> None:
    body = vllm.request_body({"repeat_penalty": 1.2, "repetition_penalty": 1.5})
    assert body == {"repetition_penalty": 1.5}
    assert vllm.route_missing(ProviderAPIError("x", status_code=404, body="Not Found"))
    assert not vllm.route_missing(ModelNotFoundError("x", status_code=404, body="Not Found"))
    missing_model = ProviderAPIError("x", status_code=404, body="The model `m` does not exist.")
    assert not vllm.route_missing(missing_model)
