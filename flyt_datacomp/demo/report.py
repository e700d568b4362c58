"""Reports on the demo pool's ground truth: which kinds of examples a filter kept."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import pyarrow.parquet as pq

from ..errors import FlytInputError
from ..uids import UID_DTYPE, uids_to_hex
from .digits import EXAMPLE_TYPES


def _hex_uids(uids) -> np.ndarray:
    """Hex uid strings from hex strings or a ``u8,u8`` structured array (a subset file)."""
    arr = np.asarray(uids)
    if arr.dtype == UID_DTYPE:
        return uids_to_hex(arr).astype(object)
    return np.array([str(u).lower() for u in arr.reshape(-1)], dtype=object)


def type_breakdown(
    truth_path: str | os.PathLike,
    uids: Iterable[str] | np.ndarray,
    counts: Iterable[float] | np.ndarray | None = None,
) -> dict:
    """Fractions of each true example type among ``uids`` (weighted by ``counts``) vs the pool.

    ``uids`` are hex strings or a subset file's ``u8,u8`` array (a uid repeated k times counts k
    times); ``counts`` optionally weights each uid (e.g. sampled repetitions). Returns
    ``{"selected": {type: fraction}, "pool": {type: fraction}, "n_selected": total weight,
    "n_unique": distinct uids, "n_pool": pool size}``.
    """
    truth = pq.read_table(truth_path, columns=["uid", "type"]).to_pydict()
    type_of = dict(zip(truth["uid"], truth["type"]))
    sel = _hex_uids(uids)
    if counts is None:
        weights = np.ones(len(sel), dtype=np.float64)
    else:
        weights = np.asarray(counts, dtype=np.float64).reshape(-1)
        if len(weights) != len(sel):
            raise FlytInputError(f"counts has {len(weights)} entries for {len(sel)} uids")
    missing = [u for u in sel if u not in type_of]
    if missing:
        raise FlytInputError(f"{len(missing)} uids are not in the demo pool {truth_path}, e.g. {missing[0]}")
    total = float(weights.sum())
    selected = {t: 0.0 for t in EXAMPLE_TYPES}
    for u, w in zip(sel, weights):
        selected[type_of[u]] += w
    pool_types = np.asarray(truth["type"], dtype=object)
    return {
        "selected": {t: (v / total if total > 0 else 0.0) for t, v in selected.items()},
        "pool": {t: float(np.mean(pool_types == t)) for t in EXAMPLE_TYPES},
        "n_selected": total,
        "n_unique": int(len(set(sel.tolist()))),
        "n_pool": int(len(pool_types)),
    }


def format_type_breakdown(report: dict) -> str:
    """A small table: share of each true example type in the subset (entries) vs in the pool."""
    lines = [
        f"{'example type':<15}{'subset':>9}{'pool':>9}",
        f"{'-' * 15}{'-' * 9:>9}{'-' * 9:>9}",
    ]
    for t in report["pool"]:
        lines.append(f"{t:<15}{report['selected'][t]:>9.1%}{report['pool'][t]:>9.1%}")
    lines.append(f"({report['n_unique']:,} distinct examples, {int(report['n_selected']):,} entries, "
                 f"pool of {report['n_pool']:,})")
    return "\n".join(lines)
