"""Moving a model's bytes into the store: local copies, package assembly and downloads.

:func:`copy_files` (local copies, package assembly) and :class:`UrlDownload` write a file
while reporting progress and computing its sha256 on the way. Blocking file work runs in
worker threads, a block at a time, so progress keeps flowing and cancelling stays prompt.
Downloads go through :class:`papin.llm.transport.client.HttpTransport` (the one HTTP layer and error
boundary).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

from papin.llm.datatypes import DownloadStatus
from papin.llm.errors import (
    DownloadError,
    InvalidModelFileError,
    ProviderAPIError,
    ProviderError,
)
from papin.llm.progress import ProgressMeter
from papin.llm.store.gguf import describe_non_gguf
from papin.llm.store.sources import HF_TOKEN_ENVS, SHA256_RE

if TYPE_CHECKING:
    from papin.llm.transport.client import HttpResponse, HttpTransport

__all__ = [
    "TransferResult",
    "UrlDownload",
    "check_free_space",
    "copy_files",
    "hash_file",
    "run_blocking",
]

P = ParamSpec("P")
T = TypeVar("T")

_BLOCK = 8 * 1024 * 1024
_PROGRESS_INTERVAL = 0.1
_DISK_MARGIN = 64 * 1024 * 1024
_HEAD_BYTES = 64  # what is checked as soon as a download starts


async def run_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` in a worker thread. If the caller is cancelled meanwhile, wait for ``fn`` to
    end before re-raising, so the files it uses are not closed under it."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


def check_free_space(directory: Path, needed: int, what: str) -> None:
    """Raise :class:`DownloadError` if ``directory``'s disk cannot take ``needed`` more bytes."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if needed + _DISK_MARGIN > free:
        raise DownloadError(
            f"Not enough disk space for {what}: it needs {needed / 1e9:.2f} GB and "
            f"{directory} has {free / 1e9:.2f} GB free."
        )


class _Throttle:
    """True at most every ``interval`` seconds (and on the first call)."""

    __slots__ = ("_interval", "_next")

    def __init__(self, interval: float = _PROGRESS_INTERVAL) -> None:
        self._interval = interval
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        return True


@dataclass(slots=True)
class TransferResult:
    """Filled in by a transfer once it has written its file: size and sha256."""

    size: int = 0
    sha256: str | None = None


def _copy_block(src: IO[bytes], dst: IO[bytes] | None, digest: Any) -> int:
    block = src.read(_BLOCK)
    if block:
        digest.update(block)
        if dst is not None:
            dst.write(block)
    return len(block)


