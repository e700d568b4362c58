"""Selection on Ray (ray_selection.py): the same subsets as the single-machine path.

The driver's logic runs on in-process partitions here (``Inline``: the same calls as on Ray, without
starting it); a few tests run it on a local Ray instance (one for the module) with several workers,
one of them with each worker's address space capped below what the whole pool needs."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from scipy import stats

from flyt_datacomp import ray_selection as rs
from flyt_datacomp import selection
from flyt_datacomp.baselines.assets import AssetPaths
from flyt_datacomp.baselines.datacomp import BaselineParams, RunSettings
from flyt_datacomp.baselines.masks import MaskContext
from flyt_datacomp.cli.baseline import baseline_command
from flyt_datacomp.cli.filter import filter_command
from flyt_datacomp.errors import FlytInputError, WorkerDied
from flyt_datacomp.pool import Pool
from flyt_datacomp.scores import load_scores
from flyt_datacomp.uids import random_uids, read_subset, uids_to_hex

COLUMN = "clip_b32_similarity_score"


def write_pool(root: Path, columns: dict[str, np.ndarray], sizes: list[int], seed: int = 0,
               arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Parquet files of the given sizes (names in pool order) holding ``uid`` and the given columns
    (and npz files beside them holding ``arrays``)."""
    root.mkdir(parents=True)
    uids = uids_to_hex(random_uids(sum(sizes), seed))
    start = 0
    for i, n in enumerate(sizes):
        table = {"uid": pa.array(uids[start:start + n], pa.string())}
        table.update({k: v[start:start + n] for k, v in columns.items()})
        pq.write_table(pa.table(table), root / f"{i:04d}.parquet")
        if arrays:
            np.savez(root / f"{i:04d}.npz", **{k: v[start:start + n] for k, v in arrays.items()})
        start += n
    return root


@pytest.fixture(scope="module")
def tied_pool(tmp_path_factory) -> Path:
    """Scores with many ties (two decimals), a -0.0 beside 0.0, and missing values in the l14 column."""
    rng = np.random.default_rng(5)
    m = 1500
    b32 = np.round(rng.normal(0.0, 0.05, m), 2).astype(np.float32)
    b32[rng.choice(m, 40, replace=False)] = -0.0
    l14 = rng.normal(0.25, 0.05, m).astype(np.float32)
    l14[rng.choice(m, 60, replace=False)] = np.nan
    return write_pool(tmp_path_factory.mktemp("pool") / "metadata", {COLUMN: b32, "clip_l14_similarity_score": l14},
                      [300, 10, 420, 1, 269, 500])


def inline_run(sel: selection.Selection, partitions: int) -> selection.SelectionResult:
    """:func:`ray_selection.run` with the partitions in this process."""
    selection.preflight(sel)
    rs.check_supported(sel)
    pool = Pool(sel.metadata_dir, progress=False)
    job = rs.job_of(sel, pool)
    parts = [rs.Partition(pool, p, job) for p in rs.plan_partitions(pool, partitions)]
    for part in parts:
        part.load()
    return rs.drive(sel, pool, rs.Inline(parts), job, time.perf_counter())


def both(root: Path, tmp_path: Path, run, partitions: int, **kw) -> tuple[bytes, bytes]:
    """The subset bytes of the single-machine path and of ``run`` on the same selection."""
    out = []
    for name, runner in (("one", selection.run), ("parts", lambda sel: run(sel, partitions))):
        sel = selection.Selection(str(root), selection.Output(tmp_path / f"{name}.npy"), progress=False, **kw)
        runner(sel)
        out.append((tmp_path / f"{name}.npy").read_bytes())
    return out[0], out[1]


SCORE = selection.ScoreStage(COLUMN)
CASES = {
    "fraction": dict(score=SCORE, sample=selection.Sample(options={"fraction": 0.3})),
    "fraction_at_a_tie": dict(score=SCORE, sample=selection.Sample(options={"fraction": 0.5})),
    "exact_count": dict(score=SCORE, sample=selection.Sample(options={"fraction": 0.37, "exact_count": True})),
    "value": dict(score=SCORE, sample=selection.Sample(options={"value": 0.0})),
    "standardized": dict(score=SCORE, sample=selection.Sample(options={"fraction": 0.2}),
                         transform=selection.Transform(standardize=True, temperature=0.3)),
    "clip_score_fraction": dict(restrict=selection.Restrict(baseline="clip_score",
                                                            baseline_params=BaselineParams(arch="l14", fraction=0.3))),
    "clip_score_threshold": dict(restrict=selection.Restrict(baseline="clip_score",
                                                             baseline_params=BaselineParams(arch="l14", threshold=0.27))),
    "no_filter": dict(restrict=selection.Restrict(baseline="no_filter")),
}


@pytest.mark.parametrize("partitions", [3, 6])
@pytest.mark.parametrize("case", list(CASES))
def test_thresholds_and_baselines_write_the_single_machine_bytes(tied_pool, tmp_path, case, partitions):
    one, parts = both(tied_pool, tmp_path, inline_run, partitions, **CASES[case])
    assert len(one) > 128 and parts == one


def test_the_exact_count_cut_falls_inside_a_tie_spread_over_partitions(tied_pool):
    """The case above is only a test of the tie rule when the cut lies in a tie that several
    partitions hold (ties broken by pool position, across partitions)."""
    pool = Pool(str(tied_pool), progress=False)
    s = pool.column(COLUMN).astype(np.float64)
    k = int(s.size * 0.37)
    t = -np.sort(-s)[k - 1]
    tied = np.flatnonzero(s == t)
    assert np.count_nonzero(s > t) < k < np.count_nonzero(s >= t)
    owners = {pool.locate(int(i)).split(" row ")[0] for i in tied}
    assert len(owners) > 1


def test_rank_value_is_the_value_at_that_rank_of_every_value_sorted(tmp_path):
    rng = np.random.default_rng(0)
    for trial in range(30):
        sizes = rng.integers(1, 40, rng.integers(1, 5))
        values = np.round(rng.normal(size=sizes.sum()), int(rng.integers(0, 3)))
        values[rng.random(values.size) < 0.1] = -0.0
        if trial % 3 == 0:
            values[rng.random(values.size) < 0.2] = np.nan
        parts = [_partition(v) for v in np.split(values, np.cumsum(sizes)[:-1])]
        finite = values[~np.isnan(values)]
        if finite.size == 0:
            continue
        ordered = -np.sort(-finite)
        for rank in {0, finite.size - 1, int(rng.integers(0, finite.size))}:
            got = rs.rank_value(rs.Inline(parts), rank, finite.min(), finite.max())
            assert got == ordered[rank]


def _partition(values: np.ndarray) -> rs.Partition:
    """A partition holding ``values`` (no pool: for the driver's arithmetic only)."""
    part = rs.Partition.__new__(rs.Partition)
    part.values, part.size = np.asarray(values, dtype=np.float64), len(values)
    return part


