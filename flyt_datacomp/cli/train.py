"""``flyt-datacomp train`` (also ``python -m flyt_datacomp.train``): train an M-FLYT or E-FLYT scoring model.

Settings come from a preset (``--preset``), then an optional JSON/YAML ``--config`` file, then the
options given here: one flag per field of :class:`~flyt_datacomp.flyt.config.TrainConfig`, made
from the dataclass (type from the annotation, help, choices, spelling and old spellings from the
field's metadata). Runs on one CPU/GPU, or on many GPUs under
``torchrun --nproc_per_node N -m flyt_datacomp.train ...``. Rerunning the same command on the same
``--output-dir`` resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from typing import Any

import click

from ..errors import FlytInputError
from ..flyt.config import PRESET_DESCRIPTIONS, PRESETS, TrainConfig, build_config, load_config_file
from . import options as O
from .base import command, option


class _FieldChoice(click.Choice):
    """``click.Choice`` whose error also names the TrainConfig field (its name in a --config file)."""

    def __init__(self, choices, field_name: str):
        super().__init__(choices)
        self.field_name = field_name

    def fail(self, message: str, param=None, ctx=None):
        super().fail(f"{message} (training option {self.field_name})", param, ctx)


def _comma_list(ctx, param, value: str | None) -> list[str] | None:
    return None if value is None else [s.strip() for s in value.split(",") if s.strip()]


def field_flag(name: str) -> str:
    """The command-line flag of a TrainConfig field: ``batch_size`` -> ``--batch-size`` (or the
    field's own ``flag``: ``shuffle_buffer`` -> ``--shuffle-bufsize``)."""
    f = next((f for f in dataclasses.fields(TrainConfig) if f.name == name), None)
    return (f.metadata.get("flag") if f is not None else None) or "--" + name.replace("_", "-")


def _option(f: dataclasses.Field, annotation: Any):
    """The click option of one TrainConfig field; unset (None) unless given, so presets and config
    files keep their values."""
    flag, doc = field_flag(f.name), f.metadata["help"]
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if default not in (None, []):
        doc = f"{doc}  [default: {default}]"
    base = annotation
    if typing.get_origin(base) in (typing.Union, types.UnionType):  # Optional[X]: the flag takes an X
        (base,) = [a for a in typing.get_args(base) if a is not type(None)]
    if base is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=doc)
    aliases, metavar = tuple(f.metadata.get("aliases", ())), f.metadata.get("metavar")
    if typing.get_origin(base) is list:
        return option(flag, f.name, aliases=aliases, type=str, default=None, callback=_comma_list, metavar="A,B,...",
                      help=doc)
    if base not in (str, int, float):
        raise TypeError(f"TrainConfig.{f.name}: no command-line type for {annotation!r}")
    choices = f.metadata.get("choices")
    return option(flag, f.name, aliases=aliases, type=_FieldChoice(choices, f.name) if choices else base,
                  default=None, metavar=metavar, help=doc)


def config_options(fn):
    """Decorate ``fn`` with one option per TrainConfig field, in the dataclass's order."""
    hints = typing.get_type_hints(TrainConfig)
    for f in reversed(dataclasses.fields(TrainConfig)):
        fn = _option(f, hints[f.name])(fn)
    return fn


def _preset_help() -> str:
    lines = [f"{name}: {PRESET_DESCRIPTIONS.get(name, '')}".rstrip(": ") for name in PRESETS]
    return "Start from a named configuration. " + "; ".join(lines) + "."


@command("train")
@option("--preset", type=click.Choice(list(PRESETS)), help=_preset_help())
@option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON or YAML file of options.")
@O.output_dir(required=True, help="Checkpoints, metrics.jsonl, the final scoring model (rerun to resume). A new "
              "or empty folder, or one of this command's runs (it holds flyt_run.json).")
@O.overwrite(help="Empty --output-dir first (only a run of this command) and train from scratch.")
@O.demo_version(help="With a demo preset: the demo pool's version.")
@O.quiet()
@config_options
def train_command(preset: str | None, config_file: str | None, output_dir: str, overwrite: bool,
                  demo_version: str | None, quiet: bool, **opts: Any) -> None:
    """Train a FLYT scoring model (M-FLYT or E-FLYT) by the paper's bilevel method."""
    from ..flyt import distributed as D
    from ..flyt.run_folder import check_run_folder, run_folder, take_run_folder
    from ..flyt.signal import format_signal_table
    from ..flyt.trainer import Trainer, format_mixing_weights
    from ..process import install_signal_handlers

    install_signal_handlers()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("flyt_datacomp").setLevel(logging.WARNING if quiet else logging.INFO)
    cfg = config_from_options(preset, config_file, opts, progress=not quiet, demo_version=demo_version)
    if preset in PRESET_DESCRIPTIONS:
        logging.getLogger(__name__).info("preset %s: %s", preset, PRESET_DESCRIPTIONS[preset])
    cfg.validate()
    folder = run_folder(cfg, output_dir)
    check_run_folder(folder, overwrite=overwrite)
    D.init_from_env()
    try:
        if D.rank(D.default_group()) == 0:
            take_run_folder(folder, overwrite=overwrite)
        D.barrier()
        result = Trainer(cfg, output_dir, progress=not quiet).run()
        is_main = D.rank(D.default_group()) == 0
    finally:
        D.shutdown()
    if is_main:
        click.echo(f"scoring model: {result['scoring_model']}")
        if "selected_step" in result:
            click.echo(f"(the checkpoint of step {result['selected_step']}: the largest validation gain)")
        if result.get("signal"):
            click.echo(format_signal_table(result["signal"], title="what the meta-gradient asked of each input, "
                                                                    "over the run:"))
            if "signal_plot" in result:
                click.echo(f"plot of the weights and pulls over the steps: {result['signal_plot']}")
        elif "mixing_weights" in result:
            click.echo(format_mixing_weights(result["mixing_weights"]))


def config_from_options(preset: str | None, config_file: str | None, options: dict[str, Any], *,
                        progress: bool = True, demo_version: str | None = None) -> TrainConfig:
    """The TrainConfig of a command line: the preset, then the config file, then the flags given
    (``options``: the flags' values by field name, None where a flag was not given)."""
    from ..demo import DEMO_PRESETS, STORE_PRESETS, build_demo_pool

    if demo_version is not None and preset not in DEMO_PRESETS:
        raise FlytInputError(f"--demo-version applies with a demo preset ({', '.join(DEMO_PRESETS)})")
    file_values = load_config_file(config_file) if config_file else {}
    if preset in DEMO_PRESETS:
        demo = build_demo_pool(version=demo_version, progress=progress)
        file_values = {**demo.train_paths(), **file_values}
        if preset in STORE_PRESETS and "inputs_dir" not in file_values and options.get("inputs_dir") is None:
            file_values["inputs_dir"] = str(demo.input_store(progress=progress))
    return build_config(preset, file_values, options)


def main() -> None:
    train_command(prog_name="python -m flyt_datacomp.train")
