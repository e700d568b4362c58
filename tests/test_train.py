"""The FLYT trainer: end to end on a tiny demo pool, exact resume, bad input."""

import json

import pytest
import torch
from click.testing import CliRunner

from flyt_datacomp.cli.train import train_command
from flyt_datacomp.flyt.config import build_config
from flyt_datacomp.flyt.models import load_scoring_model
from flyt_datacomp.flyt.trainer import Trainer, TrainingDiverged, cosine_lr


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(pool, **overrides):
    values = dict(
        metadata_dir=str(pool.metadata_dir), shards_dir=str(pool.shards_dir),
        downstream_dir=str(pool.downstream_dir), classes=str(pool.classes_path),
        steps=4, warmup_steps=1, batch_size=16, downstream_batch_size=10, reference_pretrain_steps=1,
        adam_warmup_steps=1, checkpoint_every=2, shuffle_buffer=40,
    )
    values.update(overrides)
    return build_config("m-flyt-demo", {}, values)


def test_cosine_schedule():
    assert cosine_lr(0, 1.0, 4, 10) == pytest.approx(0.25)
    assert cosine_lr(3, 1.0, 4, 10) == pytest.approx(1.0)
    assert cosine_lr(4, 1.0, 4, 10) == pytest.approx(1.0)
    assert cosine_lr(7, 1.0, 4, 10) == pytest.approx(0.5)
    assert cosine_lr(10, 1.0, 4, 10) == pytest.approx(0.0, abs=1e-12)


def test_train_writes_model_weights_metrics(tiny_demo_pool, tmp_path):
    out = tmp_path / "run"
    result = Trainer(small_config(tiny_demo_pool), out, progress=False).run()
    assert result["finished"] and result["step"] == 4
    model, meta = load_scoring_model(out / "scoring_model.pt")
    assert model.input_names == ["clip_b32_similarity_score", "clip_l14_similarity_score", "noise_score"]
    weights = json.loads((out / "mixing_weights.json").read_text())
    assert weights == pytest.approx(model.mixing_weights())
    assert any(abs(v) > 0 for v in weights.values())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    assert {"up_loss", "down_loss", "weight_entropy", "mixing_weights", "step_time"} <= set(lines[0])
    # standardisation statistics are the pool's
    from flyt_datacomp.pool import Pool

    pool = Pool(str(tiny_demo_pool.metadata_dir), progress=False)
    col = pool.column("noise_score").astype("float64")
    assert model.mean[2].item() == pytest.approx(col.mean(), rel=1e-5)
    assert model.std[2].item() == pytest.approx(col.std(), rel=1e-5)
    assert json.loads((out / "scoring_model.pt.json").read_text())["kind"] == "m-flyt"


def test_interrupted_and_resumed_run_matches_uninterrupted(tiny_demo_pool, tmp_path):
    cfg = small_config(tiny_demo_pool)
    Trainer(cfg, tmp_path / "a", progress=False).run()
    first = Trainer(small_config(tiny_demo_pool), tmp_path / "b", progress=False)
    assert first.run(stop_after=2) == {"step": 2, "finished": False}
    assert (tmp_path / "b" / "checkpoints" / "latest.json").exists()
    Trainer(small_config(tiny_demo_pool), tmp_path / "b", progress=False).run()  # a fresh process would do this
    a, _ = load_scoring_model(tmp_path / "a" / "scoring_model.pt")
    b, _ = load_scoring_model(tmp_path / "b" / "scoring_model.pt")
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    la = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "step_time"}  # noqa: E731
    assert [strip(x) for x in la] == [strip(x) for x in lb]


def test_resume_with_changed_config_is_refused(tiny_demo_pool, tmp_path):
    Trainer(small_config(tiny_demo_pool), tmp_path / "r", progress=False).run(stop_after=2)
    with pytest.raises(Exception, match="configuration changed .*scoring_lr"):
        Trainer(small_config(tiny_demo_pool, scoring_lr=0.5), tmp_path / "r", progress=False).run()


