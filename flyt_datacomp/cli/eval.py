"""``flyt-datacomp eval``: thin shells over the evaluation modules (DataComp's own scripts)."""

from __future__ import annotations

import functools
import json
import shlex
from collections.abc import Callable
from pathlib import Path

import click

from ..errors import FlytInputError
from ..evaluation import evaluate as evaluate_stage
from ..evaluation import reshard as reshard_stage
from ..evaluation import train as train_stage
from ..evaluation.datacomp import ENV_DIR, ENV_PYTHON, locate
from ..evaluation.pipeline import run_pipeline
from ..evaluation.report import SCORED, TASKS, aggregate, find_results, format_scores, partial_scores, read_results, report_json
from ..io import local_path
from ..scales import SCALES
from . import options as O
from .base import group, option

_LOG = click.Path(dir_okay=False, path_type=Path)


def datacomp_options(f: Callable) -> Callable:
    """``--datacomp-dir`` and ``--datacomp-python``, resolved into a ``checkout`` argument."""
    f = option("--datacomp-python", metavar="PY",
               help=f"Python of DataComp's environment [default: ${ENV_PYTHON}, else python].")(f)
    return option("--datacomp-dir", metavar="DIR", help=f"A DataComp checkout [default: ${ENV_DIR}].")(f)


def passthrough(f: Callable) -> Callable:
    return click.argument("extra", nargs=-1, type=click.UNPROCESSED, metavar="[-- DATACOMP_ARGS...]")(f)


def scale_option(f: Callable) -> Callable:
    return option("--scale", required=True, type=click.Choice(list(SCALES)),
                  help="The DataComp scale (its scale_configs.py recipe).")(f)


def num_gpus_option(f: Callable) -> Callable:
    return option("--num-gpus", type=click.IntRange(min=1), default=None,
                  help="GPUs for train.py, through torchrun when more than 1 [default: every visible GPU, at least 1].")(f)


def rerun_options(*, overwrite: str, log: str) -> Callable:
    """``--overwrite`` and ``--log`` for a stage that a rerun resumes, and the hidden ``--resume`` that old
    command lines pass (it is what a rerun does anyway, so it only conflicts with ``--overwrite``)."""
    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def command(*args, resume: bool, **kwargs):
            if resume and kwargs["overwrite"]:
                raise FlytInputError("--resume and --overwrite exclude each other")
            return f(*args, **kwargs)

        command = option("--log", "log_path", type=_LOG, help=log)(command)
        command = O.overwrite(help=overwrite)(command)
        return option("--resume", is_flag=True, hidden=True,
                      help="Accepted for old command lines: a rerun resumes anyway.")(command)
    return decorate


def _gpus(num_gpus: int | None) -> int:
    if num_gpus is not None:
        return num_gpus
    import torch

    return max(1, torch.cuda.device_count() if torch.cuda.is_available() else 0)



@group("eval")
def eval_group() -> None:
    """Evaluate a subset with DataComp's own scripts, run in DataComp's environment.

    Flags after `--` go to the DataComp script unchanged.
    """


@eval_group.command("reshard")
@click.argument("subset", type=click.Path(dir_okay=False, path_type=Path))
@O.shards_dir(required=True, help="The pool's img2dataset image shards.")
@O.output_dir(required=True, help="Where the resharded shards go (absent or empty).")
@O.workers(default=None, aliases=(), help="Resharder processes (-j) [default: CPU count].")
@option("--shuffle-bufsize", type=int,
        help=f"Shuffle buffer per worker, in samples; 0 = off [default: "
             f"{reshard_stage.PAPER_SHUFFLE_BUFSIZE:,} when uids repeat, else 0].")
@option("--verify-copies", is_flag=True, help="Also read the output tars and check every uid's copies.")
@O.overwrite(help="Empty a non-empty --output-dir first (only a folder a previous reshard wrote).")
@option("--log", "log_path", type=_LOG, help="Also write the resharder's whole output to this file.")
@O.quiet()
@datacomp_options
@passthrough
def reshard_command(subset: Path, shards_dir: str, output_dir: str, workers: int | None,
                    shuffle_bufsize: int | None, verify_copies: bool, overwrite: bool, log_path: Path | None,
                    quiet: bool, datacomp_dir: str | None, datacomp_python: str | None,
                    extra: tuple[str, ...]) -> None:
    """Reshard the pool's image shards to SUBSET.npy with DataComp's resharder.py, then check that
    it wrote one sample per subset entry with an image."""
    checkout = locate(datacomp_dir, datacomp_python)
    reshard_stage.reshard(checkout, subset, shards_dir, local_path(output_dir, "--output-dir"), workers=workers,
                          shuffle_bufsize=shuffle_bufsize, overwrite=overwrite, verify_copies=verify_copies,
                          extra_args=extra, log_path=log_path, progress=not quiet)
    click.echo(f"resharded: {output_dir}")


@eval_group.command("train")
@option("--resharded-dir", "resharded_dir", aliases=("--data-dir",), required=True, metavar="DIR",
        help="The resharded shards (the --output-dir of `eval reshard`).")
@scale_option
@O.output_dir(required=True, help="train.py's --output_dir; the run goes to OUTPUT_DIR/EXP_NAME.")
@option("--exp-name", required=True, help="Experiment name: a plain folder name under --output-dir.")
@num_gpus_option
@rerun_options(overwrite="Delete OUTPUT_DIR/EXP_NAME first (only a run of this command) and train from scratch "
                         "(a rerun without it resumes).", log="Also write train.py's whole output to this file.")