def test_scs_rounds_keep_exactly_the_pool_wide_top_g_of_the_keys():
    """The cut from every partition's summary never loses one of the pool's G largest keys, and the
    merge keeps exactly those: checked against a sort of every key, with summaries that subsample
    (G > 1024) and partitions smaller than G."""
    rng = np.random.default_rng(1)
    sizes = [50_000, 3_000, 20_000, 1, 40_000]
    parts = [_partition(rng.normal(size=n)) for n in sizes]
    actors = rs.Inline(parts)
    actors.call("scs_start", 0.5, 7, "int32", each=[(i,) for i in range(len(parts))])
    accepted = [np.zeros(0, dtype=np.int64)] * len(parts)
    for g in (5_000, 3_500, 2, 17_000):
        summaries = actors.call("scs_round", g, each=[(a,) for a in accepted])
        keys = np.concatenate([p.keys for p in parts])
        truth = np.sort(np.argpartition(keys, keys.size - g)[keys.size - g:])
        cut = rs.scs_cut(summaries, g)
        found = actors.call("scs_candidates", cut)
        assert g <= sum(len(w) for w, _ in found) <= g + len(parts) * max(1, g // 1024) + len(parts)
        accepted = rs.top_of(found, g)
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        chosen = np.sort(np.concatenate([a + o for a, o in zip(accepted, offsets)]))
        np.testing.assert_array_equal(chosen, truth)
    actors.call("scs_finish", each=[(a,) for a in accepted])
    assert sum(int(p.counts.sum()) for p in parts) == 5_000 + 3_500 + 2 + 17_000


def _exact_scs(s: np.ndarray, alpha: float, g: int, rounds: int) -> dict[tuple, float]:
    """The distribution of SCS's counts by enumeration: each round every ordered draw of g distinct
    items without replacement, with its successive-sampling probability."""
    dist = {tuple([0] * len(s)): 1.0}
    for _ in range(rounds):
        nxt: dict[tuple, float] = {}
        for counts, p in dist.items():
            w = np.exp(s - alpha * np.array(counts))
            for order in itertools.permutations(range(len(s)), g):
                q, left = p, w.sum()
                for i in order:
                    q *= w[i] / left
                    left -= w[i]
                c = list(counts)
                for i in order:
                    c[i] += 1
                nxt[tuple(c)] = nxt.get(tuple(c), 0.0) + q
        dist = nxt
    return dist


def test_scs_over_partitions_draws_exactly_the_scs_distribution():
    """Three rounds of G = 2 over five examples in three partitions (one of a single example):
    the frequencies of every count vector over 3,000 seeds match the enumerated distribution
    (chi-square), and the single-machine sampler's frequencies match it too."""
    s = np.array([0.3, -0.5, 1.0, 0.0, 0.7])
    alpha, g, rounds = 0.8, 2, 3
    exact = _exact_scs(s, alpha, g, rounds)
    runs = 3_000
    seen_parts: dict[tuple, int] = {}
    seen_one: dict[tuple, int] = {}
    for seed in range(runs):
        parts = [_partition(v) for v in (s[:2], s[2:3], s[3:])]
        rs._scs(rs.Inline(parts), {"alpha": alpha, "group_size": g, "num_samples": g * rounds}, seed, False)
        key = tuple(np.concatenate([p.counts for p in parts]).tolist())
        seen_parts[key] = seen_parts.get(key, 0) + 1
        one = tuple(rs.sampling.scs(s, alpha=alpha, group_size=g, num_samples=g * rounds, seed=seed).tolist())
        seen_one[one] = seen_one.get(one, 0) + 1
    for seen in (seen_parts, seen_one):
        assert set(seen) <= set(exact)
        keys = sorted(exact)
        observed = np.array([seen.get(k, 0) for k in keys])
        expected = np.array([exact[k] * runs for k in keys])
        big = expected >= 5  # pool the rare vectors into one cell
        observed = np.append(observed[big], observed[~big].sum())
        expected = np.append(expected[big], expected[~big].sum())
        assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_scs_on_partitions_matches_the_single_machine_mean_counts(tied_pool, tmp_path):
    """A whole run through the driver (standardised scores, the subset written) against the
    single-machine sampler: each example's mean count over 200 seeds agrees (z-test per example)."""
    pool = Pool(str(tied_pool), progress=False)
    s = pool.column(COLUMN).astype(np.float64)
    s = (s - s.mean()) / s.std()
    params = {"alpha": 0.5, "group_size": 150, "num_samples": 1500}
    runs = 200
    totals_parts = np.zeros(s.size)
    totals_one = np.zeros(s.size)
    squares = np.zeros(s.size)
    for seed in range(runs):
        parts = [_partition(v) for v in np.split(s, [300, 310, 730, 731, 1000])]
        rs._scs(rs.Inline(parts), params, seed, False)
        got = np.concatenate([p.counts for p in parts])
        assert got.sum() == 1500
        totals_parts += got
        one = rs.sampling.scs(s, **params, seed=10_000 + seed)
        totals_one += one
        squares += one.astype(np.float64) ** 2
    mean_one = totals_one / runs
    var = np.maximum(squares / runs - mean_one ** 2, 1 / runs)
    z = (totals_parts / runs - mean_one) / np.sqrt(2 * var / runs)
    assert np.abs(z).max() < 5.0
    assert np.corrcoef(totals_parts, s)[0, 1] > 0.5  # the scores shape the draw


def test_plan_partitions_cuts_consecutive_shards_by_rows(tied_pool):
    pool = Pool(str(tied_pool), progress=False)
    for count in range(1, 9):
        plan = rs.plan_partitions(pool, count)
        assert [i for p in plan for i in p] == list(range(len(pool.shards)))
        assert len(plan) == min(count, len(pool.shards)) and all(plan)
    assert rs.plan_partitions(pool, 2) == [[0, 1, 2, 3], [4, 5]]  # 731 and 769 rows of 1,500


def test_what_ray_does_not_run_is_refused_before_any_work(tied_pool, tmp_path):
    runner = CliRunner()
    base = ["--metadata-dir", str(tied_pool), "--output", str(tmp_path / "x.npy"), "--quiet"]
    score_file = tmp_path / "scores.csv"
    score_file.write_text("uid,score\n")
    cases = [
        (["--score", COLUMN, "--fraction", "0.3", "--partitions", "2"], "--partitions applies with --ray"),
        (["--score", COLUMN, "--sampler", "nocap", "--ray", "local"], "sampler nocap does not run on Ray"),
        (["--score", str(score_file), "--fraction", "0.3", "--ray", "local"], "the --score must be a column"),
        (["--score", COLUMN, "--fraction", "0.3", "--ray", "local", "--mask", f"top:0.5:{score_file}"],
         "on Ray (--ray) the score of --mask 'top:0.5:"),
        (["--name", "clip_score", "--arch", "l14", "--fraction", "0.3", "--mask", f"top:0.5:sum:{COLUMN},{score_file}",
          "--ray", "local"], f"the score of --mask 'top:0.5:sum:{COLUMN},"),
    ]
    cases.append((["--demo", "--ray", "local"], "--ray does not run --demo"))
    for args, message in cases:
        result = runner.invoke(filter_command, base + args)
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert not (tmp_path / "x.npy").exists()
    for args, message in [(["clip_score", "--arch", "l14", "--fraction", "0.3", "--ray", "local", "--shards-dir",
                            str(tied_pool.parent)], "--shards-dir is not offered on Ray")]:
        result = runner.invoke(baseline_command, base[:4] + args)
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert not (tmp_path / "x.npy").exists()


# ------------------------------------------------------------------------------ scores and masks


SHARDS = [200, 150, 1, 250, 120, 180]


@pytest.fixture(scope="module")
def scored_pool(tmp_path_factory) -> Path:
    """Inputs ``a`` and ``b`` whose mean and spread change from shard to shard (so partitions' statistics
    differ from the pool's), a float32 ``c``, image widths, captions of 1 to 6 words, CLIP scores, and
    npz embeddings."""
    rng = np.random.default_rng(11)
    shard = np.repeat(np.arange(len(SHARDS)), SHARDS)
    m = shard.size
    words = rng.integers(1, 7, m)
    columns = {
        "a": rng.normal(shard * 0.5, 1.0 + shard),
        "b": rng.normal(-0.4 * shard, 1.0 / (1 + shard)),
        "c": rng.normal(0.2, 0.05, m).astype(np.float32),
        "original_width": rng.integers(64, 1024, m),
        "text": np.array([" ".join(["word"] * k) for k in words], dtype=object),
        COLUMN: rng.normal(0.3, 0.05, m).astype(np.float32),
    }
    embeddings = {}
    for key in ("b32_img", "b32_txt"):
        e = rng.normal(size=(m, 8))
        embeddings[key] = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float16)
    return write_pool(tmp_path_factory.mktemp("scored") / "metadata", columns, SHARDS, seed=11, arrays=embeddings)


@pytest.fixture(scope="module")
def models(scored_pool, tmp_path_factory) -> dict[str, str]:
    """An M-FLYT model over the pool columns a and b, an E-FLYT model over the b32 embeddings and a
    released mixing model (a bare linear layer) over a, b and c."""
    import torch

    from flyt_datacomp.flyt.models import GLUHead, MixingModel, save_scoring_model

    root = tmp_path_factory.mktemp("models")
    pool = Pool(str(scored_pool), progress=False)
    x = np.stack([pool.column(c) for c in ("a", "b")], axis=1)
    mflyt = MixingModel(["a", "b"], x.mean(0), x.std(0))
    with torch.no_grad():
        mflyt.weight.copy_(torch.tensor([0.7, -1.3]))
    save_scoring_model(root / "m.pt", mflyt)
    save_scoring_model(root / "e.pt", GLUHead(8, 16, seed=3), {"config": {"embedding_prefix": "b32"}})
    torch.save({"layers.0.weight": torch.tensor([[0.5, -2.0, 3.0]]), "layers.0.bias": torch.tensor([0.1])},
               root / "mix.pt")
    return {"m-flyt": str(root / "m.pt"), "e-flyt": str(root / "e.pt"), "mixing": f"mixing:{root / 'mix.pt'}:a,b,c"}


def score_sources(models: dict[str, str]) -> dict[str, str]:
    return {
        "m-flyt": models["m-flyt"],
        "e-flyt": f"model:{models['e-flyt']}",
        "mixing": models["mixing"],
        "sum": "sum:a,b,c",
        "standardized_sum": "standardized_sum:a,b,c",
        "in_weighted": "in_weighted:r=4:a=0.31,b=0.28,c=0.2",
        "standardized_sum_of_models": f"standardized_sum:{models['m-flyt']},model:{models['e-flyt']},b",
    }


@pytest.mark.parametrize("partitions", [2, 6])
@pytest.mark.parametrize("source", ["m-flyt", "e-flyt", "mixing", "sum", "standardized_sum", "in_weighted",
                                    "standardized_sum_of_models"])
def test_model_mixing_and_aggregate_scores_write_the_single_machine_bytes(scored_pool, models, tmp_path, source,
                                                                          partitions):
    kw = dict(score=selection.ScoreStage(score_sources(models)[source]), sample=selection.Sample(options={"fraction": 0.3}))
    one, parts = both(scored_pool, tmp_path, inline_run, partitions, **kw)
    assert len(one) > 128 and parts == one


