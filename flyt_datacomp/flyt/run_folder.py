"""The output folder of ``train``: which folders a training run may write into, resume or empty.

A run folder is ours when it carries ``flyt_run.json``, a marker naming ``train`` as its writer
(written before anything else, so a run killed at any moment is still recognised), or when it is a
run of a version that wrote no marker: a ``config.json`` that is this package's record of a
training configuration. ``train`` then resumes it, or empties it with ``overwrite``. Any other
non-empty folder is refused with or without ``overwrite``: a user's own ``config.json`` or
``metrics.jsonl`` is never replaced or rewritten. The folder must also lie apart from the run's
inputs and be neither the root nor the home folder (:mod:`flyt_datacomp.folders`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FlytInputError
from ..folders import OutputFolder
from ..io import local_path, read_json_or_none, write_json
from .config import TrainConfig

RUN_MARKER = "flyt_run.json"
COMMAND = "train"
CONFIG_FILE = "config.json"


def run_folder(cfg: TrainConfig, output_dir: str | os.PathLike) -> OutputFolder:
    """The run folder of ``cfg`` at ``output_dir``, with the run's local inputs to keep apart."""
    inputs = {name: getattr(cfg, name) for name in ("metadata_dir", "shards_dir", "downstream_dir", "inputs_dir",
                                                     "reference_checkpoint")}
    if cfg.classes.endswith(".json"):
        inputs["the class file"] = cfg.classes
    return OutputFolder(local_path(output_dir, "the output folder"), COMMAND, (RUN_MARKER,), inputs=inputs)


def _is_unmarked_run(path: Path) -> bool:
    """A run of a version that wrote no marker: its config.json is this package's configuration record."""
    record = read_json_or_none(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else None
    return (isinstance(record, dict) and record.get("package") == "flyt-datacomp"
            and isinstance(record.get("config"), dict))


def check_run_folder(folder: OutputFolder, *, overwrite: bool) -> bool:
    """Refuse, before any work, a folder ``train`` may not write into; return True when it holds a run
    of ours (which ``overwrite`` empties and a plain rerun resumes). Reads only."""
    folder.check_place()
    path = local_path(folder.path)
    try:
        if not path.is_dir() or not any(path.iterdir()):
            return False
    except OSError as exc:
        raise FlytInputError(f"`output_dir` {path} cannot be used: {exc}", params=["output_dir"]) from None
    if folder.is_own() or _is_unmarked_run(path):
        return True
    if overwrite:
        folder.check(overwrite=True)  # the one message for a folder `overwrite` may not empty
    raise FlytInputError(
        f"`output_dir` {path} is not empty and holds no training run (it has no {RUN_MARKER}); train writes a new "
        "run only into an empty or new folder and resumes only its own runs: choose another `output_dir`",
        params=["output_dir"])


def take_run_folder(folder: OutputFolder, *, overwrite: bool) -> None:
    """Make the checked folder this run's: empty it with ``overwrite``, create it, and mark it (the
    marker first, before any other file). Call on one process only (rank 0)."""
    path = local_path(folder.path)
    if overwrite and path.is_dir() and any(path.iterdir()):
        if not folder.is_own():  # a run of a version without markers: adopt it, then empty it
            write_json(path / RUN_MARKER, folder.record(adopted=True))
        folder.empty()
    folder.create()
    if not folder.is_own():
        write_json(path / RUN_MARKER, folder.record(output=str(path)))
