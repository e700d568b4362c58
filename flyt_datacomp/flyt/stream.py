"""Deterministic, exactly resumable batch streams over the shards of one folder (the shared machinery).

A stream belongs to one *slot* ``(rank, world_size, worker_id, num_workers)``; the slot index is
``rank * num_workers + worker_id`` out of ``world_size * num_workers``. For each epoch ``e`` the
sorted shard list is shuffled with ``numpy.random.default_rng([seed, e])`` (the same on every slot)
and dealt round-robin to the slots, so slots read disjoint shards. If there are fewer shards than
slots, every slot reads all shards (in the same shuffled order) and keeps only the raw samples whose
running index ``j`` satisfies ``j % slots == slot``: still disjoint and covering, and no slot is
empty (at the cost of every slot reading every byte; only sensible for small sets).

The slot's samples then pass a per-epoch seeded shuffle buffer and are cut into batches of a fixed
size from the endless concatenation of epochs ``0, 1, 2, ...`` (a batch may straddle two epochs).
Everything is a pure function of ``(seed, shard list, slot, batch_size, shuffle_buffer)``, so
batch ``k`` can be reproduced by streaming and dropping the first ``k * batch_size`` samples; that
skip happens on raw bytes, before any JPEG decoding or tokenisation, so it costs only I/O.
Changing any of those parameters (including the number of workers) changes the stream.

Counters (``seen``, ``bad``, ``kept``, and a subclass's own) live in each stream object; in
DataLoader worker processes they stay in the workers, where they are logged at every epoch end.
The two streams are :class:`~flyt_datacomp.flyt.upstream_stream.UpstreamStream` and
:class:`~flyt_datacomp.flyt.downstream_stream.DownstreamStream`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from flyt_datacomp.errors import FlytInputError

from ..tars import iter_tar, list_shards

logger = logging.getLogger(__name__)

_PREPARE_CHUNK = 256  # raw samples prepared (checked, joined) together
_MAX_EMPTY_EPOCHS = 20  # consecutive empty epochs a slot of several tolerates before giving up


@dataclasses.dataclass(frozen=True)
class Slot:
    """Which part of the data one stream reads: a (rank, worker) out of (world_size, num_workers)."""

    rank: int = 0
    world_size: int = 1
    worker_id: int = 0
    num_workers: int = 1

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise FlytInputError(f"rank {self.rank} is out of range for world size {self.world_size}")
        if self.num_workers < 1 or not 0 <= self.worker_id < self.num_workers:
            raise FlytInputError(f"worker id {self.worker_id} is out of range for {self.num_workers} workers")

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker_id

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


def assign_shards(shards: Sequence[str], *, seed: int, epoch: int, slot: Slot) -> tuple[list[str], int, int]:
    """This slot's shards for an epoch, as ``(shards, sample_stride, sample_offset)``.

    The shard list is shuffled with ``default_rng([seed, epoch])`` and dealt round-robin. With
    fewer shards than slots, every slot gets all shards and keeps raw samples ``j`` with
    ``j % stride == offset`` (sample-level splitting), so no slot is left empty.
    """
    rng = np.random.default_rng([seed, epoch])
    shuffled = [shards[i] for i in rng.permutation(len(shards))]
    n = slot.count
    if len(shards) >= n:
        return shuffled[slot.index::n], 1, 0
    return shuffled, n, slot.index


def shuffle_buffer(samples: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A seeded shuffle buffer: once ``size`` items are held, emit a random one per new item."""
    if size <= 1:
        yield from samples
        return
    buf: list[Any] = []
    draws = np.empty(0)
    k = 0

    def pick() -> Any:
        nonlocal draws, k
        if k >= len(draws):
            draws, k = rng.random(1024), 0
        i = int(draws[k] * len(buf))
        k += 1
        buf[i], buf[-1] = buf[-1], buf[i]
        return buf.pop()

    for s in samples:
        buf.append(s)
        if len(buf) >= size:
            yield pick()
    while buf:
        yield pick()


