"""FLYT's signal by true kind of example, on the demo pool: which examples the meta-gradient asks for.

FLYT's premise is that the examples a model should train on to do well on the task receive the most
helpful signal. A :class:`Recorder`, given to the :class:`~flyt_datacomp.flyt.trainer.Trainer` as its
observer, keeps every step's per-example meta-gradient dL_down/ds with the batch's pool positions and
scores; :func:`kind_signal` then averages two per-example quantities over the true kinds of examples
(from ``truth.parquet``, which training never reads), both signed so that positive means "the task asks
for more of this example":

* help_i = -(dL_down/dw_i - sum_j w_j dL_down/dw_j) = -(dL_down/ds_i) / w_i, with w = softmax(s) over
  the batch: how much the downstream loss after the reference step falls when example i gets more
  weight, relative to the batch's weighted mean; the example's signal before the softmax;
* push_i = -B dL_down/ds_i = B w_i help_i: what the scoring model receives. Examples the model already
  weights down get little push either way.

The kinds (:data:`KINDS`): the task (a digit with its correct caption, near-duplicates included),
aligned but not the task (letters, shapes, textures with correct captions), a digit with a wrong
caption, another domain with a wrong caption, clutter. ``bench/diagnose_signal.py`` runs it.
"""

from __future__ import annotations

import numpy as np

from ..errors import FlytInputError
from ..pool import Pool
from ..uids import hex_to_uids, lookup, uid_order
from .domains import TARGET_DOMAIN
from .report import read_truth, truth_categories

KINDS = ("the task", "aligned, not the task", "digit, wrong caption", "other, wrong caption", "clutter")


def open_pool_with_domains(pool_dir=None):
    """The demo pool at ``pool_dir`` (None: the default pool, built on first use), refused when it is
    a v3 pool, whose examples are all digits: the per-kind measurements need the v4 pool's domains."""
    from . import DemoPool, build_demo_pool

    demo = DemoPool.open(pool_dir) if pool_dir else build_demo_pool(progress=False)
    if demo.version == "v3":
        raise FlytInputError(f"the demo pool at {demo.root} is a v3 pool, whose examples are all digits: "
                             "use a v4 pool")
    return demo


def truth_in_pool_order(demo, pool: Pool) -> tuple[dict, np.ndarray]:
    """The demo's truth.parquet (its columns) and, per pool example, its row there."""
    truth = read_truth(demo.truth_path)
    uids = hex_to_uids(np.asarray(truth["uid"]), source=str(demo.truth_path))
    order = uid_order(uids)
    pos = lookup(uids[order], pool.uids)
    if (pos < 0).any():
        raise FlytInputError(f"{demo.truth_path} lacks {int((pos < 0).sum())} of the pool's uids")
    return truth, order[pos]


def kinds_in_pool_order(demo, pool: Pool) -> np.ndarray:
    """Each pool example's kind (an index into :data:`KINDS`), from truth.parquet."""
    truth, rows = truth_in_pool_order(demo, pool)
    cat = truth_categories(truth).astype(str)[rows]
    domain = np.char.partition(cat, "/")[:, 0]
    kind = np.full(len(cat), -1)
    kind[np.isin(cat, [f"{TARGET_DOMAIN}/correct", f"{TARGET_DOMAIN}/near_duplicate"])] = 0
    kind[(domain != TARGET_DOMAIN) & (np.char.endswith(cat, "/correct") | np.char.endswith(cat, "/near_duplicate"))] = 1
    kind[cat == f"{TARGET_DOMAIN}/wrong"] = 2
    kind[cat == "other/wrong"] = 3
    kind[cat == "clutter/clutter"] = 4
    if (kind < 0).any():
        raise FlytInputError(f"unknown truth categories: {sorted(set(cat[kind < 0]))}")
    return kind


class Recorder:
    """The trainer's observer: per step, the batch's pool positions, scores and dL_down/ds."""

    def __init__(self):
        self.steps, self.positions, self.scores, self.grads = [], [], [], []

    def __call__(self, step, batch, scores, result) -> None:
        self.steps.append(np.full(len(scores), step))
        self.positions.append(batch["positions"].numpy())
        self.scores.append(scores.double().cpu().numpy())
        self.grads.append(result.grad_scores.double().cpu().numpy())

    def arrays(self) -> dict[str, np.ndarray]:
        return {"step": np.concatenate(self.steps), "position": np.concatenate(self.positions),
                "score": np.concatenate(self.scores), "grad": np.concatenate(self.grads)}


def help_and_push(rec: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per record: help = -(dL/ds) / w and push = -B dL/ds, w the softmax of the step's scores."""
    step, score, grad = rec["step"], rec["score"], rec["grad"]
    w = np.empty_like(score)
    size = np.empty_like(score)
    for s in np.unique(step):
        m = step == s
        e = np.exp(score[m] - score[m].max())
        w[m] = e / e.sum()
        size[m] = m.sum()
    return -grad / w, -grad * size


def kind_signal(rec: dict[str, np.ndarray], kind: np.ndarray, inputs: dict[str, np.ndarray], windows) -> dict:
    """Per window ``(label, first step - 1, last step)``: per kind its share of the draws, mean help (and
    its standard error), mean push and the share of positive help; per input the correlation of its
    standardised values (``inputs``, pool order) with help and with push."""
    help_, push = help_and_push(rec)
    k = kind[rec["position"]]
    out = {}
    for label, lo, hi in windows:
        m = (rec["step"] > lo) & (rec["step"] <= hi)
        row = {"steps": [int(lo) + 1, int(hi)], "examples": int(m.sum()), "kinds": {}, "inputs": {}}
        for i, name in enumerate(KINDS):
            mk = m & (k == i)
            if mk.any():
                row["kinds"][name] = {"share": float(mk.sum() / m.sum()), "help": float(help_[mk].mean()),
                                      "help_se": float(help_[mk].std() / np.sqrt(mk.sum())),
                                      "push": float(push[mk].mean()), "help_positive": float((help_[mk] > 0).mean())}
        for name, z in inputs.items():
            zi = z[rec["position"][m]]
            row["inputs"][name] = {"corr_help": float(np.corrcoef(zi, help_[m])[0, 1]),
                                   "corr_push": float(np.corrcoef(zi, push[m])[0, 1])}
        out[label] = row
    return out
