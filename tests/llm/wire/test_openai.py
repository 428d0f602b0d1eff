"""The sans-I/O OpenAI ``/v1`` layer: request bodies, chunk and response parsing, model lists,
and the error envelopes of every backend (``backend-apis.md`` §2.3–§2.5, §3.4, §3.6, §4.3–§4.5,
§7.2)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from papin.llm.datatypes import ChatMessage
from papin.llm.errors import ConfigurationError
from papin.llm.options import GenerationOptions
from papin.llm.wire import openai as wire

pytestmark = pytest.mark.timeout(10)


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# -- split_base_url ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "root"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080"),
        ("  http://127.0.0.1:8080/v1  ", "http://127.0.0.1:8080"),
        ("https://gpu.example.com/openai/v1", "https://gpu.example.com/openai"),
        ("https://gpu.example.com/openai", "https://gpu.example.com/openai"),
        ("localhost:8000", "http://localhost:8000"),
        ("localhost:8000/v1", "http://localhost:8000"),
        ("http://[::1]:8000/v1", "http://[::1]:8000"),
        ("http://host/v10", "http://host/v10"),
        ("http://host/api/v1x", "http://host/api/v1x"),
    ],
)
def test_split_base_url(endpoint: str, root: str) -> None:
    assert wire.split_base_url(endpoint) == root


@pytest.mark.parametrize("endpoint", ["", "   ", "ftp://host/v1", "http://"])
def test_split_base_url_rejects(endpoint: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        wire.split_base_url(endpoint)
    assert "http" in str(info.value)


# -- request bodies -------------------------------------------------------------------------------------


def test_chat_body_minimal() -> None:
    body = wire.build_chat("m", [ChatMessage("user", "hi")], stream=False)
    assert body == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def test_stream_options_only_when_streaming() -> None:
    chat = wire.build_chat("m", [ChatMessage("user", "hi")])
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    completion = wire.build_completion("m", "hi")
    assert completion["stream"] is True and completion["stream_options"] == {"include_usage": True}
    assert "stream_options" not in wire.build_completion("m", "hi", stream=False)
    assert "stream_options" not in wire.build_chat("m", [], stream=False)


def test_options_map_to_openai_names() -> None:
    options = GenerationOptions(
        max_tokens=12, temperature=0.0, top_p=0.9, top_k=40, min_p=0.05, repeat_penalty=1.1,
        presence_penalty=0.5, frequency_penalty=-0.5, stop=["\n\n", "END"], seed=42,
    )
    body = wire.build_completion("m", "hi", options, stream=False)
    assert body == {
        "model": "m", "prompt": "hi", "stream": False, "max_tokens": 12, "temperature": 0.0,
        "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "stop": ["\n\n", "END"], "seed": 42,
    }


def test_unset_and_ollama_only_options_are_not_sent() -> None:
    options = GenerationOptions(context_size=4096, gpu_layers=-1, threads=4, batch_size=256,
                                keep_alive="5m")
    body = wire.build_chat("m", [ChatMessage("user", "hi")], options, stream=False)
    assert set(body) == {"model", "messages", "stream"}


def test_extras_are_passed_through() -> None:
    options = GenerationOptions(
        temperature=0.2, additional_params={"grammar": "root ::= x", "logit_bias": {"50256": -100},
                                            "chat_template_kwargs": {"enable_thinking": False}},
    )
    body = wire.build_chat("m", [ChatMessage("user", "hi")], options)
    assert body["grammar"] == "root ::= x"
    assert body["logit_bias"] == {"50256": -100}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["temperature"] == 0.2 and body["stream_options"] == {"include_usage": True}


def test_system_option_in_chat_and_completion() -> None:
    options = GenerationOptions(system="Be brief.")
    chat = wire.build_chat("m", [ChatMessage("user", "hi")], options)
    assert chat["messages"][0] == {"role": "system", "content": "Be brief."}
    given = wire.build_chat("m", [ChatMessage("system", "Mine."), ChatMessage("user", "hi")], options)
    assert [m["content"] for m in given["messages"]] == ["Mine.", "hi"]
    assert wire.build_completion("m", "hi", options)["prompt"] == "Be brief.\n\nhi"


def test_bodies_are_json_serialisable() -> None:
    body = wire.build_chat("m", [ChatMessage("user", "Grüße 🎉")], GenerationOptions(stop=["x"]))
    assert json.loads(json.dumps(body)) == body


# -- finish_reason ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "mapped"),
    [(None, None), ("", None), ("stop", "stop"), ("length", "length"), ("eos", "stop"),
     ("tool_calls", "stop"), ("function_call", "stop"), ("content_filter", "stop"),
     ("abort", "error")],
)
def test_finish_reason_mapping(given: Any, mapped: str | None) -> None:
    assert wire.finish_reason(given) == mapped


# -- chunks and responses --------------------------------------------------------------------------------


def test_first_chat_chunk_with_role_and_null_content() -> None:
    chunk = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None},
                          "finish_reason": None}]}
    assert wire.parse_delta(chunk) == wire.StreamDelta("")


def test_content_chunk() -> None:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
    assert wire.parse_delta(chunk) == wire.StreamDelta("Hel")


def test_finish_chunk_with_empty_delta() -> None:
    chunk = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
             "timings": {"predicted_n": 3}}
    assert wire.parse_delta(chunk) == wire.StreamDelta("", "length")


def test_usage_only_chunk() -> None:
    chunk = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
    assert wire.parse_delta(chunk) == wire.StreamDelta("", None, 7, 3)


def test_continuous_usage_on_a_content_chunk() -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "x"}}],
             "usage": {"prompt_tokens": 7, "completion_tokens": 1}}
    assert wire.parse_delta(chunk) == wire.StreamDelta("x", None, 7, 1)


def test_completion_chunk_uses_text() -> None:
    chunk = {"object": "text_completion",
             "choices": [{"index": 0, "text": " world", "finish_reason": None, "logprobs": None}]}
    assert wire.parse_delta(chunk) == wire.StreamDelta(" world")


def test_whole_chat_response() -> None:
    response = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!", "tool_calls": []},
                     "finish_reason": "stop", "stop_reason": None}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
    assert wire.parse_delta(response) == wire.StreamDelta("Hi!", "stop", 9, 2)


@pytest.mark.parametrize(
    "chunk",
    [{}, {"choices": None}, {"choices": {"0": {"text": "x"}}}, {"choices": "text"},
     {"choices": [None]}, {"choices": [{"delta": "x"}]}, {"choices": [{"delta": {"content": 5}}]},
     {"choices": [{"text": None, "delta": None}]}],
)
def test_odd_chunks_give_no_text_and_never_raise(chunk: dict[str, Any]) -> None:
    assert wire.parse_delta(chunk).text == ""


def test_odd_usage_values_are_dropped() -> None:
    chunk = {"choices": [], "usage": {"prompt_tokens": "7", "completion_tokens": True}}
    assert wire.parse_delta(chunk) == wire.StreamDelta("")
    assert wire.parse_delta({"usage": [1, 2]}) == wire.StreamDelta("")


# -- error events inside a 200 stream ----------------------------------------------------------------------


def test_stream_error_object_with_message() -> None:
    event = {"error": {"code": "server_error", "message": "CUDA out of memory", "type": "server_error"}}
    assert wire.stream_error(event) == "CUDA out of memory"


def test_stream_error_object_without_message() -> None:
    assert wire.stream_error({"error": {"code": 500}}) == "An error occurred during streaming"
    assert wire.stream_error({"error": {"message": 42}}) == "An error occurred during streaming"


def test_stream_error_string() -> None:
    assert wire.stream_error({"error": "an error was encountered while running the model"}) == (
        "an error was encountered while running the model"
    )


@pytest.mark.parametrize("obj", [{"error": None}, {"error": ""}, {"error": {}}, {"choices": []}, [1], "x", 3])
def test_not_a_stream_error(obj: Any) -> None:
    assert wire.stream_error(obj) is None


# -- error envelopes of every backend --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "text"),
    [
        # OpenAI itself
        ({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                    "param": None, "code": "invalid_api_key"}}, None, "Incorrect API key provided"),
        # llama-server (§3.3, §3.2)
        ({"error": {"message": "Invalid API Key", "type": "authentication_error", "code": 401}},
         "application/json; charset=utf-8", "Invalid API Key"),
        ({"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}, None,
         "Loading model"),
        # vLLM >= 0.10.1, nested
        ({"error": {"message": "The model `foo` does not exist.", "type": "NotFoundError",
                    "param": "model", "code": 404}}, None, "The model `foo` does not exist."),
        # vLLM < 0.10.1, flat
        ({"object": "error", "message": "This model's maximum context length is 2048 tokens.",
          "type": "BadRequestError", "param": None, "code": 400}, None,
         "This model's maximum context length is 2048 tokens."),
        # vLLM auth middleware, flat string
        ({"error": "Unauthorized"}, None, "Unauthorized"),
        # FastAPI default 404
        ({"detail": "Not Found"}, None, "Not Found"),
        # LocalAI echo (§2.3, §2.4), with the echo prefix
        ({"error": {"code": 401, "message": "An authentication key is required",
                    "type": "invalid_request_error"}}, None, "An authentication key is required"),
        ({"error": {"code": 404, "message": 'model "x" not found. To see available models, call '
                    "GET /v1/models", "type": "invalid_request_error"}}, None,
         'model "x" not found. To see available models, call GET /v1/models'),
        ({"error": {"code": 400, "message": "code=400, message=failed parsing request body: EOF",
                    "type": ""}}, None, "failed parsing request body: EOF"),
        ({"error": {"code": "model_loading", "message": "model is loading", "type": ""}}, None,
         "model is loading"),
        # LocalAI v2, flat
        ({"message": "Invalid API key"}, None, "Invalid API key"),
        ({"message": "Authorization header missing"}, None, "Authorization header missing"),
        # Ollama /v1 layer
        ({"error": {"message": "model \"x\" not found, try pulling it first", "type": "not_found_error",
                    "param": None, "code": None}}, None, 'model "x" not found, try pulling it first'),
        # Anthropic-style (LocalAI /v1/messages)
        ({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}, None, "bad"),
    ],
)
def test_error_envelopes(body: Any, content_type: str | None, text: str) -> None:
    assert wire.error_text(raw(body), content_type) == text


def test_error_object_without_message_keeps_the_body() -> None:
    body = b'{"error":{"code":500,"type":"server_error"}}'
    assert wire.error_text(body) == body.decode()


def test_plain_text_errors() -> None:
    assert wire.error_text(b"upstream connect error or disconnect/reset before headers\n") == (
        "upstream connect error or disconnect/reset before headers"
    )
    assert wire.error_text(b"Success: LoRA adapter 'sql' added successfully.", "text/plain") == (
        "Success: LoRA adapter 'sql' added successfully."
    )
    assert wire.error_text(b"x" * 2000) == "x" * 500


def test_html_from_a_proxy() -> None:
    page = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
            b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body></html>")
    assert wire.error_text(page, "text/html") == "502 Bad Gateway (an HTML page)"
    assert wire.error_text(page, None) == "502 Bad Gateway (an HTML page)"
    assert wire.error_text(b"<!DOCTYPE html><html><body>login</body></html>", "text/html; charset=utf-8") == (
        "an HTML page"
    )
    assert wire.error_text(b"<p>no title</p>", "text/html") == "an HTML page"


def test_empty_and_odd_bodies() -> None:
    assert wire.error_text(b"") == ""
    assert wire.error_text(b"  \n") == ""
    assert wire.error_text(b'"just a string"') == "just a string"
    assert wire.error_text(b"[1, 2]") == "[1, 2]"
    assert wire.error_text(b"null") == "null"
    assert wire.error_text(b'{"detail":[{"loc":["body","model"],"msg":"field required"}]}').startswith(
        '{"detail"'
    )
    assert wire.error_text(b"\xff\xfe bad bytes") == "\ufffd\ufffd bad bytes"


# -- parse_models -------------------------------------------------------------------------------------------


def test_models_with_only_ids() -> None:
    models = wire.parse_models({"object": "list", "data": [{"id": "a", "object": "model"}, {"id": "b"}]},
                               "localai")
    assert [(m.id, m.name, m.provider, m.installed) for m in models] == [
        ("a", "a", "localai", True), ("b", "b", "localai", True)
    ]
    assert models[0].context_size is None and models[0].metadata == {}


def test_models_with_data_null_or_missing() -> None:
    assert wire.parse_models({"object": "list", "data": None}, "ollama") == []
    assert wire.parse_models({"object": "list"}, "x") == []
    assert wire.parse_models(None, "x") == []
    assert wire.parse_models([{"id": "a"}], "x") == []


def test_models_skip_bad_entries() -> None:
    data = {"data": [{"id": ""}, {"object": "model"}, "x", None, {"id": "ok"},
                     {"id": "odd", "meta": [1], "max_model_len": "big"}]}
    models = wire.parse_models(data, "x")
    assert [m.id for m in models] == ["ok", "odd"]
    assert models[1].context_size is None


def test_vllm_model_card() -> None:
    data = {"object": "list", "data": [
        {"id": "meta-llama/Llama-3.2-1B", "object": "model", "created": 1700000000, "owned_by": "vllm",
         "root": "/models/llama", "parent": None, "max_model_len": 8192, "permission": [{}]},
        {"id": "sql", "object": "model", "owned_by": "vllm", "root": "/loras/sql",
         "parent": "meta-llama/Llama-3.2-1B", "max_model_len": 8192},
    ]}
    base, lora = wire.parse_models(data, "vllm")
    assert base.context_size == 8192
    assert base.metadata == {"owned_by": "vllm", "root": "/models/llama", "created": "1700000000"}
    assert lora.metadata["parent"] == "meta-llama/Llama-3.2-1B"


def test_llama_server_models_with_both_arrays() -> None:
    data = {
        "models": [{"name": "tiny.gguf", "model": "tiny.gguf"}],
        "object": "list",
        "data": [{"id": "tiny.gguf", "object": "model", "owned_by": "llamacpp",
                  "meta": {"n_ctx_train": 32768, "n_vocab": 262144}}],
    }
    (model,) = wire.parse_models(data, "llamacpp_server")
    assert model.id == "tiny.gguf" and model.context_size == 32768
    assert model.metadata["owned_by"] == "llamacpp"