class ShardStream:
    """Deterministic, resumable stream of fixed-size batches over the shards of one folder.

    Subclasses define :meth:`_prepare` (validate / join raw samples, counting the rejects) and
    :meth:`decode` (raw batch -> tensors). ``iter_raw_batches(start)`` yields undecoded batches,
    ``batches(start)`` decoded ones; both are endless.
    """

    kind = "shards"

    def __init__(
        self,
        shards: str | Sequence[str],
        *,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        worker_id: int = 0,
        num_workers: int = 1,
    ):
        self.shards = list_shards(shards) if isinstance(shards, str) else list(shards)
        if not self.shards:
            raise FlytInputError(f"{self.kind} stream: no shards given")
        if batch_size < 1:
            raise FlytInputError(f"batch size must be positive, got {batch_size}")
        if seed < 0:
            raise FlytInputError(f"seed must be non-negative, got {seed}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.slot = Slot(rank, world_size, worker_id, num_workers)
        self.reset_counters()

    # -------------------------------------------------------------- configuration

    def with_slot(self, **changes: int) -> ShardStream:
        """A copy reading another slot (``rank``, ``world_size``, ``worker_id``, ``num_workers``)."""
        new = copy.copy(self)
        new.slot = dataclasses.replace(self.slot, **changes)
        new.reset_counters()
        return new

    def reset_counters(self) -> None:
        """Zero the counters (a subclass adds its own: what :meth:`_prepare` rejected)."""
        self.seen = 0  # raw samples of this slot read
        self.kept = 0  # samples that entered the shuffle buffer

    def counters(self) -> dict[str, int]:
        return {"seen": self.seen, "kept": self.kept}

    # -------------------------------------------------------------- hooks

    def _prepare(self, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def decode(self, raw: list[dict[str, Any]]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def _empty_message(self, epoch: int) -> str:
        return (
            f"{self.kind} stream (rank {self.slot.rank}, worker {self.slot.worker_id}) got no usable "
            f"samples in epoch {epoch} from {len(self.shards)} shard(s) starting with {self.shards[0]}"
        )

    def _end_of_epoch(self, epoch: int) -> None:
        logger.info(
            "%s stream rank %d/%d worker %d/%d epoch %d done: %s", self.kind, self.slot.rank,
            self.slot.world_size, self.slot.worker_id, self.slot.num_workers, epoch, self.counters(),
        )

    # -------------------------------------------------------------- sample streams

    def _slot_raw(self, epoch: int) -> Iterator[dict[str, Any]]:
        shards, stride, offset = assign_shards(self.shards, seed=self.seed, epoch=epoch, slot=self.slot)
        j = 0
        for url in shards:
            for sample in iter_tar(url):
                if stride == 1 or j % stride == offset:
                    self.seen += 1
                    yield sample
                j += 1

    def _prepared(self, epoch: int) -> Iterator[dict[str, Any]]:
        chunk: list[dict[str, Any]] = []
        for sample in self._slot_raw(epoch):
            chunk.append(sample)
            if len(chunk) >= _PREPARE_CHUNK:
                yield from self._prepare(chunk)
                chunk = []
        if chunk:
            yield from self._prepare(chunk)

    def iter_epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        """This slot's usable raw samples of one epoch, in shuffled order."""
        rng = np.random.default_rng([self.seed, epoch, self.slot.index, self.slot.count, 0x5EED])
        for sample in shuffle_buffer(self._prepared(epoch), self.shuffle_buffer, rng):
            self.kept += 1
            yield sample

    def iter_samples(self) -> Iterator[dict[str, Any]]:
        """The endless concatenation of epochs 0, 1, 2, ...; raises if an epoch is empty."""
        epoch, empty_run = 0, 0
        while True:
            n = 0
            for sample in self.iter_epoch(epoch):
                n += 1
                yield sample
            self._end_of_epoch(epoch)
            # A slot of several may draw only unusable shards in one epoch (they are reshuffled
            # every epoch); a lone slot with an empty epoch has an empty data set.
            empty_run = empty_run + 1 if n == 0 else 0
            if empty_run > (0 if self.slot.count == 1 else _MAX_EMPTY_EPOCHS):
                raise FlytInputError(self._empty_message(epoch))
            epoch += 1

    def iter_raw_batches(self, start_batch: int = 0) -> Iterator[list[dict[str, Any]]]:
        """Undecoded batches ``start_batch, start_batch + 1, ...`` (earlier ones skipped undecoded)."""
        if start_batch < 0:
            raise FlytInputError(f"start batch must be non-negative, got {start_batch}")
        samples = self.iter_samples()
        for _ in range(start_batch * self.batch_size):
            next(samples)
        while True:
            yield [next(samples) for _ in range(self.batch_size)]

    def batches(self, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """Decoded batches from ``start_batch`` on (endless)."""
        for raw in self.iter_raw_batches(start_batch):
            yield self.decode(raw)