@datacomp_options
@passthrough
def train_command(resharded_dir: str, scale: str, output_dir: str, exp_name: str, num_gpus: int | None,
                  overwrite: bool, log_path: Path | None, datacomp_dir: str | None,
                  datacomp_python: str | None, extra: tuple[str, ...]) -> None:
    """Train DataComp's fixed CLIP recipe for a scale on resharded data with DataComp's train.py
    (rerun the same command to resume from the latest checkpoint)."""
    checkout = locate(datacomp_dir, datacomp_python)
    record = train_stage.train(checkout, resharded_dir, scale, local_path(output_dir, "--output-dir"), exp_name,
                               num_gpus=_gpus(num_gpus), overwrite=overwrite, extra_args=extra, log_path=log_path)
    click.echo(f"trained: {record['checkpoint']}")


@eval_group.command("evaluate")
@option("--train-output-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
        help="OUTPUT_DIR/EXP_NAME of a finished train.py run.")
@option("--evalsets-dir", "evalsets_dir", aliases=("--data-dir",), required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="The evaluation sets (DataComp's download_evalsets.py).")
@rerun_options(overwrite="Delete the results file first and evaluate every task (a rerun without it evaluates "
                         "only the tasks the file lacks).", log="Also write evaluate.py's whole output to this file.")
@datacomp_options
@passthrough
def evaluate_command(train_output_dir: Path, evalsets_dir: Path, overwrite: bool,
                     log_path: Path | None, datacomp_dir: str | None, datacomp_python: str | None,
                     extra: tuple[str, ...]) -> None:
    """Evaluate a trained model with DataComp's evaluate.py (its task list; the report averages the
    38 scored tasks), then report."""
    checkout = locate(datacomp_dir, datacomp_python)
    results = evaluate_stage.evaluate(checkout, train_output_dir, evalsets_dir, overwrite=overwrite,
                                      extra_args=extra, log_path=log_path)
    click.echo(format_scores(aggregate(results)))


@eval_group.command("report")
@click.argument("path", type=click.Path(path_type=Path))
@option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report_command(path: Path, as_json: bool) -> None:
    """The paper's Table-1 columns (ImageNet, ImageNet dist. shifts, VTAB, Retrieval, Average over
    the 38 scored tasks) of an eval_results.jsonl, or of the one in a train output folder.

    The numbers are those of DataComp's aggregate_scores.py; an incomplete file is an error that
    names the missing tasks."""
    results = read_results(find_results(path))
    if as_json:
        click.echo(json.dumps(report_json(results), indent=2))
    else:
        click.echo(format_scores(aggregate(results) if results.complete else partial_scores(results)))
    if not results.complete:
        raise FlytInputError(f"{results.path} is incomplete, no average: {results.problems()}")
    click.echo(f"({len(SCORED)} scored tasks of {len(TASKS)} from {results.path})", err=True)


@eval_group.command("run")
@click.argument("subset", type=click.Path(dir_okay=False, path_type=Path))
@O.shards_dir(required=True, help="The pool's img2dataset image shards.")
@scale_option
@O.output_dir(required=True, aliases=("--work-dir",), help="Holds every stage's output; rerun to resume.")
@option("--evalsets-dir", "evalsets_dir", aliases=("--evalsets",), required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="The evaluation sets (DataComp's download_evalsets.py).")
@option("--exp-name", default="flyt", show_default=True, help="Experiment name under OUTPUT_DIR/train.")
@O.workers(default=None, aliases=(), help="Resharder processes [default: CPU count].")
@option("--shuffle-bufsize", type=int, help="Resharder shuffle buffer per worker [default: 1.5M when uids repeat].")
@num_gpus_option
@option("--verify-copies", is_flag=True, help="Check every uid's copies in the resharded tars.")
@option("--reshard-args", default="", metavar="ARGS", help="Extra resharder.py flags, one quoted string.")
@option("--train-args", default="", metavar="ARGS", help="Extra train.py flags, one quoted string.")
@option("--evaluate-args", default="", metavar="ARGS", help="Extra evaluate.py flags, one quoted string.")
@O.quiet()
@datacomp_options
def run_command(subset: Path, shards_dir: str, scale: str, output_dir: str, evalsets_dir: Path, exp_name: str,
                workers: int | None, shuffle_bufsize: int | None, num_gpus: int | None, verify_copies: bool,
                reshard_args: str, train_args: str, evaluate_args: str, quiet: bool,
                datacomp_dir: str | None, datacomp_python: str | None) -> None:
    """Reshard, train, evaluate and report SUBSET.npy, skipping the stages already complete in
    OUTPUT_DIR, and write OUTPUT_DIR/submission/."""
    checkout = locate(datacomp_dir, datacomp_python)
    run_pipeline(checkout, subset, shards_dir, scale, local_path(output_dir, "--output-dir"), evalsets_dir, exp_name=exp_name,
                 workers=workers, shuffle_bufsize=shuffle_bufsize, num_gpus=_gpus(num_gpus),
                 verify_copies=verify_copies, reshard_args=_split(reshard_args, "--reshard-args"),
                 train_args=_split(train_args, "--train-args"), evaluate_args=_split(evaluate_args, "--evaluate-args"),
                 progress=not quiet)


def _split(text: str, option: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise FlytInputError(f"{option}: {exc}") from None
