"""The package's one way to run work in parallel: threads for I/O, spawned processes for Python loops.

* :func:`thread_map` -- ``map`` over a thread pool, in order, a bounded number of results ahead of
  the consumer (parquet/npz decoding releases the GIL and remote reads wait on the network; the
  bound keeps memory to a few shards, which matters for GB-sized npz shards).
* :func:`process_map` -- the same over worker processes, for GIL-bound Python work; ``ordered=False``
  yields ``(index, result)`` as tasks finish instead.

Processes are started with ``spawn``: forking a process that holds threads (pyarrow's, torch's) can
deadlock the child. A worker that dies abruptly (killed by the OOM killer or a signal) surfaces as
one :class:`~flyt_datacomp.errors.WorkerDied` error naming the work, not as ``BrokenProcessPool``.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .errors import WorkerDied
from .process import stopping


def thread_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """``map(fn, items)`` on ``workers`` threads, in order, ``items`` consumed lazily, at most
    ``workers`` results ahead."""
    if workers <= 1 or (isinstance(items, Sequence) and len(items) < 2):
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as ex:
        pending: collections.deque = collections.deque()
        it = iter(items)
        for item in itertools.islice(it, workers):
            pending.append(ex.submit(fn, item))
        try:
            while pending:
                result = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(ex.submit(fn, nxt))
                yield result
        finally:
            for f in pending:
                f.cancel()


def process_pool(workers: int, *, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=initializer, initargs=initargs)


def process_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, *, ordered: bool = True,
                what: str = "a task", initializer: Callable | None = None, initargs: tuple = ()) -> Iterator[Any]:
    """``fn`` over ``items`` in ``workers`` spawned processes (``fn`` and the items must pickle).

    ``ordered``: results in item order, ``items`` consumed lazily, at most ``workers`` tasks beyond
    the consumer; otherwise ``(index, result)`` pairs as tasks finish, every task submitted at once. One worker runs
    everything in this process (after ``initializer``). ``what`` names the work in the error raised
    when a worker dies.
    """
    if not ordered:
        items = list(items)
        workers = min(workers, len(items))
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for i, item in enumerate(items):
            yield fn(item) if ordered else (i, fn(item))
        return
    try:
        with process_pool(workers, initializer=initializer, initargs=initargs) as ex:
            if ordered:
                yield from _ordered(ex, fn, items, workers)
            else:
                yield from _unordered(ex, fn, items)
    except BrokenProcessPool:
        raise WorkerDied(f"a worker process died while running {what} (killed, or out of memory?); "
                         "nothing of the unfinished work was kept: run again, with fewer workers if memory "
                         "is short") from None


def _ordered(ex: ProcessPoolExecutor, fn: Callable, items: list, workers: int) -> Iterator[Any]:
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        _cancel(pending)


def _cancel(futures) -> None:
    """Cancel the tasks not started yet; not while a stop signal is handled: its workers were told to
    stop, the pool breaks, and the pool's own thread then fails every task (a cancelled one raising
    an error of its own, printed as a traceback)."""
    if not stopping():
        for future in futures:
            future.cancel()


def _unordered(ex: ProcessPoolExecutor, fn: Callable, items: list) -> Iterator[tuple[int, Any]]:
    pending = {ex.submit(fn, item): i for i, item in enumerate(items)}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()
    finally:
        _cancel(pending)