def test_partitions_statistics_would_change_the_standardized_sum_subset(scored_pool):
    """The byte test above tests the pool-wide statistics only if standardising each partition with its
    own statistics selected another subset: it does, here, for each partition plan used (the single-row
    partition of six has no spread: NaN)."""
    pool = Pool(str(scored_pool), progress=False)
    x = [pool.column(c).astype(np.float64) for c in ("a", "b", "c")]
    n = int(pool.size * 0.3)

    def top(s):
        return set(np.argsort(-s, kind="stable")[:n])

    pool_wide = top(sum((v - v.mean()) / v.std() for v in x))
    for count in (2, 6):
        ends = np.cumsum([sum(SHARDS[i] for i in p) for p in rs.plan_partitions(pool, count)])[:-1]
        with np.errstate(invalid="ignore"):
            per_part = np.concatenate([sum((v - v.mean()) / v.std() for v in pieces)
                                       for pieces in zip(*(np.split(v, ends) for v in x))])
        assert len(top(per_part) ^ pool_wide) > 10


MASKS = {
    "column": ("original_width>=300",),
    "caption": ("caption:basic",),
    "baseline_clip_score_threshold": ("clip_score:arch=b32,threshold=0.29",),
    "no_filter": ("no_filter",),
    "several": ("column:original_width<900", "caption:basic", "SUBSET"),
}


def subset_mask(pool_dir: Path, tmp_path: Path) -> str:
    """A subset file of about half the pool's uids, and 5 uids of no pool."""
    pool = Pool(str(pool_dir), progress=False)
    rng = np.random.default_rng(4)
    uids = np.concatenate([pool.uids[rng.random(pool.size) < 0.5], random_uids(5, 99)])
    path = tmp_path / "half.npy"
    np.save(path, np.sort(uids))
    return str(path)


@pytest.mark.parametrize("scored", [False, True])
@pytest.mark.parametrize("masks", list(MASKS))
def test_row_wise_masks_write_the_single_machine_bytes(scored_pool, tmp_path, masks, scored):
    """With a score (standardised over the survivors, a top fraction of them) and without (the
    survivors once each): the single-machine bytes and the same masks' report in the sidecar."""
    specs = tuple(subset_mask(scored_pool, tmp_path) if m == "SUBSET" else m for m in MASKS[masks])
    kw = dict(restrict=selection.Restrict(masks=specs))
    if scored:
        kw.update(score=selection.ScoreStage("standardized_sum:a,b"), sample=selection.Sample(options={"fraction": 0.3}),
                  transform=selection.Transform(standardize=True, temperature=0.5))
    one, parts = both(scored_pool, tmp_path, inline_run, 6, **kw)
    assert len(one) > 128 and parts == one
    sidecars = [json.loads((tmp_path / f"{n}.npy.json").read_text()) for n in ("one", "parts")]
    assert sidecars[1]["masks"] == sidecars[0]["masks"]
    for key in ("pool_size_surviving", "score_kind"):
        assert sidecars[1]["inputs"].get(key) == sidecars[0]["inputs"].get(key)
    assert sidecars[1].get("score_transform", {}).get("statistics_over") == \
        sidecars[0].get("score_transform", {}).get("statistics_over")


def test_masks_that_keep_nothing_in_a_partition(scored_pool, tmp_path):
    """Partitions none of whose examples survive (the last two shards, by their b) take part in a
    threshold and in SCS."""
    kw = dict(restrict=selection.Restrict(masks=("b>-1.0",)), score=selection.ScoreStage("a"),
              sample=selection.Sample(options={"fraction": 0.5}))
    pool = Pool(str(scored_pool), progress=False)
    assert (pool.column("b")[-300:] <= -1.0).all() and (pool.column("b")[:-300] > -1.0).sum() > 300
    one, parts = both(scored_pool, tmp_path, inline_run, 6, **kw)
    assert parts == one
    scs = dict(kw, sample=selection.Sample(options={"alpha": 0.5, "group_size": 50}, num_samples=400))
    result = inline_run(selection.Selection(str(scored_pool), selection.Output(tmp_path / "scs.npy"), progress=False,
                                            **scs), 6)
    assert result.stats["total_entries"] == 400


def check_partition_logits(sel: selection.Selection, partitions: int) -> tuple[Pool, selection.Restriction]:
    """The partitions' logits (their scores, transformed with the pool's statistics) are the single-machine
    path's; returns the pool and what its masks keep."""
    pool = Pool(sel.metadata_dir, progress=False)
    kept = selection.restrict(sel, pool)
    scores = load_scores(pool, sel.score.source, inputs_dir=sel.score.inputs_dir).values[kept.keep]
    job = rs.job_of(sel, pool)
    parts = [rs.Partition(pool, p, job) for p in rs.plan_partitions(pool, partitions)]
    for part in parts:
        part.load()
    rs._transform(sel.transform, rs.Inline(parts))
    np.testing.assert_allclose(np.concatenate([p.values for p in parts]), selection.transform(scores, sel.transform),
                               rtol=1e-12, atol=1e-12)
    return pool, kept


def test_scs_with_a_model_score_and_masks(scored_pool, models, tmp_path):
    """SCS over the survivors with an M-FLYT score, standardised: the partitions' logits are the
    single-machine path's (the driver's SCS draws the single-machine distribution from them, tested
    above), and the draw holds N entries, of surviving examples only."""
    kw = dict(restrict=selection.Restrict(masks=("caption:basic", "original_width>=200")),
              score=selection.ScoreStage(models["m-flyt"]), transform=selection.Transform(standardize=True),
              sample=selection.Sample(options={"alpha": 0.5, "group_size": 40}, num_samples=500, seed=2))
    sel = selection.Selection(str(scored_pool), selection.Output(tmp_path / "scs.npy"), progress=False, **kw)
    pool, kept = check_partition_logits(sel, 4)
    result = inline_run(sel, 4)
    uids, counts = read_subset(tmp_path / "scs.npy")
    assert result.stats["total_entries"] == counts.sum() == 500
    assert set(uids_to_hex(uids)) <= set(uids_to_hex(pool.uids[kept.keep]))


def test_scores_and_masks_ray_does_not_run_are_refused_naming_the_option(scored_pool, tmp_path):
    """Sources joined by uid and aggregates of aggregates, as the score or a top: mask's: each a clear
    error naming the option, before any partition starts."""
    score_file = tmp_path / "scores.csv"
    score_file.write_text("uid,score\n")
    scores = {
        str(score_file): "import the file into an input store on the cluster (`flyt-datacomp inputs import FILE --ray",
        f"standardized_sum:a,{score_file}": "(an input of 'standardized_sum:a,",
        "sum:standardized_sum:a,b": "'standardized_sum:a' (an input of",
    }
    masks = {  # a top: mask's score: what a --score may be
        f"top:0.3:{score_file}": "the score of `masks` 'top:0.3:",
        "top:0.3:sum:standardized_sum:a,b": "'standardized_sum:a' (an input of 'sum:standardized_sum:a,b') is a",
    }
    threshold = selection.Sample(options={"fraction": 0.3})
    cases = [(dict(score=selection.ScoreStage(src), sample=threshold), msg, "score") for src, msg in scores.items()]
    cases += [(dict(restrict=selection.Restrict(masks=("caption:basic", spec))), msg, "masks")
              for spec, msg in masks.items()]
    for kw, message, param in cases:
        sel = selection.Selection(str(scored_pool), selection.Output(tmp_path / "x.npy"), progress=False, **kw)
        with pytest.raises(FlytInputError) as err:
            rs.check_supported(sel)
            rs.job_of(sel, Pool(str(scored_pool), progress=False))
        assert message in str(err.value) and {param, "ray_address"} <= set(err.value.params), (kw, str(err.value))


# ------------------------------------------------------------------------------ masks that rank the whole pool


TOP_SHARDS = [260, 1, 190, 340, 75, 334]


@pytest.fixture(scope="module")
def top_pool(tmp_path_factory) -> Path:
    """Two scores of two decimals (ties everywhere, -0.0 beside 0.0), ``negclip`` and ``normsim`` (float32),
    image widths, and CLIP scores: B/32 of two decimals, L/14 of two decimals with missing values."""
    rng = np.random.default_rng(21)
    m = sum(TOP_SHARDS)
    negclip = np.round(rng.normal(0.0, 0.05, m), 2)
    negclip[rng.choice(m, 30, replace=False)] = -0.0
    l14 = np.round(rng.normal(0.25, 0.05, m), 2).astype(np.float32)
    l14[rng.choice(m, 50, replace=False)] = np.nan
    columns = {"negclip": negclip, "normsim": np.round(rng.normal(0.5, 0.1, m), 2).astype(np.float32),
               "original_width": rng.integers(64, 1024, m),
               COLUMN: np.round(rng.normal(0.3, 0.05, m), 2).astype(np.float32), "clip_l14_similarity_score": l14}
    return write_pool(tmp_path_factory.mktemp("top") / "metadata", columns, TOP_SHARDS, seed=21)


