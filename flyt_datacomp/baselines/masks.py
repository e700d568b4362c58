"""Hard filters (``filter --mask SPEC``): examples outside a mask get probability zero under every sampler.

A mask picks pool examples; the filter keeps those inside every mask, in the order given, and the
sampler (threshold, SCS, HCS, no-cap) then runs over the survivors only: its fraction and N refer to
them, and ``--standardize`` uses their statistics. Without ``--score`` the survivors are written once
each. Each kind of mask is one small class registered in :data:`MASK_KINDS`; ``KIND:SPEC`` names the
kind, a bare spec goes to the first kind that claims it:

* ``baseline`` -- one of DataComp's baselines, ``NAME`` or ``NAME:key=value,...`` with DataComp's
  options (``clip_score:arch=l14,fraction=0.3``); see :mod:`.datacomp`;
* ``subset`` -- a subset ``.npy`` file (DataComp's format): the uids it lists;
* ``column`` -- a condition on a numeric or string column of the pool's parquet files,
  ``NAME OP VALUE`` with OP one of ``>= <= > < == !=`` (``column:original_width>=200``); a missing
  value never passes;
* ``store`` -- the same kind of condition on an input of the input store given by ``--inputs-dir``
  (``store:lang_en==1``); examples the input has no value for never pass;
* ``caption`` -- ``caption:basic``: the caption rule of DataComp's basic filter alone (more than 2
  words and more than 5 characters), for pools whose language and image sizes it should not judge;
* ``top`` -- ``top:F:SOURCE``: of the examples that survive the masks before it, the ``int(F * M)``
  with the highest score from a score source (``M``: the pool size, after ``--shards-dir``), ties
  broken by pool position. ``--mask top:0.3:A --mask top:0.2:B`` is the negCLIPLoss-then-NormSim rule.

Every mask but ``top`` is a property of the example alone, so their order does not matter; a
``top`` mask ranks only what survived before it. A new kind is one subclass of :class:`MaskKind` and
:func:`register_mask_kind`.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import FlytInputError, quote
from ..pool import Pool
from ..registry import KindRegistry
from . import datacomp


@dataclasses.dataclass
class MaskContext:
    """What a mask may use: the pool, the examples it is restricted to and how to run baselines."""

    pool: Pool
    base: np.ndarray | None  # bool per example: the pool after --shards-dir (None: every example)
    settings: datacomp.RunSettings
    defaults: datacomp.BaselineParams = datacomp.BaselineParams()  # command-line defaults (image_based_scale)
    inputs_dir: str | None = None  # an input store, for store: masks and top: masks over stored inputs

    @property
    def base_size(self) -> int:
        return self.pool.size if self.base is None else int(self.base.sum())


class MaskKind:
    """One kind of mask: ``claims`` a bare spec; ``select`` gives a bool per pool example."""

    kind: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, spec: str):
        self.spec = spec

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return False

    def check(self) -> None:
        """Reject a malformed spec before any work (the default: nothing to check)."""

    def prepare(self, ctx: MaskContext) -> None:
        """Before any mask runs: find what this one will need (files, packages), failing early."""

    def select(self, ctx: MaskContext, survivors: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """(bool per pool example, details for the sidecar). ``survivors``: kept by the masks before."""
        raise NotImplementedError


MASK_KINDS = KindRegistry("mask kind")
register_mask_kind = MASK_KINDS.register


# --------------------------------------------------------------------------- baseline


_PARAM_TYPES = {"arch": str, "fraction": float, "threshold": float, "image_based_scale": str}


@register_mask_kind
class BaselineMask(MaskKind):
    kind = "baseline"
    description = "one of DataComp's baselines, NAME or NAME:key=value,... (clip_score:arch=l14,fraction=0.3)"

    def __init__(self, spec: str, params: datacomp.BaselineParams | None = None,
                 found: datacomp.Found | None = None):
        super().__init__(spec)
        name, _, options = spec.partition(":")
        self.name = name
        self.params = params if params is not None else _parse_params(options, spec)
        self.found = found  # an image-based baseline's targets (and threshold), found over the whole pool

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return spec.partition(":")[0] in datacomp.BASELINES

    def check(self) -> None:
        datacomp.check_params(self.name, self.params)

    def resolved(self, ctx: MaskContext) -> datacomp.BaselineParams:
        if "image_based" in self.name and self.params.image_based_scale is None:
            return dataclasses.replace(self.params, image_based_scale=ctx.defaults.image_based_scale)
        return self.params

    def prepare(self, ctx: MaskContext) -> None:
        datacomp.locate_assets(self.name, self.resolved(ctx), ctx.settings, found=self.found)

    def select(self, ctx: MaskContext, survivors: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        params = self.resolved(ctx)
        result = datacomp.evaluate(ctx.pool, self.name, params, ctx.settings, within=ctx.base, found=self.found)
        return result.mask, {"baseline": self.name, "params": params.given(), **result.details}


def _parse_params(options: str, spec: str) -> datacomp.BaselineParams:
    values: dict[str, Any] = {}
    for item in filter(None, options.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in _PARAM_TYPES:
            raise FlytInputError(f"mask {quote(spec)}: {quote(item)} is not one of {', '.join(f'{k}=...' for k in _PARAM_TYPES)}")
        try:
            values[key] = _PARAM_TYPES[key](value.strip())
        except ValueError:
            raise FlytInputError(f"mask {quote(spec)}: {key} must be a number, got {quote(value)}") from None
    return datacomp.BaselineParams(**values)


# --------------------------------------------------------------------------- subset file


@register_mask_kind
class SubsetMask(MaskKind):
    kind = "subset"
    description = "a subset .npy file: the uids it lists"

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return spec.endswith(".npy") and Path(spec).is_file()

    def select(self, ctx: MaskContext, survivors: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        from ..uids import lookup, read_subset

        uids, _ = read_subset(self.spec)  # distinct, sorted
        inside = lookup(uids, ctx.pool.uids) >= 0
        return inside, {"subset_uids": int(len(uids)), "subset_uids_not_in_pool": int(len(uids) - inside.sum())}


# --------------------------------------------------------------------------- column condition


_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
_CONDITION = re.compile(r"^\s*(?P<name>[A-Za-z_][\w.\-]*)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>.*?)\s*$")


@dataclasses.dataclass(frozen=True)
class Condition:
    """``NAME OP VALUE``: a column, a comparison and a number or a string."""

    name: str
    op: str
    value: int | float | str

    @classmethod
    def parse(cls, text: str) -> Condition | None:
        m = _CONDITION.match(text)
        if m is None or not m["value"]:
            return None
        raw = m["value"]
        value: int | float | str
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = raw[1:-1] if len(raw) > 1 and raw[0] == raw[-1] and raw[0] in "'\"" else raw
        return cls(m["name"], m["op"], value)

    def holds(self, values: np.ndarray, what: str) -> np.ndarray:
        """Where the condition holds; a missing value (null, NaN) never passes."""
        v = np.asarray(values)
        numeric = v.dtype.kind in "biuf"
        if numeric != (not isinstance(self.value, str)):
            kind = "numbers" if numeric else f"{v.dtype} values"
            raise FlytInputError(f"{what} holds {kind}; it cannot be compared with {quote(self.value)}")
        if numeric:
            value = v.dtype.type(self.value) if v.dtype.kind == "f" else self.value
            present = ~np.isnan(v) if v.dtype.kind == "f" else np.ones(len(v), dtype=bool)
            with np.errstate(invalid="ignore"):
                return present & _OPS[self.op](v, value)
        return np.fromiter((isinstance(x, str) and _OPS[self.op](x, self.value) for x in v), dtype=bool, count=len(v))


@register_mask_kind
class ColumnMask(MaskKind):
    kind = "column"
    description = "a condition on a column of the pool's parquet files (original_width>=200)"

    def __init__(self, spec: str):
        super().__init__(spec)
        self.condition = Condition.parse(spec)

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        cond = Condition.parse(spec)
        return cond is not None and cond.name in pool.column_names

    def check(self) -> None:
        if self.condition is None:
            raise FlytInputError(f"mask column:{self.spec} is not a condition like original_width>=200 "
                                 f"(NAME OP VALUE with OP one of {' '.join(_OPS)}){shell_hint(f'column:{self.spec}')}")

    def select(self, ctx: MaskContext, survivors: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        name = self.condition.name
        if name not in ctx.pool.column_names:
            raise FlytInputError(f"mask column:{self.spec}: the pool at {ctx.pool.url} has no column {name!r} "
                                 f"(columns: {', '.join(ctx.pool.column_names)})")
        values = ctx.pool.column(name)
        return self.condition.holds(values, f"column {name!r} of the pool at {ctx.pool.url}"), {}


@register_mask_kind
class StoredInputMask(ColumnMask):
    kind = "store"
    description = "a condition on an input of the input store (store:lang_en==1)"

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return False  # only by name: store:COND

    def check(self) -> None:
        if self.condition is None or isinstance(self.condition.value, str):
            raise FlytInputError(f"mask store:{self.spec} is not a numeric condition like lang_en==1 "
                                 f"(NAME OP NUMBER with OP one of {' '.join(_OPS)}){shell_hint(f'store:{self.spec}')}")

    def store(self, ctx: MaskContext):
        """The input store it reads (``inputs_dir``, required)."""
        if not ctx.inputs_dir:
            raise FlytInputError(f"mask store:{self.spec} reads an input store: give `inputs_dir`", params=["inputs_dir"])
        from ..store import InputStore

        return InputStore(ctx.inputs_dir)

    def prepare(self, ctx: MaskContext) -> None:
        self.store(ctx).entry(self.condition.name)

    def select(self, ctx: MaskContext, survivors: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        store = self.store(ctx)
        name = self.condition.name
        entry = store.entry(name)
        ctx.pool.uids  # noqa: B018 - read once here (a subset is written from them): the store's pool check reuses them
        raw = store.columns([name], ctx.pool, fill=False)[name]  # checked to be this pool's; NaN never passes
        inside = self.condition.holds(raw, f"input {name!r} of the store {ctx.inputs_dir}")
        return inside, {"store": str(ctx.inputs_dir), "input_spec": entry["spec"]}


@register_mask_kind
class CaptionRuleMask(MaskKind):
    kind = "caption"
    description = "the caption rule of DataComp's basic filter alone, caption:basic (more than 2 words, more than 5 characters)"

    def check(self) -> None:
        if self.spec != "basic":
            raise FlytInputError(f"mask caption:{self.spec}: the caption rule is caption:basic")

    def select(self, ctx: MaskContext, survivors: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        from .rules import basic_caption_mask

        return basic_caption_mask(np.asarray(ctx.pool.column("text"), dtype=object)), {}


# --------------------------------------------------------------------------- top fraction by a score


@register_mask_kind
class TopMask(MaskKind):
    kind = "top"
    description = "the int(F * pool size) best-scoring of the examples that survive the masks before it (top:F:SOURCE)"

    def __init__(self, spec: str):
        super().__init__(spec)
        fraction, _, self.source = spec.partition(":")
        try:
            self.fraction = float(fraction)
        except ValueError:
            self.fraction = float("nan")

    def check(self) -> None:
        if not (0 < self.fraction <= 1) or not self.source:
            raise FlytInputError(f"mask top:{self.spec} must be top:F:SOURCE with F in (0, 1] and a score source "
                                 "(top:0.3:clip_l14_similarity_score)")

    def select(self, ctx: MaskContext, survivors: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        from ..scores import load_scores

        within = None if ctx.base is None else np.flatnonzero(ctx.base)
        scores = load_scores(ctx.pool, self.source, within=within, inputs_dir=ctx.inputs_dir).values
        count = self.count(ctx.base_size)
        candidates = np.flatnonzero(survivors)
        best = candidates[np.argsort(-scores[candidates], kind="stable")[:count]]
        out = np.zeros(ctx.pool.size, dtype=bool)
        out[best] = True
        return out, self.details(count, ctx.base_size, len(candidates))

    def count(self, size: int) -> int:
        """How many examples it keeps of a pool of ``size`` (at most: those that survived before it)."""
        return int(size * self.fraction)

    @staticmethod
    def details(count: int, size: int, candidates: int) -> dict[str, Any]:
        """Its report line's details: ``count`` kept of a pool of ``size``, ``candidates`` having survived before it."""
        details: dict[str, Any] = {"count": count, "of": size}
        if candidates < count:
            details["note"] = f"only {candidates:,} examples survived the masks before it; all were kept"
        return details


