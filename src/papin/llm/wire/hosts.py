"""Host names in URLs (sans-I/O, standard library only)."""

from __future__ import annotations

__all__ = ["connectable_host"]


def connectable_host(host: str) -> str:
    """The host to connect to for a bind address, ready for a URL: a bind-all address
    (``0.0.0.0``, ``::``, empty) becomes loopback, and an IPv6 address gets its brackets.

    >>> connectable_host("0.0.0.0"), connectable_host("::"), connectable_host("fe80::1")
    ('127.0.0.1', '[::1]', '[fe80::1]')
    """
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]" if ":" in host else host
