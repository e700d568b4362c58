"""Joining image samples to pool positions by the ``uid`` in each sample's json, and the join report.

img2dataset keys are positional, so a sample's pool row is found through the ``uid`` its
``.json`` payload holds, never through its key. :class:`UidIndex` sorts the pool's uids once;
:class:`UidJoin` joins chunks of raw samples against it and counts what it rejects;
:func:`scan_upstream` runs the join over a whole shard folder, reading only the json payloads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.uids import check_uid_array, hex_to_uids, lookup, uid_order

from ..tars import iter_tar, list_shards, where

logger = logging.getLogger(__name__)

_JOIN_CHUNK = 256  # raw samples joined to the pool index per vectorised lookup
UPSTREAM_PAYLOADS = ("jpg", "txt", "json")  # what an upstream sample needs


class UidIndex:
    """Pool uids (``u8,u8`` in pool order) sorted once, for joining sample uids to pool positions."""

    def __init__(self, pool_uids: np.ndarray, sorted_order: np.ndarray | None = None):
        pool_uids = check_uid_array(np.asarray(pool_uids), source="pool uids")
        self.order = uid_order(pool_uids) if sorted_order is None else np.asarray(sorted_order)
        self.sorted = pool_uids[self.order]
        self.size = len(pool_uids)

    @classmethod
    def from_pool(cls, pool) -> UidIndex:
        """Build from a :class:`flyt_datacomp.pool.Pool` (reuses its sort)."""
        return cls(pool.uids, pool.sorted_order)

    def positions(self, uids: np.ndarray) -> np.ndarray:
        """Pool positions of ``u8,u8`` uids; -1 where a uid is not in the pool."""
        pos = lookup(self.sorted, uids)
        out = np.full(len(uids), -1, dtype=np.int64)
        hit = pos >= 0
        out[hit] = self.order[pos[hit]]
        return out


def _json_uid(sample: dict[str, Any]) -> str | None:
    """The lowercased 32-character uid string of a sample's json, or None if it has none."""
    try:
        uid = json.loads(sample["json"])["uid"]
    except Exception:  # any malformed json, a json without a uid, a non-mapping
        return None
    return uid.lower() if isinstance(uid, str) and len(uid) == 32 else None


class UidJoin:
    """Joins chunks of raw upstream samples to pool positions, counting what it rejects.

    Each kept sample gains ``__uid__`` (hex) and ``__pos__`` (pool position). A sample lacking one
    of :data:`UPSTREAM_PAYLOADS` or without a valid hex uid in its json counts as ``bad``; one whose
    uid is not in the pool counts as ``no_features``; both are dropped. The distinct pool positions
    joined are kept as a bitset (one bit per pool row).
    """

    def __init__(self, index: UidIndex):
        self.index = index
        self.joined = 0
        self.no_features = 0
        self.bad = 0
        self._bits: np.ndarray | None = None

    @property
    def distinct_joined(self) -> int:
        """Distinct pool positions joined so far."""
        return 0 if self._bits is None else int(np.unpackbits(self._bits).sum())

    def __call__(self, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ok, hexes = [], []
        for s in chunk:
            uid = _json_uid(s) if all(p in s for p in UPSTREAM_PAYLOADS) else None
            if uid is None:
                self.bad += 1
                logger.debug("skipping %s: a payload is missing or its json has no valid uid", where(s))
                continue
            ok.append(s)
            hexes.append(uid)
        if not ok:
            return []
        try:
            uids = hex_to_uids(hexes)
        except FlytInputError:  # some uid is not hex: keep the samples whose uid is
            good = []
            for s, h in zip(ok, hexes):
                try:
                    hex_to_uids([h])
                except FlytInputError:
                    self.bad += 1
                    continue
                good.append((s, h))
            if not good:
                return []
            ok, hexes = [s for s, _ in good], [h for _, h in good]
            uids = hex_to_uids(hexes)
        pos = self.index.positions(uids)
        out = []
        for s, h, p in zip(ok, hexes, pos):
            if p < 0:
                self.no_features += 1
                continue
            s["__uid__"] = h
            s["__pos__"] = int(p)
            out.append(s)
        self.joined += len(out)
        self._mark(pos[pos >= 0])
        return out

    def _mark(self, positions: np.ndarray) -> None:
        if not len(positions):
            return
        if self._bits is None:
            self._bits = np.zeros((self.index.size + 7) // 8, dtype=np.uint8)
        np.bitwise_or.at(self._bits, positions >> 3, (np.uint8(128) >> (positions & 7)).astype(np.uint8))


def scan_upstream(shards: str | Sequence[str], index: UidIndex) -> dict[str, int]:
    """One pass over every shard reading only the json payloads: the join report.

    Returns ``seen`` (raw samples), ``joined``, ``no_features``, ``bad`` (sample lacks jpg/json/txt
    or a valid uid), ``distinct_joined`` and ``features_without_images`` (pool size minus distinct
    joined uids), and logs it.
    """
    urls = list_shards(shards) if isinstance(shards, str) else list(shards)
    if not urls:
        raise FlytInputError("join report: no shards given")
    join = UidJoin(index)
    seen = 0
    for url in urls:
        chunk: list[dict[str, Any]] = []
        for sample in iter_tar(url, extensions=("json",)):
            seen += 1
            chunk.append(sample)
            if len(chunk) >= _JOIN_CHUNK:
                join(chunk)
                chunk = []
        join(chunk)
    report = {"seen": seen, "joined": join.joined, "no_features": join.no_features, "bad": join.bad,
              "distinct_joined": join.distinct_joined}
    report["features_without_images"] = index.size - report["distinct_joined"]
    logger.info("upstream join report for %d shard(s): %s", len(urls), report)
    return report
