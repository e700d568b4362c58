"""Process-level behaviour of the command-line shells.

A terminal's Ctrl-C raises ``KeyboardInterrupt``, so every ``finally`` and ``except BaseException``
cleanup runs. SIGTERM (what ``kill``, schedulers and torchrun send) and SIGHUP (a closed terminal)
would end Python at once, without cleanup, leaving temporary files behind; the commands turn them
into a :class:`Terminated` exception instead, so they clean up the same way and exit with the
conventional code 128 + signal number.
"""

from __future__ import annotations

import signal
import threading


class Terminated(SystemExit):
    """The process received SIGTERM or SIGHUP."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(128 + signum)


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP raise :class:`Terminated` (main thread; default handlers only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _raise_terminated)
