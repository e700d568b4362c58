"""Where the per-shard tasks run: inline, a local process pool, or a Ray cluster.

An executor takes a pure function and a list of tasks and yields ``(task index, result)`` as tasks
finish (in any order); the driver writes each result. Because the task function is pure (its
output depends only on the task), the store holds the same values, bit for bit, whichever executor ran it.
Adding an executor is one more small function here.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import FlytError, FlytInputError
from ..parallel import process_map
from ..process import child_pids, stopped_by_cleanup


def run_inline(fn: Callable, tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    for i, task in enumerate(tasks):
        yield i, fn(task)


def run_processes(fn: Callable, tasks: Sequence[Any], workers: int) -> Iterator[tuple[int, Any]]:
    """A local pool of ``workers`` spawned processes (see :mod:`flyt_datacomp.parallel`)."""
    return process_map(fn, tasks, workers, ordered=False, what="the input shard tasks")


@contextlib.contextmanager
def ray_session(address: str, **init: Any) -> Iterator[Any]:
    """The ``ray`` module, connected to ``address``: ``auto`` (the cluster this machine belongs to,
    ``RAY_ADDRESS`` first), ``local`` (a new instance on this machine; ``init`` passes it settings such
    as ``num_cpus``) or a cluster address (``host:port``, ``ray://host:10001``).

    A local instance this call started is shut down however the block ends (finished, failed, stopped
    by Ctrl-C or SIGTERM), so no Ray processes outlive the run; a cluster it connected to, or an
    instance the caller had started, is left running."""
    try:
        import ray
    except ImportError:
        raise FlytInputError("`ray` needs Ray: pip install 'flyt-datacomp[ray]'", params=["ray"]) from None
    started = False
    own: set[int] = set()
    try:
        if not ray.is_initialized():
            started = address == "local"
            handlers = _stop_handlers()
            before = set(child_pids())
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     log_to_driver=False, configure_logging=False, **(init if started else {}))
            _restore(handlers)
            own = set(child_pids()) - before if started else set()
        with stopped_by_cleanup(own):  # a local instance is stopped by its shutdown below
            yield ray
    finally:
        if started:
            ray.shutdown()


_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


def _stop_handlers() -> dict:
    """This process's Python handlers of the stop signals (in the main thread; else none)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (getattr(signal, n) for n in _STOP_SIGNALS)
            if callable(signal.getsignal(sig))}


def _restore(handlers: dict) -> None:
    """Put the stop handlers back: ``ray.init`` installs its own SIGTERM handler, which ends the process at
    once, without the command's cleanup and prompt stop (:mod:`flyt_datacomp.process`)."""
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def run_ray(fn: Callable, tasks: Sequence[Any], address: str, *, gpus_per_task: float = 0.0) -> Iterator[tuple[int, Any]]:
    """Tasks as Ray remote calls in a :func:`ray_session` (``address``: ``auto``, ``local`` for a new local
    instance, or a cluster address); GPU providers ask Ray for ``gpus_per_task`` GPUs each. A local
    instance this call started is shut down when the run ends, or the consumer closes this generator."""
    with ray_session(address) as ray:
        remote = ray.remote(num_gpus=gpus_per_task, max_retries=2)(fn)
        refs = {remote.remote(task): i for i, task in enumerate(tasks)}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)  # a stop signal is seen within a second
            for ref in ready:
                yield refs.pop(ref), _result(ray, ref)


def _result(ray, ref) -> Any:
    """A finished task's result; a task that failed with the package's own error (bad input, a full
    disk) raises that error itself, as the task would have in this process: Ray's wrapper of an
    ``OSError`` has no ``errno``, by which a full disk is told apart and reported in one line."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, (FlytError, OSError)):
            raise exc.cause from None
        raise
