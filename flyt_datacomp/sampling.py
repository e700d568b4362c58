"""Samplers that turn per-example scores into repetition counts (SPEC section 3).

Every public function takes a 1-D array of scores (logits; any float dtype, never modified) and
returns a numpy ``int64`` array of the same length: how many copies of each pool example the subset
holds.

* :func:`threshold` -- keep the top fraction (or everything at or above a value) once each.
* :func:`scs` -- Soft Cap Sampling (FLYT paper, Algorithm 2).
* :func:`hcs` -- Hard Cap Sampling: sampling with replacement, at most ``cap`` copies each.
* :func:`nocap` -- plain sampling with replacement from ``softmax(scores)``.

The random samplers are exact (up to float64 rounding) and deterministic for a seed.

How :func:`scs` is fast on a CPU
--------------------------------
One SCS round draws ``G`` distinct items from ``w_i = exp(s_i - alpha * c_i)`` by successive sampling
without replacement. Successive sampling is the same as drawing i.i.d. from ``w`` and keeping first
appearances. I.i.d. draws from ``w`` come from rejection sampling: a static proposal bins the items by
log-weight (bins of width 0.2 below the maximum, uniform inside a bin, built once per chunk of the pool
with a radix sort) and a draw of ``i`` is accepted with probability ``w_i / (its bin's upper bound)``;
since SCS only lowers weights, the proposal stays valid and is rebuilt only when the total weight has
halved since the last build. Items already chosen in the round are rejected too (they would only be
repeats). A batch of proposals is a multiset; the order of first appearances of a multiset drawn in
uniformly random order is recovered exactly by giving each distinct item an ``Exp(1) / multiplicity``
key, so the ``need`` smallest keys are the next ``need`` items of the round. When rejection would need
too many proposals (``G`` close to the pool size, very peaked weights, tiny pools) the rest of the
round is drawn by exact Gumbel-top-k over the items not yet chosen. On a CUDA device each round is one
Gumbel-top-k in torch: keys drawn in place into a reused buffer, a threshold from a sample of them,
then a top-k of the few keys above it (exactly the items a full top-k would give). :func:`hcs` uses
the same rejection idea with a cumulative-sum proposal.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import FlytInputError

__all__ = ["threshold", "scs", "hcs", "nocap", "SAMPLERS", "register_sampler"]

_CHUNK = 1 << 20  # elements per chunk in full-pool passes (bounds temporaries to a few MiB)
_BLOCK_LOG2 = 6  # two-level search: coarse table of every 64th cumulative sum, then 6 halvings
_NUM_BINS = 256  # SCS proposal: log-weight bins of this width below the maximum (last bin: the rest)
_BIN_WIDTH = 0.2
_MAX_BATCH = 1 << 23  # most proposals drawn at once


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _check_scores(scores: Any) -> np.ndarray:
    """Return a read-only view (or float64 copy) of ``scores`` after checking it; float32/64 kept."""
    a = np.asarray(scores)
    if a.ndim != 1:
        raise FlytInputError(f"scores must be a 1-D array, got shape {a.shape}")
    if a.size == 0:
        raise FlytInputError("scores is empty: the pool has no examples")
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise FlytInputError(f"scores must be a real (float) array, got dtype {a.dtype}")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    for start in range(0, a.size, 16 * _CHUNK):
        part = a[start:start + 16 * _CHUNK]
        bad = ~np.isfinite(part)
        if bad.any():
            pos = start + int(np.argmax(bad))
            raise FlytInputError(f"scores must be finite: scores[{pos}] is {a[pos]!r} (NaN or inf)")
    view = a.view()
    view.flags.writeable = False
    return view


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise FlytInputError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < minimum:
        raise FlytInputError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    return _check_int("seed", seed, 0)


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real):
        raise FlytInputError(f"alpha must be a number, got {alpha!r}")
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha <= 0:
        raise FlytInputError(f"alpha must be a finite number > 0, got {alpha}")
    return alpha


# ----------------------------------------------------------------------------------------------
# threshold
# ----------------------------------------------------------------------------------------------


def threshold(scores, *, fraction=None, value=None, exact_count: bool = False) -> np.ndarray:
    """Keep examples once each: the top ``fraction`` of the pool, or every score ``>= value``.

    ``fraction`` follows DataComp's ``clip_score --fraction`` rule: ``t = -np.sort(-scores)[int(M * fraction)]``
    and keep ``scores >= t`` (so ``int(M * fraction) + 1`` or more examples; ``fraction == 1`` keeps
    all). With ``exact_count=True`` it keeps exactly ``max(1, int(M * fraction))`` examples instead,
    ties at the cut broken by lower pool position first.
    """
    s = _check_scores(scores)
    if (fraction is None) == (value is None):
        raise FlytInputError("threshold needs exactly one of fraction and value")
    m = s.size
    if value is not None:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
            raise FlytInputError(f"threshold value must be a number, got {value!r}")
        return np.greater_equal(s, np.float64(value)).astype(np.int64)
    if isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, numbers.Real):
        raise FlytInputError(f"fraction must be a number in (0, 1], got {fraction!r}")
    f = float(fraction)
    if not (0.0 < f <= 1.0):
        raise FlytInputError(f"fraction must be in (0, 1], got {fraction!r}")
    if not exact_count:
        n = int(m * f)
        if n >= m:
            return np.ones(m, dtype=np.int64)
        t = np.partition(s, m - 1 - n)[m - 1 - n]  # == -np.sort(-s)[n]
        return (s >= t).astype(np.int64)
    k = max(1, int(m * f))
    if k >= m:
        return np.ones(m, dtype=np.int64)
    t = np.partition(s, m - k)[m - k]  # the k-th largest score
    keep = s > t
    missing = k - int(np.count_nonzero(keep))
    keep[np.flatnonzero(s == t)[:missing]] = True
    return keep.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# proposal: cumulative sums + two-level search
# ----------------------------------------------------------------------------------------------


class _Proposal:
    """Static proposal over ``n`` items: cumulative float64 sums with a coarse search table.

    ``fill(weights_chunk_fn)`` writes the (unnormalised) weights, then the cumulative sums are taken
    in place. ``draw(rng, k)`` returns ``k`` i.i.d. draws, *sorted*, as positions in ``0..n-1``.
    """

    def __init__(self, capacity: int):
        b = 1 << _BLOCK_LOG2
        self.capacity = capacity
        self.buf = np.empty((capacity // b + 1) * b, dtype=np.float64)
        self.n = 0
        self.total = 0.0
        self.coarse = np.empty(0)

    def set_cumsum(self, n: int) -> None:
        """The first ``n`` entries of ``buf`` hold weights; turn them into the searchable cdf."""
        b = 1 << _BLOCK_LOG2
        self.n = n
        length = (n // b + 1) * b
        cdf = self.buf[:n]
        np.cumsum(cdf, out=cdf)
        self.buf[n:length] = np.inf
        self.cdf = self.buf[:length]
        self.total = float(cdf[-1])
        self.coarse = np.ascontiguousarray(self.cdf[b - 1::b])

    def draw(self, rng: np.random.Generator, k: int) -> np.ndarray:
        # sorted uniforms on [0, total) from exponential spacings (an exact sorted i.i.d. sample)
        u = rng.standard_exponential(k + 1)
        np.cumsum(u, out=u)
        u *= self.total / u[-1]
        u = u[:k]
        np.minimum(u, np.nextafter(self.total, 0.0), out=u)
        # position = number of cumulative sums <= u (searchsorted side='right'), in two levels
        pos = np.searchsorted(self.coarse, u, side="right")
        pos <<= _BLOCK_LOG2
        step = 1 << (_BLOCK_LOG2 - 1)
        cdf = self.cdf
        probe = np.empty_like(pos)
        while step:
            np.add(pos, step - 1, out=probe)
            np.add(pos, step, out=pos, where=cdf[probe] <= u)
            step >>= 1
        return pos


# ----------------------------------------------------------------------------------------------
# Soft Cap Sampling
# ----------------------------------------------------------------------------------------------


def scs(scores, *, alpha, group_size, num_samples, seed, device="cpu", progress: bool = False) -> np.ndarray:
    """Soft Cap Sampling: rounds of ``group_size`` distinct draws from ``softmax(s)``, then ``s -= alpha``
    for each drawn example, until ``num_samples`` draws (the last round draws the remainder).

    ``device``: ``"cpu"`` (or None) runs the numpy CPU algorithm, the same bytes for a seed on every
    machine; a CUDA device (``"cuda"``) runs one Gumbel-top-k per round in torch: the same
    distribution, but another random path. The device is always an explicit choice.
    """
    s = _check_scores(scores)
    alpha = _check_alpha(alpha)
    group_size = _check_int("group_size", group_size, 1)
    num_samples = _check_int("num_samples", num_samples, 1)
    seed = _check_seed(seed)
    if group_size > s.size:
        raise FlytInputError(f"group_size ({group_size}) must not exceed the pool size ({s.size})")
    dev = _resolve_device(device)
    if dev is not None:
        return _scs_torch(s, alpha, group_size, num_samples, seed, dev, progress=progress)
    return _scs_cpu(s, alpha, group_size, num_samples, np.random.default_rng(seed), progress=progress)


def _resolve_device(device):
    """None or "cpu" -> numpy CPU path; otherwise the torch device to run on."""
    if device is None:
        return None
    if isinstance(device, str) and device.strip().lower() == "cpu":
        return None
    try:
        import torch

        dev = torch.device(device)
    except Exception as exc:  # noqa: BLE001 - any bad device string
        raise FlytInputError(f"device {device!r} is not a valid torch device: {exc}") from None
    if dev.type == "cpu":
        return None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FlytInputError(f"device {device!r} requested but CUDA is not available")
    return dev


_TOPK_SAMPLE = 1024  # torch SCS rounds: the threshold comes from every (G // this)-th key ...
_TOPK_MAX_FRACTION = 0.125  # ... unless G is small or above this fraction of the pool (then a plain top-k)


def _scs_torch(s: np.ndarray, alpha: float, group_size: int, num_samples: int, seed: int | None, device,
               progress: bool = False, dtype=None, stats: dict | None = None, exponential: bool | None = None
               ) -> np.ndarray:
    """SCS by exact Gumbel-top-k per round in torch on ``device`` (also runs on a CPU device).

    A round's keys are ``(s - alpha c) - log E`` with ``E ~ Exp(1)`` (``-log E`` is Gumbel noise),
    drawn in place into one preallocated buffer (three passes over the pool on CUDA). The logits
    ``s - alpha c`` live in their own buffer, refreshed only at the items a round drew. The ``G`` largest keys come
    from :func:`_top_indices` (a threshold, then a top-k of the few candidates above it), which gives
    exactly the items ``torch.topk`` would. ``stats`` (a dict) counts ``rounds``, ``threshold_rounds``
    (rounds that used a threshold) and ``fallbacks`` (thresholds too high: plain top-k instead).
    ``exponential``: how ``E`` is drawn (see :func:`_draw_keys`); default: ``exponential_`` on CUDA.
    """
    import torch

    from .progress import progress_bar

    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cuda" else torch.float64
    stats = {} if stats is None else stats
    for key in ("rounds", "threshold_rounds", "fallbacks"):
        stats.setdefault(key, 0)
    m = s.size
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    st = torch.from_numpy(np.array(s, copy=True)).to(device=device, dtype=dtype)
    logits = st.clone()  # s - alpha * counts
    counts = torch.zeros(m, dtype=torch.int64, device=device)
    keys = torch.empty(m, dtype=dtype, device=device)
    mask = torch.empty(m, dtype=torch.bool, device=device)
    if exponential is None:
        exponential = device.type == "cuda"
    clamp = not exponential
    drawn = 0
    with progress_bar(total=num_samples, disable=not progress, unit="sample", desc="scs") as bar:
        while drawn < num_samples:
            g = min(group_size, num_samples - drawn)
            _draw_keys(keys, logits, gen, exponential, clamp)
            idx = _top_indices(keys, g, mask, stats)
            if not clamp and not bool(torch.isfinite(keys[idx]).all()):  # an E of 0 after all: clamp, draw again
                clamp = True
                continue
            counts[idx] += 1
            logits[idx] = st[idx] - alpha * counts[idx].to(dtype)
            stats["rounds"] += 1
            drawn += g
            bar.update(g)
    return counts.cpu().numpy().astype(np.int64, copy=False)


def _draw_keys(keys, logits, gen, exponential: bool, clamp: bool) -> None:
    """``keys = logits - log E`` in place, ``E ~ Exp(1)`` i.i.d. (``-log E`` is standard Gumbel noise).

    ``exponential``: ``E`` from torch's ``exponential_``, one kernel on CUDA, where it never returns 0
    (torch maps the uniform's end point to eps / 2; ``clamp`` guards other implementations, where
    ``log 0 = -inf`` would give an infinite key); otherwise ``E = -log u`` from ``torch.rand``, ``u``
    clamped to ``[tiny, 1)`` (torch's CPU ``exponential_`` is several times slower than that).
    """
    import torch

    tiny = torch.finfo(keys.dtype).tiny
    if exponential:
        keys.exponential_(generator=gen)
        if clamp:
            keys.clamp_(min=tiny)
    else:
        torch.rand(keys.shape, generator=gen, dtype=keys.dtype, device=keys.device, out=keys)
        keys.clamp_(min=tiny).log_().neg_()
    keys.log_()
    torch.sub(logits, keys, out=keys)


def _top_indices(keys, g: int, mask=None, stats: dict | None = None):
    """The indices of the ``g`` largest ``keys`` (a 1-D torch tensor), in no particular order.

    Exactly the set ``torch.topk(keys, g).indices`` holds (up to the order among equal keys), found
    with less memory traffic: a threshold ``t`` from a systematic sample (every ``stride``-th key,
    ``stride = g // _TOPK_SAMPLE``), chosen so that about ``g`` plus 7 standard deviations of the
    keys lie at or above it; one pass marks the keys ``>= t`` (into ``mask`` if given), and a top-k of
    those candidates gives the result. Whatever the sample, the result is exact: with fewer than
    ``g`` candidates (which the margin makes rare) the round falls back to a plain top-k.
    """
    import torch

    m = keys.numel()
    stride = g // _TOPK_SAMPLE
    if stride < 2 or g > _TOPK_MAX_FRACTION * m:
        return torch.topk(keys, g, sorted=False).indices
    stats = {} if stats is None else stats
    sample = keys[::stride]
    expect = g * sample.numel() / m  # sampled keys among the g largest, on average
    rank = min(sample.numel(), math.ceil(expect + 7 * math.sqrt(expect) + 16))
    t = torch.topk(sample, rank, sorted=False).values.min()
    mask = torch.ge(keys, t, out=mask) if mask is not None else keys >= t
    candidates = torch.nonzero(mask).squeeze(1)
    stats["threshold_rounds"] = stats.get("threshold_rounds", 0) + 1
    stats.setdefault("fallbacks", 0)
    if candidates.numel() < g:
        stats["fallbacks"] += 1
        return torch.topk(keys, g, sorted=False).indices
    return candidates[torch.topk(keys[candidates], g, sorted=False).indices]


def _gumbel_top(s, counts, alpha, need, rng, big) -> np.ndarray:
    """Exact: the ``need`` items not marked (``counts >= big``) with the largest ``log w + Gumbel`` keys.

    That is successive sampling of ``need`` distinct items from ``w`` restricted to the unmarked items.
    Done in chunks to bound memory; the chosen items come back marked (``+big``).
    """
    m = s.size
    cand_idx, cand_key = [], []
    for a in range(0, m, 4 * _CHUNK):
        b = min(m, a + 4 * _CHUNK)
        c = counts[a:b]
        key = np.subtract(s[a:b], alpha * c, dtype=np.float64)
        key += rng.gumbel(size=b - a)
        key[c >= big] = -np.inf
        if b - a > need:
            top = np.argpartition(key, b - a - need)[b - a - need:]
        else:
            top = np.arange(b - a)
        cand_idx.append(top + a)
        cand_key.append(key[top])
    idx = np.concatenate(cand_idx)
    key = np.concatenate(cand_key)
    if idx.size > need:
        top = np.argpartition(key, idx.size - need)[idx.size - need:]
        idx, key = idx[top], key[top]
    if not np.all(np.isfinite(key)):  # pragma: no cover - guarded by group_size <= M
        raise RuntimeError("internal error: Gumbel-top-k selected an excluded item")
    idx = np.sort(idx)
    counts[idx] += big
    return idx


class _BinnedProposal:
    """Static SCS proposal: items binned by log-weight, uniform within a bin.

    The pool is cut into chunks of ``_CHUNK`` items; inside each chunk the items are ordered by bin
    (``order``, global ids, int32 where possible). Category ``(chunk, bin b)`` gives each of its items
    the proposal weight ``exp(bound_b - shift)`` with ``bound_b = shift - b * _BIN_WIDTH >= log w_i``
    (the last bin collects everything lower). A draw picks categories by one multinomial and an item
    uniformly inside each; accepting item ``i`` with probability ``exp(log w_i - bound_b)`` (``w`` the
    *current* weights, which only ever decrease) makes the accepted draws i.i.d. from ``w``. No search
    is needed, and the acceptance is at least ``exp(-_BIN_WIDTH)`` right after a build.
    """

    def __init__(self, m: int):
        self.m = m
        self.order = np.empty(m, dtype=np.int32 if m < 2**31 else np.int64)

    def build(self, s: np.ndarray, counts: np.ndarray, alpha: float) -> float:
        """(Re)build from the current weights; returns their exact total ``sum exp(log w - shift)``."""
        m, nb, width = self.m, _NUM_BINS, _BIN_WIDTH
        shift = -np.inf
        for a in range(0, m, _CHUNK):
            b = min(m, a + _CHUNK)
            lw = np.subtract(s[a:b], alpha * counts[a:b], dtype=np.float64)
            shift = max(shift, float(lw.max()))
        bounds = shift - width * np.arange(nb, dtype=np.float64)
        bounds[-1] = shift - width * (nb - 1)
        n_chunks = -(-m // _CHUNK)
        sizes = np.zeros((n_chunks, nb), dtype=np.int64)
        total = 0.0
        for j, a in enumerate(range(0, m, _CHUNK)):
            b = min(m, a + _CHUNK)
            lw = np.subtract(s[a:b], alpha * counts[a:b], dtype=np.float64)
            key = np.floor((shift - lw) * (1.0 / width))
            np.clip(key, 0, nb - 1, out=key)
            key = key.astype(np.intp)
            # make sure log w <= bound of its bin exactly as computed in floats (rounding at edges)
            key -= lw > bounds[key]
            np.maximum(key, 0, out=key)
            key8 = key.astype(np.uint8 if nb <= 256 else np.uint16)
            self.order[a:b] = np.argsort(key8, kind="stable")
            self.order[a:b] += a
            sizes[j] = np.bincount(key8, minlength=nb)
            lw -= shift
            total += float(np.exp(lw, out=lw).sum())
        flat = sizes.ravel()
        starts = np.concatenate(([0], np.cumsum(flat)[:-1]))
        keep = np.flatnonzero(flat)
        self.starts = starts[keep]
        self.sizes = flat[keep]
        self.bounds = bounds[keep % nb]
        mass = self.sizes * np.exp(self.bounds - shift)
        self.total = float(mass.sum())
        self.pvals = _normalised(mass)
        self.shift = shift
        return total

    def draw(self, rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``k`` i.i.d. proposals as (item ids, their bins' log-weight bounds), grouped by category."""
        per_cat = rng.multinomial(k, self.pvals)
        nz = np.flatnonzero(per_cat)
        cat = np.repeat(nz, per_cat[nz])
        pos = rng.integers(0, self.sizes[cat])
        pos += self.starts[cat]
        return self.order[pos], self.bounds[cat]


def _scs_cpu(s: np.ndarray, alpha: float, group_size: int, num_samples: int, rng: np.random.Generator, *,
             progress: bool = False, rebuild_below: float = 0.5, max_draw_frac: float = 0.25,
             stats: dict | None = None) -> np.ndarray:
    """The exact CPU SCS algorithm (module docstring). Private knobs for tests:

    ``rebuild_below``: rebuild the proposal when the current total weight is below this fraction of
    the total at the last build (> 1: every round); ``max_draw_frac``: use Gumbel-top-k for the rest of
    a round when rejection would need more than this fraction of the pool in proposals (0: always
    Gumbel; inf: rejection whenever possible); ``stats``: a dict that receives path counters
    (rebuilds, batches, gumbel_rounds, rounds).
    """
    from .progress import progress_bar

    m = s.size
    # counts of items chosen in the current round carry +big until the round ends
    wide = num_samples >= 2**30 - 1
    cdtype = np.int64 if wide else np.int32
    big = 1 << (62 if wide else 30)
    counts = np.zeros(m, dtype=cdtype)
    decay = math.exp(-alpha)
    st = stats if stats is not None else {}
    for key in ("rebuilds", "batches", "gumbel_rounds", "rounds"):
        st.setdefault(key, 0)
    use_rejection = m > 1 and max_draw_frac > 0
    prop = _BinnedProposal(m) if use_rejection else None
    weight = built_weight = 0.0  # current / at-build total of exp(log w - shift)

    def rebuild():
        nonlocal weight, built_weight
        weight = built_weight = prop.build(s, counts, alpha)
        st["rebuilds"] += 1

    if use_rejection:
        rebuild()
    drawn = 0
    with progress_bar(total=num_samples, disable=not progress, unit="sample", desc="scs") as bar:
        while drawn < num_samples:
            g = min(group_size, num_samples - drawn)
            st["rounds"] += 1
            if use_rejection and weight < rebuild_below * built_weight:
                rebuild()
            need = g
            parts = []
            round_weight = 0.0
            idle = 0
            while need > 0:
                acc = (weight - round_weight) / prop.total if use_rejection else 0.0
                k = need / acc * 1.02 + 16 if acc > 0 else math.inf
                if not use_rejection or k > max_draw_frac * m or idle > 50:
                    parts.append((_gumbel_top(s, counts, alpha, need, rng, big), None))
                    st["gumbel_rounds"] += 1
                    break
                k = int(min(k, _MAX_BATCH))
                st["batches"] += 1
                items, bound = prop.draw(rng, k)
                c = counts[items]
                lw = np.subtract(s[items], alpha * c, dtype=np.float64)  # current log-weights
                x = lw - bound
                ok = rng.random(k) < np.exp(x, out=x)
                ok &= c < big
                sel = np.flatnonzero(ok)
                if sel.size == 0:
                    idle += 1
                    continue
                # sort the accepted draws by item, remembering where each came from
                if m < 2**39:  # pack (item, position) into one int64 and sort that: cheaper than argsort
                    packed = np.sort((items[sel].astype(np.int64) << 23) | sel)
                    srt, src = packed >> 23, packed & ((1 << 23) - 1)
                else:  # pragma: no cover - pools beyond 5e11 items
                    o = np.argsort(items[sel], kind="stable")
                    srt, src = items[sel][o], sel[o]
                first = np.flatnonzero(np.concatenate(([True], srt[1:] != srt[:-1])))
                distinct, lw_d = srt[first], lw[src[first]]
                if distinct.size > need:
                    mult = np.diff(np.append(first, srt.size))
                    key = rng.standard_exponential(distinct.size) / mult
                    pick = np.sort(np.argpartition(key, need - 1)[:need])
                    distinct, lw_d = distinct[pick], lw_d[pick]
                w = np.exp(lw_d - prop.shift)
                round_weight += float(w.sum())
                counts[distinct] += big
                parts.append((distinct, w))
                need -= distinct.size
                idle = 0
            for chosen, w in parts:
                if use_rejection:
                    if w is None:
                        c = counts[chosen] - big
                        w = np.exp(np.subtract(s[chosen], alpha * c, dtype=np.float64) - prop.shift)
                    weight -= float(w.sum()) * (1.0 - decay)
                counts[chosen] += 1 - big
            drawn += g
            bar.update(g)
    prop = None  # free the proposal's buffers before the counts are converted
    return counts.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Hard Cap Sampling
# ----------------------------------------------------------------------------------------------


def hcs(scores, *, cap, num_samples, seed, progress: bool = False) -> np.ndarray:
    """Hard Cap Sampling: ``num_samples`` sequential draws with replacement from ``softmax(s)``; an
    example holding ``cap`` copies can no longer be drawn (the others are renormalised)."""
    s = _check_scores(scores)
    cap = _check_int("cap", cap, 1)
    num_samples = _check_int("num_samples", num_samples, 1)
    seed = _check_seed(seed)
    if num_samples > cap * s.size:
        raise FlytInputError(
            f"num_samples ({num_samples}) exceeds cap * pool size ({cap} * {s.size} = {cap * s.size})")
    return _hcs_cpu(s, cap, num_samples, np.random.default_rng(seed), progress=progress)


def _hcs_cpu(s: np.ndarray, cap: int, num_samples: int, rng: np.random.Generator, *, progress: bool = False,
             rebuild_below: float = 0.5, stats: dict | None = None) -> np.ndarray:
    """Exact HCS by rejection from a static proposal over the items uncapped when it was built.

    A batch of i.i.d. proposals is consumed in draw order: the k-th occurrence (0-based) of item i is
    accepted iff ``c_i + k < cap``. Only the batch that completes the run needs the draw order (to keep
    the first accepted draws); it gets it from a uniformly random permutation of the sorted draws.
    """
    from .progress import progress_bar

    m = s.size
    counts = np.zeros(m, dtype=np.int64)
    prop = _Proposal(m)
    st = stats if stats is not None else {}
    for key in ("rebuilds", "batches", "truncations"):
        st.setdefault(key, 0)
    itype = np.int32 if m < 2**31 else np.int64
    cand = None  # None: all items; else the sorted item ids the proposal covers
    shift = 0.0
    weight = 0.0  # proposal mass of the covered items that are still uncapped

    def rebuild():
        nonlocal cand, shift, weight
        open_ = counts < cap
        cand = None if open_.all() else np.flatnonzero(open_).astype(itype)
        del open_
        n = m if cand is None else cand.size
        buf = prop.buf
        shift = -np.inf
        for a in range(0, n, _CHUNK):
            b = min(n, a + _CHUNK)
            part = buf[a:b]
            part[:] = s[a:b] if cand is None else s[cand[a:b]]
            shift = max(shift, float(part.max()))
        for a in range(0, n, _CHUNK):
            part = buf[a:min(n, a + _CHUNK)]
            part -= shift
            np.exp(part, out=part)
        prop.set_cumsum(n)
        weight = prop.total
        st["rebuilds"] += 1

    rebuild()
    drawn = 0
    with progress_bar(total=num_samples, disable=not progress, unit="sample", desc="hcs") as bar:
        while drawn < num_samples:
            need = num_samples - drawn
            if weight < rebuild_below * prop.total:
                rebuild()
            acc = max(weight / prop.total, 1e-9)
            k = int(min(need / acc * 1.02 + 16, _MAX_BATCH))
            st["batches"] += 1
            pos = prop.draw(rng, k)
            items = pos if cand is None else cand[pos].astype(np.int64)
            first = np.flatnonzero(np.concatenate(([True], items[1:] != items[:-1])))
            uniq = items[first]
            mult = np.diff(np.append(first, items.size))
            room = cap - counts[uniq]
            take = np.minimum(mult, room)
            total = int(take.sum())
            if total > need:  # the completing batch: keep the first `need` accepted in draw order
                st["truncations"] += 1
                seq = rng.permutation(items)
                order = np.argsort(seq, kind="stable")
                srt = seq[order]
                starts = np.flatnonzero(np.concatenate(([True], srt[1:] != srt[:-1])))
                rank_sorted = np.arange(srt.size) - np.repeat(starts, np.diff(np.append(starts, srt.size)))
                rank = np.empty_like(rank_sorted)
                rank[order] = rank_sorted
                ok = rank < cap - counts[seq]
                ok &= np.cumsum(ok) <= need
                sel = np.sort(seq[ok])
                first = np.flatnonzero(np.concatenate(([True], sel[1:] != sel[:-1])))
                uniq = sel[first]
                take = np.diff(np.append(first, sel.size))
                room = cap - counts[uniq]
                total = need
            counts[uniq] += take
            full = uniq[(take == room) & (take > 0)]
            if full.size:
                weight -= float(np.exp(s[full].astype(np.float64) - shift).sum())
            drawn += total
            bar.update(total)
    return counts


# ----------------------------------------------------------------------------------------------
# no cap
# ----------------------------------------------------------------------------------------------


def nocap(scores, *, num_samples, seed, progress: bool = False) -> np.ndarray:
    """Plain sampling with replacement: counts ~ Multinomial(num_samples, softmax(scores)).

    Drawn in two exact stages (multinomial over chunk masses, then within each chunk) so that huge
    pools stay fast and numerically well conditioned (too fast to need a progress bar: ``progress``
    is accepted like the other samplers' and ignored).
    """
    s = _check_scores(scores)
    num_samples = _check_int("num_samples", num_samples, 1)
    seed = _check_seed(seed)
    rng = np.random.default_rng(seed)
    m = s.size
    shift = float(s.max())
    bounds = list(range(0, m, _CHUNK)) + [m]
    mass = np.array([np.exp(s[a:b].astype(np.float64) - shift).sum() for a, b in zip(bounds[:-1], bounds[1:])])
    per_chunk = rng.multinomial(num_samples, _normalised(mass))
    counts = np.zeros(m, dtype=np.int64)
    for j, n in enumerate(per_chunk):
        if n:
            a, b = bounds[j], bounds[j + 1]
            counts[a:b] = rng.multinomial(int(n), _normalised(np.exp(s[a:b].astype(np.float64) - shift)))
    return counts


def _normalised(w: np.ndarray) -> np.ndarray:
    p = w / w.sum()
    # numpy's multinomial rejects sum(p[:-1]) > 1 + 1e-12; rounding can only ever be far below that,
    # but make the last entry absorb it so the check can never trip.
    head = p[:-1].sum()
    if head > 1.0:
        p[:-1] /= head
        p[-1] = 0.0
    return p


# ----------------------------------------------------------------------------------------------
# diagnostics: draws that ignore the scores, draws that concentrate on a few examples
# ----------------------------------------------------------------------------------------------

# SCS can move an example's count away from the mean by at most about (s_max - s_min) / alpha
# copies (its score is penalised alpha per copy). Below this many such spreads per mean count the
# scores still shape the subset; above it every count is within ~10% of N / M.
_SCS_UNIFORM_RATIO = 10.0


def _scs_independence(scores: np.ndarray, params: dict[str, Any]) -> str | None:
    s = np.asarray(scores)
    return scs_independence(int(s.size), float(s.min()), float(s.max()), params)


def scs_independence(m: int, lowest: float, highest: float, params: dict[str, Any]) -> str | None:
    """:func:`score_independence` of SCS from what it depends on: the number of examples and the
    range of their scores (for scores spread over several machines)."""
    n = _check_int("num_samples", params["num_samples"], 1)
    g = _check_int("group_size", params["group_size"], 1)
    alpha = _check_alpha(params["alpha"])
    if g >= m:
        return (f"every SCS round draws the whole pool (group size G = {g:,} >= pool size {m:,}), so every "
                f"example gets the same count ({n / m:,.1f} on average) and the scores are ignored; "
                "lower `group_size` (the paper uses about pool size / 1280)")
    spread = (highest - lowest) / alpha
    if n / m > _SCS_UNIFORM_RATIO * (1.0 + spread):
        return (f"`num_samples` {n:,} is {n / m:,.0f} times the pool size {m:,}, while SCS can move an "
                f"example's count by at most about {spread:,.1f} copies from the mean (score range / penalty): "
                "every example would get nearly the same count whatever its score; lower `num_samples` "
                "(DataComp draws as many samples as the pool holds) or `alpha`")
    return None


def _hcs_independence(scores: np.ndarray, params: dict[str, Any]) -> str | None:
    m = int(np.asarray(scores).size)
    n = _check_int("num_samples", params["num_samples"], 1)
    cap = _check_int("cap", params["cap"], 1)
    if n == cap * m:
        return (f"`num_samples` {n:,} = cap x pool size ({cap} x {m:,}): every example gets exactly "
                f"{cap} copies and the scores are ignored; lower `num_samples` or raise `cap`")
    return None


def score_independence(sampler: str, scores: np.ndarray, params: dict[str, Any]) -> str | None:
    """Why ``sampler`` with ``params`` would give (nearly) the same counts whatever the scores
    are, or None when the scores matter (the registered sampler's own check)."""
    check = SAMPLERS[sampler].independence
    return check(scores, params) if check is not None else None


def concentration(counts: np.ndarray, *, max_share: float = 0.05, min_mean_copies: float = 10.0) -> str | None:
    """A warning when a draw puts its entries on a tiny share of the pool, many copies each
    (the signature of a collapsed scoring model or scores on too large a scale), else None."""
    counts = np.asarray(counts)
    return concentration_of(int(np.count_nonzero(counts)), int(counts.sum()), int(counts.max(initial=0)), counts.size,
                            max_share=max_share, min_mean_copies=min_mean_copies)


def concentration_of(distinct: int, entries: int, most: int, m: int, *, max_share: float = 0.05,
                     min_mean_copies: float = 10.0) -> str | None:
    """:func:`concentration` from the draw's summary: distinct examples, entries, the largest count,
    and the number of examples it drew from."""
    if distinct == 0 or entries / distinct < min_mean_copies or distinct >= max_share * m:
        return None
    return (f"the subset holds only {distinct:,} distinct examples ({100 * distinct / m:.2f}% of the pool), "
            f"{entries / distinct:.1f} copies each on average (max {most}): the scores are very "
            "peaked. Likely causes: a collapsed scoring model (check the weight entropy in its metrics.jsonl), "
            "scores on too large a scale (try `standardize` or a `temperature` above 1), or a too small "
            "`alpha`")


# ----------------------------------------------------------------------------------------------
# the registry: what the filter command offers, and how each sampler's options are checked
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Param:
    """One keyword argument of a registered sampler, and the command-line option that sets it."""

    name: str  # the sampler function's keyword
    type: type  # float, int, str or bool (a bool is an on/off flag)
    help: str
    flag: str | None = None  # how the commands spell it; default: --<name with dashes>
    aliases: tuple[str, ...] = ()  # older spellings, still accepted
    required: bool = False
    choices: tuple[str, ...] | None = None
    default: Any = None  # used when neither the user nor the sampler's defaults() set it

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class DefaultsContext:
    """What a sampler's ``defaults`` may look at: the chosen DataComp scale and the pool."""

    scale: Any  # a flyt_datacomp.scales.Scale, or None
    pool_size: int
    num_samples: int | None  # entries to draw (samplers that draw), else None


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function, its options, and how unset options get their values."""

    name: str
    fn: Callable[..., np.ndarray]
    help: str
    params: tuple[Param, ...] = ()
    draws: bool = False  # takes num_samples and seed (and shows progress)
    defaults: Callable[[DefaultsContext, dict[str, Any]], dict[str, Any]] | None = None
    check: Callable[[dict[str, Any]], None] | None = None  # checks across options, before any work
    # why the counts would not depend on the scores with these settings (None: they do)
    independence: Callable[[np.ndarray, dict[str, Any]], str | None] | None = None

    def resolve(self, given: dict[str, Any], ctx: DefaultsContext) -> dict[str, Any]:
        """The keyword arguments for ``fn`` (scores, seed and progress aside)."""
        values = {p.name: given.get(p.name) for p in self.params}
        if self.draws:
            values["num_samples"] = ctx.num_samples
        if self.defaults is not None:
            filled = self.defaults(ctx, values)
            values.update({k: v for k, v in filled.items() if values.get(k) is None})
        for p in self.params:
            if values[p.name] is None and p.default is not None:
                values[p.name] = p.default
        return values

    def validate(self, given: dict[str, Any]) -> None:
        """Options set but not this sampler's, required ones missing, then the sampler's own check."""
        for p in self.params:
            if p.required and given.get(p.name) is None:
                raise FlytInputError(f"`sampler` {self.name} needs `{p.name}`", params=["sampler", p.name])
        if self.check is not None:
            self.check(given)

    def __call__(self, scores: np.ndarray, params: dict[str, Any], *, seed: int, progress: bool) -> np.ndarray:
        extra = {"seed": seed, "progress": progress} if self.draws else {}
        return self.fn(scores, **params, **extra)


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(name: str, *, help: str, params: tuple[Param, ...] = (), draws: bool = False,
                     defaults=None, check=None, independence=None):
    """Decorator registering ``fn(scores, **params[, num_samples, seed, progress]) -> counts``.

    The filter command's options, their checks and their defaults all come from here: adding a
    sampler is its function plus this registration.
    """
    def register(fn):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        SAMPLERS[name] = SamplerSpec(name, fn, help, tuple(params), draws, defaults, check, independence)
        return fn
    return register


def all_params() -> dict[str, tuple[Param, list[str]]]:
    """Every registered option: ``{option: (Param, [samplers using it])}`` (one Param per option)."""
    out: dict[str, tuple[Param, list[str]]] = {}
    for spec in SAMPLERS.values():
        for p in spec.params:
            if p.option in out:
                out[p.option][1].append(spec.name)
            else:
                out[p.option] = (p, [spec.name])
    return out


def param_names() -> list[str]:
    """Every sampler setting's name (``num_samples`` included), for messages that mention them."""
    return ["num_samples", *(p.name for p, _ in all_params().values())]


def _threshold_check(given: dict[str, Any]) -> None:
    if (given.get("fraction") is None) == (given.get("value") is None):
        raise FlytInputError("`sampler` threshold needs exactly one of `fraction` or `value`",
                             params=["sampler", "fraction", "value"])
    if given.get("exact_count") and given.get("value") is not None:
        raise FlytInputError("`exact_count` applies to `fraction`, not to `value`", params=["exact_count", "fraction", "value"])


@register_sampler(
    "threshold",
    help="keep the top fraction once each (DataComp's rule: every score >= the value at rank int(M*F)), "
         "or every score >= a value",
    params=(
        Param("fraction", float, "keep this top fraction of the pool"),
        Param("value", float, "keep examples with score >= this value", flag="--threshold"),
        Param("exact_count", bool, "with --fraction: keep exactly int(M*F) examples, ties at the cut broken "
                                   "by pool position, instead of DataComp's rule", default=False),
    ),
    check=_threshold_check,
)
def threshold_sampler(scores, *, fraction=None, value=None, exact_count=False) -> np.ndarray:
    return threshold(scores, fraction=fraction, value=value, exact_count=exact_count)


def _scs_defaults(ctx: DefaultsContext, values: dict[str, Any]) -> dict[str, Any]:
    """The scale's alpha and G; without a scale, medium's alpha and the paper's 1280 rounds."""
    from .scales import SCALES

    ref = ctx.scale or SCALES["medium"]
    rounds = ref.pool_size // ref.scs_group_size
    g = ref.scs_group_size if ctx.scale else math.ceil(ctx.num_samples / rounds)
    return {"alpha": ref.scs_alpha, "group_size": max(1, min(g, ctx.pool_size))}


register_sampler(
    "scs",
    help="Soft Cap Sampling (the paper's Algorithm 2)",
    params=(
        Param("alpha", float, "repetition penalty alpha (paper: medium 0.15, small 0.5)", flag="--scs-alpha"),
        Param("group_size", int, "group size G: distinct examples drawn per round", flag="--scs-group-size",
              aliases=("--scs-batch",)),
        Param("device", str, "where SCS runs: cpu gives the same bytes for a seed on every machine; cuda (or auto "
              "with a GPU) draws from the same distribution along another random path", choices=("auto", "cpu", "cuda"),
              default="cpu"),
    ),
    draws=True,
    defaults=_scs_defaults,
    independence=_scs_independence,
)(scs)
register_sampler(
    "hcs",
    help="Hard Cap Sampling: sampling with replacement, at most --hcs-cap copies each",
    params=(Param("cap", int, "the most copies an example may get", flag="--hcs-cap", required=True),),
    draws=True,
    independence=_hcs_independence,
)(hcs)
register_sampler("nocap", help="plain sampling with replacement from softmax(scores)", draws=True)(nocap)
