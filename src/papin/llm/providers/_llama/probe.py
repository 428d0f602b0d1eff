"""The crash probe: before papin first loads a model into a process it cares about, a child
process loads it and decodes a few tokens, so that a native crash in llama.cpp kills the child
and never the caller.

A verdict is kept per combination of what decides a crash: the llama.cpp build, the CPU's
flags, the model's quantization type and the load settings that matter (extra buffers, GPU
offload). It is stored in papin's data directory (``llama-probes.json``), so the probe runs once
per combination, not once per load.

:func:`safe_settings` runs the probe as the embedded provider needs it: with ``extra_buffers``
on ``auto``, a crash with extra buffers on is tried again with them off and papin remembers
which worked; when nothing works, it raises a :class:`~papin.llm.errors.NativeCrashError`
saying what crashed and what to do instead (a crash while loading means a broken file:
:class:`~papin.llm.errors.InvalidModelFileError`).

Run as ``python -m papin.llm.providers._llama.probe SETTINGS_JSON`` it is the child. The
variable ``PAPIN_TEST_PROBE_CRASH`` makes the child die by a real SIGSEGV on purpose (tests):
``load`` or ``decode`` (the stage), optionally ``:extra_buffers`` (only with them on).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from papin.llm.errors import InvalidModelFileError, NativeCrashError, ProviderTimeoutError
from papin.llm.providers._llama.processes import child_environment, signal_description, spawn, terminate
from papin.llm.providers._llama.runtime import LoadSettings

__all__ = [
    "PROBE_FILE",
    "ProbeVerdict",
    "VerdictStore",
    "build_id",
    "data_dir",
    "probe_key",
    "run_probe",
    "safe_settings",
    "verdicts_for",
]

logger = logging.getLogger("papin.llamacpp")

PROBE_FILE = "llama-probes.json"
#: A prompt long enough for a batched matrix product (llama.cpp's batch kernels), then
#: :data:`DECODE_TOKENS` one-token decodes (its vector kernels).
PROBE_PROMPT = (
    "The quick brown fox jumps over the lazy dog while the early bird catches the worm, and "
    "a stitch in time saves nine when every cloud has a silver lining far across the sea"
)
DECODE_TOKENS = 4
_CRASH_HOOK = "PAPIN_TEST_PROBE_CRASH"


def data_dir() -> Path:
    """papin's data directory: ``PAPIN_DATA_DIR``, else the platform's user data directory."""
    if os.environ.get("PAPIN_DATA_DIR"):
        return Path(os.environ["PAPIN_DATA_DIR"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("papin", appauthor=False))


def build_id(llama_cpp: Any) -> str:
    """Identity of the installed llama-cpp-python build: its version, system info and library
    files (a rebuild with other flags changes it)."""
    digest = hashlib.sha256(str(getattr(llama_cpp, "__version__", "")).encode())
    digest.update(llama_cpp.llama_print_system_info())
    lib = Path(llama_cpp.__file__).parent / "lib"
    with contextlib.suppress(OSError):
        for item in sorted(lib.iterdir()):
            st = item.stat()
            digest.update(f"{item.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{getattr(llama_cpp, '__version__', '?')}-{digest.hexdigest()[:12]}"


def probe_key(build: str, cpu_flags: frozenset[str], quantization: str | None, s: LoadSettings) -> str:
    """The verdict's key: build, CPU flags, quantization type and the settings that matter.

    >>> s = LoadSettings(n_ctx=512, n_threads=2, n_batch=512, n_gpu_layers=0)
    >>> k = probe_key("0.3.36-abc", frozenset({"avx2"}), "Q4_K_M", s)
    >>> k == probe_key("0.3.36-abc", frozenset({"avx2"}), "Q4_K_M", dataclasses.replace(s, n_ctx=9))
    True
    >>> off = dataclasses.replace(s, extra_buffers=False)
    >>> k == probe_key("0.3.36-abc", frozenset({"avx2"}), "Q4_K_M", off)
    False
    """
    cpu = hashlib.sha256(" ".join(sorted(cpu_flags)).encode()).hexdigest()[:12]
    settings = f"extra_buffers={'on' if s.extra_buffers else 'off'},gpu={'on' if s.n_gpu_layers else 'off'}"
    return f"{build}|cpu-{cpu}|{quantization or 'unknown'}|{settings}"


@dataclass(frozen=True, slots=True)
class ProbeVerdict:
    """What a probe child did: finished (``ok``), died by ``signal`` at ``stage``, failed
    cleanly (``error``: llama.cpp refused the file), or ran out of time (``timed_out``)."""

    ok: bool
    seconds: float
    stage: str | None = None
    signal: str | None = None
    error: str | None = None
    timed_out: bool = False
    cached: bool = False
    #: When a stored verdict was found (UTC, ISO 8601).
    when: str | None = None

    @property
    def crashed(self) -> bool:
        """Whether the child died by a signal."""
        return self.signal is not None

    def describe(self) -> str:
        """One phrase: ``"ok"``, ``"SIGSEGV while decoding"``..."""
        if self.ok:
            return "ok"
        if self.timed_out:
            return f"no answer within {self.seconds:.0f} s"
        doing = {"load": "loading", "decode": "decoding"}.get(self.stage or "", "starting")
        if self.crashed:
            return f"{self.signal} while {doing}"
        return f"failed while {doing}: {self.error}"

    def to_record(self) -> dict[str, Any]:
        """What is stored for a verdict."""
        return {
            "ok": self.ok,
            "signal": self.signal,
            "stage": self.stage,
            "seconds": round(self.seconds, 3),
            "when": self.when or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


class VerdictStore:
    """Probe verdicts in ``<data dir>/llama-probes.json`` (written atomically; a lost race only
    means one more probe)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or data_dir() / PROBE_FILE
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> ProbeVerdict | None:
        """The stored verdict for ``key``, if any."""
        with self._lock:
            record = self._read().get(key)
        if not isinstance(record, dict) or "ok" not in record:
            return None
        return ProbeVerdict(
            ok=bool(record["ok"]),
            seconds=float(record.get("seconds") or 0.0),
            stage=record.get("stage"),
            signal=record.get("signal"),
            cached=True,
            when=record.get("when"),
        )

    def put(self, key: str, verdict: ProbeVerdict) -> None:
        """Remember ``verdict`` for ``key`` (a failure to write is logged, never raised)."""
        with self._lock:
            data = self._read()
            data[key] = verdict.to_record()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".probes-", dir=self.path.parent)
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(data, out, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            except OSError as exc:
                logger.warning("could not save the llama.cpp probe verdict in %s: %s", self.path, exc)


def verdicts_for(quantization: str | None, gpu_offload: bool = False) -> dict[str, ProbeVerdict]:
    """The stored verdicts for a model of ``quantization`` on this machine and build, by
    ``"extra buffers on"``/``"off"`` (``papin doctor``). Imports llama-cpp-python."""
    settings = LoadSettings(n_ctx=512, n_threads=1, n_batch=512, n_gpu_layers=1 if gpu_offload else 0)
    from papin.llm.hardware import detect_cpu
    from papin.llm.providers._llama.runtime import import_llama_cpp

    build, flags, store = build_id(import_llama_cpp()), detect_cpu().features, VerdictStore()
    found: dict[str, ProbeVerdict] = {}
    for extra in (True, False):
        key = probe_key(build, flags, quantization, dataclasses.replace(settings, extra_buffers=extra))
        verdict = store.get(key)
        if verdict is not None:
            found[f"extra buffers {'on' if extra else 'off'}"] = verdict
    return found


def _probe_settings(s: LoadSettings) -> LoadSettings:
    """The probe's settings: the user's where they matter, small buffers elsewhere."""
    return dataclasses.replace(s, n_ctx=min(s.n_ctx, 256), n_batch=min(s.n_batch, 64), use_mlock=False)


def run_probe(path: str, settings: LoadSettings, timeout: float) -> ProbeVerdict:
    """Load ``path`` with ``settings`` in a child process and decode a few tokens. Blocking;
    never raises."""
    started = time.monotonic()
    payload = json.dumps({"path": path, "settings": _probe_settings(settings).to_dict()})
    try:
        proc = spawn(
            [sys.executable, "-m", "papin.llm.providers._llama.probe", payload],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_environment(),
        )
    except OSError as exc:
        return ProbeVerdict(False, 0.0, stage="start", error=str(exc))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        terminate(proc, 1.0)
        out, err = proc.communicate()
        return ProbeVerdict(False, time.monotonic() - started, stage=_last_stage(out), timed_out=True)
    seconds = time.monotonic() - started
    stage = _last_stage(out)
    text = (err or b"").decode("utf-8", "replace").strip()
    if proc.returncode == 0 and stage == "ok":
        return ProbeVerdict(True, seconds, stage="ok")
    name, how = signal_description(proc.returncode)
    if name is not None:
        return ProbeVerdict(False, seconds, stage=stage, signal=name)
    return ProbeVerdict(False, seconds, stage=stage, error=text.splitlines()[-1] if text else how)


def _last_stage(out: bytes | None) -> str | None:
    lines = [line for line in (out or b"").decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def safe_settings(
    path: str,
    settings: LoadSettings,
    *,
    mode: str,
    key_of: Callable[[LoadSettings], str],
    store: VerdictStore,
    timeout: float,
    provider: str,
    model: str,
    isolated: bool = False,
) -> tuple[LoadSettings, str | None]:
    """The settings to load ``path`` with, proven by a probe (or a stored verdict); blocking.

    Returns (settings, a note when they differ from ``settings``). ``mode`` is the user's
    ``extra_buffers`` (``auto`` may fall back to off); ``key_of(settings)`` gives a verdict key.

    Raises:
        NativeCrashError: llama.cpp crashes with every setting tried.
        InvalidModelFileError: llama.cpp crashes while loading the file.
        ProviderTimeoutError: no probe finished within ``timeout`` seconds.
    """
    candidates = [settings]
    if mode == "auto" and settings.extra_buffers:
        candidates.append(dataclasses.replace(settings, extra_buffers=False))
    tried: list[tuple[LoadSettings, ProbeVerdict]] = []
    for candidate in candidates:
        key = key_of(candidate)
        verdict = store.get(key)
        if verdict is None:
            verdict = run_probe(path, candidate, timeout)
            logger.info(
                "llama.cpp probe of %s (%s): %s in %.2f s", model, key, verdict.describe(), verdict.seconds
            )
            if verdict.ok or (verdict.crashed and verdict.stage == "decode"):
                store.put(key, verdict)  # a crash while loading belongs to the file, not the combination
        if verdict.ok:
            note = None
            if tried:
                note = (
                    f"extra buffers off: llama.cpp crashed with them on ({tried[0][1].describe()}) "
                    "in papin's probe on this machine; off works"
                )
                logger.warning("%s: %s", model, note)
            return candidate, note
        if not (verdict.crashed or verdict.timed_out):
            return candidate, None  # a clean failure: the real load reports llama.cpp's error
        tried.append((candidate, verdict))
    raise _failure(path, tried, mode=mode, timeout=timeout, provider=provider, model=model, isolated=isolated)


def _failure(
    path: str,
    tried: list[tuple[LoadSettings, ProbeVerdict]],
    *,
    mode: str,
    timeout: float,
    provider: str,
    model: str,
    isolated: bool,
) -> Exception:
    last = tried[-1][1]
    if all(v.timed_out for _, v in tried):
        return ProviderTimeoutError(
            f"papin's llama.cpp probe of '{model}' did not finish within {timeout:g} s (it loads the "
            "model in a child process once per llama.cpp build, CPU and quantization). Raise "
            "probe_timeout_seconds for a big model on a slow disk, or set crash_probe to false.",
            phase="probe",
            timeout=timeout,
            provider=provider,
            model=model,
        )
    if all(v.crashed and v.stage == "load" for _, v in tried):
        return InvalidModelFileError(
            f"llama.cpp crashed ({last.signal}) while loading {path}: the file is corrupt or not "
            "supported by this llama.cpp build. papin loaded it in a probe process, so nothing else "
            "was affected. Download it again, or check it with 'papin models info'.",
            provider=provider,
            model=model,
        )
    attempts = "; ".join(
        f"with extra buffers {'on' if s.extra_buffers else 'off'}: {v.describe()}" for s, v in tried
    )
    if mode == "on":
        forced = " extra_buffers is set to 'on': set it to 'auto' or 'off'."
    elif isolated:
        forced = " Use the llamacpp_server provider for this model."
    else:
        forced = (
            " Use the llamacpp_server provider, or the embedded provider with isolation 'process' "
            "(a crash then fails only the request)."
        )
    return NativeCrashError(
        f"llama.cpp crashes on this machine with '{model}' ({attempts}). papin ran it in a probe "
        f"process, so this process is unaffected.{forced}",
        provider=provider,
        model=model,
        signal=last.signal,
        stage=last.stage,
        settings={"extra_buffers": tried[-1][0].extra_buffers},
    )


# -- the child ------------------------------------------------------------------------------------


def _crash_if_asked(stage: str, settings: LoadSettings) -> None:
    """Die by a real SIGSEGV at ``stage`` when ``PAPIN_TEST_PROBE_CRASH`` says so (tests)."""
    wanted = os.environ.get(_CRASH_HOOK, "")
    if not wanted:
        return
    where, _, condition = wanted.partition(":")
    if where == stage and (condition != "extra_buffers" or settings.extra_buffers):
        import ctypes

        ctypes.string_at(0)  # reads address 0: the kernel sends SIGSEGV


def _say(stage: str) -> None:
    sys.stdout.write(stage + "\n")
    sys.stdout.flush()


def _child(argv: list[str]) -> int:
    request = json.loads(argv[1])
    settings = LoadSettings(**request["settings"])
    from papin.llm.providers._llama.runtime import load_llama

    _say("load")
    _crash_if_asked("load", settings)
    llama = load_llama(request["path"], settings)
    _say("decode")
    _crash_if_asked("decode", settings)
    llama.create_completion(PROBE_PROMPT, max_tokens=DECODE_TOKENS, temperature=0.0)
    _say("ok")
    os._exit(0)  # llama.cpp's memory goes with the process


if __name__ == "__main__":
    sys.exit(_child(sys.argv))
