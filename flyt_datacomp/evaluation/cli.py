"""The ``flyt-datacomp eval`` command group: thin shells over the evaluation modules."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

import click

from ..commands import group
from ..errors import FlytInputError
from . import evaluate as evaluate_stage
from . import reshard as reshard_stage
from . import train as train_stage
from .datacomp import ENV_DIR, ENV_PYTHON, locate
from .pipeline import run_pipeline
from .report import SCORED, aggregate, find_results, format_scores, partial_scores, read_results, report_json

_LOG = click.Path(dir_okay=False, path_type=Path)
_DIR = click.Path(file_okay=False, path_type=Path)


def datacomp_options(f: Callable) -> Callable:
    """``--datacomp-dir`` and ``--datacomp-python``, resolved into a ``checkout`` argument."""
    f = click.option("--datacomp-python", metavar="PY",
                     help=f"Python of DataComp's environment [default: ${ENV_PYTHON}, else python].")(f)
    return click.option("--datacomp-dir", metavar="DIR",
                        help=f"A DataComp checkout [default: ${ENV_DIR}].")(f)


def passthrough(f: Callable) -> Callable:
    return click.argument("extra", nargs=-1, type=click.UNPROCESSED, metavar="[-- DATACOMP_ARGS...]")(f)


@group("eval")
def eval_group() -> None:
    """Evaluate a subset with DataComp's own scripts, run in DataComp's environment.

    Flags after `--` go to the DataComp script unchanged.
    """


@eval_group.command("reshard")
@click.argument("subset", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--shards-dir", required=True, metavar="URL", help="The pool's img2dataset image shards.")
@click.option("--output-dir", required=True, type=_DIR, help="Where the resharded shards go (absent or empty).")
@click.option("--workers", type=int, help="Resharder processes (-j) [default: CPU count].")
@click.option("--shuffle-bufsize", type=int,
              help=f"Shuffle buffer per worker, in samples; 0 = off [default: "
                   f"{reshard_stage.PAPER_SHUFFLE_BUFSIZE:,} when uids repeat, else 0].")
@click.option("--verify-copies", is_flag=True, help="Also read the output tars and check every uid's copies.")
@click.option("--overwrite", is_flag=True, help="Empty a non-empty --output-dir first.")
@click.option("--log", "log_path", type=_LOG, help="Also write the resharder's whole output to this file.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@datacomp_options
@passthrough
def reshard_command(subset: Path, shards_dir: str, output_dir: Path, workers: int | None,
                    shuffle_bufsize: int | None, verify_copies: bool, overwrite: bool, log_path: Path | None,
                    quiet: bool, datacomp_dir: str | None, datacomp_python: str | None,
                    extra: tuple[str, ...]) -> None:
    """Reshard the pool's image shards to SUBSET.npy with DataComp's resharder.py, then check that
    it wrote one sample per subset entry with an image."""
    checkout = locate(datacomp_dir, datacomp_python)
    reshard_stage.reshard(checkout, subset, shards_dir, output_dir, workers=workers,
                          shuffle_bufsize=shuffle_bufsize, overwrite=overwrite, verify_copies=verify_copies,
                          extra_args=extra, log_path=log_path, progress=not quiet)
    click.echo(f"resharded: {output_dir}")


@eval_group.command("train")
@click.option("--data-dir", required=True, metavar="DIR", help="Resharded shards (the output of `eval reshard`).")
@click.option("--scale", required=True, help="A scale of the checkout's scale_configs.py (debug, small, ...).")
@click.option("--output-dir", required=True, type=_DIR, help="train.py's --output_dir.")
@click.option("--exp-name", required=True, help="Experiment name: outputs go to OUTPUT_DIR/EXP_NAME.")
@click.option("--num-gpus", type=int, default=1, show_default=True, help="GPUs; more than 1 runs through torchrun.")
@click.option("--resume", is_flag=True, help="Continue the experiment in OUTPUT_DIR/EXP_NAME from its latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Delete OUTPUT_DIR/EXP_NAME first and train from scratch.")
@click.option("--log", "log_path", type=_LOG, help="Also write train.py's whole output to this file.")
@datacomp_options
@passthrough
def train_command(data_dir: str, scale: str, output_dir: Path, exp_name: str, num_gpus: int, resume: bool,
                  overwrite: bool, log_path: Path | None, datacomp_dir: str | None,
                  datacomp_python: str | None, extra: tuple[str, ...]) -> None:
    """Train DataComp's fixed CLIP recipe for a scale on resharded data with DataComp's train.py."""
    _exclusive(resume, overwrite)
    checkout = locate(datacomp_dir, datacomp_python)
    record = train_stage.train(checkout, data_dir, scale, output_dir, exp_name, num_gpus=num_gpus, resume=resume,
                               overwrite=overwrite, extra_args=extra, log_path=log_path)
    click.echo(f"trained: {record['checkpoint']}")


@eval_group.command("evaluate")
@click.option("--train-output-dir", required=True, type=_DIR, help="OUTPUT_DIR/EXP_NAME of a finished train.py run.")
@click.option("--data-dir", required=True, type=_DIR, help="The evaluation sets (DataComp's download_evalsets.py).")
@click.option("--resume", is_flag=True, help="Evaluate only the tasks the results file lacks.")
@click.option("--overwrite", is_flag=True, help="Delete the results file first and evaluate every task.")
@click.option("--log", "log_path", type=_LOG, help="Also write evaluate.py's whole output to this file.")
@datacomp_options
@passthrough
def evaluate_command(train_output_dir: Path, data_dir: Path, resume: bool, overwrite: bool,
                     log_path: Path | None, datacomp_dir: str | None, datacomp_python: str | None,
                     extra: tuple[str, ...]) -> None:
    """Evaluate a trained model on DataComp's 40 tasks with DataComp's evaluate.py, then report."""
    _exclusive(resume, overwrite)
    checkout = locate(datacomp_dir, datacomp_python)
    results = evaluate_stage.evaluate(checkout, train_output_dir, data_dir, resume=resume, overwrite=overwrite,
                                      extra_args=extra, log_path=log_path)
    click.echo(format_scores(aggregate(results)))


@eval_group.command("report")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report_command(path: Path, as_json: bool) -> None:
    """The paper's Table-1 columns (ImageNet, ImageNet dist. shifts, VTAB, Retrieval, Average over
    38 tasks) of an eval_results.jsonl, or of the one in a train output folder.

    The numbers are those of DataComp's aggregate_scores.py; an incomplete file is an error that
    names the missing tasks."""
    results = read_results(find_results(path))
    if as_json:
        click.echo(json.dumps(report_json(results), indent=2))
    else:
        click.echo(format_scores(aggregate(results) if results.complete else partial_scores(results)))
    if not results.complete:
        raise FlytInputError(f"{results.path} is incomplete, no average: {results.problems()}")
    click.echo(f"({len(SCORED)} tasks from {results.path})", err=True)


@eval_group.command("run")
@click.argument("subset", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--shards-dir", required=True, metavar="URL", help="The pool's img2dataset image shards.")
@click.option("--scale", required=True, help="A scale of the checkout's scale_configs.py.")
@click.option("--work-dir", required=True, type=_DIR, help="Holds every stage's output; rerun to resume.")
@click.option("--evalsets", required=True, type=_DIR, help="The evaluation sets (DataComp's download_evalsets.py).")
@click.option("--exp-name", default="flyt", show_default=True, help="Experiment name under WORK_DIR/train.")
@click.option("--workers", type=int, help="Resharder processes [default: CPU count].")
@click.option("--shuffle-bufsize", type=int, help="Resharder shuffle buffer per worker [default: 1.5M when uids repeat].")
@click.option("--num-gpus", type=int, default=1, show_default=True, help="GPUs for train.py (torchrun when > 1).")
@click.option("--verify-copies", is_flag=True, help="Check every uid's copies in the resharded tars.")
@click.option("--reshard-args", default="", metavar="ARGS", help="Extra resharder.py flags, one quoted string.")
@click.option("--train-args", default="", metavar="ARGS", help="Extra train.py flags, one quoted string.")
@click.option("--evaluate-args", default="", metavar="ARGS", help="Extra evaluate.py flags, one quoted string.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@datacomp_options
def run_command(subset: Path, shards_dir: str, scale: str, work_dir: Path, evalsets: Path, exp_name: str,
                workers: int | None, shuffle_bufsize: int | None, num_gpus: int, verify_copies: bool,
                reshard_args: str, train_args: str, evaluate_args: str, quiet: bool,
                datacomp_dir: str | None, datacomp_python: str | None) -> None:
    """Reshard, train, evaluate and report SUBSET.npy, skipping the stages already complete in
    WORK_DIR, and write WORK_DIR/submission/."""
    checkout = locate(datacomp_dir, datacomp_python)
    run_pipeline(checkout, subset, shards_dir, scale, work_dir, evalsets, exp_name=exp_name, workers=workers,
                 shuffle_bufsize=shuffle_bufsize, num_gpus=num_gpus, verify_copies=verify_copies,
                 reshard_args=_split(reshard_args, "--reshard-args"), train_args=_split(train_args, "--train-args"),
                 evaluate_args=_split(evaluate_args, "--evaluate-args"), progress=not quiet)


def _exclusive(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise FlytInputError("--resume and --overwrite exclude each other")


def _split(text: str, option: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise FlytInputError(f"{option}: {exc}") from None


__all__ = ["eval_group"]
