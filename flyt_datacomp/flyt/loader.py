"""DataLoader plumbing: a stream as an IterableDataset of whole batches, the same with any worker count.

``DataLoader(BatchIterableDataset(stream, num_workers=W, start_batch=k), batch_size=None,
num_workers=W)`` yields global batches ``k, k+1, ...``; global batch ``i`` always comes from
logical stream ``i % W`` (local batch ``i // W``), so the sequence is the same with 0 workers (the
main process interleaves the W logical streams itself) and with W worker processes, and a global
start index resumes it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from flyt_datacomp.errors import FlytInputError

from .stream import ShardStream


class BatchIterableDataset(torch.utils.data.IterableDataset):
    """A stream as an IterableDataset of whole batches for ``DataLoader(batch_size=None, ...)``.

    ``num_workers`` must equal the DataLoader's ``num_workers`` (0 is allowed and means one
    logical stream). Global batch ``i`` comes from logical stream ``i % max(1, num_workers)``,
    local batch ``i // W``. DataLoader workers are polled round-robin from worker 0, so worker
    ``w`` plays logical stream ``(start_batch + w) % W``, starting at its local batch
    ``(start_batch + w) // W``; with no worker processes the main process interleaves the W
    logical streams itself, producing the identical sequence. The stream's own rank/world size
    are kept; its worker fields are overridden.
    """

    def __init__(self, stream: ShardStream, *, num_workers: int = 0, start_batch: int = 0):
        super().__init__()
        if num_workers < 0:
            raise FlytInputError(f"num_workers must be non-negative, got {num_workers}")
        if start_batch < 0:
            raise FlytInputError(f"start batch must be non-negative, got {start_batch}")
        self.stream = stream
        self.num_workers = num_workers
        self.start_batch = start_batch

    @property
    def logical_streams(self) -> int:
        return max(1, self.num_workers)

    def _logical(self, worker: int) -> ShardStream:
        return self.stream.with_slot(worker_id=worker, num_workers=self.logical_streams)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        W, g = self.logical_streams, self.start_batch
        info = torch.utils.data.get_worker_info()
        if info is not None:
            if info.num_workers != W:
                raise FlytInputError(
                    f"the dataset was built for {self.num_workers} workers but the DataLoader runs "
                    f"{info.num_workers}: pass the same num_workers to both"
                )
            first = g + info.id
            stream = self._logical(first % W)
            yield from stream.batches(first // W)
            return
        streams = [self._logical(lg) for lg in range(W)]
        iters = [streams[lg].iter_raw_batches((g - lg + W - 1) // W) for lg in range(W)]
        i = g
        while True:
            lg = i % W
            yield streams[lg].decode(next(iters[lg]))
            i += 1
