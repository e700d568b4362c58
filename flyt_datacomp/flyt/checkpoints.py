"""Training checkpoints: written with an integrity record, and the newest usable one found again.

A checkpoint ``checkpoints/step_0000500.pt`` holds everything that determines the rest of a run
(only tensors and plain values, so it loads with ``weights_only=True``). Beside it,
``step_0000500.pt.json`` records its size and sha256, and ``latest.json`` names the newest one.
The last ``keep`` checkpoints stay on disk.

Resuming takes the newest checkpoint that loads and verifies: it has a readable record (written
before the checkpoint appears under its name, so a checkpoint without one was tampered with),
its size and sha256 match it, it is a readable torch file of plain values, and it holds the step
its name says. Newer files that fail are skipped with the reason (a kill while writing, a
truncated copy, a planted file); ``latest.json`` is only a hint, so a truncated or stale one, or a
deleted latest checkpoint, costs at most the steps since the previous checkpoint. When checkpoints
exist but none is usable the run stops with a clear error instead of silently starting over.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .. import __version__, torch_io
from ..errors import FlytInputError
from ..io import file_sha256, write_json

LATEST = "latest.json"
_NAME = re.compile(r"^step_(\d{7,})\.pt$")
_REQUIRED = ("step", "warmed", "theta", "adam", "scoring", "config", "data")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:07d}.pt"


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``step`` with its integrity record; keep the last ``keep``."""
    path = checkpoint_path(folder, step)

    def record(tmp: Path) -> None:  # the record exists before the checkpoint appears under its name
        write_json(_record_path(path), {"step": step, "bytes": tmp.stat().st_size,
                                        "sha256": file_sha256(tmp), "version": __version__})

    torch_io.save(state, path, before_rename=record)
    write_json(folder / LATEST, {"step": step, "path": path.name})
    for old in _checkpoints(folder)[keep:]:
        for p in (old, _record_path(old)):
            p.unlink(missing_ok=True)
    return path


def find_resume_point(folder: Path) -> tuple[Path, dict[str, Any], list[str]] | None:
    """The newest usable checkpoint in ``folder`` as (path, state, notes), or None for a fresh run.

    ``notes`` explain every newer checkpoint that was skipped and why. Raises
    :class:`FlytInputError` when the folder has checkpoints (or a ``latest.json``) but none is usable.
    """
    if not folder.is_dir():
        return None
    candidates = _checkpoints(folder)
    notes: list[str] = []
    hint = _read_latest(folder, notes)
    if hint is not None and not (folder / hint).exists():
        notes.append(f"{LATEST} names {hint}, which is missing")
    if not candidates and hint is None and not (folder / LATEST).exists():
        return None
    for path in candidates:
        try:
            state = verify_checkpoint(path)
        except FlytInputError as exc:
            notes.append(f"skipped {path.name}: {exc.message}")
            continue
        return path, state, notes
    detail = "; ".join(notes) if notes else "it holds no step_*.pt files"
    raise FlytInputError(
        f"no usable checkpoint to resume from in {folder} ({detail}); delete that folder, or choose a "
        "new `output_dir`, to start the run over", params=["output_dir"]
    )


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Load ``path`` and check it against its record and its name; return the state."""
    record = _record_path(path)
    try:
        rec = json.loads(record.read_text())
        expected_bytes, expected_sha = int(rec["bytes"]), str(rec["sha256"])
    except FileNotFoundError:
        raise FlytInputError(f"it has no integrity record ({record.name}), so it cannot be verified") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise FlytInputError(f"its integrity record {record.name} is unreadable, so it cannot be verified") from None
    size = path.stat().st_size
    if size != expected_bytes:
        raise FlytInputError(f"it has {size:,} bytes but was written with {expected_bytes:,} (truncated?)")
    if file_sha256(path) != expected_sha:
        raise FlytInputError("its sha256 differs from the one recorded when it was written (corrupt)")
    state = torch_io.load(path)
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        raise FlytInputError("it is not a flyt-datacomp training checkpoint")
    step = int(_NAME.match(path.name)[1])
    if state["step"] != step:
        raise FlytInputError(f"it holds step {state['step']}, not {step}")
    return state


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files, newest step first."""
    found = [(int(m[1]), folder / name) for name in os.listdir(folder) if (m := _NAME.match(name))]
    return [p for _, p in sorted(found, reverse=True)]


def _read_latest(folder: Path, notes: list[str]) -> str | None:
    marker = folder / LATEST
    if not marker.exists():
        return None
    try:
        return str(json.loads(marker.read_text())["path"])
    except (OSError, ValueError, KeyError, TypeError):
        notes.append(f"{LATEST} is unreadable (truncated?) and was ignored")
        return None