def test_non_finite_loss_stops_with_clear_message(tiny_demo_pool, tmp_path, monkeypatch):
    import flyt_datacomp.flyt.trainer as trainer_module

    real = trainer_module.flyt_step
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        res = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            res.metrics["down_loss"] = float("nan")
        return res

    monkeypatch.setattr(trainer_module, "flyt_step", flaky)
    with pytest.raises(TrainingDiverged, match=r"non-finite .* step 3.*last good checkpoint is .*step_0000002\.pt"):
        Trainer(small_config(tiny_demo_pool), tmp_path / "nan", progress=False).run()
    assert (tmp_path / "nan" / "checkpoints" / "step_0000002.pt").exists()
    assert not (tmp_path / "nan" / "scoring_model.pt").exists()


def _cli(args):
    return CliRunner().invoke(train_command, [*args, "--quiet"])


def test_cli_bad_inputs(tiny_demo_pool, tmp_path):
    p = tiny_demo_pool
    base = ["--metadata-dir", str(p.metadata_dir), "--shards-dir", str(p.shards_dir),
            "--downstream-dir", str(p.downstream_dir), "--classes", str(p.classes_path),
            "--output-dir", str(tmp_path / "o"), "--steps", "1", "--batch-size", "8",
            "--downstream-batch-size", "4", "--reference-pretrain-steps", "0"]
    r = _cli(["--preset", "no-such-preset", *base])
    assert r.exit_code != 0 and "no-such-preset" in r.output
    r = _cli(["--preset", "m-flyt-demo", *base, "--shards-dir", str(tmp_path / "missing")])
    assert r.exit_code != 0 and "missing" in r.output, r.output
    r = _cli(["--preset", "m-flyt-demo", *base, "--inputs", "clip_b32_similarity_score,not_a_column"])
    assert r.exit_code != 0 and "'not_a_column' is not a column" in r.output, r.output
    (tmp_path / "empty").mkdir()
    r = _cli(["--preset", "m-flyt-demo", *base, "--downstream-dir", str(tmp_path / "empty")])
    assert r.exit_code != 0 and "empty downstream set" in r.output, r.output
    r = _cli(["--preset", "m-flyt-demo", *base, "--downstream-loss", "mse"])
    assert r.exit_code != 0 and "downstream_loss" in r.output, r.output
    r = _cli(["--preset", "m-flyt-demo", *base, "--config", str(tmp_path / "nope.json")])
    assert r.exit_code != 0 and "does not exist" in r.output
    (tmp_path / "cfg.json").write_text(json.dumps({"stepz": 3}))
    r = _cli(["--preset", "m-flyt-demo", *base, "--config", str(tmp_path / "cfg.json")])
    assert r.exit_code != 0 and "unknown training option(s) stepz" in r.output
    r = _cli(["--model", "m-flyt", *base])
    assert r.exit_code != 0 and "inputs" in r.output


def test_checkpoint_features_must_match(tiny_demo_pool, tmp_path):
    """A run resumed with other input columns is refused (the checkpoint's features differ)."""
    Trainer(small_config(tiny_demo_pool), tmp_path / "f", progress=False).run(stop_after=2)
    with pytest.raises(Exception, match="inputs"):
        Trainer(small_config(tiny_demo_pool, inputs=["clip_b32_similarity_score", "noise_score"]),
                tmp_path / "f", progress=False).run()


def test_trained_model_scores_the_pool_as_a_filter_source(tiny_demo_pool, tmp_path):
    import numpy as np

    from flyt_datacomp.pool import Pool
    from flyt_datacomp.scores import load_scores

    out = tmp_path / "s"
    Trainer(small_config(tiny_demo_pool, steps=2), out, progress=False).run()
    model, _ = load_scoring_model(out / "scoring_model.pt")
    pool = Pool(str(tiny_demo_pool.metadata_dir), progress=False)
    got = load_scores(pool, str(out / "scoring_model.pt"))
    assert got.kind == "model" and got.values.shape == (pool.size,)
    x = np.stack([pool.column(c).astype(np.float64) for c in model.input_names], 1)
    expect = ((x - x.mean(0)) / x.std(0)) @ model.weight.detach().double().numpy()
    np.testing.assert_allclose(got.values, expect, rtol=1e-4, atol=1e-6)


