"""Signal set-up for the subprocesses that tests interrupt with a real Ctrl-C (SIGINT)."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """``preexec_fn``: give the child the default SIGINT disposition.

    A test run started as a background job (``cmd &``, as CI runners may do) ignores SIGINT,
    and children inherit that; Python then installs no KeyboardInterrupt handler and a
    SIGINT sent by the test would do nothing.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
