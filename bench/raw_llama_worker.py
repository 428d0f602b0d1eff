"""Raw llama-cpp-python in a process of its own, for ``bench_embedded.py``.

llama.cpp's OpenMP thread team belongs to the thread that calls it, and two teams in one
process slow each other down; so each contender of the benchmark runs in a process of its own
(papin in-process in the benchmark's, papin isolated in its worker, raw llama-cpp-python here),
as users run them.

Protocol (JSON lines): the first line of stdin is ``{"path", "settings"}`` (papin's load
settings); it answers ``{"load_s"}``; then each line ``{"tokens": N}`` is answered with
``{"ttft", "tps", "pieces"}`` of one streamed greedy completion of the benchmark's prompt.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

PROMPT = "Once upon a time, in a small village by the sea,"


def run(llama: Any, tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    first = None
    count = 0
    for chunk in llama.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, stream=True, seed=1):
        if chunk["choices"][0]["text"]:  # pieces with text, as counted for papin
            count += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return {"ttft": first - started, "tps": (count - 1) / (end - first), "pieces": count}


def main() -> None:
    import llama_cpp

    request = json.loads(sys.stdin.readline())
    s = request["settings"]
    params: dict[str, Any] = {}
    if not s["extra_buffers"]:  # the model parameter papin sets, the plain way
        original = llama_cpp.llama_cpp.llama_model_default_params

        def no_extra_buffers() -> Any:
            p = original()
            p.use_extra_bufts = False
            return p

        llama_cpp.llama_cpp.llama_model_default_params = no_extra_buffers
    started = time.perf_counter()
    llama = llama_cpp.Llama(
        model_path=request["path"],
        n_ctx=s["n_ctx"],
        n_threads=s["n_threads"],
        n_batch=s["n_batch"],
        n_gpu_layers=s["n_gpu_layers"],
        verbose=False,
        **params,
    )
    print(json.dumps({"load_s": time.perf_counter() - started}), flush=True)
    for line in sys.stdin:
        print(json.dumps(run(llama, json.loads(line)["tokens"])), flush=True)


if __name__ == "__main__":
    main()