L14_30 = BaselineParams(arch="l14", fraction=0.3)
TOP_CASES = {
    "row_mask_then_top": dict(masks=("original_width>=300", "top:0.3:negclip")),
    "two_tops": dict(masks=("top:0.5:negclip", "top:0.2:normsim")),  # the negCLIPLoss-then-NormSim rule
    "top_row_mask_top": dict(masks=("top:0.6:negclip", "original_width<900", "top:0.3:normsim")),
    "fewer_survivors_than_the_count": dict(masks=("original_width>=900", "top:0.5:negclip")),
    "top_of_an_aggregate": dict(masks=("normsim>=0.45", "top:0.3:standardized_sum:negclip,normsim")),
    "clip_fraction_mask": dict(masks=("original_width>=300", "clip_score:arch=l14,fraction=0.3")),
    "clip_fraction_mask_of_all": dict(masks=("top:0.7:negclip", "clip_score:arch=l14,fraction=1.0")),
    "baseline_fraction_then_masks": dict(baseline="clip_score", baseline_params=L14_30,
                                         masks=("original_width>=300", "top:0.2:negclip")),
    "baseline_fraction_alone": dict(baseline="clip_score", baseline_params=L14_30),
}
SCORED = dict(score=selection.ScoreStage(COLUMN), sample=selection.Sample(options={"fraction": 0.4}),
              transform=selection.Transform(standardize=True))


@pytest.mark.parametrize("partitions", [3, 6])
@pytest.mark.parametrize("case", list(TOP_CASES))
def test_masks_that_rank_the_whole_pool_write_the_single_machine_bytes_and_sidecar(top_pool, tmp_path, case,
                                                                                    partitions):
    """top: masks (each ranking the survivors of the masks before it, ties at the cut split over the
    partitions), a CLIP fraction as a mask (a threshold over the whole pool, missing scores last) and
    DataComp's clip_score with a fraction before masks: the single-machine bytes and sidecar."""
    one, parts = both(top_pool, tmp_path, inline_run, partitions, restrict=selection.Restrict(**TOP_CASES[case]))
    assert len(one) > 128 and parts == one
    sidecars = both_sidecars(tmp_path)
    assert sidecars[1] == sidecars[0]
    restrict = TOP_CASES[case]
    assert len(sidecars[0]["masks"]) == len(restrict.get("masks", ())) + ("baseline" in restrict)
    if case == "fewer_survivors_than_the_count":
        assert sidecars[0]["masks"][1]["note"].startswith("only ") and sidecars[0]["warnings"]


@pytest.mark.parametrize("masks", [("original_width>=300", "top:0.3:negclip"), ("top:0.5:negclip", "top:0.2:normsim"),
                                   ("clip_score:arch=l14,fraction=0.3", "original_width>=300", "top:0.2:negclip")],
                         ids=["row_mask_then_top", "two_tops", "clip_fraction_then_top"])
def test_masks_that_rank_the_whole_pool_before_a_sampler(top_pool, tmp_path, masks):
    """Such masks under a top fraction of a score standardised over their survivors: the single-machine
    bytes, masks' report and warnings."""
    one, parts = both(top_pool, tmp_path, inline_run, 4, restrict=selection.Restrict(masks=masks), **SCORED)
    assert len(one) > 128 and parts == one
    sidecars = both_sidecars(tmp_path)
    for key in ("masks", "warnings", "score_transform"):
        assert sidecars[1][key] == sidecars[0][key]
    assert sidecars[1]["inputs"]["pool_size_surviving"] == sidecars[0]["inputs"]["pool_size_surviving"]


def survivors_before_each_top(pool: Pool, masks: tuple[str, ...],
                              inputs_dir: str | None = None) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """For each top: mask of ``masks`` (as one machine applies them): the positions that survived the masks
    before it, their scores and the mask's count."""
    from flyt_datacomp.baselines.masks import apply_masks, resolve_mask

    ctx = MaskContext(pool, None, RunSettings(progress=False), inputs_dir=inputs_dir)
    out = []
    for i, spec in enumerate(masks):
        mask = resolve_mask(spec, pool)
        if mask.kind == "top":
            survivors, _ = apply_masks(ctx, [resolve_mask(s, pool) for s in masks[:i]])
            where = np.flatnonzero(survivors)
            scores = load_scores(pool, mask.source, inputs_dir=inputs_dir).values[where]
            out.append((where, scores, mask.count(pool.size)))
    return out


def assert_cut_in_a_split_tie(pool: Pool, where: np.ndarray, scores: np.ndarray, count: int,
                              partitions: list[int]) -> None:
    """The count-th largest score is tied with candidates on both sides of the cut (some kept, some not),
    and in every partition plan the tied candidates lie in more than one partition."""
    t = -np.sort(-scores)[count - 1]
    assert np.count_nonzero(scores > t) < count < np.count_nonzero(scores >= t)
    tied = where[scores == t]
    for n in partitions:
        ends = np.cumsum([sum(pool.shards[i].num_rows for i in p) for p in rs.plan_partitions(pool, n)])
        assert len(set(np.searchsorted(ends, tied, side="right"))) > 1, n


def test_the_top_cuts_fall_inside_ties_spread_over_partitions(top_pool):
    """The byte tests above test the tie rule only where a top: mask's cut lies in a tie that several
    partitions hold: it does, for each top: mask of these cases and each partition plan used."""
    pool = Pool(str(top_pool), progress=False)
    for case in ("row_mask_then_top", "two_tops", "top_row_mask_top", "top_of_an_aggregate"):
        for where, scores, count in survivors_before_each_top(pool, TOP_CASES[case]["masks"]):
            assert_cut_in_a_split_tie(pool, where, scores, count, [3, 4, 6])


def test_a_top_mask_ranks_the_survivors_not_the_pool(top_pool):
    """The top: masks after another mask keep other examples than a top of the whole pool intersected with
    the survivors would (so the byte tests tell the two apart), and an aggregate's statistics over the
    survivors would rank them otherwise than the pool's."""
    pool = Pool(str(top_pool), progress=False)
    for case in ("row_mask_then_top", "top_row_mask_top"):
        where, scores, count = survivors_before_each_top(pool, TOP_CASES[case]["masks"])[-1]
        spec = TOP_CASES[case]["masks"][-1]
        everything = load_scores(pool, spec.split(":", 2)[2]).values
        of_pool = set(np.argsort(-everything, kind="stable")[:count]) & set(where)
        assert set(where[np.argsort(-scores, kind="stable")[:count]]) != of_pool
    where, _, count = survivors_before_each_top(pool, TOP_CASES["top_of_an_aggregate"]["masks"])[0]
    x = [pool.column(c).astype(np.float64) for c in ("negclip", "normsim")]
    over_pool = sum((v - v.mean()) / v.std() for v in x)[where]
    over_survivors = sum((v[where] - v[where].mean()) / v[where].std() for v in x)
    assert set(np.argsort(-over_pool, kind="stable")[:count]) != set(np.argsort(-over_survivors, kind="stable")[:count])


def test_a_clip_fraction_mask_after_another_takes_the_pools_threshold(top_pool):
    """DataComp's threshold of a clip_score fraction is the whole pool's, whatever the masks before it keep:
    the report's threshold is the value at rank int(0.3 M) of the pool's L/14 scores (missing ones last),
    not of the survivors'."""
    pool = Pool(str(top_pool), progress=False)
    sel = selection.Selection(str(top_pool), selection.Output(Path("unused.npy")), progress=False,
                              restrict=selection.Restrict(**TOP_CASES["clip_fraction_mask"]))
    job = rs.job_of(sel, pool)
    assert job.ranks == ((1, "clip_l14_similarity_score", 0.3),)
    parts = [rs.Partition(pool, p, job) for p in rs.plan_partitions(pool, 3)]
    for part in parts:
        part.load()
    rs.pool_wide_masks(rs.Inline(parts), job, pool.size)
    line = rs.merge_reports([p.mask_report() for p in parts])[1]
    scores = pool.column("clip_l14_similarity_score")
    order = -np.sort(-scores)  # NaN last
    assert line["threshold"] == float(order[int(0.3 * scores.size)])
    survivors = scores[pool.column("original_width") >= 300]
    assert line["threshold"] != float(-np.sort(-survivors)[int(0.3 * survivors.size)])


def test_a_top_mask_over_missing_scores_is_refused_as_on_one_machine(top_pool, tmp_path):
    """A top: mask's score must be finite for every example, as one machine's (a missing L/14 score): the
    same error in one partition, the same kind of error naming the source in several; nothing written."""
    kw = dict(restrict=selection.Restrict(masks=("original_width>=300", "top:0.3:clip_l14_similarity_score")))
    errors = []
    for name, runner in (("one", selection.run), ("one_part", lambda sel: inline_run(sel, 1)),
                         ("parts", lambda sel: inline_run(sel, 3))):
        with pytest.raises(FlytInputError) as err:
            runner(selection.Selection(str(top_pool), selection.Output(tmp_path / f"{name}.npy"), progress=False, **kw))
        errors.append(str(err.value))
        assert not (tmp_path / f"{name}.npy").exists()
    assert errors[1] == errors[0] and "score source 'clip_l14_similarity_score' has" in errors[2]


