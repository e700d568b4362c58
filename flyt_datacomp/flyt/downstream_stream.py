"""The downstream stream: labelled images (``<key>.jpg`` + ``<key>.cls``), as written by
:func:`flyt_datacomp.downstream.build_downstream_shards`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from flyt_datacomp.errors import FlytInputError

from ..tars import EmptyShardFolder, where
from .decode import decode_images
from .stream import ShardStream
from .validation import is_validation


class DownstreamStream(ShardStream):
    """Labelled images (``<key>.jpg`` + ``<key>.cls``).

    Batches are dicts: ``images`` (B, 3, H, W) float, ``labels`` (B,) long, ``keys`` (list of
    ``"<shard url>:<key>"``). Samples lacking jpg or cls count as ``bad`` and are skipped; a label
    that is not an integer, negative, or (when ``num_classes`` is given) out of range is an error
    naming its shard and key, raised when its batch is built. With ``holdout_fraction`` > 0 the
    samples of the validation split (:func:`~flyt_datacomp.flyt.validation.is_validation`) are
    skipped before decoding and counted as ``held_out``.
    """

    kind = "downstream"

    def __init__(
        self,
        shards: str | Sequence[str],
        *,
        image_transform: Callable,
        batch_size: int,
        num_classes: int | None = None,
        holdout_fraction: float = 0.0,
        **kwargs: Any,
    ):
        self.holdout_fraction = float(holdout_fraction)
        try:
            super().__init__(shards, batch_size=batch_size, **kwargs)
        except EmptyShardFolder as exc:
            raise FlytInputError(f"empty downstream set: {exc.message}") from None
        if num_classes is not None and num_classes < 1:
            raise FlytInputError(f"num_classes must be positive, got {num_classes}")
        self.image_transform = image_transform
        self.num_classes = num_classes

    def reset_counters(self) -> None:
        super().reset_counters()
        self.bad = 0  # samples lacking a jpg or a cls
        self.held_out = 0  # samples of the validation split

    def counters(self) -> dict[str, int]:
        return {**super().counters(), "bad": self.bad, "held_out": self.held_out}

    def _empty_message(self, epoch: int) -> str:
        if self.held_out:  # every usable sample fell in the validation split
            return (f"empty downstream set: all {self.held_out:,} usable samples are held out for validation "
                    f"(validation_fraction {self.holdout_fraction}); lower --validation-fraction")
        return f"empty downstream set: {super()._empty_message(epoch)} (each sample needs a .jpg and a .cls)"

    def _prepare(self, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for s in chunk:
            if "jpg" not in s or "cls" not in s:
                self.bad += 1
                continue
            if is_validation(s["__url__"], s["__key__"], self.holdout_fraction):
                self.held_out += 1
                continue
            out.append(s)
        return out

    def _label(self, s: dict[str, Any]) -> int:
        try:
            label = int(s["cls"].decode("utf-8").strip())
        except (UnicodeDecodeError, ValueError):
            raise FlytInputError(f"label of {where(s)} is not an integer: {s['cls'][:40]!r}") from None
        if label < 0:
            raise FlytInputError(f"label of {where(s)} is negative: {label}")
        if self.num_classes is not None and label >= self.num_classes:
            raise FlytInputError(
                f"label of {where(s)} is {label}, out of range for {self.num_classes} classes"
            )
        return label

    def decode(self, raw: list[dict[str, Any]]) -> dict[str, Any]:
        labels = torch.tensor([self._label(s) for s in raw], dtype=torch.long)
        images = decode_images([s["jpg"] for s in raw], self.image_transform, [where(s) for s in raw])
        return {"images": images, "labels": labels, "keys": [f"{s['__url__']}:{s['__key__']}" for s in raw]}
