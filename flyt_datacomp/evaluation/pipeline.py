"""``eval run``: reshard, train, evaluate and report a subset, resumably, and prepare a submission.

Work folder layout::

    WORK/reshard/            resharded shards + flyt_reshard.json (written once the count check passed)
    WORK/train/NAME/         train.py's output + flyt_train.json (written once training finished);
                             evaluate.py appends NAME/eval_results.jsonl here
    WORK/logs/               each stage's full output
    WORK/submission/         what a leaderboard entry needs

A stage whose output is complete is skipped, so a crashed run is resumed by running the same
command again: a partial reshard is redone from scratch, train.py resumes from its latest
checkpoint, evaluate.py evaluates only the tasks not yet in the results file. A work folder made
for another subset or scale is refused rather than reused.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..console import say
from ..errors import FlytInputError
from ..folders import OutputFolder
from ..io import atomic_path, provenance, read_json_or_none, sidecar_path, write_json
from ..uids import read_subset
from . import evaluate as evaluate_stage
from . import reshard as reshard_stage
from . import train as train_stage
from .datacomp import Checkout, refuse_managed_flags
from .report import RESULTS_FILE, aggregate, format_scores, read_results


@dataclasses.dataclass(frozen=True)
class Layout:
    """The folders of one ``eval run`` work folder."""

    root: Path
    exp_name: str

    @property
    def resharded(self) -> Path:
        return self.root / "reshard"

    @property
    def train_output(self) -> Path:
        return self.root / "train"

    @property
    def experiment(self) -> Path:
        return self.train_output / self.exp_name

    @property
    def results(self) -> Path:
        return self.experiment / RESULTS_FILE

    @property
    def submission(self) -> Path:
        return self.root / "submission"

    def log(self, stage: str) -> Path:
        return self.root / "logs" / f"{stage}.log"


def _stage(title: str) -> None:
    say(f"== {title}")


def work_folder(checkout: Checkout, subset: Path, shards_dir: str, work_dir: Path, evalsets: Path) -> OutputFolder:
    """The work folder itself, which (like each stage's folder inside it) must be neither the root nor
    the home folder and must lie apart from every input: the subset file, the shards, the evaluation
    sets and the DataComp checkout. ``eval run`` never empties it, so it carries no marker."""
    return OutputFolder(work_dir, "eval run", (), inputs={"the subset file": subset, "shards_dir": shards_dir,
                                                          "evalsets_dir": evalsets,
                                                          "the DataComp checkout": checkout.root})


def finished_reshard(layout: Layout, subset: Path, subset_sha: str) -> dict[str, Any] | None:
    """The record of a checked reshard of this subset in the work folder; refuses another subset's."""
    record = reshard_stage.read_record(layout.resharded)
    if record is not None and record["inputs"]["subset_sha256"] != subset_sha:
        raise FlytInputError(
            f"{layout.resharded} holds the shards of another subset ({record['inputs']['subset']}), not "
            f"{subset}; use another `output_dir` for this subset", params=["output_dir"]
        )
    return record


def finished_training(layout: Layout, scale: str) -> dict[str, Any] | None:
    """The record of a finished training run at this scale; refuses one at another scale."""
    record = train_stage.read_record(layout.experiment)
    if record is not None and record["parameters"]["scale"] != scale:
        raise FlytInputError(
            f"{layout.experiment} was trained at scale {record['parameters']['scale']}, not {scale}; "
            "use another `output_dir` or `exp_name`", params=["output_dir", "exp_name"]
        )
    return record


def check_prerequisites(checkout: Checkout, scale: str, evalsets: Path, *, reshard: bool, train: bool,
                        evaluate: bool) -> None:
    """What the stages still to run need, checked before the first one starts."""
    if reshard:
        checkout.script("resharder.py")
        checkout.require_old_webdataset()
    if train:
        checkout.script("train.py")
        checkout.scale_config(scale)
    if train or evaluate:
        checkout.require_torch("train.py" if train else "evaluate.py")
    if evaluate:
        checkout.script("evaluate.py")
        if not evalsets.is_dir():
            raise FlytInputError(f"`evalsets_dir` {evalsets} does not exist: download the evaluation sets there "
                                 "with DataComp's download_evalsets.py", params=["evalsets_dir"])


def check_pass_through(reshard_args: Sequence[str], train_args: Sequence[str], evaluate_args: Sequence[str]) -> None:
    """Refuse, before the first stage, script flags that would override what the stages pass
    themselves (evaluate.py's ``--output_dir`` too: the results belong in the work folder)."""
    refuse_managed_flags(reshard_args, reshard_stage.MANAGED_FLAGS, "resharder.py")
    refuse_managed_flags(train_args, train_stage.MANAGED_FLAGS, "train.py")
    refuse_managed_flags(evaluate_args, {**evaluate_stage.MANAGED_FLAGS, "--output_dir": "output_dir"}, "evaluate.py")


def run_pipeline(
    checkout: Checkout,
    subset: Path,
    shards_dir: str,
    scale: str,
    work_dir: Path,
    evalsets: Path,
    *,
    exp_name: str = "flyt",
    workers: int | None = None,
    shuffle_bufsize: int | None = None,
    num_gpus: int = 1,
    verify_copies: bool = False,
    reshard_args: Sequence[str] = (),
    train_args: Sequence[str] = (),
    evaluate_args: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Run the missing stages in order; return the submission record."""
    train_stage.check_exp_name(exp_name)
    check_pass_through(reshard_args, train_args, evaluate_args)
    work_folder(checkout, subset, shards_dir, work_dir, evalsets).check_place()
    read_subset(subset)
    layout = Layout(work_dir, exp_name)
    resharded = finished_reshard(layout, subset, reshard_stage.file_sha256(subset))
    trained = finished_training(layout, scale)
    evaluated = not evaluate_stage.unevaluated(layout.results)
    check_prerequisites(checkout, scale, evalsets, reshard=resharded is None, train=trained is None,
                        evaluate=not evaluated)
    # the folders the stages still to run will write (or empty), checked before the first one starts
    others = {"evalsets_dir": evalsets}
    if resharded is None:
        reshard_stage.output_folder(checkout, subset, shards_dir, layout.resharded, others).check(overwrite=True)
    if trained is None:
        train_stage.check_experiment(checkout, layout.experiment, train_stage.started_with(
            scale, str(layout.resharded.resolve()), train_args), overwrite=False)

    _stage("reshard")
    if resharded is not None:
        say(f"complete ({resharded['written']['samples']:,} samples in {layout.resharded}), skipped")
    else:
        resharded = reshard_stage.reshard(
            checkout, subset, shards_dir, layout.resharded, workers=workers, shuffle_bufsize=shuffle_bufsize,
            overwrite=True, verify_copies=verify_copies, extra_args=reshard_args,
            log_path=layout.log("reshard"), progress=progress, other_inputs=others,
        )

    _stage("train")
    if trained is not None:
        say(f"complete ({trained['checkpoint']}), skipped")
    else:
        trained = train_stage.train(
            checkout, str(layout.resharded.resolve()), scale, layout.train_output, exp_name, num_gpus=num_gpus,
            extra_args=train_args, log_path=layout.log("train"),
        )

    _stage("evaluate")
    if evaluated:
        evaluate_stage.prepare_results_file(layout.results, {"evalsets_dir": evalsets,
                                                             "the DataComp checkout": checkout.root}, overwrite=False)
        say(f"complete ({layout.results}), skipped")
    else:
        evaluate_stage.evaluate(checkout, layout.experiment, evalsets, extra_args=evaluate_args,
                                log_path=layout.log("evaluate"))

    _stage("report")
    scores = aggregate(read_results(layout.results))
    say(format_scores(scores))
    submission = write_submission(layout, checkout, subset, resharded, trained, scores)
    _stage(f"submission: {layout.submission}")
    say(f"dataset size: {submission['dataset_size']:,} (the subset's entries)")
    say("to submit, fill in the placeholders and run:")
    say(f"  {submission['submit_command']}")
    return submission


def _copy(src: Path, dst: Path, info: dict[str, Any]) -> None:
    """Copy ``src`` to ``dst`` atomically and give it a sidecar."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        write_json(sidecar_path(dst), provenance(output=str(dst), source=str(src), **info))


def write_submission(layout: Layout, checkout: Checkout, subset: Path, reshard_record: dict[str, Any],
                     train_record: dict[str, Any], scores: dict[str, float]) -> dict[str, Any]:
    """Results, the subset file and the ``--dataset-size`` value for DataComp's ``evaluate.py --submit``.

    The dataset size is the subset's number of entries (repetitions included): what the uploaded
    sample file holds and what DataComp's baselines report (their sizes count the selected pool
    entries, not the images a participant happened to download). Without it, evaluate.py shows the
    scale's number of samples seen instead.
    """
    out = layout.submission
    out.mkdir(parents=True, exist_ok=True)
    coverage = reshard_record["coverage"]
    original = sidecar_path(subset)
    _copy(layout.results, out / "results.jsonl", {"scores": scores})
    samples = out / "samples" / subset.name
    _copy(subset, samples, {
        "subset_sha256": reshard_record["inputs"]["subset_sha256"],
        "subset_sidecar": read_json_or_none(original),
    })
    size = int(coverage["entries"])
    command = shlex.join([
        checkout.python, str(checkout.root / "evaluate.py"), "--track=filtering",
        f"--train_output_dir={layout.experiment.resolve()}",
        f"--samples={samples.resolve()}", f"--dataset-size={size}", "--submit",
        "--method_name=<METHOD>", "--author=<AUTHORS>", "--email=<EMAIL>",
        "--hf_username=<HF_USER>", "--hf_repo_name=<HF_REPO>",
    ])
    record = provenance(
        output=str(out),
        scale=train_record["parameters"]["scale"],
        model=train_record["scale_config"].get("model"),
        checkpoint=train_record["checkpoint"],
        dataset_size=size,
        subset={"entries": size, "distinct_uids": coverage["distinct_uids"],
                "entries_with_image": size - int(coverage["entries_without_image"]),
                "samples_resharded": reshard_record["written"]["samples"]},
        scores=scores,
        files={"results": "results.jsonl", "samples": f"samples/{subset.name}"},
        submit_command=command,
    )
    write_json(out / "submission.json", record)
    return record
