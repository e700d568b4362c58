"""The results table of a DataComp evaluation: the paper's Table-1 columns from ``eval_results.jsonl``.

DataComp's ``evaluate.py`` appends one JSON line per task, ``{"key", "dataset", "metrics": {...,
"main_metric"}}``, for the 40 tasks of its ``tasklist.yml``; 38 of them have a main metric (FairFace
and UTKFace have none). DataComp's ``aggregate_scores.py`` reports ImageNet (``ImageNet 1k``), the
mean over each task group below, and the mean over all 38 main metrics, and refuses a file that does
not hold exactly 38. This module computes the same numbers, and names the missing tasks of an
incomplete file instead of averaging what is there.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FlytInputError
from ..io import atomic_path

logger = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.jsonl"

# DataComp's tasklist.yml: (key, dataset name), in its order.
TASKS: tuple[tuple[str, str], ...] = (
    ("vtab/caltech101", "Caltech-101"), ("cifar10", "CIFAR-10"), ("vtab/cifar100", "CIFAR-100"),
    ("vtab/clevr_count_all", "CLEVR Counts"), ("vtab/clevr_closest_object_distance", "CLEVR Distance"),
    ("country211", "Country211"), ("vtab/dtd", "Describable Textures"), ("vtab/eurosat", "EuroSAT"),
    ("fgvc_aircraft", "FGVC Aircraft"), ("food101", "Food-101"), ("gtsrb", "GTSRB"),
    ("imagenet1k", "ImageNet 1k"), ("imagenet_sketch", "ImageNet Sketch"), ("imagenetv2", "ImageNet v2"),
    ("imagenet-a", "ImageNet-A"), ("imagenet-o", "ImageNet-O"), ("imagenet-r", "ImageNet-R"),
    ("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance"), ("mnist", "MNIST"),
    ("objectnet", "ObjectNet"), ("vtab/flowers", "Oxford Flowers-102"), ("vtab/pets", "Oxford-IIIT Pet"),
    ("voc2007", "Pascal VOC 2007"), ("vtab/pcam", "PatchCamelyon"), ("renderedsst2", "Rendered SST2"),
    ("vtab/resisc45", "RESISC45"), ("cars", "Stanford Cars"), ("stl10", "STL-10"), ("sun397", "SUN397"),
    ("vtab/svhn", "SVHN"), ("retrieval/flickr_1k_test_image_text_retrieval", "Flickr"),
    ("retrieval/mscoco_2014_5k_test_image_text_retrieval", "MSCOCO"), ("misc/winogavil", "WinoGAViL"),
    ("wilds/iwildcam", "iWildCam"), ("wilds/camelyon17", "Camelyon17"), ("wilds/fmow", "FMoW"),
    ("fairness/dollar_street", "Dollar Street"), ("fairness/geode", "GeoDE"),
    ("fairness/fairface", "FairFace"), ("fairness/utkface", "UTKFace"),
)
UNSCORED = frozenset({"FairFace", "UTKFace"})  # no main metric: not part of the average
SCORED: tuple[str, ...] = tuple(name for _, name in TASKS if name not in UNSCORED)
IMAGENET = "ImageNet 1k"

# aggregate_scores.py's task groups.
GROUPS: dict[str, frozenset[str]] = {
    "ImageNet dist. shifts": frozenset({
        "ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R", "ObjectNet",
    }),
    "VTAB": frozenset({
        "Caltech-101", "CIFAR-100", "CLEVR Counts", "CLEVR Distance", "Describable Textures", "EuroSAT",
        "KITTI Vehicle Distance", "Oxford Flowers-102", "Oxford-IIIT Pet", "PatchCamelyon", "RESISC45",
        "SVHN", "SUN397",
    }),
    "Retrieval": frozenset({"Flickr", "MSCOCO", "WinoGAViL"}),
}

# 1.0, 0.1, 0.01, ... 1e-15 as doubles: the scale factors of pandas' fast number parser.
_NEG_POW10 = tuple(float(f"1e-{i}") for i in range(16))


def pandas_float(text: str) -> float:
    """A JSON number as pandas 1.5 reads it (DataComp pins pandas 1.5.1 and reads results with
    ``pd.read_json``), not as Python does: its fast parser sums at most 15 fraction digits as an
    integer and scales it by 10^-k, which can differ from the correctly rounded value in the last
    bit (``0.3625`` becomes ``0.36250000000000004``) and so decides a third decimal at a tie."""
    sign = -1.0 if text.startswith("-") else 1.0
    mantissa, _, exponent = text.lstrip("-").lower().partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = fraction[:15]
    scaled = 0.0
    for d in digits:
        scaled = scaled * 10.0 + float(ord(d) - 48)
    value = (float(int(whole or "0")) + scaled * _NEG_POW10[len(digits)]) * sign
    if exponent:
        value *= 10.0 ** float(int(exponent))
    return value


class Results:
    """The lines of one results file: main metric per task, plus what makes it incomplete."""

    def __init__(self, path: str, rows: list[dict[str, Any]]):
        self.path = path
        self.metrics: dict[str, float] = {}
        self.lines_per_task: dict[str, int] = {}
        self.evaluated: set[str] = set()  # dataset names with a line, main metric or not
        self.cut_line: int | None = None  # a cut-short last line that was left out
        for row in rows:
            name = row["dataset"]
            self.evaluated.add(name)
            value = row["main_metric"]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue  # as DataComp does: a task without a main metric is not scored
            self.metrics[name] = float(value)
            self.lines_per_task[name] = self.lines_per_task.get(name, 0) + 1

    @property
    def missing(self) -> list[str]:
        """The scored tasks with no main metric in the file, in DataComp's task order."""
        return [name for name in SCORED if name not in self.metrics]

    @property
    def unexpected(self) -> list[str]:
        """Tasks with a main metric that DataComp's benchmark does not score."""
        return sorted(name for name in self.metrics if name not in SCORED)

    @property
    def duplicated(self) -> list[str]:
        return sorted(name for name, n in self.lines_per_task.items() if n > 1)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.duplicated)

    def problems(self) -> str:
        """One sentence saying why the file cannot be averaged ('' when it can)."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} of {len(SCORED)} tasks are missing: {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"tasks DataComp does not score: {', '.join(self.unexpected)}")
        if self.duplicated:
            parts.append(f"tasks with more than one line: {', '.join(self.duplicated)}")
        return "; ".join(parts)


def _parse_line(raw: bytes, i: int, path: Path) -> dict[str, Any] | None:
    """One line of a results file: its row, None for a blank line; an error naming the line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FlytInputError(f"line {i} of {path} is not UTF-8 text (byte {exc.start + 1} of the line: "
                             f"{exc.reason}); is it a DataComp results file?") from None
    if not line.strip():
        return None
    try:
        obj = json.loads(line, parse_float=pandas_float)
        metrics = obj["metrics"]
        row = {"dataset": str(obj["dataset"]), "key": obj.get("key"), "main_metric": metrics.get("main_metric")}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise FlytInputError(
            f"line {i} of {path} is not a DataComp result line "
            f'({{"key", "dataset", "metrics": {{"main_metric", ...}}}}): {exc!r}'
        ) from None
    if row["main_metric"] is not None and not isinstance(row["main_metric"], (int, float)):
        raise FlytInputError(f"line {i} of {path}: main_metric must be a number or null")
    return row


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines of ``data`` and what follows the last newline (b"" when it ends in one)."""
    *lines, rest = data.split(b"\n")
    return lines, rest


def read_results(path: str | os.PathLike, *, allow_cut_end: bool = False) -> Results:
    """Parse an ``eval_results.jsonl``; a malformed line is an error naming its number.

    A last line without a newline that is not a result line is what evaluate.py leaves when it is
    killed while appending: an error that says so, or, with ``allow_cut_end``, left out (its number
    is in :attr:`Results.cut_line`; :func:`drop_cut_end` removes it from the file).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FlytInputError(f"cannot read results file {path}: {exc}") from None
    lines, rest = _split(data)
    rows = [row for i, raw in enumerate(lines, 1) if (row := _parse_line(raw, i, path)) is not None]
    cut = None
    if rest.strip():
        i = len(lines) + 1
        try:
            row = _parse_line(rest, i, path)
        except FlytInputError as exc:
            if not allow_cut_end:
                raise FlytInputError(f"{exc.message} (the last line, cut short: evaluate.py was stopped "
                                     "while writing it; rerun the evaluation to redo that task)") from None
            cut = i
        else:
            rows.append(row)
    elif rest:
        cut = len(lines) + 1 if allow_cut_end else None
    results = Results(str(path), rows)
    results.cut_line = cut
    return results