def test_e_flyt_trains_and_scores(tiny_demo_pool, tmp_path):
    from flyt_datacomp.flyt.models import GLUHead
    from flyt_datacomp.pool import Pool
    from flyt_datacomp.scores import load_scores

    cfg = small_config(tiny_demo_pool, model="e-flyt", inputs=[], embedding_prefix="b32", steps=2,
                       downstream_loss="ce_temp")
    out = tmp_path / "e"
    Trainer(cfg, out, progress=False).run()
    model, _ = load_scoring_model(out / "scoring_model.pt")
    assert isinstance(model, GLUHead)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["downstream_temperature"] != pytest.approx(1 / 0.07, rel=1e-9)  # it was trained
    scores = load_scores(Pool(str(tiny_demo_pool.metadata_dir), progress=False), str(out / "scoring_model.pt"))
    assert scores.values.std() > 0


@pytest.fixture(scope="module")
def default_demo_pool(tmp_path_factory):
    from flyt_datacomp.demo import build_demo_pool

    return build_demo_pool(tmp_path_factory.mktemp("default-demo"), progress=False)


@pytest.mark.slow  # the default pool's build and a full demo run: 2.5 of CI's minutes
def test_demo_preset_learns_informative_weights_and_ignores_noise(default_demo_pool, tmp_path):
    """The README's claim: on the built-in pool, M-FLYT puts clearly positive weight on the two
    CLIP scores and about none on the pure-noise column (one full m-flyt-demo run)."""
    cfg = build_config("m-flyt-demo", default_demo_pool.train_paths(), {})
    weights = Trainer(cfg, tmp_path / "demo", progress=False).run()["mixing_weights"]
    assert weights["clip_b32_similarity_score"] > 0.5
    assert weights["clip_l14_similarity_score"] > 0.5
    assert abs(weights["noise_score"]) < 0.2 * min(weights["clip_b32_similarity_score"],
                                                   weights["clip_l14_similarity_score"])


@pytest.mark.parametrize("start", [[], ["--reference-init", "random", "--reference-pretrain-steps", "2"]],
                         ids=["from-checkpoint", "pretrained-from-random"])
