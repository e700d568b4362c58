"""Where the per-shard tasks run: inline, a local process pool, or a Ray cluster.

An executor takes a pure function and a list of tasks and yields ``(task index, result)`` as tasks
finish (in any order); the driver writes each result. Because the task function is pure (its
output depends only on the task), the store holds the same values, bit for bit, whichever executor ran it.
Adding an executor is one more small function here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import FlytInputError
from ..parallel import process_map


def run_inline(fn: Callable, tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    for i, task in enumerate(tasks):
        yield i, fn(task)


def run_processes(fn: Callable, tasks: Sequence[Any], workers: int) -> Iterator[tuple[int, Any]]:
    """A local pool of ``workers`` spawned processes (see :mod:`flyt_datacomp.parallel`)."""
    return process_map(fn, tasks, workers, ordered=False, what="the input shard tasks")


def run_ray(fn: Callable, tasks: Sequence[Any], address: str, *, gpus_per_task: float = 0.0) -> Iterator[tuple[int, Any]]:
    """Tasks as Ray remote calls (``address``: ``auto``, ``local`` for a new local instance, or a
    cluster address); GPU providers ask Ray for ``gpus_per_task`` GPUs each.

    A local instance this call started is shut down however the run ends (finished, failed, stopped
    by Ctrl-C or SIGTERM, or the consumer closed this generator), so no Ray processes outlive the
    run; a cluster it connected to, or an instance the caller had started, is left running."""
    try:
        import ray
    except ImportError:
        raise FlytInputError("`ray` needs Ray: pip install 'flyt-datacomp[ray]'", params=["ray"]) from None
    started = False
    try:
        if not ray.is_initialized():
            started = address == "local"
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        remote = ray.remote(num_gpus=gpus_per_task, max_retries=2)(fn)
        refs = {remote.remote(task): i for i, task in enumerate(tasks)}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                yield refs.pop(ref), ray.get(ref)
    finally:
        if started:
            ray.shutdown()