# --------------------------------------------------------------------------- applying masks


def shell_hint(spec: str) -> str:
    """For a spec that names something but compares with nothing: the likely cause, a condition typed
    without quotes (the shell takes ``>`` and ``<`` as redirections), and the way to type it."""
    name = spec.rsplit(":", 1)[-1]
    if not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
        return ""
    return (f"; it compares with nothing: typed as {name}>=VALUE without quotes, the shell takes > as a redirection "
            f"(writing a file named '=VALUE') and passes only {name!r}: quote the whole spec, "
            f"--mask '{spec}>=VALUE'")


def resolve_mask(spec: str, pool: Pool) -> MaskKind:
    """The mask ``spec`` names (``KIND:SPEC``) or the first kind that claims it (a bare spec)."""
    found = MASK_KINDS.find(spec, pool)
    if found is None:
        raise FlytInputError(f"mask {quote(spec)} is not a baseline name, an existing .npy subset file or a "
                             f"condition on a pool column{shell_hint(spec) if spec in pool.column_names else ''}. "
                             f"Masks are {MASK_KINDS.describe()}")
    cls, rest = found
    mask = cls(rest)
    mask.check()
    return mask


def apply_masks(ctx: MaskContext, masks: list[MaskKind]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Survivors of every mask in order (within ``ctx.base``), and a report line per mask."""
    for mask in masks:
        mask.prepare(ctx)
    survivors = np.ones(ctx.pool.size, dtype=bool) if ctx.base is None else ctx.base.copy()
    report = []
    for mask in masks:
        selected, details = mask.select(ctx, survivors)
        survivors &= selected
        report.append(report_line(mask, int(survivors.sum()), details))
    return survivors, report


def report_line(mask: MaskKind, surviving: int, details: dict[str, Any]) -> dict[str, Any]:
    """A mask's line of the sidecar's ``masks``: the mask, the examples left after it and its details."""
    return {"mask": f"{mask.kind}:{mask.spec}", "kind": mask.kind, "surviving": surviving, **details}