def drop_cut_end(path: str | os.PathLike) -> int | None:
    """Make a results file safe to append to: drop a cut-short last line (see :func:`read_results`)
    and end a complete last line with its newline, rewriting the file atomically. Returns the
    number of the line dropped, or None. A malformed line before the last is an error naming it."""
    path = Path(path)
    results = read_results(path, allow_cut_end=True)
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    lines, rest = _split(data)
    kept = b"".join(line + b"\n" for line in lines)
    if results.cut_line is None:
        kept += rest + b"\n"
    else:
        logger.warning("%s: dropped line %d, cut short when evaluate.py was stopped while writing it (%d bytes: %r); "
                       "its task is evaluated again", path, results.cut_line, len(rest), rest[:60])
    with atomic_path(path) as tmp:
        tmp.write_bytes(kept)
    return results.cut_line


def group_mean(values: list[float]) -> float:
    """The correctly rounded mean. aggregate_scores.py sums a group in the iteration order of a
    Python set of task names, which changes with the interpreter's string hash seed, so its last
    bit (and at an exact tie its third decimal) varies between its own runs; this is the value
    those runs scatter around."""
    return math.fsum(values) / len(values)


def aggregate(results: Results) -> dict[str, float]:
    """ImageNet, each group's mean and the mean over the 38 tasks, as ``aggregate_scores.py``."""
    if not results.complete:
        raise FlytInputError(f"results file {results.path} is incomplete: {results.problems()}")
    m = results.metrics
    scores = {"ImageNet": m[IMAGENET]}
    for group, names in GROUPS.items():
        scores[group] = group_mean([m[name] for name in names])
    scores["Average"] = float(np.mean(list(m.values())))  # file order, as aggregate_scores.py
    return scores


