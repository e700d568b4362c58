"""``eval train``: DataComp's ``train.py`` on resharded data, through torchrun for several GPUs.

``train.py --scale S --data_dir D --output_dir OUT --exp_name NAME`` trains the scale's fixed recipe
on every ``.tar`` in D (the resharded shards, not the subset file) and writes
``OUT/NAME/checkpoints/epoch_latest.pt`` and, once training has returned, ``OUT/NAME/info.pkl``. It
always asks open_clip to resume from the latest checkpoint in ``OUT/NAME``, and it exits 0 even when
open_clip reported a failure (it prints "Error running training"), so that line counts as a failure
here. A finished run gets ``OUT/NAME/flyt_train.json``, which ``eval run`` uses to skip the stage.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import FlytInputError, OutputCheckError, quote
from ..folders import OutputFolder
from ..io import read_json_or_none, write_json
from .datacomp import Checkout, check_log, has_fields, refuse_managed_flags, run_script

RECORD_FILE = "flyt_train.json"
RECORD_FIELDS = {"checkpoint": str, "parameters.scale": str, "scale_config": dict}
START_FILE = "flyt_train_start.json"  # what a run was started with, so a rerun resumes only the same run
FAILURE_LINE = "Error running training"
# train.py's flags that this command sets itself, and the setting each comes from
MANAGED_FLAGS = {"--scale": "scale", "--data_dir": "resharded_dir", "--output_dir": "output_dir",
                 "--exp_name": "exp_name"}


def check_data_dir(data_dir: str) -> None:
    """A local data folder must hold the resharded ``.tar`` shards (or resharder output folders)."""
    if "::" in data_dir or "://" in data_dir:
        return  # several sources or a cloud URL: train.py resolves those itself
    path = Path(data_dir)
    if not path.is_dir():
        raise FlytInputError(f"`resharded_dir` {path} does not exist or is not a folder", params=["resharded_dir"])
    if not any(path.glob("*.tar")) and not any(path.glob("*/meta.json")):
        raise FlytInputError(
            f"`resharded_dir` {path} holds no .tar shards: give the output folder of `eval reshard` "
            "(train.py reads resharded shards, not the subset file)", params=["resharded_dir"]
        )


def train_command(checkout: Checkout, script: Path, args: list[str], num_gpus: int) -> list[str]:
    """``python train.py ...``, or the same under torchrun (``torch.distributed.run``) for N GPUs."""
    if num_gpus > 1:
        return [checkout.python, "-m", "torch.distributed.run", "--nproc_per_node", str(num_gpus),
                str(script), *args]
    return [checkout.python, str(script), *args]


def check_exp_name(exp_name: str) -> None:
    """An experiment name is one plain folder name (not ``.``, ``..`` or a path)."""
    if (not exp_name or exp_name in (".", "..") or any(c in exp_name for c in "/\\\0") or exp_name.startswith("-")
            or len(os.fsencode(exp_name)) > 255):
        raise FlytInputError(f"`exp_name` must be a plain folder name, got {quote(exp_name)}", params=["exp_name"])


def train(
    checkout: Checkout,
    data_dir: str,
    scale: str,
    output_dir: Path,
    exp_name: str,
    *,
    num_gpus: int = 1,
    overwrite: bool = False,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
) -> dict[str, Any]:
    """Check the prerequisites, run DataComp's ``train.py``, check its outputs; return the record.

    An experiment folder that holds this run already (same scale and data) is resumed from its
    latest checkpoint, as train.py does; ``overwrite`` deletes it and trains from scratch.
    """
    script = checkout.script("train.py")
    checkout.require_torch("train.py")
    config = checkout.scale_config(scale)
    if num_gpus < 1:
        raise FlytInputError(f"`num_gpus` must be at least 1, got {num_gpus}", params=["num_gpus"])
    check_exp_name(exp_name)
    refuse_managed_flags(extra_args, MANAGED_FLAGS, "train.py")
    check_data_dir(data_dir)
    exp_dir = output_dir / exp_name
    started = started_with(scale, data_dir, extra_args)
    folder = check_experiment(checkout, exp_dir, started, overwrite=overwrite)
    check_log(log_path, folder.inputs)
    folder.create()
    with folder.lock():
        if overwrite:
            folder.empty()
        write_json(exp_dir / START_FILE, folder.record(**started))
        args = ["--scale", scale, "--data_dir", data_dir, "--output_dir", str(output_dir.resolve()),
                "--exp_name", exp_name, *extra_args]
        run = run_script(train_command(checkout, script, args, num_gpus), name="DataComp's train.py",
                         log_path=log_path, fail_markers=(FAILURE_LINE,))
        checkpoint = exp_dir / "checkpoints" / "epoch_latest.pt"
        for needed in (exp_dir / "info.pkl", checkpoint):
            if not needed.is_file():
                raise OutputCheckError(f"train.py finished but wrote no {needed}")
        record = folder.record(
            output=str(exp_dir),
            inputs={"data_dir": data_dir, "datacomp_dir": str(checkout.root)},
            parameters={"scale": scale, "exp_name": exp_name, "num_gpus": num_gpus, "extra_args": list(extra_args)},
            scale_config=config,
            checkpoint=str(checkpoint),
            seconds=round(run.seconds, 3),
        )
        write_json(exp_dir / RECORD_FILE, record)
    return record


def started_with(scale: str, data_dir: str, extra_args: Sequence[str]) -> dict[str, Any]:
    """What a run is started with (kept in ``START_FILE``; a rerun resumes only the same run)."""
    return {"scale": scale, "data_dir": data_dir, "extra_args": list(extra_args)}


def check_experiment(checkout: Checkout, exp_dir: Path, started: dict[str, Any], *, overwrite: bool) -> OutputFolder:
    """Refuse an experiment folder OUTPUT_DIR/EXP_NAME that overlaps the resharded data or the
    checkout, or that ``overwrite`` may not empty, or (without it) that holds another run."""
    folder = OutputFolder(exp_dir, "eval train", (START_FILE, RECORD_FILE),
                          inputs={"resharded_dir": started["data_dir"], "the DataComp checkout": checkout.root},
                          what="experiment folder", params=("output_dir", "exp_name"))
    if overwrite:
        folder.check(overwrite=True)
    else:
        folder.check_place()
        check_resumable(exp_dir, started)
    return folder


def check_resumable(exp_dir: Path, started: dict[str, Any]) -> None:
    """Refuse to resume an experiment folder that holds another run (or something else)."""
    if exp_dir.exists() and not exp_dir.is_dir():
        raise FlytInputError(f"experiment folder {exp_dir} exists and is not a folder")
    if not exp_dir.is_dir() or not any(exp_dir.iterdir()):
        return
    before = read_json_or_none(exp_dir / START_FILE)
    if isinstance(before, dict):
        differ = [k for k in ("scale", "data_dir") if before.get(k) != started[k]]
        if not differ:
            return
        what = ", ".join(f"{k} {before.get(k)!r} then, {started[k]!r} now" for k in differ)
        raise FlytInputError(f"experiment folder {exp_dir} holds a run with other settings ({what}); "
                             "choose another `exp_name`, or set `overwrite` to train from scratch",
                             params=["exp_name", "overwrite"])
    if not (exp_dir / "checkpoints").is_dir():
        raise FlytInputError(f"experiment folder {exp_dir} holds files that are not a train.py run; "
                             "choose another `exp_name`, or set `overwrite` to empty it", params=["exp_name", "overwrite"])


def read_record(exp_dir: Path) -> dict[str, Any] | None:
    """The record of a finished training run in ``exp_dir`` whose outputs are all still there (None
    when it is missing or damaged: the run is then resumed)."""
    record = read_json_or_none(exp_dir / RECORD_FILE)
    if not has_fields(record, RECORD_FIELDS) or not (exp_dir / "info.pkl").is_file():
        return None
    return record if Path(record["checkpoint"]).is_file() else None
