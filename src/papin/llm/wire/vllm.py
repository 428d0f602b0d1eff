"""vLLM's own wire shapes (sans I/O): its option names and FastAPI's answer for a missing route.

The OpenAI-compatible routes are :mod:`papin.llm.wire.openai`.
"""

from __future__ import annotations

from typing import Any

from papin.llm.errors import ModelNotFoundError, ProviderAPIError, ProviderError

__all__ = ["request_body", "route_missing"]

#: papin's option name -> vLLM's request field (vLLM ignores unknown fields silently).
RENAMED = {"repeat_penalty": "repetition_penalty"}


def request_body(body: dict[str, Any]) -> dict[str, Any]:
    """A request body with papin's option names replaced by vLLM's.

    >>> request_body({"model": "m", "repeat_penalty": 1.1})
    {'model': 'm', 'repetition_penalty': 1.1}
    """
    for ours, theirs in RENAMED.items():
        if ours in body:
            value = body.pop(ours)
            body.setdefault(theirs, value)
    return body


def route_missing(exc: ProviderError) -> bool:
    """Whether an error is FastAPI's 404 for a route the server did not register."""
    return (
        isinstance(exc, ProviderAPIError)
        and not isinstance(exc, ModelNotFoundError)
        and exc.status_code == 404
        and str(exc.body or "").strip().lower() in ("not found", "")
    )
