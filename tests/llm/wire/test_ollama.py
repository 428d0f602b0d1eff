"""Sans-I/O tests of Ollama's wire layer (``papin.llm.wire.ollama``), per backend-apis.md §1, §7.1."""

from __future__ import annotations

from typing import Any

import pytest

from papin.llm.datatypes import ChatMessage
from papin.llm.errors import ConfigurationError
from papin.llm.options import GenerationOptions
from papin.llm.wire import ollama as wire

# -- parse_host (ollama-python ``_parse_host`` doctests, §1.1 and §7.1) -----------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("1.2.3.4", "http://1.2.3.4:11434"),
        (":56789", "http://127.0.0.1:56789"),
        ("1.2.3.4:56789", "http://1.2.3.4:56789"),
        ("http://1.2.3.4", "http://1.2.3.4:80"),
        ("https://1.2.3.4", "https://1.2.3.4:443"),
        ("https://1.2.3.4:56789", "https://1.2.3.4:56789"),
        ("example.com", "http://example.com:11434"),
        ("example.com:56789", "http://example.com:56789"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ("https://example.com:56789", "https://example.com:56789"),
        ("example.com/", "http://example.com:11434"),
        ("example.com:56789/", "http://example.com:56789"),
        ("example.com/path", "http://example.com:11434/path"),
        ("example.com:56789/path", "http://example.com:56789/path"),
        ("https://example.com:56789/path", "https://example.com:56789/path"),
        ("example.com:56789/path/", "http://example.com:56789/path"),
        ("[0001:002:003:0004::1]", "http://[0001:002:003:0004::1]:11434"),
        ("[0001:002:003:0004::1]:56789", "http://[0001:002:003:0004::1]:56789"),
        ("http://[0001:002:003:0004::1]", "http://[0001:002:003:0004::1]:80"),
        ("https://[0001:002:003:0004::1]", "https://[0001:002:003:0004::1]:443"),
        ("https://[0001:002:003:0004::1]:56789", "https://[0001:002:003:0004::1]:56789"),
        ("[0001:002:003:0004::1]/", "http://[0001:002:003:0004::1]:11434"),
        ("[0001:002:003:0004::1]:56789/", "http://[0001:002:003:0004::1]:56789"),
        ("[0001:002:003:0004::1]/path", "http://[0001:002:003:0004::1]:11434/path"),
        ("[0001:002:003:0004::1]:56789/path", "http://[0001:002:003:0004::1]:56789/path"),
        ("https://[0001:002:003:0004::1]:56789/path", "https://[0001:002:003:0004::1]:56789/path"),
        ("[0001:002:003:0004::1]:56789/path/", "http://[0001:002:003:0004::1]:56789/path"),
        # Ollama specifics (§1.1): the special cloud host, bind-all addresses, bad ports.
        ("ollama.com", "https://ollama.com:443"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("0.0.0.0:5000", "http://127.0.0.1:5000"),
        ("[::]:4000", "http://[::1]:4000"),
        ("example.com:notaport", "http://example.com:11434"),
        ("HTTP://Example.COM", "http://example.com:80"),
        ("  localhost  ", "http://localhost:11434"),
    ],
)
def test_parse_host(value: str | None, expected: str) -> None:
    assert wire.parse_host(value) == expected


@pytest.mark.parametrize("value", ["ftp://host", "unix:///tmp/sock"])
def test_parse_host_rejects_other_schemes(value: str) -> None:
    with pytest.raises(ConfigurationError, match="http:// or https://"):
        wire.parse_host(value)


# -- request bodies --------------------------------------------------------------------------


def test_generate_body_is_exactly_three_keys_without_options() -> None:
    # §7.1 O6: ollama-python sends exactly these keys for a plain generate.
    body = wire.build_generate("dummy", "Why is the sky blue?", None, stream=False)
    assert body == {"model": "dummy", "prompt": "Why is the sky blue?", "stream": False}


def test_generate_body_streams_explicitly_by_default() -> None:
    assert wire.build_generate("m", "p")["stream"] is True


def test_map_options_names() -> None:
    opts = GenerationOptions(
        max_tokens=64, temperature=0.0, top_p=0.9, top_k=40, min_p=0.05, repeat_penalty=1.1,
        presence_penalty=0.5, frequency_penalty=0.25, stop=["\n\n"], seed=42, context_size=4096,
        gpu_layers=-1, threads=8, batch_size=256,
    )
    options, top = wire.map_options(opts)
    assert options == {
        "num_predict": 64, "temperature": 0.0, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
        "repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": 0.25,
        "stop": ["\n\n"], "seed": 42, "num_ctx": 4096, "num_gpu": -1, "num_thread": 8,
        "num_batch": 256,
    }
    assert top == {}


