"""Tests for flyt_datacomp.sampling.

Exactness is checked against an independent brute force: the exact distribution of the whole count
vector, enumerated over every draw sequence for tiny pools, compared with the empirical distribution
of our samplers by a chi-square goodness-of-fit test (p > 1e-4) plus per-item means within 5 standard
errors. The same checker is shown to reject deliberately wrong samplers.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from scipy import stats

from flyt_datacomp import sampling
from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.sampling import hcs, nocap, scs, threshold

P_MIN = 1e-4


# ----------------------------------------------------------------------------------------------
# independent brute force: exact distributions of count vectors
# ----------------------------------------------------------------------------------------------


def _successive_sets(w, g):
    """{frozenset: probability} of the set drawn by g successive draws without replacement."""
    out = defaultdict(float)

    def rec(remaining, chosen, p):
        if len(chosen) == g:
            out[frozenset(chosen)] += p
            return
        tot = math.fsum(w[i] for i in remaining)
        for i in remaining:
            rec(remaining - {i}, chosen + [i], p * w[i] / tot)

    rec(frozenset(range(len(w))), [], 1.0)
    return out


def exact_scs(s, alpha, g, n):
    m = len(s)
    dist = {(0,) * m: 1.0}
    drawn = 0
    while drawn < n:
        gg = min(g, n - drawn)
        new = defaultdict(float)
        for c, pc in dist.items():
            w = [math.exp(s[i] - alpha * c[i]) for i in range(m)]
            for subset, ps in _successive_sets(w, gg).items():
                new[tuple(c[i] + (i in subset) for i in range(m))] += pc * ps
        dist = new
        drawn += gg
    return dict(dist)


def exact_hcs(s, cap, n):
    """Sequential draws from softmax(s) over items with fewer than cap copies (cap=n: no cap)."""
    m = len(s)
    dist = {(0,) * m: 1.0}
    for _ in range(n):
        new = defaultdict(float)
        for c, pc in dist.items():
            open_ = [i for i in range(m) if c[i] < cap]
            tot = math.fsum(math.exp(s[i]) for i in open_)
            for i in open_:
                c2 = list(c)
                c2[i] += 1
                new[tuple(c2)] += pc * math.exp(s[i]) / tot
        dist = new
    return dict(dist)


def check_distribution(sampler, exact, trials):
    """Chi-square test of the empirical count-vector distribution against `exact`.

    Returns the p-value (0.0 if an impossible outcome was seen) and whether per-item means lie
    within 5 standard errors of the exact means.
    """
    observed = defaultdict(int)
    samples = []
    for t in range(trials):
        c = np.asarray(sampler(t))
        samples.append(c)
        observed[tuple(int(x) for x in c)] += 1
    if any(k not in exact for k in observed):
        return 0.0, False
    keys = sorted(exact, key=lambda k: -exact[k])
    exp = np.array([exact[k] for k in keys]) * trials
    obs = np.array([observed.get(k, 0) for k in keys], dtype=float)
    big = exp >= 5
    exp_b, obs_b = list(exp[big]), list(obs[big])
    if (~big).any():
        exp_b.append(exp[~big].sum())
        obs_b.append(obs[~big].sum())
    exp_b, obs_b = np.array(exp_b), np.array(obs_b)
    exp_b *= obs_b.sum() / exp_b.sum()  # remove float drift in the total
    p = 1.0 if len(exp_b) < 2 else stats.chisquare(obs_b, exp_b).pvalue
    arr = np.array([list(k) for k in keys], dtype=float)
    probs = np.array([exact[k] for k in keys])
    mean = probs @ arr
    var = probs @ (arr - mean) ** 2
    emp = np.mean(samples, axis=0)
    se = np.sqrt(np.maximum(var, 1e-12) / trials)
    means_ok = bool(np.all(np.abs(emp - mean) <= 5 * se + 1e-12))
    return p, means_ok


def assert_matches(sampler, exact, trials):
    p, means_ok = check_distribution(sampler, exact, trials)
    assert p > P_MIN and means_ok, f"chi-square p={p:.3g}, means_ok={means_ok}"


# ----------------------------------------------------------------------------------------------
# the brute force itself, and the checker's power
# ----------------------------------------------------------------------------------------------

S4 = [1.0, 0.0, -0.5, 0.3]


def _softmax(x):
    x = np.asarray(x, dtype=float)
    e = np.exp(x - x.max())
    return e / e.sum()


def literal_scs(s, alpha, g, n, seed, replace=False, subtract=True):
    """Literal reference: rng.choice(p=softmax, replace=False) per round (numpy's successive sampling)."""
    rng = np.random.default_rng(seed)
    s = np.asarray(s, dtype=float)
    c = np.zeros(len(s), dtype=np.int64)
    drawn = 0
    while drawn < n:
        gg = min(g, n - drawn)
        p = _softmax(s - (alpha * c if subtract else 0))
        if replace:
            c += rng.multinomial(gg, p)
        else:
            c[rng.choice(len(s), gg, replace=False, p=p)] += 1
        drawn += gg
    return c


def test_exact_distribution_sums_to_one():
    for dist in (exact_scs(S4, 0.7, 2, 5), exact_hcs(S4, 2, 5)):
        assert math.isclose(sum(dist.values()), 1.0, rel_tol=1e-12)


def test_literal_reference_passes_checker():
    exact = exact_scs(S4, 0.7, 2, 5)
    assert_matches(lambda t: literal_scs(S4, 0.7, 2, 5, t), exact, 4000)


@pytest.mark.parametrize("variant", [{"replace": True}, {"subtract": False}])
def test_checker_rejects_wrong_samplers(variant):
    s = [2.0, 0.0, -0.5, 0.5]
    exact = exact_scs(s, 1.0, 2, 5)
    p, means_ok = check_distribution(lambda t: literal_scs(s, 1.0, 2, 5, t, **variant), exact, 4000)
    assert p < P_MIN or not means_ok


def test_checker_rejects_wrong_hcs():
    # sampling without any cap instead of cap=1
    s = [2.0, 0.0, -0.5, 0.5]
    exact = exact_hcs(s, 1, 3)
    p, _ = check_distribution(lambda t: nocap(s, num_samples=3, seed=t), exact, 2000)
    assert p < P_MIN


# ----------------------------------------------------------------------------------------------
# SCS exactness, every code path
# ----------------------------------------------------------------------------------------------


def _cpu(s, alpha, g, n, **knobs):
    st = {}

    def run(t):
        return sampling._scs_cpu(np.asarray(s, dtype=np.float64), alpha, g, n, np.random.default_rng(t),
                                 stats=st, **knobs)

    return run, st


SCS_CASES = [  # (scores, alpha, G, N)
    (S4, 0.7, 2, 5),  # N not a multiple of G
    ([2.0, 0.0, -1.0], 1.0, 1, 4),  # G = 1: the exact sequential process
    ([0.5, -0.2, 1.0, 0.0], 0.4, 4, 9),  # G = M
    ([0.3, -1.0, 0.8, 0.0, 1.5, -0.4], 0.3, 3, 7),  # M = 6
]


@pytest.mark.parametrize("case", SCS_CASES)
def test_scs_rejection_path_exact(case):
    s, alpha, g, n = case
    run, st = _cpu(s, alpha, g, n, max_draw_frac=math.inf)
    assert_matches(run, exact_scs(s, alpha, g, n), 3000)
    assert st["batches"] > 0


def test_scs_rejection_with_stale_proposal_exact():
    # never rebuild: acceptance exp(-alpha * (c - c_at_build)) < 1 is exercised
    s, alpha, g, n = [0.0, 1.0, -0.5, 0.2], 1.5, 2, 6
    run, st = _cpu(s, alpha, g, n, max_draw_frac=math.inf, rebuild_below=1e-12)
    assert_matches(run, exact_scs(s, alpha, g, n), 4000)
    assert st["rebuilds"] == 4000 and st["gumbel_rounds"] < st["rounds"] / 10


def test_scs_rebuild_every_round_exact(monkeypatch):
    monkeypatch.setattr(sampling, "_CHUNK", 2)  # chunked rebuild passes
    s, alpha, g, n = S4, 0.7, 2, 5
    run, st = _cpu(s, alpha, g, n, max_draw_frac=math.inf, rebuild_below=2.0)
    assert_matches(run, exact_scs(s, alpha, g, n), 3000)
    assert st["rebuilds"] >= st["rounds"] + 3000


@pytest.mark.parametrize("case", SCS_CASES)
def test_scs_gumbel_path_exact(case, monkeypatch):
    monkeypatch.setattr(sampling, "_CHUNK", 1)  # chunks of 4: exercises the chunked top-k merge
    s, alpha, g, n = case
    run, st = _cpu(s, alpha, g, n, max_draw_frac=0.0)
    assert_matches(run, exact_scs(s, alpha, g, n), 3000)
    assert st["batches"] == 0 and st["gumbel_rounds"] == st["rounds"]


@pytest.mark.parametrize("case", SCS_CASES[:2] + SCS_CASES[3:])
def test_scs_torch_path_on_cpu_exact(case):
    import torch

    s, alpha, g, n = case
    arr = np.asarray(s, dtype=np.float64)
    run = lambda t: sampling._scs_torch(arr, alpha, g, n, t, torch.device("cpu"))  # noqa: E731
    assert_matches(run, exact_scs(s, alpha, g, n), 2500)


@pytest.mark.parametrize("case", [c for c in SCS_CASES if c[2] >= 2])
def test_scs_torch_threshold_selection_exact(case, monkeypatch):
    """The torch path with its threshold selection forced on tiny pools (every round with G >= 2; with
    G = M or a sample of one key the threshold often leaves too few candidates: then the fallback)."""
    import torch

    monkeypatch.setattr(sampling, "_TOPK_SAMPLE", 1)
    monkeypatch.setattr(sampling, "_TOPK_MAX_FRACTION", 1.0)
    s, alpha, g, n = case
    arr = np.asarray(s, dtype=np.float64)
    st = {}
    run = lambda t: sampling._scs_torch(arr, alpha, g, n, t, torch.device("cpu"), stats=st)  # noqa: E731
    assert_matches(run, exact_scs(s, alpha, g, n), 2500)
    assert st["threshold_rounds"] > 0


@pytest.mark.parametrize("case", SCS_CASES[2:])
def test_scs_torch_exponential_draw_exact(case, monkeypatch):
    """The CUDA way of drawing the keys (``exponential_``), here on CPU tensors, threshold forced."""
    import torch

    monkeypatch.setattr(sampling, "_TOPK_SAMPLE", 1)
    monkeypatch.setattr(sampling, "_TOPK_MAX_FRACTION", 1.0)
    s, alpha, g, n = case
    arr = np.asarray(s, dtype=np.float64)
    run = lambda t: sampling._scs_torch(arr, alpha, g, n, t, torch.device("cpu"), exponential=True)  # noqa: E731
    assert_matches(run, exact_scs(s, alpha, g, n), 2500)


def test_scs_torch_redraws_a_round_with_an_infinite_key(monkeypatch):
    """An exponential draw of exactly 0 (log 0 = -inf: an infinite key) makes the round draw again, clamped."""
    import torch

    calls = []
    original = torch.Tensor.exponential_

    def zero_once(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if not calls:
            out[3] = 0.0
        calls.append(1)
        return out

    monkeypatch.setattr(torch.Tensor, "exponential_", zero_once)
    scores = np.full(50, -30.0)
    scores[:3] = 5.0  # item 3 has a tiny weight: only its infinite key would draw it in round one
    st = {}
    c = sampling._scs_torch(scores, 0.0, 3, 3, 0, torch.device("cpu"), stats=st, exponential=True)
    assert len(calls) == 2 and st["rounds"] == 1
    assert c.sum() == 3 and c[3] == 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_top_indices_equals_topk(dtype):
    import torch

    gen = torch.Generator().manual_seed(0)
    m, g = 200_000, 8192  # stride 8: the threshold path with the default settings
    keys = torch.randn(m, generator=gen, dtype=getattr(torch, dtype))
    for case in ("random", "sorted", "ties", "periodic"):
        k = keys.clone()
        if case == "sorted":
            k = k.sort().values
        elif case == "ties":
            k = (k * 4).round() / 4  # a few distinct values: many keys equal to the g-th largest
        elif case == "periodic":
            k[::g // sampling._TOPK_SAMPLE] += 100  # the sample overestimates: too few candidates
        st = {}
        idx = sampling._top_indices(k, g, torch.empty(m, dtype=torch.bool), st)
        assert st["threshold_rounds"] == 1 and st["fallbacks"] == (case == "periodic")
        assert idx.numel() == g and torch.unique(idx).numel() == g
        expected = torch.topk(k, g).values
        assert torch.equal(k[idx].sort(descending=True).values, expected)
        if case != "ties":
            assert set(idx.tolist()) == set(torch.topk(k, g).indices.tolist())


def test_scs_public_default_exact():
    s, alpha, g, n = SCS_CASES[3]
    assert_matches(lambda t: scs(s, alpha=alpha, group_size=g, num_samples=n, seed=t, device="cpu"),
                   exact_scs(s, alpha, g, n), 2500)


def test_scs_rejection_matches_gumbel_medium():
    """M = 300 with peaked weights: collisions, truncated batches and several batches per round."""
    rng = np.random.default_rng(7)
    s = rng.standard_normal(300) * 2.5
    trials = 150
    st = {}
    a = np.array([sampling._scs_cpu(s, 0.5, 60, 500, np.random.default_rng(t), stats=st,
                                    max_draw_frac=math.inf) for t in range(trials)], dtype=float)
    b = np.array([sampling._scs_cpu(s, 0.5, 60, 500, np.random.default_rng(10_000 + t), max_draw_frac=0.0)
                  for t in range(trials)], dtype=float)
    assert st["batches"] > st["rounds"]  # top-up batches happened
    se = np.sqrt(a.var(axis=0) / trials + b.var(axis=0) / trials) + 1e-9
    z = np.abs(a.mean(axis=0) - b.mean(axis=0)) / se
    assert z.max() < 5.5
    assert np.allclose(a.sum(axis=1), 500) and np.allclose(b.sum(axis=1), 500)


def test_proposal_search_equals_searchsorted():
    rng = np.random.default_rng(3)
    for n in (1, 5, 63, 64, 65, 1000, 4097):
        w = rng.exponential(size=n) * (rng.random(n) > 0.3)  # many zero weights
        w[rng.integers(n)] = 1.0
        prop = sampling._Proposal(n)
        prop.buf[:n] = w
        prop.set_cumsum(n)
        g1 = np.random.default_rng(n)
        pos = prop.draw(g1, 5000)
        g2 = np.random.default_rng(n)
        u = np.cumsum(g2.standard_exponential(5001))
        u = np.minimum(u[:5000] * (prop.total / u[-1]), np.nextafter(prop.total, 0.0))
        ref = np.searchsorted(np.cumsum(w), u, side="right")
        assert np.array_equal(pos, ref)
        assert np.all(w[pos] > 0)
        assert np.all(np.diff(pos) >= 0)


# ----------------------------------------------------------------------------------------------
# HCS and no-cap exactness
# ----------------------------------------------------------------------------------------------

HCS_CASES = [  # (scores, cap, N)
    ([1.5, 0.0, -0.5, 0.2], 2, 6),
    ([2.0, 0.0, -1.0, 0.5], 1, 3),  # cap 1: successive sampling without replacement
    ([1.0, -0.5, 0.0], 3, 7),
    ([0.3, -1.0, 0.8, 0.0, 1.5], 2, 10),  # N = cap * M: everything capped
]


@pytest.mark.parametrize("case", HCS_CASES)
@pytest.mark.parametrize("rebuild_below", [0.5, 2.0, 1e-12])
def test_hcs_exact(case, rebuild_below):
    s, cap, n = case
    st = {}
    arr = np.asarray(s, dtype=np.float64)
    run = lambda t: sampling._hcs_cpu(arr, cap, n, np.random.default_rng(t), stats=st,  # noqa: E731
                                      rebuild_below=rebuild_below)
    assert_matches(run, exact_hcs(s, cap, n), 2000)
    assert st["truncations"] > 0 or n == cap * len(s)  # all-capped runs end exactly on a batch


def test_hcs_public_exact_and_all_capped():
    s, cap, n = HCS_CASES[0]
    assert_matches(lambda t: hcs(s, cap=cap, num_samples=n, seed=t), exact_hcs(s, cap, n), 2000)
    assert np.array_equal(hcs([5.0, 0.0, -3.0], cap=4, num_samples=12, seed=0), [4, 4, 4])


@pytest.mark.parametrize("chunk", [None, 1])
def test_nocap_exact(chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(sampling, "_CHUNK", chunk)  # two-stage multinomial across chunks
    s, n = [1.0, 0.0, -1.0, 0.5, 0.2], 5
    exact = exact_hcs(s, n, n)
    p = _softmax(s)
    for k, v in list(exact.items())[:5]:
        assert math.isclose(v, stats.multinomial.pmf(k, n, p), rel_tol=1e-9)
    assert_matches(lambda t: nocap(s, num_samples=n, seed=t), exact, 3000)


# ----------------------------------------------------------------------------------------------
# determinism, sums, dtype handling
# ----------------------------------------------------------------------------------------------


def _all_random(scores, seed):
    return [
        scs(scores, alpha=0.3, group_size=50, num_samples=1234, seed=seed, device="cpu"),
        hcs(scores, cap=3, num_samples=1234, seed=seed),
        nocap(scores, num_samples=1234, seed=seed),
    ]


def test_determinism_seeds_and_sums():
    scores = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    before = scores.copy()
    a, b, c = _all_random(scores, 5), _all_random(scores, 5), _all_random(scores, 6)
    assert np.array_equal(scores, before)  # caller's array untouched
    for x, y, z in zip(a, b, c):
        assert x.dtype == np.int64 and x.shape == scores.shape
        assert np.array_equal(x, y)
        assert not np.array_equal(x, z)
        assert x.sum() == 1234 and x.min() >= 0
    assert a[1].max() <= 3
    assert scs(scores, alpha=0.3, group_size=50, num_samples=1234, seed=5, device="cpu").max() <= 25


def test_scs_group_round_limits():
    scores = np.random.default_rng(1).standard_normal(500)
    c = scs(scores, alpha=0.2, group_size=100, num_samples=1050, seed=0, device="cpu")
    assert c.sum() == 1050 and c.max() <= 11  # 11 rounds, at most one copy per round
    c = scs(scores, alpha=0.2, group_size=500, num_samples=1000, seed=0, device="cpu")
    assert np.all(c == 2)  # G = M: every round takes everything


def test_scs_peaked_and_underflowing_weights():
    # weights far below float64's range must still be drawable once the others are taken
    s = np.array([0.0, -2000.0, -3000.0, 5.0])
    c = scs(s, alpha=0.5, group_size=4, num_samples=8, seed=0, device="cpu")
    assert np.array_equal(c, [2, 2, 2, 2])
    c = scs(s, alpha=0.5, group_size=3, num_samples=6, seed=0, device="cpu")
    assert c.sum() == 6 and c[0] == 2 and c[3] == 2
    assert hcs(s, cap=1, num_samples=4, seed=0).tolist() == [1, 1, 1, 1]


def test_dtypes_accepted():
    for dt in (np.float16, np.float32, np.float64, np.int64):
        s = np.array([0, 1, 2, 3, 4], dtype=dt)
        assert scs(s, alpha=0.5, group_size=2, num_samples=6, seed=0, device="cpu").sum() == 6
    assert scs([0.0, 1.0], alpha=1, group_size=np.int64(1), num_samples=3, seed=np.uint8(2),
               device="cpu").sum() == 3


def test_torch_path_small_cpu_counts():
    import torch

    s = np.random.default_rng(0).standard_normal(100)
    c = sampling._scs_torch(s, 0.3, 10, 95, 0, torch.device("cpu"))
    assert c.dtype == np.int64 and c.sum() == 95 and c.max() <= 10
    assert np.array_equal(c, sampling._scs_torch(s, 0.3, 10, 95, 0, torch.device("cpu")))


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------

GOOD = np.array([0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: scs([0.0, np.nan, 1.0], alpha=1, group_size=1, num_samples=1, seed=0), r"scores\[1\]"),
        (lambda: hcs([0.0, 1.0, np.inf], cap=1, num_samples=1, seed=0), r"scores\[2\]"),
        (lambda: nocap([-np.inf], num_samples=1, seed=0), r"scores\[0\]"),
        (lambda: threshold([1.0, np.nan], fraction=0.5), r"scores\[1\]"),
        (lambda: scs([], alpha=1, group_size=1, num_samples=1, seed=0), "empty"),
        (lambda: scs(np.zeros((2, 2)), alpha=1, group_size=1, num_samples=1, seed=0), "1-D"),
        (lambda: scs(GOOD, alpha=0, group_size=1, num_samples=1, seed=0), "alpha"),
        (lambda: scs(GOOD, alpha=-0.1, group_size=1, num_samples=1, seed=0), "alpha"),
        (lambda: scs(GOOD, alpha=float("nan"), group_size=1, num_samples=1, seed=0), "alpha"),
        (lambda: scs(GOOD, alpha=1, group_size=0, num_samples=1, seed=0), "group_size"),
        (lambda: scs(GOOD, alpha=1, group_size=4, num_samples=1, seed=0), "group_size"),
        (lambda: scs(GOOD, alpha=1, group_size=1.0, num_samples=1, seed=0), "group_size"),
        (lambda: scs(GOOD, alpha=1, group_size=1, num_samples=0, seed=0), "num_samples"),
        (lambda: scs(GOOD, alpha=1, group_size=1, num_samples=2.5, seed=0), "num_samples"),
        (lambda: scs(GOOD, alpha=1, group_size=1, num_samples=1, seed=1.5), "seed"),
        (lambda: scs(GOOD, alpha=1, group_size=True, num_samples=1, seed=0), "group_size"),
        (lambda: hcs(GOOD, cap=0, num_samples=1, seed=0), "cap"),
        (lambda: hcs(GOOD, cap=2, num_samples=7, seed=0), "num_samples"),
        (lambda: hcs(GOOD, cap=2, num_samples=-1, seed=0), "num_samples"),
        (lambda: nocap(GOOD, num_samples=0, seed=0), "num_samples"),
        (lambda: threshold(GOOD, fraction=0), "fraction"),
        (lambda: threshold(GOOD, fraction=1.5), "fraction"),
        (lambda: threshold(GOOD, fraction=0.5, value=0.1), "exactly one"),
        (lambda: threshold(GOOD), "exactly one"),
        (lambda: threshold(GOOD, value=float("nan")), "value"),
        (lambda: threshold(np.array(["a", "b"]), fraction=0.5), "dtype"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(FlytInputError, match=match):
        call()


def test_hcs_exactly_cap_times_m_allowed():
    c = hcs(GOOD, cap=2, num_samples=6, seed=0)
    assert c.tolist() == [2, 2, 2]


# ----------------------------------------------------------------------------------------------
# threshold
# ----------------------------------------------------------------------------------------------

TIES = np.array([0.5, 0.9, 0.5, 0.1, 0.9, 0.5, 0.3, 0.5, 0.2, 0.0], dtype=np.float32)


def test_threshold_top_fraction_with_ties():
    # top 3 of 10: both 0.9s, then the first 0.5 by pool position
    assert threshold(TIES, fraction=0.3, exact_count=True).tolist() == [1, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    # top 4: the first two 0.5s
    assert threshold(TIES, fraction=0.4, exact_count=True).tolist() == [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]
    assert threshold(TIES, fraction=0.01, exact_count=True).tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]  # at least 1
    assert threshold(TIES, fraction=1.0, exact_count=True).sum() == 10
    big = np.random.default_rng(0).standard_normal(10_001)
    keep = threshold(big, fraction=0.3, exact_count=True)
    assert keep.sum() == 3000 and big[keep == 1].min() > big[keep == 0].max()


def test_threshold_datacomp_compatible_hand_computed():
    # DataComp: t = -sort(-s)[int(10 * 0.3)] = -sort(-s)[3]; sorted desc: .9 .9 .5 .5 .5 .5 .3 .2 .1 0
    # t = 0.5 -> keep every score >= 0.5: six examples
    keep = threshold(TIES, fraction=0.3)
    assert keep.tolist() == [1, 1, 1, 0, 1, 1, 0, 1, 0, 0]
    # int(10 * 0.1) = 1 -> t = 0.9 -> both 0.9s
    assert threshold(TIES, fraction=0.1).tolist() == [0, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    # int(10 * 0.7) = 7 -> t = 0.2
    assert threshold(TIES, fraction=0.7).sum() == 8
    assert threshold(TIES, fraction=1.0).sum() == 10
    rng = np.random.default_rng(1)
    s = rng.integers(0, 50, 997).astype(np.float32) / 7
    for f in (0.05, 0.3, 0.5, 0.999):
        t = -np.sort(-s)[int(len(s) * f)]
        assert np.array_equal(threshold(s, fraction=f), (s >= t).astype(np.int64))


def test_threshold_value():
    assert threshold(TIES, value=0.5).tolist() == [1, 1, 1, 0, 1, 1, 0, 1, 0, 0]
    assert threshold(TIES, value=0.95).sum() == 0
    assert threshold(TIES, value=-1).sum() == 10
    out = threshold(TIES, value=0.5)
    assert out.dtype == np.int64


# ----------------------------------------------------------------------------------------------
# scale (not run by default: pytest -m slow)
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_scs_small_scale_run():
    m = 12_800_000
    scores = np.random.default_rng(0).standard_normal(m, dtype=np.float32) * 2
    st = {}
    c = sampling._scs_cpu(scores, 0.5, 10_000, m, np.random.default_rng(0), stats=st)
    assert c.sum() == m and c.min() >= 0
    assert 2 <= c.max() <= 1280
    assert np.count_nonzero(c) >= 10_000
    assert st["rebuilds"] >= 2 and st["batches"] >= st["rounds"]
