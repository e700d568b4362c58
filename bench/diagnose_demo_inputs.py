"""What each input of the demo's 7-input M-FLYT measures on the demo pool, from its ground truth.

    python bench/diagnose_demo_inputs.py                        # the default demo pool, after `flyt-datacomp benchmark`
    python bench/diagnose_demo_inputs.py --pool-dir DIR --inputs-dir STORE

For the two pool CLIP scores and every input of the table's input store (``<pool>/benchmark/table/inputs``
unless ``--inputs-dir``), the AUC of four questions, answered by ``truth.parquet``: a correct caption
(correct or near-duplicate) against every other example; the task (a correct caption of a digit)
against the rest; a digit image against the rest; and, within the digits, a correct caption
against a wrong one. Then the same for the equal-weight sum of the standardised inputs and for the
mix the table's ``m-flyt-demo-all`` run learned (its ``mixing_weights.json``), and their correlation.
These are the tables of docs/benchmark.md, "Does learning from the task lift SCS above alignment
alone?". Scores come from the package's score sources, the truth from the demo's reader.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from flyt_datacomp.demo import DemoPool
from flyt_datacomp.demo.domains import TARGET_DOMAIN
from flyt_datacomp.demo.signal import open_pool_with_domains, truth_in_pool_order
from flyt_datacomp.pool import Pool
from flyt_datacomp.scores import load_scores, standardize

CLIP_COLUMNS = ("clip_b32_similarity_score", "clip_l14_similarity_score")


def _truth_in_pool_order(demo: DemoPool, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
    truth, rows = truth_in_pool_order(demo, pool)
    return np.asarray(truth["domain"], dtype=object)[rows], np.asarray(truth["type"], dtype=object)[rows]


def auc_row(score: np.ndarray, domain: np.ndarray, types: np.ndarray) -> list[float]:
    correct = np.isin(types, ["correct", "near_duplicate"])
    task = correct & (domain == TARGET_DOMAIN)
    digit = domain == TARGET_DOMAIN
    return [roc_auc_score(correct, score), roc_auc_score(task, score), roc_auc_score(digit, score),
            roc_auc_score(correct[digit], score[digit])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool-dir", type=Path, help="a built v4 demo pool [the default demo pool]")
    ap.add_argument("--inputs-dir", type=Path, help="the input store [<pool>/benchmark/table/inputs]")
    args = ap.parse_args()
    demo = open_pool_with_domains(args.pool_dir)
    store = args.inputs_dir or demo.root / "benchmark" / "table" / "inputs"
    manifest = store / "inputs.json"
    if not manifest.is_file():
        raise SystemExit(f"no input store at {store}: run `flyt-datacomp benchmark` first, or give --inputs-dir")
    pool = Pool(str(demo.metadata_dir), progress=False)
    domain, types = _truth_in_pool_order(demo, pool)

    names = list(CLIP_COLUMNS) + [n for n in json.loads(manifest.read_text())["inputs"] if n not in CLIP_COLUMNS]
    scores = {n: load_scores(pool, n if n in CLIP_COLUMNS else f"store:{n}", inputs_dir=str(store)).values
              for n in names}
    # the run the table trains with the preset as it is now (older runs of the preset stay beside it)
    run_dir = demo._run_dir("m-flyt-demo-all", demo.train_config("m-flyt-demo-all", {"inputs_dir": str(store)},
                                                                  progress=False), store.parent / "runs")
    runs = [run_dir / "mixing_weights.json"] if (run_dir / "mixing_weights.json").is_file() else []
    weights = json.loads(runs[-1].read_text()) if runs else {}

    print("| input | correct vs other captions | the task vs the rest | digit image vs the rest "
          "| within digits: correct vs wrong | learned weight |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in names:
        w = f"{weights[n]:.2f}" if n in weights else "-"
        print(f"| {n} | " + " | ".join(f"{a:.3f}" for a in auc_row(scores[n], domain, types)) + f" | {w} |")
    z = {n: standardize(scores[n]) for n in names}
    total = sum(z.values())
    print("\nequal-weight sum of the standardised inputs: AUCs "
          + ", ".join(f"{a:.3f}" for a in auc_row(total, domain, types)))
    if weights and set(weights) <= set(names):
        learned = sum(w * z[n] for n, w in weights.items())
        print(f"learned mix ({runs[-1].parent.name}): AUCs " + ", ".join(f"{a:.3f}" for a in auc_row(learned, domain, types))
              + f"; correlation with the sum {np.corrcoef(total, learned)[0, 1]:.3f}")


if __name__ == "__main__":
    main()
