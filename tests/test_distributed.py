"""The data-parallel FLYT step (paper Appendix A) on 2 gloo ranks against the single-process step.

Each spawned rank builds the same tiny float64 model and batches as ``test_bilevel`` (fixed seeds),
takes its half of the upstream batch (B = 8 -> 4 per rank, with its half of the scorer's features)
and of the downstream batch (B' = 6 -> 3 per rank), and runs ``flyt_step(..., group=WORLD)``. The
results come back through files; the parent compares every rank's result with the full-batch step
of one process: theta_plus, Adam's state, dL/ds, the scorer's gradient (summed over ranks), the
downstream loss's own gradient (``ce_temp``'s temperature) and the metrics.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_bilevel import B_DOWN, CFG, B, build_setup

from flyt_datacomp.flyt.bilevel import flyt_step
from flyt_datacomp.flyt.losses import make_downstream_loss

WORLD = 2
# (name, downstream loss, micro_batch_size, number of class prompts used or None for all).
# "uneven": 7 prompts over 2 ranks (shares of 4 and 3: the padded gather of class embeddings).
CASES = [
    ("plain", "ce_temp", None, None),
    ("micro", "ce_temp", 2, None),
    ("clip_micro", "clip", 2, None),
    ("uneven", "ce", 2, 7),
]


def _inputs(setup, num_classes):
    """Class prompts and labels of a case (fewer prompts: labels folded into range)."""
    images, labels = setup["downstream"]
    tokens = setup["class_tokens"]
    if num_classes is not None:
        tokens, labels = tokens[:num_classes], labels % num_classes
    return (images, labels), tokens


def _run(setup, case, rows=None, down_rows=None, group=None, micro_batches=True):
    """One efficient step of ``case`` on the given upstream / downstream rows (None: all).

    ``micro_batches=False``: ignore the case's micro-batch size (the full-batch reference).
    """
    _, loss_name, micro, num_classes = case
    micro = micro if micro_batches else None
    torch.manual_seed(0)
    loss = make_downstream_loss(loss_name).double()
    (ds_images, labels), tokens = _inputs(setup, num_classes)
    rows = slice(None) if rows is None else rows
    down_rows = slice(None) if down_rows is None else down_rows
    images, texts = setup["upstream"]
    phi = {k: v.detach().clone().requires_grad_(True) for k, v in setup["scorer"].named_parameters()}
    scores = torch.func.functional_call(setup["scorer"], phi, (setup["features"][rows],)).squeeze(-1)
    result = flyt_step(setup["model"], setup["params"], setup["state"], scores,
                       (images[rows], texts[rows]), (ds_images[down_rows], labels[down_rows]), tokens,
                       loss, scoring_params=phi, cfg=CFG, micro_batch_size=micro, group=group)
    return {
        "theta_plus": result.theta_plus,
        "exp_avg": result.adam_state.exp_avg,
        "exp_avg_sq": result.adam_state.exp_avg_sq,
        "step": result.adam_state.step,
        "grad_scores": result.grad_scores.detach(),
        "grad_scoring": {k: v.detach() for k, v in result.grad_scoring.items()},
        "grad_downstream": {k: v.detach() for k, v in result.grad_downstream.items()},
        "metrics": result.metrics,
    }


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        setup = build_setup()
        up, down = B // WORLD, B_DOWN // WORLD
        rows, down_rows = slice(rank * up, (rank + 1) * up), slice(rank * down, (rank + 1) * down)
        out = {case[0]: _run(setup, case, rows, down_rows, group=dist.group.WORLD) for case in CASES}
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """(per-rank results, single-process reference); the reference is computed while the ranks run."""
    tmp = tmp_path_factory.mktemp("dist")
    context = mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        setup = build_setup()
        # The reference is the plain full-batch step of one process (no micro-batches), so that the
        # chunked code path is checked against the unchunked one as well.
        reference = {case[0]: _run(setup, case, micro_batches=False) for case in CASES}
    finally:
        torch.set_num_threads(threads)
        while not context.join():
            pass
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], reference


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _close_dicts(got, want, rtol=1e-7):
    """Entry-wise |got - want| <= rtol |want| + atol (atol tiny against the tensor's scale)."""
    assert got.keys() == want.keys()
    for k, v in want.items():
        atol = 1e-12 * max(float(v.abs().max()) if v.numel() else 0.0, 1.0)
        assert bool(((got[k] - v).abs() <= rtol * v.abs() + atol).all()), k


@pytest.mark.parametrize("case", [c[0] for c in CASES])
@pytest.mark.parametrize("rank", range(WORLD))
def test_ranks_match_single_process_full_batch(results, case, rank):
    got, want = results[0][rank][case], results[1][case]
    assert torch.isfinite(want["grad_scores"]).all() and float(want["grad_scores"].norm()) > 0
    assert got["grad_scores"].shape == (B,)
    assert _rel(got["grad_scores"], want["grad_scores"]) < 1e-8
    # The scorer's weight gets the summed per-rank contributions; its bias gets ~0 (softmax is
    # shift-invariant), so compare it in absolute terms.
    assert _rel(got["grad_scoring"]["weight"], want["grad_scoring"]["weight"]) < 1e-8
    torch.testing.assert_close(got["grad_scoring"]["bias"], want["grad_scoring"]["bias"], rtol=1e-6,
                               atol=1e-10 * float(want["grad_scoring"]["weight"].abs().max()))
    _close_dicts(got["theta_plus"], want["theta_plus"])
    _close_dicts(got["exp_avg"], want["exp_avg"])
    _close_dicts(got["exp_avg_sq"], want["exp_avg_sq"])
    assert got["step"] == want["step"]
    assert got["grad_downstream"].keys() == want["grad_downstream"].keys()
    for k, v in want["grad_downstream"].items():
        assert float(v.abs()) > 0
        assert _rel(got["grad_downstream"][k], v) < 1e-8
    for k, v in want["metrics"].items():
        assert got["metrics"][k] == pytest.approx(v, rel=1e-10), k


def test_ranks_agree_exactly(results):
    """Every rank returns the same global result (the reductions are symmetric)."""
    first, second = results[0]
    for case in first:
        assert torch.equal(first[case]["grad_scores"], second[case]["grad_scores"])
        for k, v in first[case]["theta_plus"].items():
            assert torch.equal(v, second[case]["theta_plus"][k]), k
        assert first[case]["metrics"] == second[case]["metrics"]