def test_torchrun_two_processes_on_cpu(tiny_demo_pool, tmp_path, start):
    """`torchrun --nproc_per_node 2 -m flyt_datacomp.train` (gloo) trains and writes one model. Each
    rank warms the reference on its own share of the batches; the trainer refuses to go on unless
    both ranks then hold the same reference (parameters and BatchNorm statistics), so a warm start
    that let them drift apart would fail here."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    p = tiny_demo_pool
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", port,
           "-m", "flyt_datacomp.train", "--preset", "m-flyt-demo", "--quiet",
           "--metadata-dir", str(p.metadata_dir), "--shards-dir", str(p.shards_dir),
           "--downstream-dir", str(p.downstream_dir), "--classes", str(p.classes_path),
           "--reference-checkpoint", str(p.reference_checkpoint), "--steps", "2", "--warmup-steps", "1",
           "--batch-size", "16", "--downstream-batch-size", "10", "--shuffle-buffer", "20",
           "--output-dir", str(out), *start]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("scoring model:") == 1  # only rank 0 reports
    model, _ = load_scoring_model(out / "scoring_model.pt")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and any(abs(v) > 0 for v in model.mixing_weights().values())


def test_dataloader_workers_run_is_deterministic_and_resumes_exactly(tiny_demo_pool, tmp_path):
    """With 2 DataLoader workers (each yielding whole batches) a run interrupted and resumed ends
    where an uninterrupted one does; the join counters reach the model's sidecar without workers."""
    cfg = lambda: small_config(tiny_demo_pool, steps=4, workers=2)  # noqa: E731
    a = Trainer(cfg(), tmp_path / "a", progress=False).run()
    Trainer(cfg(), tmp_path / "b", progress=False).run(stop_after=2)
    b = Trainer(cfg(), tmp_path / "b", progress=False).run()
    assert a["mixing_weights"] == b["mixing_weights"]
    Trainer(small_config(tiny_demo_pool, steps=1), tmp_path / "w0", progress=False).run()
    meta = json.loads((tmp_path / "w0" / "scoring_model.pt.json").read_text())
    assert meta["upstream_join"]["joined"] > 0


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_refuses_a_folder_that_is_not_its_run_and_overwrite_empties_only_its_own(tiny_demo_pool, tmp_path):
    """A non-empty folder that is no training run keeps every byte, with or without --overwrite; a run
    of this command resumes, and --overwrite starts it over; a run written before the marker existed
    (its config.json is the package's record) is still resumed."""
    p = tiny_demo_pool
    base = ["--preset", "m-flyt-demo", "--metadata-dir", str(p.metadata_dir), "--shards-dir", str(p.shards_dir),
            "--downstream-dir", str(p.downstream_dir), "--classes", str(p.classes_path),
            "--reference-checkpoint", str(p.reference_checkpoint), "--batch-size", "16",
            "--downstream-batch-size", "10", "--shuffle-bufsize", "40", "--reference-pretrain-steps", "0"]
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "config.json").write_text('{"lr": 0.1}')
    (mine / "metrics.jsonl").write_text('{"step": 1, "mine": true}\n{"step": 9, "mine": true}\n')
    before = _files(mine)
    for extra in ([], ["--overwrite"]):
        r = _cli([*base, "--steps", "1", "--output-dir", str(mine), *extra])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert ("holds no training run" if not extra else "flyt_run.json") in r.output
        assert _files(mine) == before
    r = _cli([*base, "--steps", "1", "--output-dir", str(p.metadata_dir)])
    assert r.exit_code == 2 and "metadata-dir" in r.output

    run = tmp_path / "run"
    assert _cli([*base, "--steps", "2", "--output-dir", str(run)]).exit_code == 0
    assert json.loads((run / "flyt_run.json").read_text())["written_by"] == "train"
    r = _cli([*base, "--steps", "2", "--output-dir", str(run)])  # resumes its own (finished) run
    assert r.exit_code == 0 and len((run / "metrics.jsonl").read_text().splitlines()) == 2, r.output
    r = _cli([*base, "--steps", "1", "--output-dir", str(run)])
    assert r.exit_code == 2 and "configuration changed" in r.output
    r = _cli([*base, "--steps", "1", "--output-dir", str(run), "--overwrite"])  # from scratch
    assert r.exit_code == 0, r.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (run / "checkpoints" / "step_0000002.pt").exists()
    (run / "flyt_run.json").unlink()  # as a version before the marker left it
    r = _cli([*base, "--steps", "1", "--output-dir", str(run)])
    assert r.exit_code == 0, r.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1 and (run / "flyt_run.json").is_file()


def test_reference_pretraining_learns_batchnorm_statistics_and_a_resume_keeps_them(tiny_demo_pool, tmp_path):
    """The plain CLIP steps on the unfiltered pool train as any CLIP does: BatchNorm's running
    statistics move from their initial 0 and 1 (in eval mode they would not), the FLYT steps then
    run in eval mode, and a run resumed from a checkpoint uses the same statistics (they are saved)."""
    cfg = lambda: small_config(tiny_demo_pool, reference_init="random", reference_pretrain_steps=3,  # noqa: E731
                               reference_arch="tiny-resnet")
    t = Trainer(cfg(), tmp_path / "probe", progress=False)
    t._warm_start()
    means = {k: b for k, b in t.model.named_buffers() if k.endswith("running_mean")}
    assert means and all(float(b.abs().max()) > 0 for b in means.values())
    assert not t.model.training
    a = Trainer(cfg(), tmp_path / "a", progress=False).run()
    Trainer(cfg(), tmp_path / "b", progress=False).run(stop_after=2)
    b = Trainer(cfg(), tmp_path / "b", progress=False).run()
    assert a["mixing_weights"] == b["mixing_weights"]
