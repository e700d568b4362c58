"""``eval evaluate``: DataComp's ``evaluate.py`` on a finished training run.

``evaluate.py --train_output_dir OUT/NAME --data_dir EVALSETS`` reads ``OUT/NAME/info.pkl`` and
appends one line per task of its ``tasklist.yml`` to ``OUT/NAME/eval_results.jsonl`` (or to
``--output_dir``), skipping the tasks the file already has. A run is complete when every task has
a line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import FlytInputError, OutputCheckError
from ..folders import Location, check_output_file, lock_folder
from .datacomp import Checkout, check_log, refuse_managed_flags, run_script
from .report import RESULTS_FILE, TASKS, Results, drop_cut_end, read_results

# evaluate.py's flags that this command sets itself, and the setting each comes from
MANAGED_FLAGS = {"--train_output_dir": "train_output_dir", "--data_dir": "evalsets_dir"}


def option_value(args: Sequence[str], flag: str) -> str | None:
    """The value given to ``flag`` in pass-through arguments (``--flag V`` or ``--flag=V``)."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


def unevaluated(results_file: Path) -> list[str]:
    """The tasks of DataComp's task list that have no line in ``results_file`` yet (a cut-short last
    line, left by a killed evaluate.py, does not count)."""
    if not results_file.is_file():
        return [name for _, name in TASKS]
    done = read_results(results_file, allow_cut_end=True).evaluated
    return [name for _, name in TASKS if name not in done]


def check_pass_through(extra_args: Sequence[str]) -> None:
    """Refuse pass-through flags that would change evaluate.py's inputs behind this command's back,
    and abbreviations of ``--output_dir`` (read here to find the results file: spell it in full)."""
    refuse_managed_flags(extra_args, MANAGED_FLAGS, "evaluate.py")
    for arg in extra_args:
        name = arg.split("=", 1)[0]
        if len(name) > 2 and name.startswith("--") and "--output_dir".startswith(name) and name != "--output_dir":
            raise FlytInputError(f"spell the pass-through flag {name} in full: --output_dir")


def prepare_results_file(results_file: Path, inputs: Mapping[str, Location | None], *, overwrite: bool) -> None:
    """Make the results file ready for evaluate.py to append to: it must be a file (or nothing) apart
    from the inputs; ``overwrite`` deletes it, else a line cut short by a killed run is dropped."""
    check_output_file(results_file, inputs, what="results file")
    if not results_file.exists():
        return
    if overwrite:
        results_file.unlink()
    else:
        drop_cut_end(results_file)


def evaluate(
    checkout: Checkout,
    train_output_dir: Path,
    data_dir: Path,
    *,
    overwrite: bool = False,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
) -> Results:
    """Check the prerequisites, run DataComp's ``evaluate.py``, check that every task has a result
    and that the 38 scored ones have a main metric. Tasks already in the results file are not
    evaluated again (evaluate.py skips them); ``overwrite`` deletes the file first."""
    script = checkout.script("evaluate.py")
    checkout.require_torch("evaluate.py")
    if not (train_output_dir / "info.pkl").is_file():
        raise FlytInputError(
            f"`train_output_dir` {train_output_dir} has no info.pkl: give the OUT/NAME folder of a "
            "finished train.py run", params=["train_output_dir"]
        )
    if not data_dir.is_dir():
        raise FlytInputError(f"`evalsets_dir` {data_dir} does not exist: download the evaluation sets there "
                             "with DataComp's download_evalsets.py", params=["evalsets_dir"])
    check_pass_through(extra_args)
    out_dir = Path(option_value(extra_args, "--output_dir") or train_output_dir)
    results_file = out_dir / RESULTS_FILE
    inputs = {"evalsets_dir": data_dir, "the DataComp checkout": checkout.root}
    check_output_file(results_file, inputs, what="results file")
    check_log(log_path, inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    with lock_folder(out_dir, f"results folder {out_dir}"):
        prepare_results_file(results_file, inputs, overwrite=overwrite)
        cmd = [checkout.python, script, "--train_output_dir", train_output_dir.resolve(),
               "--data_dir", data_dir.resolve(), *extra_args]
        run_script(cmd, name="DataComp's evaluate.py", log_path=log_path)
    left = unevaluated(results_file)
    if left:
        raise OutputCheckError(
            f"evaluate.py finished but {results_file} lacks {len(left)} task(s): {', '.join(left)}"
        )
    results = read_results(results_file)
    if not results.complete:
        raise OutputCheckError(f"evaluate.py finished but {results_file} cannot be averaged: {results.problems()}")
    return results
