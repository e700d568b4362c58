"""The upstream stream: pool image-text pairs joined to their scoring-model features by json ``uid``.

Reads DataComp image shards (img2dataset layout: ``<key>.jpg``, ``<key>.txt``, ``<key>.json``);
every sample is joined to its pool position through the ``uid`` in its json (never the key, which
is positional), and a :class:`~flyt_datacomp.flyt.features.FeatureTable` indexed by pool position
supplies the scoring model's input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from flyt_datacomp.errors import FlytInputError

from ..tars import where
from .decode import decode_images, decode_text
from .features import FeatureTable
from .join import UidIndex, UidJoin
from .stream import ShardStream

logger = logging.getLogger(__name__)


class UpstreamStream(ShardStream):
    """Image-text pairs joined to pool features by json ``uid``.

    Batches are dicts: ``images`` (B, 3, H, W) float, ``texts`` (B, ctx) long, ``features``
    ((B, k) float32, or a pair of (B, d) float32 for embeddings), ``positions`` (B,) long pool
    positions, ``uids`` (list of B hex strings). Samples lacking jpg/txt/json or with a malformed
    json uid count as ``bad``; samples whose uid is not in the pool count as ``no_features``; both
    are skipped.
    """

    kind = "upstream"

    def __init__(
        self,
        shards: str | Sequence[str],
        index: UidIndex,
        features: FeatureTable,
        *,
        image_transform: Callable,
        tokenizer: Callable,
        batch_size: int,
        **kwargs: Any,
    ):
        self.index = index  # set first: the base class's __init__ resets the counters, which needs it
        self.features = features
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        super().__init__(shards, batch_size=batch_size, **kwargs)
        if features.size != index.size:
            raise FlytInputError(
                f"feature table has {features.size} rows but the pool has {index.size} uids"
            )

    def reset_counters(self) -> None:
        super().reset_counters()
        self.join = UidJoin(self.index)  # joined / no_features / bad and the distinct positions
        self.full_passes = 0  # epochs this slot completed

    @property
    def joined(self) -> int:
        return self.join.joined

    @property
    def no_features(self) -> int:
        return self.join.no_features

    @property
    def bad(self) -> int:
        return self.join.bad

    @property
    def distinct_joined(self) -> int:
        """Distinct pool positions joined so far by this stream."""
        return self.join.distinct_joined

    def counters(self) -> dict[str, int]:
        return {"seen": self.seen, "joined": self.joined, "no_features": self.no_features, "bad": self.bad}

    @property
    def features_without_images(self) -> int | None:
        """Pool size minus distinct joined uids; ``None`` until this stream completed a full pass
        over all shards (only a single-slot stream, world size 1 and one worker, ever does)."""
        if self.full_passes == 0 or self.slot.count != 1:
            return None
        return self.index.size - self.distinct_joined

    def _prepare(self, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.join(chunk)

    def _end_of_epoch(self, epoch: int) -> None:
        self.full_passes += 1
        super()._end_of_epoch(epoch)
        missing = self.features_without_images
        if missing is not None and self.full_passes == 1:
            logger.info(
                "upstream: %d of %d pool uids have features but no image in %d shard(s)",
                missing, self.index.size, len(self.shards),
            )

    def decode(self, raw: list[dict[str, Any]]) -> dict[str, Any]:
        images = decode_images([s["jpg"] for s in raw], self.image_transform, [where(s) for s in raw])
        texts = torch.as_tensor(self.tokenizer([decode_text(s["txt"], where(s)) for s in raw]), dtype=torch.long)
        positions = np.array([s["__pos__"] for s in raw], dtype=np.int64)
        return {
            "images": images,
            "texts": texts,
            "features": self.features.gather(positions),
            "positions": torch.from_numpy(positions),
            "uids": [s["__uid__"] for s in raw],
        }
