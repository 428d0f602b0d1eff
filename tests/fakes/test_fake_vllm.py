"""The fake vLLM server itself follows the wire reference (backend-apis.md §4, §8.1 items 19-22).

Plain httpx, no papin code: if these fail, the provider tests prove nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.vllm import FakeVLLM

pytestmark = pytest.mark.timeout(20)
MODEL = "meta-llama/Llama-3.2-1B-Instruct"
KEY = {"Authorization": "Bearer sk-test"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi there"}]}


@pytest.fixture
def fake() -> Iterator[FakeVLLM]:
    with FakeVLLM(models=[MODEL], api_key="sk-test") as server:
        server.tokens = ["Hello", " world", "!"]
        yield server


@pytest.fixture
def client(fake: FakeVLLM) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=5.0) as http:
        yield http


def _events(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of an SSE answer (``[DONE]`` kept as a string)."""
    assert response.text.endswith("\n\n")
    out: list[Any] = []
    for block in response.text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_refuses_connections_until_ready() -> None:
    with FakeVLLM(models=[MODEL], ready=False) as fake:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{fake.url}/health", timeout=2.0)
        assert fake.requests == []
        fake.make_ready()
        health = httpx.get(f"{fake.url}/health", timeout=2.0)
        assert (health.status_code, health.content) == (200, b"")
        assert "content-type" not in health.headers


def test_utility_endpoints(client: httpx.Client, fake: FakeVLLM) -> None:
    assert client.get("/version").content == b'{"version":"0.33.0"}'
    assert client.get("/load").json() == {"server_load": 0}
    fake.engine_dead = True
    dead = client.get("/health")
    assert (dead.status_code, dead.content) == (503, b"")
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:request_success_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count"):
        assert f"\n{name}{{" in metrics.text, name
    assert f'model_name="{MODEL}"' in metrics.text and 'engine="0"' in metrics.text


def test_auth_only_on_v1_with_the_flat_401(client: httpx.Client) -> None:
    denied = client.get("/v1/models")
    assert (denied.status_code, denied.content) == (401, b'{"error":"Unauthorized"}')
    assert denied.headers["content-type"] == "application/json"
    assert client.get("/v1/models", headers={"Authorization": "Basic sk-test"}).status_code == 401
    assert client.get("/v1/models", headers={"X-Api-Key": "sk-test"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "bearer sk-test"}).status_code == 200
    for path in ("/health", "/version", "/metrics", "/load"):
        assert client.get(path).status_code in (200, 503), path
    assert client.post("/tokenize", json={"prompt": "hi"}).status_code == 200


def test_model_cards(client: httpx.Client, fake: FakeVLLM) -> None:
    fake.roots[MODEL] = "/models/llama"
    fake.adapters["sql"] = ("/adapters/sql", MODEL)
    body = client.get("/v1/models", headers=KEY).json()
    assert body["object"] == "list"
    base, adapter = body["data"]
    assert list(base) == ["id", "object", "created", "owned_by", "root", "parent", "max_model_len",
                          "permission"]
    assert (base["id"], base["owned_by"], base["root"], base["parent"], base["max_model_len"]) == (
        MODEL, "vllm", "/models/llama", None, 8192)
    assert base["permission"][0]["object"] == "model_permission"
    assert (adapter["id"], adapter["root"], adapter["parent"], adapter["max_model_len"]) == (
        "sql", "/adapters/sql", MODEL, None)


def test_chat_stream_shape(client: httpx.Client) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = client.post("/v1/chat/completions", headers=KEY, json=body)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    *chunks, usage, done = _events(response)
    assert done == "[DONE]"
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "logprobs": None, "finish_reason": None}]
    assert chunks[0]["id"].startswith("chatcmpl-") and chunks[0]["object"] == "chat.completion.chunk"
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:]] == ["Hello", " world", "!"]
    assert all("stop_reason" not in c["choices"][0] for c in chunks[:-1])
    assert all("usage" not in c for c in chunks)
    last = chunks[-1]["choices"][0]
    assert (last["finish_reason"], last["stop_reason"]) == ("stop", None)
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 5, "total_tokens": 8, "completion_tokens": 3}
    assert len({c["id"] for c in [*chunks, usage]}) == 1