def partial_scores(results: Results) -> dict[str, float | None]:
    """The columns that a file's present tasks fully determine; None for the others."""
    m = results.metrics
    out: dict[str, float | None] = {"ImageNet": m.get(IMAGENET)}
    for group, names in GROUPS.items():
        out[group] = group_mean([m[n] for n in names]) if names <= m.keys() else None
    out["Average"] = None
    return out


def format_scores(scores: dict[str, float | None]) -> str:
    """``name: value`` lines with three decimals, as ``aggregate_scores.py`` prints them."""
    return "\n".join(f"{k}: {v:.3f}" if v is not None else f"{k}: incomplete" for k, v in scores.items())


def report_json(results: Results) -> dict[str, Any]:
    """The machine-readable report: columns, per-task main metrics, completeness."""
    complete = results.complete
    return {
        "results_file": results.path,
        "complete": complete,
        "num_tasks": sum(1 for n in SCORED if n in results.metrics),
        "expected_tasks": len(SCORED),
        "missing": results.missing,
        "unexpected": results.unexpected,
        "duplicated": results.duplicated,
        "scores": aggregate(results) if complete else partial_scores(results),
        "tasks": dict(sorted(results.metrics.items())),
    }


def find_results(path: str | os.PathLike) -> Path:
    """The results file itself, or the one inside a train output folder (``OUT/NAME`` or ``OUT``)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FlytInputError(f"{path} does not exist: give an {RESULTS_FILE} or a train output folder")
    if (path / RESULTS_FILE).is_file():
        return path / RESULTS_FILE
    found = sorted(path.glob(f"*/{RESULTS_FILE}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FlytInputError(f"no {RESULTS_FILE} in {path} or its subfolders: has evaluate.py run?")
    raise FlytInputError(
        f"{path} holds several results files ({', '.join(str(f) for f in found)}); give one of them"
    )
