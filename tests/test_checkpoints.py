"""Resuming training from damaged, missing or planted checkpoints, and reading bad model files."""

import hashlib
import json
import os
import shutil

import pytest
import torch
from test_train import one_thread, small_config  # noqa: F401 - fixture

from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.flyt.checkpoints import find_resume_point, save_checkpoint
from flyt_datacomp.flyt.models import MixingModel, load_scoring_model, save_scoring_model
from flyt_datacomp.flyt.trainer import CollapseWatch, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # test_train's fixture: resumed runs match bit for bit


@pytest.fixture(scope="module")
def finished_and_interrupted(tiny_demo_pool, tmp_path_factory):
    """A finished 4-step run, and the same run stopped after step 3 (checkpoints at 2 and 3)."""
    root = tmp_path_factory.mktemp("ck")
    cfg = dict(checkpoint_every=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in every test here: resumed runs must match bit for bit
    try:
        Trainer(small_config(tiny_demo_pool, **cfg), root / "full", progress=False).run()
        Trainer(small_config(tiny_demo_pool, **cfg), root / "part", progress=False).run(stop_after=3)
    finally:
        torch.set_num_threads(threads)
    return root


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _resume(pool, out):
    return Trainer(small_config(pool, checkpoint_every=1), out, progress=False).run()


def _same_model(a, b):
    ma, _ = load_scoring_model(a / "scoring_model.pt")
    mb, _ = load_scoring_model(b / "scoring_model.pt")
    torch.testing.assert_close(ma.weight, mb.weight, rtol=0, atol=0)


def test_checkpoints_keep_two_with_integrity_records(finished_and_interrupted):
    ck = finished_and_interrupted / "part" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == [
        "latest.json", "step_0000002.pt", "step_0000002.pt.json", "step_0000003.pt", "step_0000003.pt.json"]
    path, state, notes = find_resume_point(ck)
    assert path.name == "step_0000003.pt" and state["step"] == 3 and notes == []


def test_planted_pickle_never_runs_and_the_run_falls_back(finished_and_interrupted, tiny_demo_pool, tmp_path):
    out = _copy(finished_and_interrupted / "part", tmp_path / "run")
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    planted = out / "checkpoints" / "step_0000009.pt"
    torch.save({"step": 9, "theta": Payload()}, planted)
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"step": 9, "path": planted.name}))
    path, _, notes = find_resume_point(out / "checkpoints")
    assert path.name == "step_0000003.pt"
    assert "step_0000009.pt" in notes[0] and "no integrity record" in notes[0]
    # with a forged record that matches it, the file is still never unpickled
    record = {"step": 9, "bytes": planted.stat().st_size, "sha256": hashlib.sha256(planted.read_bytes()).hexdigest()}
    (out / "checkpoints" / "step_0000009.pt.json").write_text(json.dumps(record))
    path, _, notes = find_resume_point(out / "checkpoints")
    assert path.name == "step_0000003.pt"
    assert "step_0000009.pt" in notes[0] and "could run arbitrary code" in notes[0]
    _resume(tiny_demo_pool, out)
    assert not marker.exists()
    _same_model(out, finished_and_interrupted / "full")


