"""The isolated embedded worker: a child process that loads models and generates for papin.

Started by :class:`papin.llm.providers._llama.isolated.LlamaWorker` as
``python -m papin.llm.providers._llama.worker READ_FD WRITE_FD``. It reads requests from
``READ_FD`` and writes replies to ``WRITE_FD`` (``multiprocessing.connection`` framing, pickled
tuples; its stdout and stderr are only logs):

* ``("load", id, key, path, settings)`` -> ``("ok", id, None)`` or ``("fail", id, error)``
* ``("close", id, key)`` -> ``("ok", id, None)``
* ``("generate", id, key, n_ctx, request)`` -> the events of
  :func:`papin.llm.providers._llama.generation.execute`, each as ``(kind, id, payload)``
* ``("stop", id)``: the generation ``id`` ends at its next token
* ``("exit",)``, or the end of ``READ_FD`` (papin closed it or died): the worker exits.

Every llama.cpp call runs on one long-lived thread (llama.cpp's OpenMP team belongs to it);
the main thread only reads requests, so a stop takes effect while a generation runs.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from papin.llm.providers._llama.generation import GenerationJob, GenerationRequest, execute
from papin.llm.providers._llama.runtime import LoadSettings, load_llama

__all__ = ["Worker", "main"]


class Worker:
    """The worker's state: loaded models by key and running jobs by request id."""

    def __init__(self, out: Connection) -> None:
        self.out = out
        self.models: dict[str, Any] = {}
        self.jobs: dict[int, GenerationJob] = {}
        self._send_lock = threading.Lock()
        self._jobs_lock = threading.Lock()
        self._llama_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="papin-llama")

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.out.send(message)

    def serve(self, source: Connection) -> None:
        """Read requests until told to exit or until papin goes away."""
        while True:
            try:
                message = source.recv()
            except (EOFError, OSError):
                return
            op = message[0]
            if op == "exit":
                return
            if op == "stop":
                with self._jobs_lock:
                    job = self.jobs.get(message[1])
                if job is not None:
                    job.request_stop()
                continue
            if op == "generate":
                with self._jobs_lock:  # registered now, so that a stop can find it while queued
                    self.jobs[message[1]] = GenerationJob()
            self._llama_thread.submit(self.handle, message)

    def handle(self, message: tuple[Any, ...]) -> None:
        """Run one request on the llama thread; failures are replies, never crashes."""
        op, rid = message[0], message[1]
        try:
            if op == "load":
                _, _, key, path, settings = message
                self.models[key] = load_llama(path, LoadSettings(**settings))
                self.send(("ok", rid, None))
            elif op == "close":
                llama = self.models.pop(message[2], None)
                if llama is not None:
                    llama.close()
                    del llama
                    gc.collect()
                self.send(("ok", rid, None))
            elif op == "generate":
                self._generate(rid, message[2], message[3], message[4])
            else:
                self.send(("fail", rid, ("protocol", f"unknown request {op!r}")))
        except Exception as exc:
            self.send(("fail", rid, (type(exc).__name__, str(exc))))

    def _generate(self, rid: int, key: str, n_ctx: int, request: GenerationRequest) -> None:
        with self._jobs_lock:
            job = self.jobs.get(rid) or GenerationJob()
        try:
            llama = self.models.get(key)
            if llama is None:
                self.send(("error", rid, ("llama", f"the model {request.model_id} is not loaded", ())))
                return
            execute(llama, n_ctx, request, job, lambda kind, payload: self.send((kind, rid, payload)))
        finally:
            with self._jobs_lock:
                self.jobs.pop(rid, None)


def main(argv: list[str]) -> int:
    """Entry point: serve papin on the two file descriptors named in ``argv``."""
    if len(argv) != 3:
        sys.stderr.write("usage: python -m papin.llm.providers._llama.worker READ_FD WRITE_FD\n")
        return 2
    source = Connection(int(argv[1]), writable=False)
    out = Connection(int(argv[2]), readable=False)
    os.dup2(2, 1)  # anything printed goes to the log, never into the replies
    worker = Worker(out)
    worker.serve(source)
    os._exit(0)  # skip interpreter teardown: llama.cpp's memory goes with the process


if __name__ == "__main__":
    sys.exit(main(sys.argv))
