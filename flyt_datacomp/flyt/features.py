"""The scoring model's input features, read from a pool by one path for training and for scoring.

What a scoring model reads is a :class:`FeatureSpec`: M-FLYT reads ``k`` named input scores, each a
parquet column of the pool or an input of an input store (:mod:`flyt_datacomp.inputs`), E-FLYT the
npz embeddings ``<prefix>_img`` and ``<prefix>_txt``.
:func:`iter_features` reads them one metadata shard at a time (scoring a pool that does not fit in
memory); :func:`read_features` is the same stream concatenated into one table indexed by pool
position (training). Both build every shard's table with the same code, so the trainer and the
scorer see identical arrays.

Dtype policy:

* M-FLYT input scores are read as stored, checked to be finite numbers (in float64), and kept as
  float32: the one rounding step.
* E-FLYT embeddings stay in their stored dtype (float16 for DataComp) inside the table.
* :meth:`FeatureTable.gather` hands the model float32 tensors, for a training batch and for a
  metadata shard at scoring time alike, and the model runs in float32 in both. M-FLYT's
  standardisation statistics are computed in float64 over the pool's float32 table
  (:meth:`~flyt_datacomp.flyt.models.MixingModel.from_pool_features`) and stored in the model, so
  scoring applies exactly the transform training used.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from flyt_datacomp.errors import FlytInputError

log = logging.getLogger(__name__)

MODEL_KINDS = ("m-flyt", "e-flyt")
IDENTITY_KEY = "input_identity"  # in a scoring model's meta: {stored input: its identity when training read it}


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """What a scoring model reads from the pool.

    ``kind``: ``"m-flyt"`` (the parquet columns ``inputs``) or ``"e-flyt"`` (the npz keys
    ``<embedding_prefix>_img`` / ``_txt``). ``origin`` names who asked, for error messages.
    """

    kind: str
    inputs: tuple[str, ...] = ()
    embedding_prefix: str = "b32"
    origin: str = "the training options"
    inputs_dir: str | None = None  # an input store holding inputs that are not pool columns
    # a trained model's stored inputs are checked against its record of them (``trained_on``; None when
    # it has none), except the names whose change a user accepts knowingly (``"*"``: every one)
    trained_model: bool = False
    trained_on: Mapping[str, Any] | None = None
    accept_changed: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise FlytInputError(f"unknown scoring model kind {self.kind!r} (choose {' or '.join(MODEL_KINDS)})")
        if self.kind == "m-flyt" and not self.inputs:
            raise FlytInputError(f"M-FLYT needs at least one input score column; {self.origin} name none")

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.inputs) if self.kind == "m-flyt" else ()

    @property
    def npz_keys(self) -> tuple[str, ...]:
        return (f"{self.embedding_prefix}_img", f"{self.embedding_prefix}_txt") if self.kind == "e-flyt" else ()

    @classmethod
    def of_config(cls, cfg) -> FeatureSpec:
        """The features a :class:`~flyt_datacomp.flyt.config.TrainConfig` trains on."""
        return cls(cfg.model, tuple(cfg.inputs), cfg.embedding_prefix, "the training options", cfg.inputs_dir)

    @classmethod
    def of_scoring_model(cls, model: Any, meta: dict[str, Any], source: str,
                         inputs_dir: str | None = None, accept_changed: tuple[str, ...] = ()) -> FeatureSpec:
        """The features a trained scoring model (and its checkpoint's ``meta``) was trained on;
        stored inputs come from ``inputs_dir``, else from the store the model was trained with, and
        must be the ones it was trained on unless named in ``accept_changed``."""
        origin = f"scoring model {source}"
        config = meta.get("config")
        if model.kind == "m-flyt":
            trained_with = config.get("inputs_dir") if isinstance(config, dict) else None
            recorded = meta.get(IDENTITY_KEY)
            return cls("m-flyt", tuple(model.input_names), origin=origin, inputs_dir=inputs_dir or trained_with,
                       trained_model=True, trained_on=recorded if isinstance(recorded, dict) else None,
                       accept_changed=tuple(accept_changed))
        prefix = config.get("embedding_prefix", "b32") if isinstance(config, dict) else "b32"
        return cls("e-flyt", embedding_prefix=str(prefix), origin=origin)


class FeatureTable:
    """Per-pool-position inputs of the scoring model.

    ``FeatureTable(scores)`` (M-FLYT): a ``(N, k)`` table of input scores, kept as float32.
    ``FeatureTable(img, txt)`` (E-FLYT): ``(N, d)`` image and text embeddings, kept in their stored
    dtype (float16; memory maps work) and converted to float32 only when gathered.
    """

    def __init__(self, table: np.ndarray, txt: np.ndarray | None = None):
        if txt is None:
            table = np.asarray(table, dtype=np.float32)
            if table.ndim == 1:
                table = table[:, None]
            if table.ndim != 2:
                raise FlytInputError(f"score table must be (N, k), got shape {table.shape}")
            self.arrays: tuple[np.ndarray, ...] = (table,)
        else:
            if table.ndim != 2 or txt.shape != table.shape:
                raise FlytInputError(
                    f"image and text embeddings must both be (N, d), got {table.shape} and {txt.shape}"
                )
            self.arrays = (table, txt)
        self.size = len(self.arrays[0])
        self.identity: dict[str, dict[str, Any]] = {}  # of the stored inputs read (see read_features)

    @property
    def is_embeddings(self) -> bool:
        return len(self.arrays) == 2

    @property
    def dim(self) -> int:
        """k input scores, or the embedding width d."""
        return self.arrays[0].shape[1]

    def gather(self, positions: np.ndarray | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """float32 tensors for these pool positions (all rows if None): ``(B, k)`` or ``((B, d), (B, d))``."""
        index = slice(None) if positions is None else np.asarray(positions, dtype=np.int64)
        out = [torch.from_numpy(np.asarray(a[index], dtype=np.float32)) for a in self.arrays]
        return (out[0], out[1]) if self.is_embeddings else out[0]


def iter_features(pool, spec: FeatureSpec, *, desc: str = "reading features") -> Iterator[tuple[Any, FeatureTable]]:
    """``(metadata shard, its FeatureTable)`` for each shard of ``pool``, in pool order.

    Reads only the columns or npz keys ``spec`` names. Raises :class:`FlytInputError` naming the
    input, file and row for a missing column, a null, a non-numeric column or a non-finite value.
    """
    from_pool = [c for c in spec.columns if c in pool.column_names]
    from_store = [c for c in spec.columns if c not in pool.column_names]
    stored = _stored_inputs(pool, spec, from_store)
    if from_store:
        check_trained_on(pool, spec)
    for data in pool.iter_shards(from_pool, spec.npz_keys, desc=desc, no_missing=from_pool):
        columns = {**data.columns, **(next(stored) if from_store else {})}
        yield data.shard, shard_features(spec, columns, data.arrays, str(data.shard.parquet))


def read_features(pool, spec: FeatureSpec, *, desc: str = "reading features") -> FeatureTable:
    """The whole pool's features as one table indexed by pool position (:func:`iter_features`
    concatenated, so the arrays are exactly the ones a scorer reads shard by shard). Its
    ``identity`` is :func:`stored_identity` of what was read, which a trained model records."""
    before = stored_identity(pool, spec)
    tables = [table for _, table in iter_features(pool, spec, desc=desc)]
    table = FeatureTable(*(np.concatenate([t.arrays[i] for t in tables]) for i in range(len(tables[0].arrays))))
    table.identity = stored_identity(pool, spec)
    if table.identity != before:
        changed = next(n for n in table.identity if table.identity[n] != before.get(n))
        raise FlytInputError(f"input {changed!r} of the input store {spec.inputs_dir} changed while it was read "
                             "(recomputed by another run?); run again when that run has finished")
    return table


def stored_identity(pool, spec: FeatureSpec) -> dict[str, dict[str, Any]]:
    """The identity of each input ``spec`` reads from its input store: the store, the token of the
    computation that wrote the input's values, and the fill value its missing examples get (the
    values a reader sees). Inputs that are pool columns have none here."""
    names = [c for c in spec.columns if c not in pool.column_names]
    if not names or not spec.inputs_dir:
        return {}
    from ..store import InputStore

    entries = InputStore(spec.inputs_dir).manifest()["inputs"]
    return {n: {"store": str(spec.inputs_dir), "token": entries[n]["token"], "fill_value": entries[n].get("fill_value")}
            for n in names if n in entries}


def check_trained_on(pool, spec: FeatureSpec) -> None:
    """Refuse stored inputs whose values are no longer the ones ``spec``'s model was trained on (the
    input was recomputed, or its fill value changed), unless the user accepts that input's change."""
    if not spec.trained_model:
        return
    if spec.trained_on is None:
        if any(c not in pool.column_names for c in spec.columns):
            log.warning("%s records no identity of the stored inputs it was trained on (trained by an older "
                        "version): whether they changed since cannot be checked", spec.origin)
        return
    now = stored_identity(pool, spec)
    for name, current in now.items():
        then = spec.trained_on.get(name)
        if not isinstance(then, dict):
            continue  # an input that was a pool column in training is read from the pool
        why = _identity_change(then, current)
        if why is None:
            continue
        if name in spec.accept_changed or "*" in spec.accept_changed:
            log.warning("%s: input %r %s; applied anyway, as asked", spec.origin, name, why)
            continue
        raise FlytInputError(
            f"{spec.origin} was trained on input {name!r} of the input store {then.get('store')}, which {why}: its "
            "weights and standardisation were fitted to other values. Train the model again, or set "
            f"`accept_changed_inputs` {name} to apply it anyway", params=["accept_changed_inputs"])