@pytest.mark.parametrize("damage", ["truncated checkpoint", "flipped byte", "truncated latest.json",
                                    "deleted checkpoint", "no integrity record", "unreadable integrity record"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished_and_interrupted, tmp_path, damage):
    ck = _copy(finished_and_interrupted / "part", tmp_path / "run") / "checkpoints"
    latest = ck / "step_0000003.pt"
    data = latest.read_bytes()
    if damage == "truncated checkpoint":
        latest.write_bytes(data[: len(data) // 3])
    elif damage == "flipped byte":
        latest.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "truncated latest.json":
        (ck / "latest.json").write_text('{"step": 3, "pa')
    elif damage == "deleted checkpoint":
        latest.unlink()
    elif damage == "no integrity record":
        (ck / "step_0000003.pt.json").unlink()
    else:  # a hand-edited state whose record no longer parses: never loaded unverified
        (ck / "step_0000003.pt.json").write_text('{"step": 3, "bytes": ')
    path, state, notes = find_resume_point(ck)
    if damage == "truncated latest.json":  # the newest file itself is fine
        assert path == latest and state["step"] == 3
        assert notes == ["latest.json is unreadable (truncated?) and was ignored"]
    else:
        assert path.name == "step_0000002.pt" and state["step"] == 2
        expected = {"truncated checkpoint": "truncated", "flipped byte": "sha256",
                    "deleted checkpoint": "step_0000003.pt, which is missing",
                    "no integrity record": "no integrity record",
                    "unreadable integrity record": "integrity record step_0000003.pt.json is unreadable"}[damage]
        assert expected in " ".join(notes), notes


def test_resume_after_damage_and_a_partial_metrics_line_matches_an_uninterrupted_run(
        finished_and_interrupted, tiny_demo_pool, tmp_path, caplog):
    out = _copy(finished_and_interrupted / "part", tmp_path / "run")
    ck = out / "checkpoints" / "step_0000003.pt"
    ck.write_bytes(ck.read_bytes()[:1000])  # the kill hit while the last checkpoint was copied
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "up_lo')  # a kill in the middle of an append
    with caplog.at_level("WARNING", logger="flyt_datacomp"):
        _resume(tiny_demo_pool, out)
    assert "skipped step_0000003.pt" in caplog.text and "resumed from" in caplog.text
    _same_model(out, finished_and_interrupted / "full")
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "step_time"}  # noqa: E731
    got = [strip(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    want = [strip(x) for x in (finished_and_interrupted / "full" / "metrics.jsonl").read_text().splitlines()]
    assert got == want


def test_nothing_usable_left_is_a_clear_error(finished_and_interrupted, tiny_demo_pool, tmp_path):
    ck = _copy(finished_and_interrupted / "part", tmp_path / "run") / "checkpoints"
    for name in ("step_0000002.pt", "step_0000003.pt"):
        (ck / name).write_text("not a checkpoint")
    with pytest.raises(FlytInputError, match=r"no usable checkpoint to resume from .*step_0000003.pt.*"
                                             r"step_0000002.pt.*start the run over"):
        _resume(tiny_demo_pool, ck.parent)
    for name in ("step_0000002.pt", "step_0000003.pt"):
        (ck / name).unlink()
    with pytest.raises(FlytInputError, match="no usable checkpoint"):  # latest.json but no file left
        find_resume_point(ck)
    assert find_resume_point(tmp_path / "fresh") is None


def test_checkpoint_with_a_wrong_step_is_not_used(tmp_path):
    save_checkpoint(tmp_path, 2, {"step": 2, "warmed": True, "theta": {}, "adam": {}, "scoring": {},
                                  "config": {}, "data": {}})
    (tmp_path / "step_0000002.pt").rename(tmp_path / "step_0000005.pt")  # renamed with its record
    (tmp_path / "step_0000002.pt.json").rename(tmp_path / "step_0000005.pt.json")
    with pytest.raises(FlytInputError, match="holds step 2, not 5"):
        find_resume_point(tmp_path)


def test_scoring_model_files_that_are_incomplete_or_not_checkpoints(tmp_path):
    model = MixingModel(["a", "b"], [0.0, 1.0], [1.0, 2.0])
    save_scoring_model(tmp_path / "ok.pt", model)
    payload = torch.load(tmp_path / "ok.pt", weights_only=True)
    del payload["config"]["std"]
    torch.save(payload, tmp_path / "nostd.pt")
    with pytest.raises(FlytInputError, match="lacks config field.*std.*needs input_names, mean, std"):
        load_scoring_model(tmp_path / "nostd.pt")
    (tmp_path / "notes.pt").write_text("epoch 3: loss 0.25\n")
    with pytest.raises(FlytInputError, match="not a PyTorch file: it looks like a text file") as err:
        load_scoring_model(tmp_path / "notes.pt")
    assert not str(err.value).endswith("101")
    payload = torch.load(tmp_path / "ok.pt", weights_only=True)
    payload["state_dict"]["weight"] = torch.zeros(5)
    torch.save(payload, tmp_path / "shape.pt")
    with pytest.raises(FlytInputError, match="does not match its config"):
        load_scoring_model(tmp_path / "shape.pt")


def test_collapse_watch_warns_once_after_a_run_of_collapsed_steps(caplog):
    import math

    watch = CollapseWatch(batch_size=128, steps=1000)
    with caplog.at_level("WARNING", logger="flyt_datacomp"):
        for step, h in enumerate([4.8, 0.07, 0.07, 2.0] + [0.07] * 25, start=1):
            watch.update(h, step)
    assert watch.patience == 20 and watch.limit == pytest.approx(0.1 * math.log(128))
    assert watch.message is not None and "up to step 24" in watch.message
    assert caplog.text.count("collapsed") == 1
    healthy = CollapseWatch(batch_size=128, steps=1000)
    for step in range(1, 200):
        healthy.update(3.0 if step % 7 else 0.01, step)
    assert healthy.message is None
