"""Probing the candidate addresses (the I/O of discovery).

:func:`probe_all` runs every candidate at once over one shared client
(:class:`papin.llm.transport.probing.ProbeClient`, the aiohttp transport papin uses
everywhere): ``GET /`` first, then what
:func:`~papin.llm.discovery.fingerprints.next_paths` asks for, each request bounded by a
connect and a read timeout. It never raises: an address that refuses, times out or answers
nonsense is an outcome like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from papin.llm.discovery.candidates import Candidate
from papin.llm.discovery.fingerprints import ROOT, Identification, Reply, identify, next_paths

if TYPE_CHECKING:
    from papin.llm.transport.probing import ProbeClient

__all__ = ["ProbeOutcome", "probe_all", "probe_one"]

_MAX_ROUNDS = 3


# -- the probe (I/O) ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """The result of probing one candidate: an identification, or why there is none."""

    candidate: Candidate
    found: Identification | None
    error: str | None
    elapsed: float


async def _get(client: ProbeClient, url: str, limit: float) -> Reply:
    status, body, error = await client.get(url, limit)
    return Reply(status, body) if status is not None else Reply(None, error=error)


async def probe_one(
    client: ProbeClient, candidate: Candidate, connect_timeout: float, read_timeout: float
) -> ProbeOutcome:
    """Probe one address: ``GET /`` first, then what :func:`next_paths` asks for, all
    requests of a round at once. Bounded by about ``connect + 2 * read`` seconds; never raises."""
    started = time.perf_counter()
    replies: dict[str, Reply] = {}
    limit = connect_timeout + read_timeout
    error: str | None = None
    try:
        async with asyncio.timeout(connect_timeout + 2 * read_timeout):
            for _ in range(_MAX_ROUNDS):
                paths = next_paths(replies)
                if not paths:
                    break
                answers = await asyncio.gather(
                    *(_get(client, candidate.url + p, limit) for p in paths)
                )
                replies.update(zip(paths, answers, strict=True))
    except TimeoutError:  # _get never raises: only the overall bound can end the rounds early
        error = f"answered too slowly (over {connect_timeout + 2 * read_timeout:g} s)"
    root = replies.get(ROOT)
    if root is not None and root.status is None:
        error = root.error
    found = None
    if root is not None and root.status is not None:
        try:
            found = identify(replies, candidate.hint)
        except Exception as exc:  # pragma: no cover - defensive: malformed answers
            error = f"unrecognised answers ({type(exc).__name__}: {exc})"
        if found is None and error is None:
            error = "answers HTTP, but not as any known LLM server"
    return ProbeOutcome(candidate, found, error, time.perf_counter() - started)


async def _unreachable(candidate: Candidate, connect_timeout: float) -> ProbeOutcome | None:
    """``None`` when something accepts TCP connections at the candidate's address, else the
    outcome saying why not (refused, timed out, unresolvable). Never raises."""
    started = time.perf_counter()
    parts = urlsplit(candidate.url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        async with asyncio.timeout(connect_timeout):
            _, writer = await asyncio.open_connection(parts.hostname, port)
        writer.close()
        return None
    except TimeoutError:
        error = "connect timed out"
    except ConnectionRefusedError:
        error = "connection refused"
    except (OSError, ValueError) as exc:
        error = f"cannot connect: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
    return ProbeOutcome(candidate, None, error, time.perf_counter() - started)


async def probe_all(
    candidates: Sequence[Candidate], *, connect_timeout: float = 0.3, read_timeout: float = 0.3
) -> list[ProbeOutcome]:
    """Probe every candidate at once; outcomes in candidate order.

    A plain TCP connect comes first: the addresses where nothing listens (the usual case) are
    settled without importing the HTTP stack (about 300 ms of imports in a fresh process); the
    others are probed over one shared client.
    """
    if not candidates:
        return []
    closed = await asyncio.gather(*(_unreachable(c, connect_timeout) for c in candidates))
    live = [c for c, outcome in zip(candidates, closed, strict=True) if outcome is None]
    if not live:
        return [outcome for outcome in closed if outcome is not None]
    try:
        from papin.llm.transport.probing import ProbeClient

        client = ProbeClient([c.url for c in live], connect_timeout, read_timeout)
    except Exception as exc:  # httpx missing or broken: report, do not raise
        return [
            o or ProbeOutcome(c, None, f"cannot probe: {exc}", 0.0)
            for c, o in zip(candidates, closed, strict=True)
        ]
    try:
        probed = iter(
            await asyncio.gather(*(probe_one(client, c, connect_timeout, read_timeout) for c in live))
        )
        return [outcome if outcome is not None else next(probed) for outcome in closed]
    finally:
        with contextlib.suppress(Exception):  # closing never matters to the result
            await asyncio.shield(client.aclose())
