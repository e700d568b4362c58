"""The training command line: one generated flag per TrainConfig field, and the faithful presets."""

import dataclasses
import typing

import pytest
from click.testing import CliRunner

import flyt_datacomp.flyt.trainer as trainer_module
from flyt_datacomp.cli.train import config_from_options, field_flag, train_command
from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.flyt.config import PRESET_DESCRIPTIONS, PRESETS, TrainConfig, build_config

FIELDS = dataclasses.fields(TrainConfig)
HINTS = typing.get_type_hints(TrainConfig)
DIRS = {"metadata_dir": "meta", "shards_dir": "shards", "downstream_dir": "down"}


def _options():
    return {opt: p for p in train_command.params for opt in [*p.opts, *p.secondary_opts]}


def test_every_field_has_a_flag_with_help_and_its_choices():
    options = _options()
    for f in FIELDS:
        param = options.get(field_flag(f.name))
        assert param is not None, f"TrainConfig.{f.name} has no {field_flag(f.name)}"
        assert param.name == f.name and f.metadata["help"] in param.help
        if "choices" in f.metadata:
            assert tuple(param.type.choices) == f.metadata["choices"]
        if HINTS[f.name] is bool:
            assert f"--no-{f.name.replace('_', '-')}" in param.secondary_opts
    help_text = CliRunner().invoke(train_command, ["--help"]).output
    assert "--adam-warmup-steps" in help_text and "[ce|ce_temp|clip]" in help_text
    assert "OpenAI's ViT-B/32 weights" in help_text  # e-flyt-base says where its weights come from


def _non_default(f):
    """A value of the field's type that differs from its default, and its command-line form."""
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    hint = HINTS[f.name]
    if "choices" in f.metadata:
        value = next(c for c in f.metadata["choices"] if c != default)
        return value, [value]
    if hint is bool:
        return (not default), []
    if hint == list[str]:
        return ["col_a", "col_b"], ["col_a, col_b"]
    if hint in (int, int | None):
        return 7, ["7"]
    if hint in (float, float | None):
        return 0.125, ["0.125"]
    return f"value-of-{f.name}", [f"value-of-{f.name}"]


def test_flags_round_trip_into_the_config(tmp_path):
    args, expected = [], {}
    for f in FIELDS:
        value, text = _non_default(f)
        expected[f.name] = value
        if HINTS[f.name] is bool:
            args.append(field_flag(f.name) if value else "--no-" + f.name.replace("_", "-"))
        else:
            args += [field_flag(f.name), *text]
    ctx = train_command.make_context("train", [*args, "--output-dir", str(tmp_path)])
    shell = ("preset", "config_file", "output_dir", "overwrite", "demo_version", "quiet")
    options = {k: v for k, v in ctx.params.items() if k not in shell}
    assert set(options) == {f.name for f in FIELDS}
    cfg = config_from_options(None, None, options)
    assert dataclasses.asdict(cfg) == expected


