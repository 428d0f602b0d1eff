"""The client discovery probes addresses with: many short ``GET`` requests at once, each
bounded in time and size, whose failures are outcomes (a reason), never exceptions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from papin.llm.transport.errors import classify

__all__ = ["MAX_BODY", "ProbeClient"]

#: Bodies are read up to this size (a fingerprint never needs more).
MAX_BODY = 4 * 1024 * 1024


class ProbeClient:
    """One session shared by all probes of a discovery (no proxies from the environment, no
    redirects followed; aiohttp's verifying TLS context for https addresses)."""

    def __init__(self, urls: Sequence[str], connect_timeout: float, read_timeout: float) -> None:
        self.urls = tuple(urls)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout
            )
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=timeout,
                trust_env=False,
                headers={"user-agent": "papin-discovery", "accept": "application/json"},
            )
        return self._session

    async def get(self, url: str, limit: float) -> tuple[int | None, bytes, str | None]:
        """``GET url`` within ``limit`` seconds: (status, body up to :data:`MAX_BODY`, None), or
        (None, b"", why nothing usable came back). Never raises."""
        try:
            async with asyncio.timeout(limit):
                async with self._get_session().get(url, allow_redirects=False) as response:
                    chunks: list[bytes] = []
                    size = 0
                    while chunk := await response.content.readany():
                        size += len(chunk)
                        if size > MAX_BODY:
                            break
                        chunks.append(chunk)
                    return response.status, b"".join(chunks), None
        except aiohttp.SocketTimeoutError:
            return None, b"", f"no answer within {self.read_timeout:g} s"
        except aiohttp.ConnectionTimeoutError:
            return None, b"", f"no connection within {self.connect_timeout:g} s"
        except TimeoutError:
            return None, b"", f"no answer within {limit:g} s"
        except Exception as exc:  # every transport failure means "nothing answered"
            kind, reason = classify(exc)
            return None, b"", "connection refused" if kind == "refused" else reason

    async def aclose(self) -> None:
        """Close the connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
