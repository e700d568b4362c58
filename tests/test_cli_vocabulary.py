"""Every command speaks one flag vocabulary (see flyt_datacomp/cli/options.py)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from flyt_datacomp.cli import main

# setting name -> the one flag every command uses for it
CANONICAL = {
    "metadata_dir": "--metadata-dir",
    "output": "--output",
    "output_dir": "--output-dir",
    "inputs_dir": "--inputs-dir",
    "shards_dir": "--shards-dir",
    "workers": "--workers",
    "io_threads": "--io-threads",
    "device": "--device",
    "seed": "--seed",
    "overwrite": "--overwrite",
    "quiet": "--quiet",
}
# spellings that shipped before, or DataComp's: they must still parse, but never show in --help
HIDDEN = {"--num-workers", "--num_workers", "--jobs", "--out", "--json", "--seeds", "--scs-batch", "--work-dir",
          "--evalsets", "--data-dir", "--save_path", "--metadata_dir", "--batch_size", "--num_gpus",
          "--image_based_scale", "--shuffle-buffer", "--datacomp-compatible", "--inputs"}


def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}".strip()
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path)
        else:
            yield path, cmd


COMMANDS = dict(_commands(main))


def _shown(opt: click.Option) -> list[str]:
    hidden = set(getattr(opt, "hidden_aliases", ()))
    return [o for o in [*opt.opts, *opt.secondary_opts] if o not in hidden]


def test_every_command_is_checked():
    assert {"filter", "baseline", "train", "downstream build", "inputs compute", "inputs show", "eval reshard",
            "eval train", "eval evaluate", "eval report", "eval run", "benchmark"} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_one_vocabulary(path):
    cmd = COMMANDS[path]
    for opt in (p for p in cmd.params if isinstance(p, click.Option) and not p.hidden):
        shown = _shown(opt)
        old = set(shown) & HIDDEN - ({"--json"} if opt.is_flag else set())  # eval report --json prints JSON
        assert not old, f"{path}: {shown} shows an old spelling"
        assert all(o.startswith("--") and "_" not in o for o in shown if o not in ("-h",)), f"{path}: {shown}"
        if opt.name in CANONICAL:
            assert shown[0] == CANONICAL[opt.name], f"{path}: {opt.name} is {shown[0]}, not {CANONICAL[opt.name]}"
        for flag, concept in CANONICAL.items():  # the canonical flag always means its concept
            if concept in shown:
                assert opt.name == flag, f"{path}: {concept} sets {opt.name}"
        if opt.name == "device":
            assert list(opt.type.choices) == ["auto", "cpu", "cuda"], path
        if opt.name == "seed":
            assert opt.type is click.INT or isinstance(opt.type, click.types.IntParamType), path
        if shown[0].endswith("-dir"):
            assert opt.name.endswith("_dir"), f"{path}: {shown[0]} is a folder flag"
        assert "issue" not in (opt.help or "").lower(), path


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_help_runs_and_shows_no_old_spelling(path):
    res = CliRunner().invoke(main, [*path.split(), "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    listed = [line.split()[0].rstrip(",") for line in res.output.split("Options:")[1].splitlines() if line.strip()]
    flags = {f for line in res.output.split("Options:")[1].splitlines() for f in line.replace(",", " ").split()
             if f.startswith("--")}
    assert listed and not (flags & HIDDEN - {"--json"}), f"{path} --help shows {flags & HIDDEN}"


@pytest.mark.parametrize("argv, dest, value", [
    (["filter", "--num_workers", "3"], "workers", 3),
    (["filter", "--num-workers", "3"], "workers", 3),
    (["filter", "--save_path", "x.npy"], "output", "x.npy"),
    (["filter", "--metadata_dir", "m"], "metadata_dir", "m"),
    (["filter", "--scs-batch", "7"], "scs_group_size", 7),
    (["filter", "--batch_size", "9"], "centroid_batch_size", 9),
    (["filter", "--image_based_scale", "small"], "image_based_scale", "small"),
    (["inputs", "compute", "--out", "s"], "inputs_dir", "s"),
    (["benchmark", "--seeds", "2"], "num_seeds", 2),
    (["benchmark", "--jobs", "2"], "workers", 2),
    (["benchmark", "--json", "t.json"], "output", "t.json"),
    (["eval", "run", "--work-dir", "w"], "output_dir", "w"),
    (["eval", "train", "--data-dir", "d"], "resharded_dir", "d"),
    (["eval", "evaluate", "--data-dir", "d"], "evalsets_dir", "d"),
    (["train", "--metadata_dir", "m"], "metadata_dir", "m"),
    (["train", "--shuffle-buffer", "5"], "shuffle_buffer", 5),
    (["train", "--inputs", "a,b"], "inputs", ["a", "b"]),
])
def test_old_spellings_still_parse(argv, dest, value):
    *names, flag, arg = argv
    group = main
    for n in names[:-1]:
        group = group.commands[n]
    cmd = group.commands[names[-1]]
    ctx = cmd.make_context(names[-1], [flag, arg], resilient_parsing=True)
    assert ctx.params[dest] == value or str(ctx.params[dest]) == value


# what each of these flags means in every command that has it: a word its help must hold, and words it must not
MEANINGS = {
    "--workers": ("process", ("thread",)),
    "--io-threads": ("thread", ("process",)),
    "--mixing-inputs": ("input", ()),
}
SUBSET_WRITERS = {"filter", "baseline"}  # --device cpu by default: a seed gives the same bytes on every machine


def _option(cmd, flag):
    return next((p for p in cmd.params if isinstance(p, click.Option) and flag in _shown(p)), None)


@pytest.mark.parametrize("flag", sorted(MEANINGS))
def test_one_meaning_per_flag_name(flag):
    """--workers is worker processes everywhere (threads are --io-threads), --mixing-inputs the inputs a
    mixing model mixes as a comma list; train's old --inputs is a hidden spelling of it."""
    word, never = MEANINGS[flag]
    having = {path: _option(cmd, flag) for path, cmd in COMMANDS.items() if _option(cmd, flag) is not None}
    assert len(having) >= 2 or flag == "--io-threads", (flag, sorted(having))
    for path, opt in having.items():
        text = (opt.help or "").lower()
        assert word in text and not any(w in text for w in never), (path, flag, opt.help)
        if flag == "--mixing-inputs":
            assert opt.metavar == "A,B,..." and not opt.multiple, path
    assert {p for p, cmd in COMMANDS.items() if _option(cmd, "--mixing-inputs")} >= {"train", "filter", "baseline"}
    assert not [p for p, cmd in COMMANDS.items() if _option(cmd, "--inputs")]  # shown nowhere


def test_device_defaults_follow_one_rule():
    for path, cmd in COMMANDS.items():
        opt = _option(cmd, "--device")
        if opt is None:
            continue
        default = opt.default if opt.default in ("auto", "cpu", "cuda") else (opt.help or "").split("[default: ")[-1][:4]
        assert default.rstrip("]") == ("cpu" if path in SUBSET_WRITERS else "auto"), (path, default)