def test_map_options_none_and_empty() -> None:
    assert wire.map_options(None) == ({}, {})
    assert wire.map_options(GenerationOptions()) == ({}, {})


def test_map_options_top_level_fields_and_additional_params_passthrough() -> None:
    opts = GenerationOptions(
        system="Be brief.",
        keep_alive="10m",
        additional_params={
            "format": {"type": "object"},
            "raw": True,
            "think": "low",
            "mirostat": 2,  # unknown to papin: into options, Ollama ignores it if unknown
            "num_keep": 5,
        },
    )
    options, top = wire.map_options(opts)
    assert options == {"mirostat": 2, "num_keep": 5}
    assert top == {"system": "Be brief.", "keep_alive": "10m", "format": {"type": "object"},
                   "raw": True, "think": "low"}


def test_build_generate_with_options() -> None:
    opts = GenerationOptions(temperature=0, context_size=4096, keep_alive="10m")
    body = wire.build_generate("m", "hi", opts, stream=False)
    # §7.1: what ollama-python sends for options={'temperature':0,'num_ctx':4096}, keep_alive='10m'
    assert body == {"model": "m", "prompt": "hi", "stream": False,
                    "options": {"temperature": 0.0, "num_ctx": 4096}, "keep_alive": "10m"}


def test_build_generate_system_is_top_level() -> None:
    body = wire.build_generate("m", "hi", GenerationOptions(system="sys", max_tokens=5))
    assert body["system"] == "sys"
    assert body["options"] == {"num_predict": 5}


def test_build_chat_body() -> None:
    msgs = [ChatMessage("user", "Why is the sky blue?")]
    body = wire.build_chat("dummy", msgs, None, stream=False)
    assert body == {"model": "dummy",
                    "messages": [{"role": "user", "content": "Why is the sky blue?"}],
                    "stream": False}


def test_build_chat_system_option_becomes_leading_message() -> None:
    msgs = [ChatMessage("user", "hi")]
    body = wire.build_chat("m", msgs, GenerationOptions(system="Be brief.", max_tokens=3))
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hi"}]
    assert "system" not in body
    assert body["options"] == {"num_predict": 3}


def test_build_chat_keeps_existing_system_message() -> None:
    msgs = [ChatMessage("system", "Original."), ChatMessage("user", "hi")]
    body = wire.build_chat("m", msgs, GenerationOptions(system="Other."))
    assert body["messages"][0] == {"role": "system", "content": "Original."}
    assert len(body["messages"]) == 2


def test_build_chat_images_and_passthrough() -> None:
    msgs = [ChatMessage("user", "what is this?", images=("iVBORw0KGgo=",))]
    opts = GenerationOptions(additional_params={"tools": [], "format": "json"})
    body = wire.build_chat("m", msgs, opts)
    assert body["messages"][0]["images"] == ["iVBORw0KGgo="]
    assert body["tools"] == [] and body["format"] == "json"
    assert "options" not in body


@pytest.mark.parametrize(("keep_alive", "expected"), [(None, None), (0, 0), ("5m", "5m"), (-1, -1)])
def test_build_load(keep_alive: float | str | None, expected: float | str | None) -> None:
    body = wire.build_load("m", keep_alive=keep_alive)
    assert body["model"] == "m" and body["stream"] is False
    assert "prompt" not in body  # an empty prompt means: load only
    assert body.get("keep_alive") == expected


# -- parse_chunk -----------------------------------------------------------------------------


def test_parse_intermediate_generate_chunk() -> None:
    chunk = wire.parse_chunk(
        {"model": "m", "created_at": "2023-08-04T19:22:45.499127Z", "response": "The",
         "done": False},
        time_to_first_token=None,
    )
    assert chunk.text == "The" and not chunk.done and chunk.stats is None