def test_continuous_usage_and_forced_usage(client: httpx.Client, fake: FakeVLLM) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {**CHAT, "stream": True, "stream_options": options}
    *chunks, usage, _ = _events(client.post("/v1/chat/completions", headers=KEY, json=body))
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3]
    assert usage["usage"]["completion_tokens"] == 3
    only_continuous = {**body, "stream_options": {"continuous_usage_stats": True}}
    events = _events(client.post("/v1/chat/completions", headers=KEY, json=only_continuous))
    assert all("usage" not in e for e in events[:-1])  # needs include_usage too
    fake.force_include_usage = True
    events = _events(client.post("/v1/chat/completions", headers=KEY, json={**CHAT, "stream": True}))
    assert events[-2]["choices"] == [] and all("usage" in e for e in events[:-1])


def test_completion_stream_with_stop_reason(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Say", "stream": True, "stop": ["!"]}
    *chunks, done = _events(client.post("/v1/completions", headers=KEY, json=body))
    assert done == "[DONE]" and chunks[0]["object"] == "text_completion"
    assert [c["choices"][0]["text"] for c in chunks] == ["Hello", " world"]
    assert chunks[0]["choices"][0] == {"index": 0, "text": "Hello", "logprobs": None,
                                       "finish_reason": None, "stop_reason": None}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"][0]["stop_reason"] == "!"


def test_whole_answers(client: httpx.Client) -> None:
    chat = client.post("/v1/chat/completions", headers=KEY, json={**CHAT, "max_tokens": 2}).json()
    choice = chat["choices"][0]
    assert chat["object"] == "chat.completion" and choice["message"]["content"] == "Hello world"
    assert (choice["finish_reason"], choice["stop_reason"]) == ("length", None)
    assert choice["message"]["tool_calls"] == [] and chat["usage"]["completion_tokens"] == 2
    text = client.post("/v1/completions", headers=KEY, json={"prompt": "Say"}).json()
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "Hello world!"
    assert text["id"].startswith("cmpl-") and text["usage"]["prompt_tokens"] == 2
    default = client.post("/v1/completions", headers=KEY, json={"prompt": "Say"}).json()
    assert default["model"] == MODEL  # no model: the served one


def test_error_event_then_done(client: httpx.Client, fake: FakeVLLM) -> None:
    fake.fault("/v1/chat/completions", "error_in_stream", after=2, message="boom")
    response = client.post("/v1/chat/completions", headers=KEY, json={**CHAT, "stream": True})
    assert response.status_code == 200
    assert response.text.endswith(
        'data: {"error": {"message": "boom", "type": "InternalServerError", "param": null, '
        '"code": 500}}\n\ndata: [DONE]\n\n'
    )
    fake.envelope = "flat"
    fake.fault("/v1/completions", "error_in_stream", after=0, message="boom")
    events = _events(client.post("/v1/completions", headers=KEY, json={"prompt": "x", "stream": True}))
    assert events == [{"error": {"object": "error", "message": "boom", "type": "BadRequestError",
                                 "param": None, "code": 400}}, "[DONE]"]


def test_unknown_model_in_both_envelopes(client: httpx.Client, fake: FakeVLLM) -> None:
    missing = client.post("/v1/chat/completions", headers=KEY, json={**CHAT, "model": "x"})
    assert missing.status_code == 404
    assert missing.content == (b'{"error":{"message":"The model `x` does not exist.",'
                               b'"type":"NotFoundError","param":"model","code":404}}')
    fake.envelope = "flat"
    flat = client.post("/v1/completions", headers=KEY, json={"model": "x", "prompt": "hi"})
    assert flat.content == (b'{"object":"error","message":"The model `x` does not exist.",'
                            b'"type":"NotFoundError","param":null,"code":404}')
    assert FakeVLLM(version="0.10.0").envelope == "flat"
    assert FakeVLLM(version="0.10.1").envelope == "nested"


def test_validation_errors_are_400(client: httpx.Client, fake: FakeVLLM) -> None:
    options = client.post("/v1/completions", headers=KEY,
                          json={"prompt": "hi", "stream_options": {"include_usage": True}})
    assert options.status_code == 400
    error = options.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("Bad Request", "stream_options", 400)
    assert error["message"].startswith("1 validation error:\n  ")
    assert "Stream options can only be defined when `stream=True`." in error["message"]
    missing = client.post("/v1/chat/completions", headers=KEY, json={"model": MODEL}).json()["error"]
    assert missing["param"] == "body.messages" and "Field required" in missing["message"]
    typed = client.post("/v1/chat/completions", headers=KEY, json={**CHAT, "temperature": "hot"})
    assert typed.json()["error"]["param"] == "body.temperature"
    media = client.post("/v1/chat/completions", headers={**KEY, "Content-Type": "text/plain"},
                        content=b"{}")
    assert media.status_code == 400
    assert "Unsupported Media Type: Only 'application/json' is allowed" in media.json()["error"]["message"]
    fake.envelope = "flat"
    flat = client.post("/v1/completions", headers=KEY, json={"prompt": "hi", "stream_options": {"x": 1}})
    assert flat.status_code == 400
    body = flat.json()
    assert (body["object"], body["type"], body["code"]) == ("error", "BadRequestError", 400)
    assert "Stream options can only be defined" in body["message"]


def test_context_length_and_router_defaults(client: httpx.Client) -> None:
    long = client.post("/v1/completions", headers=KEY, json={"prompt": "hi", "max_tokens": 9000})
    assert long.status_code == 400
    assert long.json()["error"]["type"] == "BadRequestError"
    assert "maximum context length is 8192 tokens" in long.json()["error"]["message"]
    route = client.get("/nothing")
    assert (route.status_code, route.content) == (404, b'{"detail":"Not Found"}')
    wrong = client.get("/tokenize")
    assert (wrong.status_code, wrong.content) == (405, b'{"detail":"Method Not Allowed"}')


def test_tokenize_and_detokenize(client: httpx.Client) -> None:
    data = client.post("/tokenize", json={"model": MODEL, "prompt": "Hello world!",
                                          "return_token_strs": True}).json()
    assert list(data) == ["count", "max_model_len", "tokens", "token_strs"]
    assert data["count"] == 4 and data["tokens"][0] == 1 and data["max_model_len"] == 8192
    assert data["token_strs"][1:] == ["Hello", " world", "!"]
    back = client.post("/detokenize", json={"tokens": data["tokens"][1:]}).json()
    assert back == {"prompt": "Hello world!"}
    chat = client.post("/tokenize", json={"messages": CHAT["messages"]}).json()
    assert chat["count"] == 5 and chat["token_strs"] is None
    missing = client.post("/tokenize", json={"model": "x", "prompt": "hi"})
    assert missing.status_code == 404


def test_lora_routes(client: httpx.Client, fake: FakeVLLM) -> None:
    load = {"lora_name": "sql", "lora_path": "/adapters/sql"}
    off = client.post("/v1/load_lora_adapter", headers=KEY, json=load)
    assert (off.status_code, off.content) == (404, b'{"detail":"Not Found"}')
    fake.allow_runtime_lora = True
    assert client.post("/v1/load_lora_adapter", json=load).status_code == 401
    ok = client.post("/v1/load_lora_adapter", headers=KEY, json=load)
    assert (ok.status_code, ok.text) == (200, "Success: LoRA adapter 'sql' added successfully.")
    again = client.post("/v1/load_lora_adapter", headers=KEY, json=load).json()["error"]
    assert again["type"] == "InvalidUserInput" and "has already been loaded" in again["message"]
    inplace = client.post("/v1/load_lora_adapter", headers=KEY, json={**load, "load_inplace": True})
    assert inplace.status_code == 200
    empty = client.post("/v1/load_lora_adapter", headers=KEY, json={"lora_name": "", "lora_path": ""})
    assert empty.json()["error"]["message"] == "Both 'lora_name' and 'lora_path' must be provided."
    no_field = client.post("/v1/load_lora_adapter", headers=KEY, json={"lora_name": "x"})
    assert no_field.status_code == 400 and no_field.json()["error"]["param"] == "body.lora_path"
    used = client.post("/v1/completions", headers=KEY, json={"model": "sql", "prompt": "hi"})
    assert used.json()["model"] == "sql"
    unload = client.post("/v1/unload_lora_adapter", headers=KEY, json={"lora_name": "sql"})
    assert unload.text == "Success: LoRA adapter 'sql' removed successfully."
    gone = client.post("/v1/unload_lora_adapter", headers=KEY, json={"lora_name": "sql"})
    assert gone.status_code == 404
    assert gone.json()["error"] == {"message": "The lora adapter 'sql' cannot be found.",
                                    "type": "NotFoundError", "param": None, "code": 404}
    fake.adapter_paths = set()
    lost = client.post("/v1/load_lora_adapter", headers=KEY, json=load)
    assert lost.status_code == 404
    assert lost.json()["error"]["message"] == "Loading lora sql failed: No adapter found for /adapters/sql"