def test_flags_not_given_keep_the_preset_and_file_values(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 11\nbeta2: 0.95\ntensorboard: true\n")
    ctx = train_command.make_context("train", ["--preset", "m-flyt-base", "--config", str(tmp_path / "c.yaml"),
                                               "--steps", "3", "--no-tensorboard", "--output-dir", str(tmp_path)])
    p = dict(ctx.params)
    cfg = config_from_options(p.pop("preset"), p.pop("config_file"), {k: v for k, v in p.items()
                                                                      if k not in ("output_dir", "overwrite", "quiet")})
    assert (cfg.steps, cfg.beta2, cfg.tensorboard, cfg.batch_size) == (3, 0.95, False, 4096)
    assert cfg.inputs == PRESETS["m-flyt-base"]["inputs"] and cfg.reference_init == "checkpoint"


def test_a_value_outside_the_choices_names_flag_and_field(tmp_path):
    r = CliRunner().invoke(train_command, ["--output-dir", str(tmp_path), "--precision", "fp16"])
    assert r.exit_code == 2 and "--precision" in r.output and "training option precision" in r.output


def test_m_flyt_base_requires_a_reference_checkpoint_or_explicit_random_init(tmp_path):
    cfg = build_config("m-flyt-base", DIRS, {})
    with pytest.raises(FlytInputError, match=r"no `reference_checkpoint` .*1\.8 ImageNet points.*`reference_init` random"):
        cfg.validate()
    build_config("m-flyt-base", DIRS, {"reference_checkpoint": "ref.pt"}).validate()
    random = build_config("m-flyt-base", DIRS, {"reference_init": "random"})
    random.validate()
    assert random.reference_source == "random"
    r = CliRunner().invoke(train_command, ["--preset", "m-flyt-base", "--metadata-dir", "m", "--shards-dir", "s",
                                           "--downstream-dir", "d", "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Table 8" in r.output, r.output
    with pytest.raises(FlytInputError, match="needs `reference_pretrained`"):
        build_config(None, {**DIRS, "inputs": ["a"]}, {"reference_init": "pretrained"}).validate()
    assert "OpenAI" in PRESET_DESCRIPTIONS["e-flyt-base"] and "1.8" not in PRESET_DESCRIPTIONS["e-flyt-base"]


class _Built(Exception):
    pass


@pytest.mark.parametrize("preset,given,checkpoint,pretrained", [
    ("e-flyt-base", {}, None, "openai"),  # OpenAI's weights by their open_clip tag
    ("e-flyt-base", {"reference_checkpoint": "openai.pt"}, "openai.pt", None),  # a local copy: nothing downloaded
    ("m-flyt-base", {"reference_checkpoint": "dc_medium.pt"}, "dc_medium.pt", None),
    ("m-flyt-base", {"reference_checkpoint": "dc_medium.pt", "reference_init": "random"}, None, None),
])
def test_the_reference_model_starts_from_the_chosen_weights(monkeypatch, tmp_path, preset, given, checkpoint,
                                                            pretrained):
    seen = {}

    def fake_create_clip(arch, *, seed, checkpoint, pretrained):
        seen.update(arch=arch, checkpoint=checkpoint, pretrained=pretrained)
        raise _Built

    monkeypatch.setattr(trainer_module, "create_clip", fake_create_clip)
    with pytest.raises(_Built):
        trainer_module.Trainer(build_config(preset, DIRS, given), tmp_path / "o", progress=False)
    assert seen == {"arch": "ViT-B-32", "checkpoint": checkpoint, "pretrained": pretrained}


def test_many_input_demo_preset_gets_the_demo_paths_and_its_input_store(tiny_demo_pool, monkeypatch, tmp_path):
    import flyt_datacomp.demo as demo_module
    import flyt_datacomp.demo.inputs as demo_inputs

    made = []
    monkeypatch.setattr(demo_module, "build_demo_pool", lambda progress=True, version=None: tiny_demo_pool)
    monkeypatch.setattr(demo_inputs, "demo_store", lambda demo, **kw: made.append(demo) or tmp_path / "store")
    cfg = config_from_options("m-flyt-demo-all", None, {}, progress=False)
    assert made == [tiny_demo_pool]  # the store is computed (or reused) for the demo pool
    assert cfg.inputs_dir == str(tmp_path / "store")
    assert cfg.metadata_dir == str(tiny_demo_pool.metadata_dir)
    assert cfg.inputs == list(PRESETS["m-flyt-demo-all"]["inputs"])
    # a store given on the command line is used as is, and no demo store is made
    cfg = config_from_options("m-flyt-demo-all", None, {"inputs_dir": "/data/store"}, progress=False)
    assert cfg.inputs_dir == "/data/store" and len(made) == 1


@pytest.mark.parametrize("given", [["--seed", str(10**20)], ["--seed", "-1"], ["--config", "seed.yaml"]])
def test_a_seed_torch_cannot_take_is_one_line(tmp_path, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seed.yaml").write_text("seed: 1.0e+20\n")
    r = CliRunner().invoke(train_command, [*given, "--output-dir", str(tmp_path / "run"), "--inputs", "a",
                                           "--metadata-dir", "m", "--shards-dir", "s", "--downstream-dir", "d"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert "seed" in r.output and "2**63 - 1" in r.output and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name,text,where", [("c.yaml", "steps: 3\nbeta2: 0.9\nsteps: 5\n", "again on line 3"),
                                             ("c.json", '{"steps": 3, "steps": 5}', "given twice")])
def test_a_config_file_giving_an_option_twice_is_refused(tmp_path, name, text, where):
    (tmp_path / name).write_text(text)
    r = CliRunner().invoke(train_command, ["--config", str(tmp_path / name), "--output-dir", str(tmp_path / "run")])
    assert r.exit_code == 2 and "option 'steps' is given twice" in r.output and where in r.output, r.output
    assert not (tmp_path / "run").exists()
