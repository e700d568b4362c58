"""Process-level behaviour of the command-line shells.

Torch's CPU threads (OpenMP) spin while they wait for work. When the machine is busy with other
work, spinning threads take turns with it: on a 2-core CPU beside two busy processes a demo
training step took 14.8 s instead of 0.31 s on the idle machine; with the threads told to sleep while
they wait (``OMP_WAIT_POLICY=PASSIVE``, which OpenMP reads once, when torch loads) it took 0.74 s,
at a cost of 13% on the idle machine (``bench/bench_busy_cpu.py``, 2026-12-05). The commands therefore ask for passive
waiting, unless the environment already says otherwise (:func:`prefer_passive_threads`).

A terminal's Ctrl-C raises ``KeyboardInterrupt``, so every ``finally`` and ``except BaseException``
cleanup runs. SIGTERM (what ``kill``, schedulers and torchrun send) and SIGHUP (a closed terminal)
would end Python at once, without cleanup, leaving temporary files behind; the commands turn them
into a :class:`Terminated` exception instead, so they clean up the same way and exit with the
conventional code 128 + signal number.
"""

from __future__ import annotations

import contextlib
import os
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


def prefer_passive_threads() -> None:
    """Make OpenMP threads sleep rather than spin while they wait (see the module docstring), unless
    the environment sets a policy; effective only before torch is first imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the body with torch using ``n`` CPU threads (``None``: leave the setting alone), and
    restore the previous count afterwards."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def release_freed_memory() -> None:
    """Give the memory freed since the last call back to the operating system (glibc's
    ``malloc_trim``; elsewhere only Arrow's pool is trimmed).

    numpy takes arrays below glibc's mmap threshold, which grows to 32 MB as large arrays are freed,
    from the heap, and the heap keeps freed memory for reuse: after a pass that held millions of
    mid-sized arrays (a :class:`~flyt_datacomp.uids.UidIndex` of the 115M downloads of a medium pool:
    2.5 GB in 3 MB buckets) the process would stay that much larger through the passes after it.
    Called where such a structure has just been dropped; Arrow's memory pool gives back what it
    keeps cached too."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    global _TRIM
    if _TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None