def test_a_top_mask_over_an_input_store_writes_the_single_machine_bytes(scored_pool, store, tmp_path):
    """top: over a stored input after a store mask, the cut inside the tie of the examples the store had no
    value for (all given the mean), spread over the partitions; and over an aggregate of a stored input and
    a pool column (their statistics the whole pool's): the single-machine bytes and masks' report."""
    pool = Pool(str(scored_pool), progress=False)
    where, scores, _ = survivors_before_each_top(pool, ("store:lang==1", "top:0.5:store:e"), store)[0]
    values, counts = np.unique(scores, return_counts=True)
    filled = values[np.argmax(counts)]  # the mean the store gave the examples it had no value for
    first = int(np.count_nonzero(scores > filled))
    count = first + int(counts.max()) // 2
    fraction = (count + 0.5) / pool.size
    assert int(pool.size * fraction) == count
    assert_cut_in_a_split_tie(pool, where, scores, count, [2, 6])
    for i, masks in enumerate([("store:lang==1", f"top:{fraction!r}:store:e"),
                               ("original_width>=300", "top:0.4:standardized_sum:store:e,a", "store:lang==1")]):
        kw = dict(restrict=selection.Restrict(masks=masks), score=selection.ScoreStage(None, inputs_dir=store))
        for partitions in (2, 6):
            folder = tmp_path / f"{i}_{partitions}"
            folder.mkdir()
            one, parts = both(scored_pool, folder, inline_run, partitions, **kw)
            assert len(one) > 128 and parts == one
            sidecars = both_sidecars(folder)
            assert sidecars[1] == sidecars[0] and sidecars[0]["masks"][1]["kind"] == "top"


# ------------------------------------------------------------------------------ DataComp's row-wise baselines


@pytest.fixture(scope="module")
def caption_kit(tmp_path_factory) -> tuple[Path, AssetPaths]:
    """The baseline tests' pool (captions, image sizes and CLIP scores on the rules' edges; shards of 37,
    29 and 44 rows) and assets: a tiny fastText language model, a WordNet and an ImageNet-21k id list."""
    pytest.importorskip("fasttext", reason="the baselines extra (fasttext) is not installed")
    pytest.importorskip("nltk", reason="the baselines extra (nltk) is not installed")
    from baselinegen import train_language_model, write_caption_pool, write_tiny_wordnet

    root = tmp_path_factory.mktemp("captions")
    pool, _ = write_caption_pool(root / "metadata")
    wordnet, ids = write_tiny_wordnet(root / "nltk_data")
    (root / "ids.txt").write_text("\n".join(ids) + "\n")
    return pool, AssetPaths(fasttext_model=str(train_language_model(root / "fasttext")),
                            imagenet21k_wordnet_ids=str(root / "ids.txt"), wordnet_data=str(wordnet))


@pytest.fixture
def gcld3_stand_in(monkeypatch):
    """laion2b's language labels from a stand-in (gcld3 builds from source), in this process."""
    from flyt_datacomp.baselines import language, optional

    def stand_in(texts):
        return np.array([None if t is None else "en" if "the" in t.split() else "xx" for t in texts], dtype=object)

    require = optional.require
    monkeypatch.setattr(language, "gcld3_languages", stand_in)
    monkeypatch.setattr(optional, "require", lambda module: None if module == "gcld3" else require(module))


CLIP_THRESHOLD = BaselineParams(arch="b32", threshold=0.28)
ROW_BASELINES = {
    "basic_filter": dict(baseline="basic_filter"),
    "text_based": dict(baseline="text_based"),
    "laion2b": dict(baseline="laion2b"),
    "clip_score_threshold": dict(baseline="clip_score", baseline_params=CLIP_THRESHOLD),
    "no_filter": dict(baseline="no_filter"),
    "basic_filter_with_masks": dict(baseline="basic_filter", masks=("clip_score:arch=l14,threshold=0.25",
                                                                    "original_width<1000")),
    "clip_score_with_text_based": dict(baseline="clip_score", baseline_params=CLIP_THRESHOLD, masks=("text_based",)),
    "clip_score_fraction": dict(baseline="clip_score", baseline_params=BaselineParams(arch="l14", fraction=0.4)),
    "clip_score_fraction_with_masks": dict(baseline="clip_score", baseline_params=BaselineParams(arch="l14", fraction=0.6),
                                           masks=("basic_filter", "top:0.05:clip_b32_similarity_score")),
}
VOLATILE = ("created", "output", "histogram", "seconds", "cluster")  # where and when, and Ray's record of its workers


def both_sidecars(tmp_path: Path) -> list[dict]:
    """The sidecars of the single-machine run and the partitions' (:func:`both`), less what differs by design."""
    return [{k: v for k, v in json.loads((tmp_path / f"{n}.npy.json").read_text()).items() if k not in VOLATILE}
            for n in ("one", "parts")]


@pytest.mark.parametrize("partitions", [2, 3])
@pytest.mark.parametrize("case", list(ROW_BASELINES))
def test_row_wise_baselines_write_the_single_machine_subset_and_sidecar(caption_kit, gcld3_stand_in, tmp_path,
                                                                         case, partitions):
    """A baseline that judges each example by its own row (alone, or before masks, as one machine
    applies it) keeps its survivors on the partitions: DataComp's subset, the single-machine bytes, and
    the same sidecar (the baseline, its report line with its assets, their warnings, the survivors)."""
    pool, assets = caption_kit
    restrict = selection.Restrict(assets=assets, **ROW_BASELINES[case])
    one, parts = both(pool, tmp_path, inline_run, partitions, restrict=restrict, workers=1)
    assert parts == one
    uids = np.load(tmp_path / "one.npy")
    assert np.array_equal(uids, np.unique(uids))  # DataComp's subset: sorted, once each
    sidecars = both_sidecars(tmp_path)
    assert sidecars[1] == sidecars[0]
    report = sidecars[0]["masks"]  # the baseline first, then the masks, as one machine applies them
    assert report[0]["mask"] == f"baseline:{restrict.baseline}" and len(report) == 1 + len(restrict.masks)
    assert sidecars[0]["baseline"]["name"] == restrict.baseline
    left = [sidecars[0]["inputs"]["pool_size"]] + [line["surviving"] for line in report]
    if case != "no_filter":  # the baseline drops some examples, each mask some more
        assert all(a > b for a, b in zip(left, left[1:]))
    assert sidecars[0]["total_entries"] == left[-1] > 0


def test_ray_workers_run_the_row_wise_baselines_with_their_assets(ray_cluster, caption_kit, tmp_path):
    """``baseline text_based --ray`` and ``filter --name basic_filter --mask ... --ray``: each worker
    finds the language model, the WordNet and the id list at the paths given, and the subsets are the
    single-machine ones, their sidecars recording the cluster."""
    pool, assets = caption_kit
    files = ["--fasttext-model", assets.fasttext_model, "--imagenet21k-wordnet-ids", assets.imagenet21k_wordnet_ids,
             "--wordnet-data", assets.wordnet_data]
    runs = [(baseline_command, ["text_based"], dict(baseline="text_based")),
            (filter_command, ["--name", "basic_filter", "--mask", "original_width<1000"],
             dict(baseline="basic_filter", masks=("original_width<1000",)))]
    for (sidecar, _), (_, _, restrict) in zip(cli_on_ray_and_one_machine(pool, assets, files, runs, tmp_path), runs):
        assert sidecar["cluster"]["partitions"] == 3 and sidecar["masks"][0]["mask"] == f"baseline:{restrict['baseline']}"


