"""The fake Ollama server itself follows the wire reference (backend-apis.md §1, §8.2).

Plain httpx, no papin code: if these fail, the provider tests prove nothing.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.ollama import EVAL_NS_PER_TOKEN, FakeOllama

pytestmark = pytest.mark.timeout(20)
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(models=["llama3.2"]) as server:
        server.tokens = ["Hello", " world", "!"]
        yield server


@pytest.fixture
def client(fake: FakeOllama) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=5.0) as http:
        yield http


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def test_root_and_version(client: httpx.Client) -> None:
    root = client.get("/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert root.headers["content-type"].startswith("text/plain")
    assert client.head("/").status_code == 200
    assert client.get("/api/version").json() == {"version": "0.12.6"}
    assert client.head("/api/version").status_code == 200


def test_router_defaults_are_gin_texts(client: httpx.Client) -> None:
    missing = client.get("/api/nothing")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    wrong = client.get("/api/generate")
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")


def test_tags_empty_and_listed(client: httpx.Client, fake: FakeOllama) -> None:
    (entry,) = client.get("/api/tags").json()["models"]
    assert entry["name"] == entry["model"] == "llama3.2:latest"
    assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
    assert entry["details"]["quantization_level"] == "Q4_K_M"
    fake.models.clear()
    assert client.get("/api/tags").json() == {"models": []}


def test_generate_stream_frames(client: httpx.Client) -> None:
    response = client.post("/api/generate", json={"model": "llama3.2", "prompt": "hi"})
    assert response.headers["content-type"] == "application/x-ndjson"
    *chunks, final = _lines(response)
    assert [c["response"] for c in chunks] == ["Hello", " world", "!"]
    for chunk in chunks:  # intermediate chunks: only these four keys (omitempty)
        assert set(chunk) == {"model", "created_at", "response", "done"}
        assert chunk["done"] is False and chunk["model"] == "llama3.2"
        assert RFC3339.match(chunk["created_at"])
    assert final["done"] is True and final["done_reason"] == "stop" and final["response"] == ""
    assert final["eval_count"] == 3 and final["eval_duration"] == 3 * EVAL_NS_PER_TOKEN
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0
    assert "context" in final


def test_chat_stream_and_non_stream(client: httpx.Client) -> None:
    body: dict[str, Any] = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}
    *chunks, final = _lines(client.post("/api/chat", json=body))
    assert chunks[0]["message"] == {"role": "assistant", "content": "Hello"}
    assert final["message"] == {"role": "assistant", "content": ""} and "context" not in final
    whole = client.post("/api/chat", json={**body, "stream": False})
    assert whole.headers["content-type"] == "application/json; charset=utf-8"
    assert whole.json()["message"]["content"] == "Hello world!"


def test_num_predict_cuts_with_length(client: httpx.Client) -> None:
    body = {"model": "llama3.2", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    answer = client.post("/api/generate", json=body).json()
    assert answer["response"] == "Hello world" and answer["done_reason"] == "length"


def test_load_unload_and_ps(client: httpx.Client) -> None:
    assert client.get("/api/ps").json() == {"models": []}
    load = client.post("/api/generate", json={"model": "llama3.2"}).json()
    assert load["done"] is True and load["done_reason"] == "load" and load["response"] == ""
    (entry,) = client.get("/api/ps").json()["models"]
    assert entry["name"] == "llama3.2:latest" and entry["context_length"] == 4096
    unload = client.post("/api/chat", json={"model": "llama3.2", "messages": [],
                                            "keep_alive": 0.0}).json()
    assert unload["done_reason"] == "unload"
    assert client.get("/api/ps").json() == {"models": []}


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/generate", {"model": "ghost", "prompt": "x"}, 404, "model 'ghost' not found"),
        ("/api/chat", {"model": "ghost", "messages": []}, 404, "model 'ghost' not found"),
        ("/api/show", {"model": "ghost"}, 404, "model 'ghost:latest' not found"),
        ("/api/show", {}, 400, "model is required"),
        ("/api/generate", {"model": "llama3.2", "keep_alive": [1]}, 400,
         "Unsupported type: 'list'"),
        ("/api/generate", {"model": "llama3.2", "prompt": "x", "options": {"temperature": "hot"}},
         500, 'option "temperature" must be of type float32'),
        ("/api/embed", {"model": "ghost", "input": "x"}, 404,
         'model "ghost" not found, try pulling it first'),
    ],
)
def test_errors(client: httpx.Client, path: str, body: dict[str, Any], status: int,
                error: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status
    assert response.json() == {"error": error}


def test_bad_bodies(client: httpx.Client) -> None:
    empty = client.post("/api/generate", content=b"")
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
    bad = client.post("/api/generate", content=b"xyz")
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid character 'x' looking for beginning of value"


def test_pull_sequence(client: httpx.Client, fake: FakeOllama) -> None:
    fake.pullable["tiny"] = [1000, 50]
    fake.pull_updates = 3
    lines = _lines(client.post("/api/pull", json={"model": "tiny"}))
    assert lines[0] == {"status": "pulling manifest"}
    assert [line["status"] for line in lines[-3:]] == [
        "verifying sha256 digest", "writing manifest", "success"]
    layers = lines[1:-3]
    assert len(layers) == 2 * 4
    for line in layers:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", line["digest"])
        assert line["status"] == "pulling " + line["digest"][7:19]
    first, *updates = layers[:4]
    assert "completed" not in first and first["total"] == 1000  # omitted while 0
    assert [u["completed"] for u in updates] == [333, 666, 1000]
    assert "tiny:latest" in fake.models
    again = _lines(client.post("/api/pull", json={"model": "tiny"}))
    assert [line.get("completed") for line in again if "digest" in line] == [1000, 50]


def test_pull_unknown_model(client: httpx.Client) -> None:
    streamed = client.post("/api/pull", json={"model": "nope"})
    assert streamed.status_code == 200
    assert _lines(streamed) == [{"status": "pulling manifest"},
                                {"error": "pull model manifest: file does not exist"}]
    whole = client.post("/api/pull", json={"model": "nope", "stream": False})
    assert whole.status_code == 500
    assert whole.json() == {"error": "pull model manifest: file does not exist"}


def test_delete_and_copy(client: httpx.Client, fake: FakeOllama) -> None:
    copied = client.post("/api/copy", json={"source": "llama3.2", "destination": "backup"})
    assert copied.status_code == 200 and copied.content == b""
    deleted = client.request("DELETE", "/api/delete", json={"model": "backup"})
    assert deleted.status_code == 200 and deleted.content == b""
    again = client.request("DELETE", "/api/delete", json={"model": "backup"})
    assert (again.status_code, again.json()) == (404, {"error": "model 'backup' not found"})
    assert set(fake.models) == {"llama3.2:latest"}


def test_requests_are_recorded(client: httpx.Client, fake: FakeOllama) -> None:
    client.post("/api/show", json={"model": "llama3.2"}, headers={"X-Test": "1"})
    request = fake.requests[-1]
    assert (request.method, request.path, request.json) == ("POST", "/api/show",
                                                            {"model": "llama3.2"})
    assert request.headers["x-test"] == "1"
    assert fake.requests_to("/api/show", "post") == [request]


def test_faults_are_one_shot_unless_repeated(client: httpx.Client, fake: FakeOllama) -> None:
    fake.fault("/api/tags", "status", status=503, headers={"Retry-After": "2"}, times=2)
    assert fake.pending_faults == {"/api/tags": ["status"]}
    for _ in range(2):
        busy = client.get("/api/tags")
        assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
        assert "maximum pending requests exceeded" in busy.json()["error"]
    assert client.get("/api/tags").status_code == 200
    assert fake.pending_faults == {}
    with pytest.raises(ValueError, match="unknown fault"):
        fake.fault("/api/tags", "explode")


def test_api_key_is_enforced_when_set(client: httpx.Client, fake: FakeOllama) -> None:
    fake.api_key = "k"
    assert client.get("/api/tags").status_code == 401
    assert client.get("/").status_code == 200
    assert client.get("/api/tags", headers={"Authorization": "Bearer k"}).status_code == 200


def test_stop_releases_held_requests_and_the_thread_exits() -> None:
    fake = FakeOllama(models=["m"]).start()
    fake.fault("/api/generate", "never_answer")
    outcome: list[BaseException | int] = []

    def call() -> None:
        try:
            with httpx.Client(timeout=10.0) as http:
                outcome.append(http.post(f"{fake.url}/api/generate",
                                         json={"model": "m", "prompt": "x"}).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    assert fake.wait_for(lambda: bool(fake.requests_to("/api/generate")))
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 3.0
    assert not fake.running
    thread.join(5.0)
    assert not thread.is_alive() and outcome and isinstance(outcome[0], httpx.HTTPError)
    fake.stop()  # stopping twice is fine


def test_stop_mid_stream_is_bounded() -> None:
    with FakeOllama(models=["m"]) as fake:
        fake.token_delay = 0.5
        fake.tokens = ["a"] * 100

        def call() -> None:
            try:
                with (
                    httpx.Client(timeout=10.0) as http,
                    http.stream("POST", f"{fake.url}/api/generate",
                                json={"model": "m", "prompt": "x"}) as response,
                ):
                    for _ in response.iter_bytes():
                        pass
            except httpx.HTTPError:
                pass  # cut off by the stop: fine

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        assert fake.wait_for(lambda: bool(fake.streams) and fake.streams[-1].sent >= 1)
        started = time.monotonic()
    assert time.monotonic() - started < 3.0
    thread.join(5.0)
