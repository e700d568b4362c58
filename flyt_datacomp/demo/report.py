"""Reports on the demo pool's ground truth: which kinds of examples a filter kept.

Two views of a subset, each beside the pool: :func:`domain_breakdown` splits it by what each
example is worth to the digit test (the task's digits, well-aligned examples of other domains,
noise), :func:`type_breakdown` by the true example type alone. Both read ``truth.parquet``, which
no filter ever reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import pyarrow.parquet as pq

from ..errors import FlytInputError
from ..uids import UID_DTYPE, uids_to_hex
from .digits import EXAMPLE_TYPES
from .domains import DOMAINS, TARGET_DOMAIN

OTHER_DOMAINS = tuple(d for d in DOMAINS if d != TARGET_DOMAIN)
_OTHERS = "/".join(OTHER_DOMAINS)

# The report's categories, in order: (key, what it is). Keys are "<domain>/<type>"; "other" stands
# for every domain but the target's.
CATEGORIES: tuple[tuple[str, str], ...] = (
    (f"{TARGET_DOMAIN}/correct", f"{TARGET_DOMAIN}, correct caption: the task"),
    (f"{TARGET_DOMAIN}/near_duplicate", f"{TARGET_DOMAIN}, near-duplicate of a correct one: the task, again"),
    *((f"{d}/correct", f"{d}, correct caption: well aligned, not the task") for d in OTHER_DOMAINS),
    ("other/near_duplicate", f"{_OTHERS}, near-duplicate: well aligned, not the task, again"),
    (f"{TARGET_DOMAIN}/wrong", f"{TARGET_DOMAIN}, wrong caption: noise"),
    ("other/wrong", f"{_OTHERS}, wrong caption: noise"),
    ("clutter/clutter", "clutter (no object, a random caption): noise"),
)
CATEGORY_KEYS = tuple(k for k, _ in CATEGORIES)


def _hex_uids(uids) -> np.ndarray:
    """Hex uid strings from hex strings or a ``u8,u8`` structured array (a subset file)."""
    arr = np.asarray(uids)
    if arr.dtype == UID_DTYPE:
        return uids_to_hex(arr).astype(object)
    return np.array([str(u).lower() for u in arr.reshape(-1)], dtype=object)


def truth_categories(truth: dict) -> np.ndarray:
    """Each row's report category (a key of :data:`CATEGORIES`) from ``truth.parquet``'s columns
    (a v3 pool has no ``domain`` column: every example there is a digit or clutter)."""
    types = np.asarray(truth["type"], dtype=object)
    if "domain" in truth:
        domains = np.asarray(truth["domain"], dtype=object)
    else:
        domains = np.where(types == "clutter", "clutter", TARGET_DOMAIN).astype(object)
    out = np.empty(len(types), dtype=object)
    for i, (d, t) in enumerate(zip(domains, types)):
        if t == "clutter":
            out[i] = "clutter/clutter"
        elif d == TARGET_DOMAIN or t == "correct":
            out[i] = f"{d}/{t}"
        else:
            out[i] = f"other/{t}"
    return out


def read_truth(truth_path: str | os.PathLike, columns: Iterable[str] = ("uid", "type", "domain")) -> dict:
    """Those of ``columns`` that ``truth.parquet`` has, as lists (a v3 pool's has no ``domain``)."""
    names = pq.read_schema(truth_path).names
    return pq.read_table(truth_path, columns=[c for c in columns if c in names]).to_pydict()


def _shares(truth_path, uids, counts, columns: list[str], key_of) -> tuple[dict, dict, float, int, int]:
    truth = read_truth(truth_path, columns)
    keys = key_of(truth)
    key_by_uid = dict(zip(truth["uid"], keys))
    sel = _hex_uids(uids)
    if counts is None:
        weights = np.ones(len(sel), dtype=np.float64)
    else:
        weights = np.asarray(counts, dtype=np.float64).reshape(-1)
        if len(weights) != len(sel):
            raise FlytInputError(f"counts has {len(weights)} entries for {len(sel)} uids")
    missing = [u for u in sel if u not in key_by_uid]
    if missing:
        raise FlytInputError(f"{len(missing)} uids are not in the demo pool {truth_path}, e.g. {missing[0]}")
    total = float(weights.sum())
    selected: dict[str, float] = {}
    for u, w in zip(sel, weights):
        selected[key_by_uid[u]] = selected.get(key_by_uid[u], 0.0) + w
    names, pool_counts = np.unique(np.asarray(keys, dtype=str), return_counts=True)
    pool = {str(k): float(c) / len(keys) for k, c in zip(names, pool_counts)}
    return selected, pool, total, int(len(set(sel.tolist()))), int(len(keys))


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
    selected, pool, total, n_unique, n_pool = _shares(truth_path, uids, counts, ["uid", "type"],
                                                      lambda t: np.asarray(t["type"], dtype=object))
    return {
        "selected": {t: (selected.get(t, 0.0) / total if total > 0 else 0.0) for t in EXAMPLE_TYPES},
        "pool": {t: pool.get(t, 0.0) for t in EXAMPLE_TYPES},
        "n_selected": total, "n_unique": n_unique, "n_pool": n_pool,
    }


def domain_breakdown(
    truth_path: str | os.PathLike,
    uids: Iterable[str] | np.ndarray,
    counts: Iterable[float] | np.ndarray | None = None,
) -> dict:
    """Like :func:`type_breakdown`, by what each example is worth to the digit test: the report
    categories of :data:`CATEGORIES` (the task's digits, well-aligned examples of other domains,
    noise). Returns ``{"selected", "pool": {category: fraction}, "labels": {category: what it is},
    "n_selected", "n_unique", "n_pool"}``; categories the pool does not have are left out."""
    selected, pool, total, n_unique, n_pool = _shares(truth_path, uids, counts, ["uid", "type", "domain"],
                                                      truth_categories)
    keys = [k for k in CATEGORY_KEYS if k in pool]
    return {
        "selected": {k: (selected.get(k, 0.0) / total if total > 0 else 0.0) for k in keys},
        "pool": {k: pool[k] for k in keys},
        "labels": {k: v for k, v in CATEGORIES if k in pool},
        "n_selected": total, "n_unique": n_unique, "n_pool": n_pool,
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


def format_domain_breakdown(report: dict) -> str:
    """A small table: share of each report category in the subset (entries) vs in the pool, each line
    saying what the category is worth to the digit test, with the task's total first."""
    width = max(len(v) for v in report["labels"].values()) + 2
    lines = [f"{'what the subset holds (domain, caption)':<{width}}{'subset':>9}{'pool':>9}",
             f"{'-' * (width - 2):<{width}}{'-' * 7:>9}{'-' * 7:>9}"]
    for k, label in report["labels"].items():
        lines.append(f"{label:<{width}}{report['selected'][k]:>9.1%}{report['pool'][k]:>9.1%}")
    task = [k for k in report["labels"] if k.startswith(f"{TARGET_DOMAIN}/") and not k.endswith("/wrong")]
    lines.append(f"{'-' * (width - 2):<{width}}{'-' * 7:>9}{'-' * 7:>9}")
    lines.append(f"{'the task (' + TARGET_DOMAIN + ' with a correct caption), in all':<{width}}"
                 f"{sum(report['selected'][k] for k in task):>9.1%}{sum(report['pool'][k] for k in task):>9.1%}")
    return "\n".join(lines)