def _sync_close(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


async def copy_files(
    sources: Sequence[Path],
    dest: Path | None,
    meter: ProgressMeter,
    status: str,
    result: TransferResult,
) -> AsyncGenerator[DownloadStatus, None]:
    """Concatenate ``sources`` into ``dest`` (``None``: only hash them), yielding progress.

    ``dest`` is flushed and fsynced; ``result`` gets its size and sha256. On an error or
    cancellation ``dest`` may be left incomplete: the caller removes it.
    """
    total = await run_blocking(lambda: sum(p.stat().st_size for p in sources))
    if dest is not None:
        check_free_space(dest.parent, total, str(dest.name))
    digest = hashlib.sha256()
    done = 0
    throttle = _Throttle()
    yield meter.update(0, total, status)
    out = None if dest is None else await run_blocking(Path.open, dest, "wb")
    try:
        for path in sources:
            src = await run_blocking(Path.open, path, "rb")
            try:
                while n := await run_blocking(_copy_block, src, out, digest):
                    done += n
                    if throttle.due():
                        yield meter.update(done, total, status)
            finally:
                src.close()
        if out is not None:
            await run_blocking(_sync_close, out)
    finally:
        if out is not None and not out.closed:
            out.close()
    result.size = done
    result.sha256 = digest.hexdigest()
    yield meter.update(done, total, status)


def hash_file(
    path: Path, meter: ProgressMeter, status: str, result: TransferResult
) -> AsyncGenerator[DownloadStatus, None]:
    """Compute ``path``'s sha256 into ``result``, yielding progress."""
    return copy_files([path], None, meter, status, result)


def _try_lock(f: IO[bytes]) -> bool:
    """Take an exclusive advisory lock on ``f`` without waiting (always True off POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: best effort, no lock
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _hash_prefix(path: Path, size: int) -> Any:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        remaining = size
        while remaining > 0:
            block = f.read(min(_BLOCK, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return digest


class _Restart(Exception):
    """The server's answer does not continue the partial file: start again from byte 0."""


_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


class UrlDownload:
    """Downloads one URL into a resumable ``.part`` file, computing its sha256 on the way.

    An existing ``.part`` is continued with ``Range: bytes=N-``: a ``206`` answer is appended,
    a ``200`` (the server ignores ranges) restarts from zero, a ``416`` means the part is
    already complete. A connection lost after some progress is retried at once from where it
    stopped. The part file is locked while in use, so two downloads cannot interleave.
    Closing :meth:`run` (or cancelling it) keeps the part file for a later resume.
    """

    #: Seconds between an interrupted attempt and its resumption.
    retry_delay: ClassVar[float] = 0.5
    #: Attempts per :meth:`run` (each retry must follow an attempt that made progress).
    max_attempts: ClassVar[int] = 8

    def __init__(self, url: str, part: Path, meter: ProgressMeter, *, name: str, hf: bool) -> None:
        self.url = url
        self.part = part
        self.meter = meter
        self.name = name
        self.hf = hf
        self.total: int | None = None
        self.done = 0
        #: sha256 the server vouches for (Hugging Face's ``X-Linked-Etag``), if any.
        self.server_sha256: str | None = None
        self.result = TransferResult()
        self._file: IO[bytes] | None = None
        self._digest: Any = hashlib.sha256()
        self._head: bytes | None = None
        #: Set when the part file holds data known to be wrong (it is deleted, not kept).
        self.discard = False

    # -- the part file ----------------------------------------------------------------------
    def _open(self) -> None:
        f = self.part.open("ab")
        if not _try_lock(f):
            f.close()
            raise DownloadError(
                f"Another download of {self.name} into this store is already running "
                f"(it holds {self.part}). Wait for it to finish."
            )
        self._file = f
        self.done = f.seek(0, os.SEEK_END)

    def _truncate(self) -> None:
        assert self._file is not None
        self._file.flush()
        self._file.truncate(0)
        self.done = 0
        self._digest = hashlib.sha256()
        self.meter.rebase(0)

    def _on_response(self, response: HttpResponse) -> None:
        status = response.status_code
        headers = response.headers
        if headers.get("content-encoding", "identity").lower() not in ("identity", ""):
            raise DownloadError(
                f"The server of {self.name} sent compressed data "
                f"({headers['content-encoding']}), which cannot be stored as a model file."
            )
        for r in (*response.history, response):
            etag = (r.headers.get("x-linked-etag") or "").strip().removeprefix("W/").strip('"')
            if SHA256_RE.match(etag.lower()):
                self.server_sha256 = etag.lower()
        if status == 206:
            match = _CONTENT_RANGE_RE.match(headers.get("content-range", ""))
            if match is None or int(match.group(1)) != self.done:
                self._truncate()
                raise _Restart
            self.total = int(match.group(3)) if match.group(3) != "*" else None
        elif status == 200:
            if self.done:
                self._truncate()  # the server ignores ranges: start again
            length = headers.get("content-length")
            self.total = int(length) if length and length.isdigit() else None
        else:
            raise DownloadError(f"Unexpected answer {status} when downloading {self.name}.")
        self._head = b"" if self.done == 0 else None
        if self.total is not None:
            check_free_space(self.part.parent, self.total - self.done, self.name)

    def _write(self, chunk: bytes) -> None:
        assert self._file is not None
        if self._head is not None:
            self._head += chunk[: _HEAD_BYTES - len(self._head)]
            if len(self._head) >= _HEAD_BYTES:
                if self._head[:4] != b"GGUF":
                    self.discard = True
                    raise InvalidModelFileError(
                        f"{self.name} is not a GGUF model file: {describe_non_gguf(self._head)}."
                    )
                self._head = None
        self._file.write(chunk)
        self._digest.update(chunk)
        self.done += len(chunk)
        if self.total is not None and self.done > self.total:
            self.discard = True
            raise DownloadError(
                f"The server sent more of {self.name} than the {self.total} bytes it announced."
            )

    # -- the download -----------------------------------------------------------------------
    def _error(self, exc: ProviderError) -> ProviderError:
        if isinstance(exc, DownloadError | InvalidModelFileError):
            return exc
        kept = (
            f" The {self.done} bytes received are kept in {self.part}; pull again to resume."
            if self.done
            else ""
        )
        token = " Set HF_TOKEN if the repository is gated or private." if self.hf else ""
        status = exc.status_code
        if status == 404:
            text = f"{self.url} was not found (404). Check the address"
            if self.hf:
                text += ": owner, repository, revision and file name"
            err = DownloadError(f"{text}.{token}", status_code=status)
        elif status in (401, 403):
            err = DownloadError(f"{self.url} refused access ({status}).{token}", status_code=status)
        else:
            err = DownloadError(f"Downloading {self.name} failed: {exc.message}{kept}", status_code=status)
        err.retryable = exc.retryable
        return err

    async def run(self) -> AsyncGenerator[DownloadStatus, None]:
        """Download until the part file is complete; ``result`` then has size and sha256."""
        from papin.llm.transport.client import HttpTransport, PhaseTimeouts, ServiceInfo

        parsed = urllib.parse.urlsplit(self.url)
        service = ServiceInfo(
            provider="download",
            display_name="the download server",
            base_url=f"{parsed.scheme}://{parsed.netloc}",
        )
        headers = {"accept": "*/*", "accept-encoding": "identity"}
        token = next((os.environ[k] for k in HF_TOKEN_ENVS if os.environ.get(k)), None)
        if self.hf and token:
            headers["authorization"] = f"Bearer {token}"
        await run_blocking(self._open)  # before the try: a part locked by another is not ours
        transport = HttpTransport(
            service,
            timeouts=PhaseTimeouts(connect=15.0, first_byte=60.0, idle=60.0),
            follow_redirects=True,  # the Hub redirects to its CDN
        )
        try:
            if self.done:
                yield DownloadStatus(self.meter.model_id, "resuming", bytes_downloaded=self.done)
                self._digest = await run_blocking(_hash_prefix, self.part, self.done)
            else:
                yield self.meter.update(0, None, "starting")
            self.meter.rebase(self.done)  # bytes already on disk do not count towards speed
            attempts = 0
            while True:
                attempts += 1
                before = self.done
                try:
                    async with contextlib.aclosing(self._attempt(transport, headers)) as steps:
                        async for status in steps:
                            yield status
                    if self.total is None or self.done >= self.total:
                        break
                    failure: ProviderError = DownloadError(
                        f"The server closed the download of {self.name} early."
                    )
                    failure.retryable = True
                except _Restart:
                    failure = DownloadError(f"The server restarted the download of {self.name}.")
                    failure.retryable = True
                    before = -1
                except ProviderAPIError as exc:
                    if exc.status_code == 416 and self.done:
                        self.total = self.done  # nothing left to send: the part is complete
                        break
                    failure = exc
                except ProviderError as exc:
                    failure = exc
                if not (failure.retryable and self.done > before and attempts < self.max_attempts):
                    raise self._error(failure) from failure
                yield self.meter.update(self.done, self.total, "retrying")
                await asyncio.sleep(self.retry_delay)
            if self.done == 0:
                raise InvalidModelFileError(f"{self.name} is empty: it is not a GGUF model file.")
            assert self._file is not None
            await run_blocking(_sync_close, self._file)
            self.result.size = self.done
            self.result.sha256 = self._digest.hexdigest()
        finally:
            if self._file is not None and not self._file.closed:
                self._file.close()
            if self.discard or self.done == 0:  # wrong data, or nothing worth resuming
                self.part.unlink(missing_ok=True)
            await transport.aclose()

    async def _attempt(
        self, transport: HttpTransport, headers: dict[str, str]
    ) -> AsyncGenerator[DownloadStatus, None]:
        request_headers = dict(headers)
        if self.done:
            request_headers["range"] = f"bytes={self.done}-"
        stream = transport.stream("GET", self.url, headers=request_headers, on_response=self._on_response)
        throttle = _Throttle()
        try:
            async for chunk in stream:
                self._write(chunk)
                if throttle.due():
                    yield self.meter.update(self.done, self.total, "downloading")
        finally:
            await stream.aclose()
            if self._file is not None and not self._file.closed:
                self._file.flush()
        yield self.meter.update(self.done, self.total, "downloading")