def _identity_change(then: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """How a stored input differs from the one a model was trained on (None: the same values)."""
    if then.get("token") != now.get("token"):
        where = "" if then.get("store") == now.get("store") else f" (the store is now {now.get('store')})"
        return f"has been recomputed since{where}"
    if then.get("fill_value") != now.get("fill_value"):
        return f"fills its missing examples with {now.get('fill_value')} now, {then.get('fill_value')} then"
    return None


def shard_features(spec: FeatureSpec, columns: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
                   where: str) -> FeatureTable:
    """One metadata shard's :class:`FeatureTable` from its input columns (M-FLYT) or npz arrays
    (E-FLYT): the one place a shard's features are built, for training, scoring and the store."""
    if spec.kind == "e-flyt":
        return FeatureTable(*(arrays[k] for k in spec.npz_keys))
    return FeatureTable(_score_block(columns, spec, where))


def _stored_inputs(pool, spec: FeatureSpec, names: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """Per shard, in pool order, the inputs of ``spec`` that live in its input store."""
    if not names:
        return iter(())
    if not spec.inputs_dir:
        raise FlytInputError(
            f"M-FLYT input {names[0]!r} is not a column of the pool at {pool.url} "
            f"(columns: {', '.join(pool.column_names)}) and no input store was given (inputs_dir); "
            f"the input is named by {spec.origin}"
        )
    from ..store import InputStore

    store = InputStore(spec.inputs_dir)
    unknown = [n for n in names if n not in store.input_names()]
    if unknown:
        raise FlytInputError(
            f"M-FLYT input {unknown[0]!r} is neither a column of the pool at {pool.url} nor a complete input of the "
            f"store {spec.inputs_dir} (inputs: {', '.join(store.input_names()) or 'none'}); it is named by {spec.origin}"
        )
    return store.iter_columns(names, pool)


def _score_block(columns: dict[str, np.ndarray], spec: FeatureSpec, where: str) -> np.ndarray:
    """One shard's M-FLYT inputs as a float32 ``(rows, k)`` block, checked to be finite numbers."""
    block = []
    for name in spec.columns:
        values = columns[name]
        if values.dtype.kind not in "biuf":
            raise FlytInputError(f"M-FLYT input {name!r} holds {values.dtype} values in {where}, not numbers")
        values = values.astype(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise FlytInputError(
                f"M-FLYT input {name!r} has {int(bad.sum())} non-finite values in {where}, "
                f"the first at row {int(np.flatnonzero(bad)[0])}"
            )
        block.append(values)
    return np.stack(block, axis=1).astype(np.float32)
