"""``python -m flyt_datacomp.train`` (also ``flyt-datacomp train``): train an M-FLYT or E-FLYT scoring model.

Settings come from a preset (``--preset m-flyt-base | e-flyt-base | m-flyt-demo``), then an
optional JSON/YAML ``--config`` file, then the options given here. Runs on one CPU/GPU, or on many
GPUs under ``torchrun --nproc_per_node N -m flyt_datacomp.train ...``. Rerunning the same command
on the same ``--output-dir`` resumes from the latest checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from .commands import command
from .flyt.config import PRESETS, build_config, load_config_file


def _options(fn):
    specs = [
        ("--model", str, "m-flyt or e-flyt"),
        ("--inputs", str, "M-FLYT input score columns, comma separated"),
        ("--embedding-prefix", str, "E-FLYT npz embedding prefix (b32 -> b32_img, b32_txt)"),
        ("--metadata-dir", str, "pool metadata folder (any fsspec URL)"),
        ("--shards-dir", str, "pool image shards (img2dataset layout)"),
        ("--downstream-dir", str, "labelled downstream shards (jpg + cls)"),
        ("--classes", str, "class names/templates: imagenet, digits or a JSON file"),
        ("--reference-arch", str, "open_clip architecture of the reference model, or 'tiny'"),
        ("--reference-checkpoint", str, "local checkpoint to initialise the reference model"),
        ("--reference-pretrained", str, "open_clip pretrained tag (weights must be reachable)"),
        ("--reference-pretrain-steps", int, "plain CLIP steps on the pool before FLYT"),
        ("--steps", int, "FLYT steps"),
        ("--warmup-steps", int, "linear warmup steps of both cosine schedules"),
        ("--batch-size", int, "upstream batch B (global)"),
        ("--downstream-batch-size", int, "downstream batch B' (global)"),
        ("--reference-lr", float, "reference model learning rate"),
        ("--scoring-lr", float, "scoring model learning rate"),
        ("--weight-decay", float, "AdamW weight decay (>= 2-dim weights)"),
        ("--downstream-loss", str, "ce, ce_temp or clip"),
        ("--micro-batch-size", int, "encoder chunk size (GradCache-style) to fit big batches"),
        ("--precision", str, "auto, fp32 or bf16"),
        ("--device", str, "auto, cpu, cuda, cuda:1 ..."),
        ("--workers", int, "data loading workers"),
        ("--shuffle-buffer", int, "shuffle buffer size (samples)"),
        ("--seed", int, "seed for everything random"),
        ("--checkpoint-every", int, "steps between checkpoints"),
    ]
    for flag, typ, help_ in reversed(specs):
        fn = click.option(flag, type=typ, default=None, help=help_)(fn)
    return fn


@command("train")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="Start from a named configuration.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON or YAML file of options.")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoints, metrics.jsonl, the final scoring model.")
@click.option("--tensorboard", is_flag=True, default=None, help="Also log to TensorBoard.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_options
def train_command(preset: str | None, config_file: str | None, output_dir: Path, quiet: bool, **opts: Any) -> None:
    """Train a FLYT scoring model (M-FLYT or E-FLYT) by the paper's bilevel method."""
    from .flyt import distributed as D
    from .flyt.trainer import Trainer, format_mixing_weights
    from .process import install_signal_handlers

    install_signal_handlers()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("flyt_datacomp").setLevel(logging.WARNING if quiet else logging.INFO)
    if opts.get("inputs"):
        opts["inputs"] = [s.strip() for s in opts["inputs"].split(",") if s.strip()]
    file_values = load_config_file(config_file) if config_file else {}
    if preset == "m-flyt-demo":
        from .demo import build_demo_pool

        file_values = {**demo_paths(build_demo_pool(progress=not quiet)), **file_values}
    cfg = build_config(preset, file_values, opts)
    D.init_from_env()
    try:
        result = Trainer(cfg, output_dir, progress=not quiet).run()
        is_main = D.rank(D.default_group()) == 0
    finally:
        D.shutdown()
    if is_main:
        click.echo(f"scoring model: {result['scoring_model']}")
        if "mixing_weights" in result:
            click.echo(format_mixing_weights(result["mixing_weights"]))


def demo_paths(demo) -> dict[str, str]:
    """The m-flyt-demo preset's data and reference-model paths inside a built demo pool."""
    return {
        "metadata_dir": str(demo.metadata_dir),
        "shards_dir": str(demo.shards_dir),
        "downstream_dir": str(demo.downstream_dir),
        "classes": str(demo.classes_path),
        "reference_checkpoint": str(demo.reference_checkpoint),
    }


def main() -> None:
    train_command(prog_name="python -m flyt_datacomp.train")


if __name__ == "__main__":
    main()
