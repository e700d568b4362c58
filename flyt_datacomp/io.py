"""Atomic output files and their JSON sidecars.

Every output of the package is written to a temporary file in the destination folder and renamed
into place only once complete, so a failure never leaves a half-written file behind. Every output
also gets a sidecar ``<output>.json`` recording what made it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from . import __version__


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    On any exception the temporary file is removed and ``path`` is left untouched.
    ``suffix`` sets the temporary file's extension (some writers, like ``np.save`` or
    matplotlib, choose their format from it); by default it is the target's own suffix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=(path.suffix if suffix is None else suffix) + ".tmp",
        dir=path.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json_or_none(path: str | os.PathLike) -> Any:
    """The JSON content of ``path``, or None when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def sidecar_path(output: str | os.PathLike) -> Path:
    """The sidecar of ``out.npy`` is ``out.npy.json``."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def provenance(**fields: Any) -> dict:
    """The fields every sidecar carries, plus ``fields``."""
    return {
        "package": "flyt-datacomp",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
