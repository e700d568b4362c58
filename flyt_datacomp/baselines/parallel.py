"""Per-shard caption work in worker processes.

Language identification and WordNet look-ups are Python-level loops that hold the GIL, so shards
are processed in separate processes (``--num_workers`` of them, started with ``spawn``: safe beside
the threads that read parquet files). Results come back in shard order, with at most a few shards
in flight so memory stays bounded. One worker runs everything in the calling process.
"""

from __future__ import annotations

import collections
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def ordered_process_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """``map(fn, items)`` over ``workers`` processes, in order; ``fn`` and the items must pickle."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        pending: collections.deque = collections.deque()
        try:
            for item in items:
                pending.append(ex.submit(fn, item))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
