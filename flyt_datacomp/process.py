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

A stop must also be prompt. A signal sent to this process alone does not reach its child
processes (the workers of a process pool, DataLoader workers, DataComp's scripts, a local Ray), and
unwinding waits for them: a pool's shutdown for its running tasks, a script's wait for its end
(hours, for ``train.py``). So the first stop signal (SIGTERM, SIGHUP or Ctrl-C) also sends SIGTERM
to every child process: they compute for this process, which alone commits outputs (a DataComp
script's own output is recognised as unfinished by the stage that runs it). Should the cleanup
still take longer than a few seconds (:data:`STOP_SECONDS`), or a second signal come, the children
are killed and the process exits at once with 128 + signal number: every output is written to a
temporary name and renamed, so what was committed stays intact, and a temporary file left behind is
recognised by its name and removed by the next run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import threading
from collections.abc import Iterator

STOP_SECONDS = float(os.environ.get("FLYT_DATACOMP_STOP_SECONDS", "5"))  # cleanup time after a stop signal


class Terminated(SystemExit):
    """The process received SIGTERM or SIGHUP."""


class _Stop:
    """The stop under way: the first signal, and the watchdog that ends a cleanup taking too long."""

    signum: int | None = None
    cancelled: threading.Event | None = None


def _on_stop(signum, frame) -> None:
    """The first stop signal: stop the children, arm the watchdog, unwind by an exception. A second
    one: stop now."""
    if _Stop.signum is not None:
        _exit_now(signum, "a second stop signal came")
    _Stop.signum = signum
    signal_children(signal.SIGTERM)
    _Stop.cancelled = cancelled = threading.Event()
    threading.Thread(target=_watchdog, args=(signum, cancelled), name="flyt-stop-watchdog", daemon=True).start()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(128 + signum)


def _watchdog(signum: int, cancelled: threading.Event) -> None:
    if not cancelled.wait(STOP_SECONDS):
        _exit_now(signum, f"cleaning up took longer than {STOP_SECONDS:g} s")


def _exit_now(signum: int, why: str) -> None:
    """Kill the children and end the process at once (its outputs are committed by renames only)."""
    with contextlib.suppress(OSError):
        os.write(2, f"\nstopped: {why}; outputs already written are intact, and temporary files left behind are "
                    "removed by the next run\n".encode())
    signal_children(signal.SIGKILL)
    os._exit(128 + signum)


def stopping() -> bool:
    """True while a stop signal is being handled (the child processes have been told to stop)."""
    return _Stop.signum is not None


def stop_handled() -> None:
    """The command has unwound from a stop signal (or finished): disarm the watchdog, so a process that
    goes on (a test runner that ran the command in-process) is not ended by it."""
    if _Stop.cancelled is not None:
        _Stop.cancelled.set()
    _Stop.signum, _Stop.cancelled = None, None


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP raise :class:`Terminated` and Ctrl-C ``KeyboardInterrupt`` as before, each
    first stopping the child processes and arming the watchdog (main thread; handlers left as Python
    sets them only: a signal the process was told to ignore stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, default in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGHUP, signal.SIG_DFL),
                         (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(sig) is default:
            signal.signal(sig, _on_stop)


def child_pids() -> list[int]:
    """The process ids of this process's children, however they were started (Linux's /proc; elsewhere
    the ``multiprocessing`` children)."""
    me = os.getpid()
    found = glob.glob(f"/proc/{me}/task/*/children")
    pids: set[int] = set()
    if found:
        for path in found:
            with contextlib.suppress(OSError, ValueError):
                with open(path) as fh:
                    pids.update(int(p) for p in fh.read().split())
        return sorted(pids)
    if os.path.isdir("/proc"):  # a kernel without the children files: every process's parent
        for stat in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(stat) as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == me:
                    pids.add(int(stat.split("/")[2]))
        return sorted(pids)
    import multiprocessing

    return sorted(p.pid for p in multiprocessing.active_children() if p.pid)


_STOPPED_BY_CLEANUP: set[int] = set()


@contextlib.contextmanager
def stopped_by_cleanup(pids) -> Iterator[None]:
    """Child processes that the cleanup stops itself: the first stop signal does not SIGTERM them (the
    watchdog's SIGKILL still ends them). A local Ray's processes are such: ``ray.shutdown`` stops them
    and their own children in about a second, while a SIGTERM from here first made it wait 8 s and
    left Ray's agent processes running, orphaned."""
    pids = set(pids)
    _STOPPED_BY_CLEANUP.update(pids)
    try:
        yield
    finally:
        _STOPPED_BY_CLEANUP.difference_update(pids)


def signal_children(sig: int) -> None:
    """Send ``sig`` to every child process (those already gone are skipped; SIGTERM spares those the
    cleanup stops itself)."""
    for pid in child_pids():
        if sig == signal.SIGTERM and pid in _STOPPED_BY_CLEANUP:
            continue
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def quiet_library_warnings() -> None:
    """Hide warnings the user can do nothing about, which would print in the middle of a progress bar:
    torch's own use of ``torch.jit.script``, which it deprecates, when it first loads its forward-mode
    derivative rules (the first FLYT step)."""
    import warnings

    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


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


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far, in bytes (Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