def cli_on_ray_and_one_machine(pool: Path, assets: AssetPaths, files: list[str], runs: list, tmp_path: Path) -> list:
    """Each run's command (``(command, args, Restrict's keywords)``) on the local Ray in 3 partitions,
    and the selection on one machine: the same bytes; their sidecars (Ray's, one machine's)."""
    out = []
    for i, (command, args, restrict) in enumerate(runs):
        selection.run(selection.Selection(str(pool), selection.Output(tmp_path / f"one{i}.npy"), progress=False,
                                          workers=1, restrict=selection.Restrict(assets=assets, **restrict)))
        result = CliRunner().invoke(command, [*args, "--metadata-dir", str(pool), "--output", str(tmp_path / f"ray{i}.npy"),
                                              *files, "--ray", "auto", "--partitions", "3", "--quiet"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"ray{i}.npy").read_bytes() == (tmp_path / f"one{i}.npy").read_bytes()
        out.append(tuple(json.loads((tmp_path / f"{n}{i}.npy.json").read_text()) for n in ("ray", "one")))
    return out


# ------------------------------------------------------------------------------ DataComp's image-based baselines


@pytest.fixture(scope="module")
def image_kit(caption_kit, tmp_path_factory) -> tuple[Path, AssetPaths]:
    """The baseline tests' pool (dim-8 l14 embeddings) and its assets, with unnormalised k-means centroids
    of very different norms and five ImageNet-1k embedding files near three of them."""
    pytest.importorskip("torch")
    from baselinegen import write_centroids, write_in1k

    pool, assets = caption_kit
    root = tmp_path_factory.mktemp("image_assets")
    centroids = write_centroids(root / "small_centroids.pt")
    write_in1k(root / "in1k", centroids)
    return pool, dataclasses.replace(assets, centroids=str(root / "small_centroids.pt"),
                                     in1k_embeddings=(str(root / "in1k"),))


L14_FRACTION = BaselineParams(arch="l14", fraction=0.3)
IMAGE_BASELINES = {
    "image_based": dict(baseline="image_based"),
    "intersect_fraction": dict(baseline="image_based_intersect_clip_score", baseline_params=L14_FRACTION),
    "intersect_threshold": dict(baseline="image_based_intersect_clip_score",
                                baseline_params=BaselineParams(arch="b32", threshold=0.27)),
    "image_based_with_masks": dict(baseline="image_based", masks=("original_width<1000",)),
    "intersect_fraction_with_masks": dict(baseline="image_based_intersect_clip_score", baseline_params=L14_FRACTION,
                                          masks=("caption:basic",)),
    "basic_filter_then_image_based": dict(baseline="basic_filter", masks=("image_based",)),
    "basic_filter_then_intersect_fraction": dict(baseline="basic_filter",
                                                 masks=("image_based_intersect_clip_score:arch=l14,fraction=0.3",)),
}


@pytest.mark.parametrize("partitions", [2, 3])
@pytest.mark.parametrize("case", list(IMAGE_BASELINES))
def test_image_based_baselines_write_the_single_machine_subset_and_sidecar(image_kit, tmp_path, case, partitions):
    """Each partition searches its own shards' embeddings for their nearest centroids (the driver found
    the target centroids once; the intersect variant's fraction, a rank over the whole pool, first):
    the single-machine bytes and sidecar, its report line recording the centroids and the targets."""
    pool, assets = image_kit
    restrict = selection.Restrict(assets=assets, **IMAGE_BASELINES[case])
    one, parts = both(pool, tmp_path, inline_run, partitions, restrict=restrict, workers=1)
    assert parts == one
    sidecars = both_sidecars(tmp_path)
    assert sidecars[1] == sidecars[0]
    line = next(x for x in sidecars[0]["masks"] if x["baseline"].startswith("image_based"))
    assert line["num_centroids"] == 12 and 0 < line["target_centroids"] < 12 and len(line["assets"]["in1k_embeddings"]) == 5
    left = [sidecars[0]["inputs"]["pool_size"]] + [x["surviving"] for x in sidecars[0]["masks"]]
    assert all(a > b for a, b in zip(left, left[1:])) and sidecars[0]["total_entries"] == left[-1] > 0
    if case.startswith("intersect_fraction"):  # the threshold at rank int(0.3 N) of the whole pool
        assert line["threshold_over"] == "pool"
        scores = Pool(str(pool), progress=False).column("clip_l14_similarity_score")
        assert line["threshold"] == float(-np.sort(-scores)[int(0.3 * scores.size)])


def test_every_partition_judges_its_rows_with_the_pools_targets(image_kit, monkeypatch):
    """Each partition finds its examples' nearest centroids among all the centroids and keeps those
    whose centroid is a target of the whole ImageNet set, not one found from its own rows."""
    from flyt_datacomp.baselines import datacomp

    pool_dir, assets = image_kit
    sel = selection.Selection(str(pool_dir), selection.Output(Path("unused.npy")), progress=False,
                              restrict=selection.Restrict(baseline="image_based", assets=assets))
    pool = Pool(str(pool_dir), progress=False)
    job = rs.job_of(sel, pool)
    found = job.masks[0].found
    assert found is not None and found.targets.size > 0
    calls = []
    monkeypatch.setattr(datacomp, "image_targets", lambda *a, **k: calls.append(a))  # never again on a partition
    parts = [rs.Partition(pool, p, job) for p in rs.plan_partitions(pool, 3)]
    for part in parts:
        part.load()
    assert not calls and sum(p.size for p in parts) == job.masks[0].select(
        MaskContext(pool, None, job.mask_settings, job.mask_defaults), None)[0].sum()


# ------------------------------------------------------------------------------ on a local Ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield "auto"
    ray.shutdown()


def ray_run(partitions: int, cap: int | None = None):
    return lambda sel, n: rs.run(sel, rs.Cluster("auto", partitions=partitions, memory_cap=cap))


def test_ray_workers_run_the_image_based_baselines_with_their_assets(ray_cluster, image_kit, tmp_path):
    """``baseline image_based --ray`` and ``filter --name image_based_intersect_clip_score --fraction
    --ray``: the driver finds the target centroids (and the threshold over the pool), each worker
    reads the centroids and its shards' embeddings at the paths given; the single-machine subsets."""
    pool, assets = image_kit
    files = ["--fasttext-model", assets.fasttext_model, "--centroids", assets.centroids,
             "--in1k-embeddings", assets.in1k_embeddings[0], "--num-gpus", "0"]
    runs = [(baseline_command, ["image_based"], dict(baseline="image_based")),
            (filter_command, ["--name", "image_based_intersect_clip_score", "--arch", "l14", "--fraction", "0.3"],
             dict(baseline="image_based_intersect_clip_score", baseline_params=L14_FRACTION))]
    for sidecar, single in cli_on_ray_and_one_machine(pool, assets, files, runs, tmp_path):
        assert sidecar["cluster"]["partitions"] == 3 and sidecar["masks"] == single["masks"]
        assert sidecar["masks"][0]["target_centroids"] > 0 and sidecar["masks"][0]["device"] == "cpu"



@pytest.fixture(scope="module")
def large_pool(tmp_path_factory) -> Path:
    """4M examples in 40 files: their uids and float64 scores alone are 96 MiB."""
    m = 4_000_000
    scores = np.random.default_rng(2).normal(0.3, 0.05, m).astype(np.float32)
    return write_pool(tmp_path_factory.mktemp("large") / "metadata", {COLUMN: scores}, [m // 40] * 40, seed=2)


@pytest.mark.slow
def test_ray_workers_capped_below_the_pool_give_the_single_machine_subset(ray_cluster, large_pool, tmp_path):
    """Each worker may grow its address space by 72 MiB (RLIMIT_AS), less than the pool's uids and
    scores: eight partitions write the single-machine bytes; one partition holding the whole pool
    under the same cap fails, with one clear error and nothing written."""
    cap = 72 << 20
    kw = dict(score=SCORE, sample=selection.Sample(options={"fraction": 0.3}), io_threads=1)  # no reader threads
    one, parts = both(large_pool, tmp_path, ray_run(8, cap), 8, **kw)
    assert parts == one
    sel = selection.Selection(str(large_pool), selection.Output(tmp_path / "whole.npy"), progress=False, **kw)
    with pytest.raises((WorkerDied, FlytInputError)):
        rs.run(sel, rs.Cluster("auto", partitions=1, memory_cap=cap))
    assert not (tmp_path / "whole.npy").exists()


def test_ray_workers_run_masks_that_rank_the_whole_pool(ray_cluster, top_pool, tmp_path):
    """``filter --mask ... --ray`` with a row mask, a clip_score fraction (DataComp's threshold over the
    whole pool) and a top: mask ranking their survivors: the single-machine bytes and masks' report."""
    masks = ("original_width>=300", "clip_score:arch=l14,fraction=0.3", "top:0.15:negclip")
    selection.run(selection.Selection(str(top_pool), selection.Output(tmp_path / "one.npy"), progress=False,
                                      restrict=selection.Restrict(masks=masks)))
    args = [a for spec in masks for a in ("--mask", spec)]
    result = CliRunner().invoke(filter_command, [*args, "--metadata-dir", str(top_pool), "--output", str(tmp_path / "ray.npy"),
                                                 "--ray", "auto", "--partitions", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ray.npy").read_bytes() == (tmp_path / "one.npy").read_bytes()
    ray, one = (json.loads((tmp_path / f"{n}.npy.json").read_text()) for n in ("ray", "one"))
    assert ray["masks"] == one["masks"] and ray["cluster"]["partitions"] == 3
    left = [one["inputs"]["pool_size"]] + [line["surviving"] for line in one["masks"]]
    assert all(a > b for a, b in zip(left, left[1:]))


def test_ray_clip_score_baseline_is_datacomps_bytes(ray_cluster, tied_pool, tmp_path):
    """The baseline command with --ray (joining the running instance) against the single-machine path."""
    selection.run(selection.Selection(str(tied_pool), selection.Output(tmp_path / "one.npy"), progress=False,
                                      **CASES["clip_score_fraction"]))
    result = CliRunner().invoke(baseline_command, ["clip_score", "--arch", "l14", "--fraction", "0.3", "--metadata-dir",
                                                   str(tied_pool), "--output", str(tmp_path / "ray.npy"), "--ray", "auto",
                                                   "--partitions", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ray.npy").read_bytes() == (tmp_path / "one.npy").read_bytes()


def test_a_partitions_error_is_the_error_itself(ray_cluster, tied_pool, tmp_path):
    """A bad score read by a worker is the same one-line error as on one machine (the file and row), not
    a dead worker."""
    kw = dict(score=selection.ScoreStage("clip_l14_similarity_score"), sample=selection.Sample(options={"fraction": 0.3}))
    with pytest.raises(FlytInputError) as one:
        selection.run(selection.Selection(str(tied_pool), selection.Output(tmp_path / "one.npy"), progress=False, **kw))
    with pytest.raises(FlytInputError) as ray:
        rs.run(selection.Selection(str(tied_pool), selection.Output(tmp_path / "ray.npy"), progress=False, **kw),
               rs.Cluster("auto", partitions=1))
    assert str(ray.value) == str(one.value) and ".parquet row" in str(ray.value)
    assert not (tmp_path / "ray.npy").exists()


def test_ray_scs_is_the_driver_run_in_process(ray_cluster, tied_pool, tmp_path):
    """The same seed and partitions give the same bytes on Ray as in process, so the distribution
    tests of the driver above hold for the Ray path."""
    kw = dict(score=SCORE, sample=selection.Sample(options={"alpha": 0.5, "group_size": 100}, num_samples=1500, seed=3),
              transform=selection.Transform(standardize=True))
    sel = selection.Selection(str(tied_pool), selection.Output(tmp_path / "ray.npy"), progress=False, **kw)
    result = rs.run(sel, rs.Cluster("auto", partitions=3))
    inline_run(selection.Selection(str(tied_pool), selection.Output(tmp_path / "inline.npy"), progress=False, **kw), 3)
    assert (tmp_path / "ray.npy").read_bytes() == (tmp_path / "inline.npy").read_bytes()
    assert result.stats["total_entries"] == 1500 and result.stats["cluster"]["partitions"] == 3
    assert math.isclose(sum(int(k) * v for k, v in result.stats["repetition_histogram"].items()), 1500)


def test_ray_runs_a_model_score_under_masks_as_in_process(ray_cluster, scored_pool, models, tmp_path):
    """A scoring model and masks on Ray's workers: the single-machine bytes for a threshold, the
    in-process driver's bytes for SCS."""
    kw = dict(restrict=selection.Restrict(masks=("caption:basic", subset_mask(scored_pool, tmp_path))),
              score=selection.ScoreStage(f"standardized_sum:{models['m-flyt']},c"),
              sample=selection.Sample(options={"fraction": 0.3}))
    one, parts = both(scored_pool, tmp_path, ray_run(3), 3, **kw)
    assert parts == one
    kw["sample"] = selection.Sample(options={"alpha": 0.5, "group_size": 40}, num_samples=500, seed=1)
    for name, runner in (("ray", ray_run(3)), ("inline", inline_run)):
        runner(selection.Selection(str(scored_pool), selection.Output(tmp_path / f"{name}.npy"), progress=False, **kw), 3)
    assert (tmp_path / "ray.npy").read_bytes() == (tmp_path / "inline.npy").read_bytes()


def test_joining_ray_keeps_the_commands_stop_handlers(monkeypatch):
    """``ray.init`` installs its own SIGTERM handler, which exits at once (code 15, no cleanup, the
    local Ray's processes left to die alone); the session puts the command's handler back."""
    import signal
    import sys
    import types

    from flyt_datacomp.inputs.executors import ray_session

    ray = types.ModuleType("ray")
    ray.is_initialized = lambda: False
    ray.init = lambda **kw: signal.signal(signal.SIGTERM, lambda *a: sys.exit(15))
    ray.shutdown = lambda: None
    monkeypatch.setitem(sys.modules, "ray", ray)

    def ours(*args):
        raise AssertionError("not called")

    before = signal.signal(signal.SIGTERM, ours)
    try:
        with ray_session("local"):
            assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_stop_signal_leaves_a_local_rays_processes_to_its_shutdown():
    """The first stop signal SIGTERMs the command's children, except those its cleanup stops itself (a
    local Ray's: a SIGTERM first made ray.shutdown wait 8 s and orphaned Ray's agents); a kill
    still reaches them all. Run in a process of its own (this one's children include the tests' Ray)."""
    import subprocess
    import sys

    script = """
import signal, subprocess, sys, time
from flyt_datacomp.process import signal_children, stopped_by_cleanup
spared, other = (subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2))
with stopped_by_cleanup({spared.pid}):
    signal_children(signal.SIGTERM)
    print(other.wait(timeout=20))
    time.sleep(0.5)
    print(spared.poll())
    signal_children(signal.SIGKILL)
    print(spared.wait(timeout=20))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["-15", "None", "-9"], out.stdout + out.stderr


# ------------------------------------------------------------------------------ over an input store


@pytest.fixture(scope="module")
def store(scored_pool, tmp_path_factory) -> str:
    """An input store of the scored pool: ``e``, per-uid scores whose mean and spread change from shard
    to shard, a tenth of the pool without one (filled with their mean), and ``lang``, 0 or 1, a
    twentieth without one (a store mask never keeps those)."""
    from flyt_datacomp.inputs.compute import compute_inputs

    root = tmp_path_factory.mktemp("store")
    pool = Pool(str(scored_pool), progress=False)
    rng = np.random.default_rng(12)
    shard = np.repeat(np.arange(len(SHARDS)), SHARDS)
    hexes = np.array(uids_to_hex(pool.uids), dtype=object)
    inputs = {"e": (rng.normal(1.0 - 0.3 * shard, 0.5 + 0.2 * shard), 0.9),
              "lang": ((rng.random(pool.size) < 0.7).astype(np.float64), 0.95)}
    specs = []
    for name, (values, share) in inputs.items():
        held = rng.random(pool.size) < share
        pq.write_table(pa.table({"uid": pa.array(hexes[held], pa.string()), "score": values[held]}),
                       root / f"{name}.parquet")
        specs.append(f"{name}=file:{root / name}.parquet")
    compute_inputs(str(scored_pool), str(root / "store"), specs, missing="mean", progress=False)
    return str(root / "store")


@pytest.fixture(scope="module")
def stored_models(scored_pool, store, tmp_path_factory) -> dict[str, str]:
    """An M-FLYT model over the pool column ``a`` and the stored input ``e`` that records the store it
    was trained with (and the identity of ``e`` then), and a released mixing model over b, e and lang."""
    import torch

    from flyt_datacomp.flyt.features import IDENTITY_KEY, FeatureSpec, stored_identity
    from flyt_datacomp.flyt.models import MixingModel, save_scoring_model
    from flyt_datacomp.store import InputStore

    root = tmp_path_factory.mktemp("stored_models")
    pool = Pool(str(scored_pool), progress=False)
    x = np.stack([pool.column("a"), InputStore(store).column("e", pool)], axis=1)
    model = MixingModel(["a", "e"], x.mean(0), x.std(0))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([0.4, 1.1]))
    identity = stored_identity(pool, FeatureSpec("m-flyt", ("a", "e"), inputs_dir=store))
    save_scoring_model(root / "m.pt", model, {"config": {"inputs_dir": store}, IDENTITY_KEY: identity})
    torch.save({"layers.0.weight": torch.tensor([[1.0, -0.5, 2.0]]), "layers.0.bias": torch.tensor([0.0])},
               root / "mix.pt")
    return {"m-flyt": str(root / "m.pt"), "mixing": f"mixing:{root / 'mix.pt'}:b,e,lang"}


def test_a_part_of_the_pool_reads_its_own_rows_of_the_store(scored_pool, store):
    """A part of the pool (a partition's) is checked against the store with the whole pool's shard list
    and its own shards' uids (not the whole pool's digests read before), and reads its rows' values."""
    from flyt_datacomp.store import InputStore

    pool = Pool(str(scored_pool), progress=False)
    digests = pool.shard_uid_digests
    part = pool.part([2, 3, 4])
    assert part.shard_uid_digests == digests[2:5] and part.whole_shards == pool.shards
    assert [e["stem"] for e in InputStore(store).check_pool(part)] == ["0002", "0003", "0004"]
    start = sum(SHARDS[:2])
    np.testing.assert_array_equal(InputStore(store).column("e", part),
                                  InputStore(store).column("e", pool)[start:start + sum(SHARDS[2:5])])


STORE_CASES = {
    "store_fraction": ("store:e", {"fraction": 0.3}),
    "store_exact_count": ("store:e", {"fraction": 0.37, "exact_count": True}),
    "store_value": ("store:e", {"value": 1.0}),
    "standardized_sum": ("standardized_sum:store:e,a", {"fraction": 0.2}),
    "in_weighted": ("in_weighted:r=4:b=0.2,store:lang=0.3", {"fraction": 0.2}),
    "m-flyt": ("M-FLYT", {"fraction": 0.3}),
    "m-flyt_store_recorded": ("M-FLYT", {"fraction": 0.3}),
    "mixing": ("MIXING", {"fraction": 0.25}),
}


def store_selection(case: str, store: str, stored_models: dict[str, str]) -> dict:
    """The selection of STORE_CASES ``case`` (the recorded case gives no `inputs_dir`: the model's store is read)."""
    source, options = STORE_CASES[case]
    source = {"M-FLYT": stored_models["m-flyt"], "MIXING": stored_models["mixing"]}.get(source, source)
    inputs_dir = None if case == "m-flyt_store_recorded" else store
    return dict(score=selection.ScoreStage(source, inputs_dir=inputs_dir), sample=selection.Sample(options=options))


@pytest.mark.parametrize("partitions", [2, 6])
@pytest.mark.parametrize("case", list(STORE_CASES))
def test_scores_over_an_input_store_write_the_single_machine_bytes(scored_pool, store, stored_models, tmp_path, case,
                                                                    partitions):
    """store:NAME (a top fraction, an exact count, a value), aggregates with a stored input, an M-FLYT
    model over a stored input (the store given, or the one it records) and a mixing model over stored
    inputs: each partition reads its own shards' rows of the store, and the subset is the same bytes."""
    one, parts = both(scored_pool, tmp_path, inline_run, partitions, **store_selection(case, store, stored_models))
    assert len(one) > 128 and parts == one
    sidecars = [json.loads((tmp_path / f"{n}.npy.json").read_text())["inputs"] for n in ("one", "parts")]
    assert [s["inputs_dir"] for s in sidecars] == [None if case == "m-flyt_store_recorded" else store] * 2


def test_each_partition_reads_only_its_own_shards_of_the_store(scored_pool, store, stored_models, tmp_path,
                                                               monkeypatch):
    """A store score, an M-FLYT model and a store mask: every shard file of the store a partition reads
    is one of its own shards'."""
    from flyt_datacomp.store import InputStore

    read: list[str] = []
    original = InputStore.read_inputs

    def recording(self, shard, *args, **kwargs):
        read.append(shard["stem"])
        return original(self, shard, *args, **kwargs)

    monkeypatch.setattr(InputStore, "read_inputs", recording)
    sel = selection.Selection(str(scored_pool), selection.Output(tmp_path / "x.npy"), progress=False,
                              restrict=selection.Restrict(masks=("store:lang==1",)),
                              score=selection.ScoreStage(f"standardized_sum:store:e,{stored_models['m-flyt']}",
                                                         inputs_dir=store),
                              sample=selection.Sample(options={"fraction": 0.3}))
    pool = Pool(str(scored_pool), progress=False)
    job = rs.job_of(sel, pool)
    assert job.stores == (store,)
    for shards in rs.plan_partitions(pool, 4):
        read.clear()
        rs.Partition(pool, shards, job).load()
        own = sorted(Path(pool.shards[i].parquet).stem for i in shards)
        assert sorted(set(read)) == own and len(read) == 3 * len(own)  # the mask, store:e and the model


@pytest.mark.parametrize("scored", [False, True])
def test_a_store_mask_writes_the_single_machine_bytes(scored_pool, store, tmp_path, scored):
    """store:lang==1 (the examples without a value never kept) beside a column mask, with a score (a
    stored input, standardised over the survivors) and without (the survivors once each): the same
    bytes and the same masks' report."""
    kw = dict(restrict=selection.Restrict(masks=("store:lang==1", "original_width>=200")),
              score=selection.ScoreStage("store:e" if scored else None, inputs_dir=store))
    if scored:
        kw.update(sample=selection.Sample(options={"fraction": 0.3}), transform=selection.Transform(standardize=True))
    one, parts = both(scored_pool, tmp_path, inline_run, 6, **kw)
    assert len(one) > 128 and parts == one
    sidecars = [json.loads((tmp_path / f"{n}.npy.json").read_text()) for n in ("one", "parts")]
    assert sidecars[1]["masks"] == sidecars[0]["masks"] and sidecars[0]["masks"][0]["store"] == store
    assert sidecars[1]["inputs"]["pool_size_surviving"] == sidecars[0]["inputs"]["pool_size_surviving"]


def test_scs_with_an_m_flyt_model_over_stored_inputs(ray_cluster, scored_pool, store, stored_models, tmp_path):
    """SCS with the M-FLYT model over a stored input, standardised, under a store mask: the partitions'
    logits are the single-machine path's (the driver's SCS draws the single-machine distribution from
    them, tested above), and Ray's workers write the in-process driver's bytes for the same seed."""
    kw = dict(restrict=selection.Restrict(masks=("store:lang==1",)),
              score=selection.ScoreStage(stored_models["m-flyt"], inputs_dir=store),
              transform=selection.Transform(standardize=True),
              sample=selection.Sample(options={"alpha": 0.5, "group_size": 40}, num_samples=500, seed=4))
    sel = selection.Selection(str(scored_pool), selection.Output(tmp_path / "x.npy"), progress=False, **kw)
    pool, kept = check_partition_logits(sel, 3)
    for name, runner in (("ray", ray_run(3)), ("inline", inline_run)):
        runner(selection.Selection(str(scored_pool), selection.Output(tmp_path / f"{name}.npy"), progress=False, **kw), 3)
    assert (tmp_path / "ray.npy").read_bytes() == (tmp_path / "inline.npy").read_bytes()
    uids, counts = read_subset(tmp_path / "ray.npy")
    assert counts.sum() == 500 and set(uids_to_hex(uids)) <= set(uids_to_hex(pool.uids[kept.keep]))


def test_ray_workers_read_the_store_as_one_machine(ray_cluster, scored_pool, store, stored_models, tmp_path):
    """On Ray's workers: a store score under a store mask, and the mixing recipe through the command
    (the store's inputs named in the model's order), the single-machine bytes."""
    kw = dict(restrict=selection.Restrict(masks=("store:lang==1",)), score=selection.ScoreStage("store:e", inputs_dir=store),
              sample=selection.Sample(options={"fraction": 0.3}))
    one, parts = both(scored_pool, tmp_path, ray_run(3), 3, **kw)
    assert len(one) > 128 and parts == one
    mixing_model = stored_models["mixing"].split(":")[1]
    outputs = []
    for name, extra in (("one", []), ("ray", ["--ray", "auto", "--partitions", "3"])):
        result = CliRunner().invoke(baseline_command, [
            "flyt_mflyt_top20", "--metadata-dir", str(scored_pool), "--inputs-dir", store, "--mixing-model",
            mixing_model, "--mixing-inputs", "b,e,lang", "--output", str(tmp_path / f"r{name}.npy"), "--quiet", *extra])
        assert result.exit_code == 0, result.output
        outputs.append((tmp_path / f"r{name}.npy").read_bytes())
    assert len(outputs[0]) > 128 and outputs[1] == outputs[0]


def test_a_store_that_cannot_serve_the_selection_is_the_single_machine_error_on_ray(ray_cluster, scored_pool, store,
                                                                                   stored_models, tmp_path):
    """A missing stored input, a store of another pool (the same shard names and sizes, other uids: found
    by the workers, each for its own shards), a store missing a shard file (found by the worker that
    reads it), a store: score without a store: on Ray the same FlytInputError as on one machine,
    nothing written."""
    import shutil

    other = write_pool(tmp_path / "other", {"a": np.zeros(sum(SHARDS)), "b": np.ones(sum(SHARDS))}, SHARDS, seed=99)
    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    (damaged / "0004.parquet").unlink()
    cases = [(scored_pool, dict(score=selection.ScoreStage("store:nope", inputs_dir=store)), "has no input 'nope'"),
             (scored_pool, dict(score=selection.ScoreStage(f"mixing:{stored_models['mixing'].split(':')[1]}:b,nope,lang",
                                                           inputs_dir=store)), "mixing input 'nope'"),
             (other, dict(score=selection.ScoreStage("store:e", inputs_dir=store)), "was made for another pool"),
             (other, dict(score=selection.ScoreStage(stored_models["m-flyt"])), "was made for another pool"),
             (other, dict(restrict=selection.Restrict(masks=("store:lang==1",)),
                          score=selection.ScoreStage(None, inputs_dir=store)), "was made for another pool"),
             (scored_pool, dict(score=selection.ScoreStage("store:e", inputs_dir=str(damaged))),
              "shard file 0004.parquet is missing"),
             (scored_pool, dict(score=selection.ScoreStage("store:e")), "give `inputs_dir`")]
    for pool_dir, kw, message in cases:
        if kw["score"].source is not None:
            kw["sample"] = selection.Sample(options={"fraction": 0.3})
        errors = []
        for name, runner in (("one", selection.run), ("ray", lambda sel: rs.run(sel, rs.Cluster("auto", partitions=3)))):
            sel = selection.Selection(str(pool_dir), selection.Output(tmp_path / f"{name}.npy"), progress=False, **kw)
            with pytest.raises(FlytInputError) as err:
                runner(sel)
            errors.append(err.value)
            assert not (tmp_path / f"{name}.npy").exists()
        assert str(errors[1]) == str(errors[0]) and message in str(errors[0]), (kw, str(errors[0]), str(errors[1]))
        assert errors[1].params == errors[0].params


def test_a_worker_that_cannot_read_the_store_says_so(ray_cluster, scored_pool, store, tmp_path):
    """A store the driver opened but a worker cannot read (on a cluster: not on a file system its node
    mounts), here moved away once the job is made: one FlytInputError naming the store, not a dead worker."""
    import shutil

    import ray

    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    sel = selection.Selection(str(scored_pool), selection.Output(tmp_path / "x.npy"), progress=False,
                              score=selection.ScoreStage("store:e", inputs_dir=str(copy)),
                              sample=selection.Sample(options={"fraction": 0.3}))
    pool = Pool(str(scored_pool), progress=False)
    job = rs.job_of(sel, pool)
    copy.rename(tmp_path / "moved")
    actor = ray.remote(num_cpus=0.5)(rs.Partition)
    handles = [actor.remote(pool, shards, job) for shards in rs.plan_partitions(pool, 2)]
    try:
        with pytest.raises(FlytInputError) as err:
            rs._Actors(ray, handles).call("load")
    finally:
        for h in handles:
            ray.kill(h)
    assert f"cannot read the input store {copy}" in str(err.value) and "mounts" in str(err.value)