def test_parse_intermediate_chat_chunk() -> None:
    chunk = wire.parse_chunk(
        {"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False},
        time_to_first_token=None,
    )
    assert chunk.text == "Hi" and not chunk.done


def test_parse_minimal_answer_without_done_or_created_at() -> None:
    # §7.1 O1: a minimal answer must parse.
    chunk = wire.parse_chunk({"model": "dummy", "message": {"role": "assistant",
                                                            "content": "I don't know."}},
                             time_to_first_token=None)
    assert chunk.text == "I don't know."


def test_parse_final_chunk_stats() -> None:
    final = {
        "model": "llama3.2", "created_at": "x", "response": "", "done": True,
        "done_reason": "stop", "context": [1, 2, 3], "total_duration": 10706818083,
        "load_duration": 6338219291, "prompt_eval_count": 26, "prompt_eval_duration": 130079000,
        "eval_count": 259, "eval_duration": 4232710000,
    }
    chunk = wire.parse_chunk(final, time_to_first_token=0.25)
    assert chunk.done and chunk.text == ""
    stats = chunk.stats
    assert stats is not None
    assert stats.finish_reason == "stop"
    assert stats.prompt_tokens == 26
    assert stats.output_tokens == 259
    assert stats.tokens_per_second == pytest.approx(259 / 4.23271)
    assert stats.total_time == pytest.approx(10.706818083)
    assert stats.load_time == pytest.approx(6.338219291)
    assert stats.time_to_first_token == 0.25


def test_parse_final_chunk_length_and_missing_metrics() -> None:
    chunk = wire.parse_chunk({"response": "full text", "done": True, "done_reason": "length"},
                             time_to_first_token=None)
    assert chunk.text == "full text"
    assert chunk.stats is not None
    assert chunk.stats.finish_reason == "length"
    assert chunk.stats.tokens_per_second is None
    assert chunk.stats.output_tokens is None


@pytest.mark.parametrize("reason", ["stop", "load", "unload", None])
def test_parse_final_chunk_other_reasons_mean_stop(reason: str | None) -> None:
    obj: dict[str, Any] = {"response": "", "done": True}
    if reason is not None:
        obj["done_reason"] = reason
    stats = wire.parse_chunk(obj, time_to_first_token=None).stats
    assert stats is not None and stats.finish_reason == "stop"


# -- error_text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"error":"model \'x\' not found"}', "application/json", "model 'x' not found"),
        (b'{"error":{"message":"nested","type":"not_found_error"}}', None, "nested"),
        (b"404 page not found", "text/plain", "404 page not found"),
        (b"  plain text error \n", None, "plain text error"),
        (b"", None, ""),
        (b'{"detail":"other shape"}', "application/json", '{"detail":"other shape"}'),
        (b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1>"
         b"<hr><center>nginx</center></body></html>", "text/html", "502 Bad Gateway (an HTML page)"),
        (b"<!DOCTYPE html><html><body><p>Oops &amp; sorry</p></body></html>", None,
         "Oops & sorry (an HTML page)"),
    ],
)
def test_error_text(body: bytes, content_type: str | None, expected: str) -> None:
    assert wire.error_text(body, content_type) == expected


def test_error_text_is_bounded() -> None:
    assert len(wire.error_text(b"x" * 10_000)) == 500
    assert len(wire.error_text(b"<html><body>" + b"y " * 10_000 + b"</body></html>")) < 300


# -- model lists -------------------------------------------------------------------------------

TAGS = {
    "models": [
        {
            "name": "llama3.2:latest", "model": "llama3.2:latest",
            "modified_at": "2025-05-04T17:37:44.706015396-07:00", "size": 2019393189,
            "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            "details": {"parent_model": "", "format": "gguf", "family": "llama",
                        "families": ["llama"], "parameter_size": "3.2B",
                        "quantization_level": "Q4_K_M"},
            "capabilities": ["completion", "tools"],
        }
    ]
}


def test_parse_models() -> None:
    (info,) = wire.parse_models(TAGS, "ollama")
    assert info.id == "llama3.2:latest"
    assert info.size_bytes == 2019393189
    assert info.family == "llama" and info.parameter_size == "3.2B"
    assert info.quantization == "Q4_K_M" and info.format == "gguf"
    assert info.capabilities == ("completion", "tools")
    assert info.installed and info.provider == "ollama"


@pytest.mark.parametrize("data", [{"models": []}, {"models": None}, {}, None, []])
def test_parse_models_empty(data: Any) -> None:
    assert wire.parse_models(data) == []


