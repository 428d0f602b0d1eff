"""The client discovery probes addresses with: many short ``GET`` requests at once, each
bounded in time and size, whose failures are outcomes (a reason), never exceptions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

from papin.llm.transport.client import shared_ssl_context
from papin.llm.transport.errors import classify

__all__ = ["MAX_BODY", "ProbeClient"]

#: Bodies are read up to this size (a fingerprint never needs more).
MAX_BODY = 4 * 1024 * 1024


class ProbeClient:
    """One client shared by all probes of a discovery (aiohttp transport, no proxies from the
    environment, a verifying TLS context only when an address needs https)."""

    def __init__(self, urls: Sequence[str], connect_timeout: float, read_timeout: float) -> None:
        from httpx_aiohttp import AiohttpTransport

        https = any(url.startswith("https://") for url in urls)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        verify = shared_ssl_context(None, True) if https else False
        transport = AiohttpTransport(verify=verify, limits=limits, trust_env=False)
        read = read_timeout
        timeout = httpx.Timeout(connect=connect_timeout, read=read, write=read, pool=read)
        self.read_timeout = read_timeout
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            trust_env=False,
            headers={"user-agent": "papin-discovery", "accept": "application/json"},
        )
        del self._client.headers["connection"]

    async def get(self, url: str, limit: float) -> tuple[int | None, bytes, str | None]:
        """``GET url`` within ``limit`` seconds: (status, body up to :data:`MAX_BODY`, None), or
        (None, b"", why nothing usable came back). Never raises."""
        try:
            async with asyncio.timeout(limit):
                async with self._client.stream("GET", url) as response:
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > MAX_BODY:
                            break
                        chunks.append(chunk)
                    return response.status_code, b"".join(chunks), None
        except TimeoutError:
            return None, b"", f"no answer within {limit:g} s"
        except (httpx.ReadTimeout, httpx.PoolTimeout):
            return None, b"", f"no answer within {self.read_timeout:g} s"
        except Exception as exc:  # every transport failure means "nothing answered"
            kind, reason = classify(exc)
            return None, b"", "connection refused" if kind == "refused" else reason

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()
