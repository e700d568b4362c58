"""FLYT's validation objective on ground-truth subsets (flyt_datacomp.demo.objective): a step on a subset
is a step on its rows, the whole batch gains nothing, the n-step path is the warm start's steps, and on
the default demo pool the objective prefers the alignment oracle one step ahead but the task 100 steps
ahead (slow)."""

import dataclasses

import numpy as np
import pytest
import torch
from test_flyt_signal import small_config
from test_train import one_thread  # noqa: F401 - fixture

from flyt_datacomp.demo.objective import clip_steps, horizon_gains, members_of, one_step_gains, subset_scores
from flyt_datacomp.demo.signal import kinds_in_pool_order
from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.flyt.adamw import AdamState, warmup_adam_state
from flyt_datacomp.flyt.trainer import Trainer
from flyt_datacomp.flyt.validation import ZeroShotLoss, heldout_loss, validation_gain
from flyt_datacomp.pool import Pool

EVERY_KIND = {"every kind": (0, 1, 2, 3, 4)}


@pytest.fixture
def judged(tiny_demo_pool, tmp_path, one_thread):  # noqa: F811
    cfg = small_config(tiny_demo_pool, validation_fraction=0.3, validation_probes=3, batch_size=32,
                       compact_vocabulary=True)
    trainer = Trainer(cfg, tmp_path / "j", progress=False)
    trainer._warm_start()
    return trainer, kinds_in_pool_order(tiny_demo_pool, Pool(str(tiny_demo_pool.metadata_dir), progress=False))


def test_subset_scores_weigh_its_members_alone_and_refuse_an_empty_batch():
    kind = np.array([0, 1, 2, 0, 4, 3])
    w = torch.softmax(subset_scores(kind, torch.tensor([0, 1, 2, 3, 4, 5]), (0, 2)), 0)
    assert torch.equal(w > 0, torch.tensor([True, False, True, True, False, False]))
    torch.testing.assert_close(w[w > 0], torch.full((3,), 1 / 3, dtype=torch.float64))
    assert members_of(kind, torch.tensor([4, 5]), None).all()
    with pytest.raises(FlytInputError, match="no example of the subset"):
        members_of(kind, torch.tensor([1, 4]), (0,))


def test_a_step_on_a_subset_is_a_step_on_its_rows(judged):
    """The judge's weighted step (weights exactly 0 outside the subset, through the validation path)
    against a plain CLIP step on the subset's rows alone (the n-step path)."""
    trainer, kind = judged
    data = trainer.validation
    state = trainer.judge
    adam = AdamState(state["exp_avg"], state["exp_avg_sq"], state["step"])
    cfg = trainer._ref_cfg(trainer.cfg.reference_lr)
    for probe in data.probes:
        scores = subset_scores(kind, probe["positions"], (0, 1))
        one = dataclasses.replace(data, probes=[probe])
        judged_loss = validation_gain(trainer.model, state["theta"], adam, cfg, ZeroShotLoss(), one, [scores])["val_loss"]
        keep = members_of(kind, probe["positions"], (0, 1))
        assert 0 < int(keep.sum()) < len(keep)
        stepped = clip_steps(trainer.model, state["theta"], adam, cfg, [(probe["images"][keep], probe["texts"][keep])],
                             {1}, lambda th: heldout_loss(trainer.model, th, ZeroShotLoss(), data))
        assert stepped[1] == pytest.approx(judged_loss, rel=1e-5)


def test_the_whole_batch_gains_nothing_one_step_or_n_steps_ahead(judged):
    trainer, kind = judged
    one = one_step_gains(trainer, kind, EVERY_KIND)["every kind"]
    assert one["val_gain"] == pytest.approx(0.0, abs=1e-9) and one["batch_share"] == 1.0
    ahead = horizon_gains(trainer, kind, [1, 3], 2, {**EVERY_KIND, "the task": (0,)})
    assert ahead["every kind"][1]["gain"] == 0.0 and ahead["every kind"][3]["gain"] == 0.0
    assert ahead["the task"][3]["gain"] != 0.0 and np.isfinite(ahead["the task"][3]["se"])
    with pytest.raises(FlytInputError, match="at least 2 repeats"):
        horizon_gains(trainer, kind, [1], 1)


def test_n_plain_steps_from_a_zero_state_are_the_warm_start(judged):
    """clip_steps against warmup_adam_state, the trainer's own plain CLIP steps."""
    trainer, _ = judged
    stream = trainer._upstream_iter()
    batches = [(b["images"], b["texts"]) for b in (next(stream) for _ in range(3))]
    theta = {k: v.clone() for k, v in trainer.theta.items()}
    cfg = trainer._ref_cfg(1e-3)
    seen = {}
    clip_steps(trainer.model, theta, AdamState.zeros(theta), cfg, batches, {3}, lambda th: seen.setdefault(3, th) and 0.0)
    expect, _ = warmup_adam_state(trainer.model, batches, params=theta, cfg=cfg)
    for k, v in expect.items():
        torch.testing.assert_close(seen[3][k], v, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(seen[3][k], theta[k]) for k in theta)


@pytest.mark.slow
def test_on_the_default_pool_the_objective_prefers_alignment_one_step_ahead_and_the_task_100_steps_ahead(tmp_path):
    """docs/benchmark.md, judge 2 (seed 0, 2 torch threads): one step ahead, a step on every correctly captioned
    example lowers the held-out zero-shot loss against a step on the whole batch, and steps on the task alone
    or with the digits' wrong captions raise it; 100 steps ahead the task lowers it most, ahead of the alignment
    oracle, the benchmark's order. (The one-step order of the task and the alignment oracle depends on the
    reference's state: docs/benchmark.md gives it at five states.)"""
    from flyt_datacomp.demo import build_demo_pool
    from flyt_datacomp.process import torch_threads

    demo = build_demo_pool(tmp_path / "pool", progress=False)
    cfg = demo.train_config("m-flyt-demo", {"validation_fraction": 0.2, "validation_size": 1024, "validation_probes": 16,
                                            "compact_vocabulary": True, "reference_init": "random",
                                            "reference_pretrain_steps": 200, "reference_pretrain_lr": 1e-3},
                            progress=False)
    subsets = {"task": (0,), "task + wrong digits": (0, 2), "alignment": (0, 1)}
    kind = kinds_in_pool_order(demo, Pool(str(demo.metadata_dir), progress=False))
    with torch_threads(2):
        trainer = Trainer(cfg, tmp_path / "run", progress=False)
        trainer._warm_start()
        one = {k: v["val_gain"] for k, v in one_step_gains(trainer, kind, subsets).items()}
        ahead = {k: v[100]["gain"] for k, v in horizon_gains(trainer, kind, [100], 4, subsets).items() if k in subsets}
    assert one["task"] < 0 < one["alignment"] and one["task + wrong digits"] < 0, one
    assert ahead["task"] > ahead["alignment"] > 0, ahead