def test_parse_show_context_size_and_metadata() -> None:
    show = {
        "parameters": 'stop "<|eot_id|>"', "template": "{{ .Prompt }}",
        "details": TAGS["models"][0]["details"],
        "model_info": {"general.architecture": "llama", "llama.context_length": 131072,
                       "general.parameter_count": 3212749888, "tokenizer.ggml.tokens": [],
                       "tokenizer.ggml.merges": None},
        "capabilities": ["completion"],
    }
    info = wire.parse_show(show, "llama3.2", "ollama")
    assert info.id == "llama3.2"
    assert info.context_size == 131072
    assert info.family == "llama"
    assert info.metadata["general.parameter_count"] == "3212749888"
    assert "tokenizer.ggml.tokens" not in info.metadata
    assert "tokenizer.ggml.merges" not in info.metadata
    assert info.metadata["template"] == "{{ .Prompt }}"


def test_parse_show_legacy_modelinfo_alias_and_no_context() -> None:
    assert wire.parse_show({"modelinfo": {"general.architecture": "qwen2",
                                          "qwen2.context_length": 32768}},
                           "q").context_size == 32768
    assert wire.parse_show({}, "q").context_size is None


def test_parse_loaded_models() -> None:
    ps = {"models": [{"name": "mistral:latest", "model": "mistral:latest", "size": 5137025024,
                      "size_vram": 5137025024, "expires_at": "2024-06-04T14:38:31.83753-07:00",
                      "context_length": 4096}]}
    (loaded,) = wire.parse_loaded_models(ps)
    assert loaded.id == "mistral:latest"
    assert loaded.size_bytes == loaded.size_vram_bytes == 5137025024
    assert loaded.context_size == 4096
    assert wire.parse_loaded_models({"models": []}) == []


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("llama3.2", "llama3.2:latest", True),
        ("LLaMA3.2:Latest", "llama3.2", True),
        ("registry.ollama.ai/library/llama3.2:latest", "llama3.2", True),
        ("llama3.2:1b", "llama3.2", False),
        ("me/model", "me/model:latest", True),
    ],
)
def test_same_model(a: str, b: str, same: bool) -> None:
    assert wire.same_model(a, b) is same


# -- pull progress -----------------------------------------------------------------------------

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def test_pull_aggregator_over_several_layers() -> None:
    agg = wire.PullAggregator()
    lines: list[tuple[dict[str, Any], tuple[int, int | None, str]]] = [
        ({"status": "pulling manifest"}, (0, None, "pulling manifest")),
        ({"status": "pulling aaaaaaaaaaaa", "digest": DIGEST_A, "total": 1000},
         (0, 1000, "pulling aaaaaaaaaaaa")),
        ({"status": "pulling aaaaaaaaaaaa", "digest": DIGEST_A, "total": 1000, "completed": 400},
         (400, 1000, "pulling aaaaaaaaaaaa")),
        ({"status": "pulling aaaaaaaaaaaa", "digest": DIGEST_A, "total": 1000, "completed": 1000},
         (1000, 1000, "pulling aaaaaaaaaaaa")),
        ({"status": "pulling bbbbbbbbbbbb", "digest": DIGEST_B, "total": 100},
         (1000, 1100, "pulling bbbbbbbbbbbb")),
        ({"status": "pulling bbbbbbbbbbbb", "digest": DIGEST_B, "total": 100, "completed": 50},
         (1050, 1100, "pulling bbbbbbbbbbbb")),
        # a repeated line for an earlier layer does not double count
        ({"status": "pulling aaaaaaaaaaaa", "digest": DIGEST_A, "total": 1000, "completed": 1000},
         (1050, 1100, "pulling aaaaaaaaaaaa")),
        ({"status": "pulling bbbbbbbbbbbb", "digest": DIGEST_B, "total": 100, "completed": 100},
         (1100, 1100, "pulling bbbbbbbbbbbb")),
        ({"status": "verifying sha256 digest"}, (1100, 1100, "verifying sha256 digest")),
        ({"status": "writing manifest"}, (1100, 1100, "writing manifest")),
        ({"status": "removing unused layers"}, (1100, 1100, "removing unused layers")),
    ]
    for line, expected in lines:
        assert agg.feed(line) == expected
        assert not agg.success
    assert agg.feed({"status": "success"}) == (1100, 1100, "success")
    assert agg.success


def test_pull_aggregator_already_present_model() -> None:
    agg = wire.PullAggregator()
    agg.feed({"status": "pulling manifest"})
    assert agg.feed({"status": "pulling aaaaaaaaaaaa", "digest": DIGEST_A, "total": 5,
                     "completed": 5}) == (5, 5, "pulling aaaaaaaaaaaa")
    agg.feed({"status": "success"})
    assert agg.success
