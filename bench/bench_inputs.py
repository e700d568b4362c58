"""Input providers and the store's read path, against naive implementations in the same process.

    python bench/bench_inputs.py [--rows 10000] [--dim 512] [--targets 20000] [--store-rows 2000000]

* neg_clip_loss on one shard of ``--rows`` rows, with |B| = ``--rows`` / 4 so that batches are
  random and differ between the K = 10 repetitions (as in a medium shard of ~500K rows), against
  the naive dense computation of the same batches: each batch's full similarity matrix in float64
  and two softmax normalisers. The two must agree to 1e-4.
* NormSim-inf of ``--rows`` pool rows against ``--targets`` targets: blockwise against the full
  (rows x targets) matrix; same numbers, and the peak of Python-tracked memory of each (numpy
  reports its buffers to tracemalloc).
* The store's read path: reading k float32 inputs for a pool of ``--store-rows`` rows from the store
  against reading the same k float32 columns from metadata parquet files that also hold the other
  DataComp columns (uid, url, text, ...); then mixing k standardised inputs (what M-FLYT scoring
  does), in rows per second.

* The other providers' per-row CPU costs: the classifier's fit (per step) and its application, an
  E-FLYT head, reading a shard's npz, and open_clip ViT-B-32 (decoding a JPEG and the image + text
  forward pass, random weights).

Per-row costs measured here are what the README's medium-pool estimates extrapolate from.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt_datacomp.inputs.providers.neg_clip_loss import batch_plan, neg_clip_loss
from flyt_datacomp.inputs.providers.normsim import normsim


def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive_neg_clip_loss(img, txt, batch, seed, tau=0.01, repeats=10):
    """The same batches; softmax normalisers from each batch's full float64 matrix."""
    u, v = img.astype(np.float64), txt.astype(np.float64)
    total = np.zeros(len(u))
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        for members, scored in batch_plan(len(u), batch, rng):
            s = u[members] @ v[members].T / tau
            m_row = s.max(axis=1, keepdims=True)
            m_col = s.max(axis=0, keepdims=True)
            lse_img = np.log(np.exp(s - m_row).sum(axis=1)) + m_row[:, 0]
            lse_txt = np.log(np.exp(s - m_col).sum(axis=0)) + m_col[0]
            total[scored] += (tau / 2 * (lse_img + lse_txt))[: len(scored)]
    return (u * v).sum(1) - total / repeats


def timed(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak


def bench_neg_clip_loss(args, rng):
    img = unit(rng, args.rows, args.dim)
    txt = unit(rng, args.rows, args.dim) * 0.6 + img * 0.8
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    batch = args.rows // 4
    ours, t_ours, m_ours = timed(lambda: neg_clip_loss(img, txt, seed=0, batch=batch, device="cpu"))
    naive, t_naive, m_naive = timed(lambda: naive_neg_clip_loss(img, txt, batch, seed=0))
    err = float(np.abs(ours - naive).max())
    print(f"neg_clip_loss, {args.rows:,} rows x {args.dim}, |B| {batch:,}, K = 10: ours {t_ours:.2f} s, naive {t_naive:.2f} s "
          f"(x{t_naive / t_ours:.2f}); max |difference| {err:.2e} ({'OK' if err < 1e-4 else 'FAIL'}); "
          f"peak tracked memory ours {m_ours / 2**20:.0f} MiB, naive {m_naive / 2**20:.0f} MiB")
    return t_ours / args.rows / batch


def bench_normsim(args, rng):
    img = unit(rng, args.rows, args.dim)
    targets = unit(rng, args.targets, args.dim)
    naive, t_naive, m_naive = timed(lambda: (img @ targets.T).max(axis=1))
    print(f"normsim-inf, {args.rows:,} rows x {args.targets:,} targets: naive full matrix {t_naive:.2f} s, "
          f"peak tracked memory {m_naive / 2**20:.0f} MiB")
    for rows, cols in ((1024, 4096), (4096, 16384)):
        ours, t_ours, m_ours = timed(lambda r=rows, c=cols: normsim(img, targets, "inf", row_chunk=r, target_chunk=c))
        same = float(np.abs(ours - naive).max()) < 1e-6
        print(f"  blocks of {rows} x {cols}: {t_ours:.2f} s (x{t_naive / t_ours:.2f}), same numbers: {same}, "
              f"peak {m_ours / 2**20:.0f} MiB")
    return t_ours / args.rows / args.targets


def bench_store(args, rng, k=4, shards=16):
    from flyt_datacomp.pool import Pool
    from flyt_datacomp.store import InputStore
    from flyt_datacomp.uids import random_uids, uids_to_hex

    rows = args.store_rows // shards
    names = [f"in{i}" for i in range(k)]
    with tempfile.TemporaryDirectory() as tmp:
        meta, store_dir = Path(tmp, "meta"), Path(tmp, "store")
        meta.mkdir()
        store = InputStore(store_dir)
        for s in range(shards):
            hexes = uids_to_hex(random_uids(rows, seed=s))
            cols = {n: rng.normal(size=rows).astype(np.float32) for n in names}
            pq.write_table(pa.table({"uid": hexes, "url": [f"http://x/{h}.jpg" for h in hexes],
                                     "text": [f"caption {i}" for i in range(rows)], **cols}), meta / f"{s:032x}.parquet")
        pool = Pool(str(meta), progress=False)
        store.attach(pool)
        for s in pool.shards:
            t = pq.read_table(s.parquet, columns=["uid", *names])
            store.write_shard(Path(s.parquet).stem, t.column("uid").combine_chunks(),
                              {n: t.column(n).to_numpy() for n in names}, s.num_rows)
        manifest = store.manifest()
        for n in names:
            manifest["inputs"][n] = {"spec": f"column:{n}", "status": "complete", "fill_value": None}
        store.write_manifest(manifest)
        n_rows = pool.size
        _, t_store, _ = timed(lambda: store.columns(names, pool))
        _, t_pool, _ = timed(lambda: list(pool.iter_shards(names)))
        x = np.stack(list(store.columns(names, pool).values()), axis=1)
        w, mean, std = rng.normal(size=k), x.mean(0), x.std(0)
        _, t_mix, _ = timed(lambda: ((x - mean) / std) @ w)
        print(f"store read, {n_rows:,} rows x {k} inputs: store {n_rows / t_store / 1e6:.1f}M rows/s, pool parquet "
              f"{n_rows / t_pool / 1e6:.1f}M rows/s (x{t_pool / t_store:.2f}); mixing {k} standardised inputs "
              f"{n_rows / t_mix / 1e6:.0f}M rows/s ({os.cpu_count()} cores; target >= 5M rows/s per core)")


def per_second(fn, min_seconds: float = 1.0) -> float:
    """Seconds per call of ``fn`` (repeated for at least ``min_seconds`` after one warm-up call)."""
    fn()
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - t0) / calls


def bench_other_providers(args, rng, *, images: int = 8) -> dict[str, float]:
    """CPU seconds per row of the providers whose cost is not a pairwise product: the classifier
    (its fixed fit, per step, and applying it), an E-FLYT head, and open_clip ViT-B-32 on the
    images (random weights: the cost does not depend on them), plus reading a shard's npz."""
    import io as _io

    import open_clip
    import torch
    from PIL import Image

    from flyt_datacomp.clip_models import create_clip
    from flyt_datacomp.flyt.models import GLUHead
    from flyt_datacomp.inputs.providers.classifier import fit_logistic

    d = args.dim
    pos, neg = unit(rng, 4096, d), unit(rng, 4096, d)
    step = per_second(lambda: fit_logistic(pos, neg, steps=50, batch=256, lr=0.01, warmup=5, seed=0)) / 50
    w = rng.normal(size=d).astype(np.float32)
    feats = unit(rng, args.rows, d)
    apply_row = per_second(lambda: feats @ w) / args.rows
    head = GLUHead(d, cosine_init=True).eval()
    ti, tt = torch.from_numpy(unit(rng, args.rows, d)), torch.from_numpy(unit(rng, args.rows, d))
    with torch.no_grad():
        eflyt_row = per_second(lambda: head(ti, tt)) / args.rows
    buf = _io.BytesIO()
    np.savez(buf, b32_img=unit(rng, args.rows, d).astype(np.float16), b32_txt=unit(rng, args.rows, d).astype(np.float16))
    raw = buf.getvalue()
    npz_row = per_second(lambda: [np.load(_io.BytesIO(raw))[k] for k in ("b32_img", "b32_txt")]) / args.rows
    model = create_clip("ViT-B-32", seed=0).eval()
    transform = open_clip.image_transform(224, is_train=False)
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a photo of a dog on a beach"] * images)
    pics = (rng.integers(0, 256, size=(images, 256, 320, 3))).astype(np.uint8)
    jpegs = []
    for pic in pics:
        out = _io.BytesIO()
        Image.fromarray(pic).save(out, format="JPEG", quality=90)
        jpegs.append(out.getvalue())
    decode_image = per_second(lambda: [transform(Image.open(_io.BytesIO(j)).convert("RGB")) for j in jpegs]) / images
    batch = torch.stack([transform(Image.open(_io.BytesIO(j)).convert("RGB")) for j in jpegs])
    with torch.no_grad():
        forward_image = per_second(lambda: (model.encode_image(batch), model.encode_text(tokens)), 3.0) / images
    costs = {"classifier fit step (batch 256)": step, "classifier apply": apply_row, "E-FLYT head": eflyt_row,
             "npz read (b32 img + txt)": npz_row, "JPEG decode + transform (256x320)": decode_image,
             "ViT-B-32 image + text forward": forward_image}
    for name, sec in costs.items():
        print(f"{name}: {sec * 1e6:,.2f} us per {'step' if 'step' in name else 'row'}")
    return costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--targets", type=int, default=20_000)
    ap.add_argument("--store-rows", type=int, default=2_000_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    per_row = bench_neg_clip_loss(args, rng)
    per_pair = bench_normsim(args, rng)
    bench_store(args, rng)
    costs = bench_other_providers(args, rng)
    # the medium pool: 128M rows in shards of ~506K (|B| = 32768: K x |B| x d multiply-adds per row)
    rows, hours = 128e6, 3600
    print(f"extrapolated to the medium pool (128M rows) on this machine ({os.cpu_count()} CPUs), d = {args.dim}:")
    print(f"  neg_clip_loss {per_row * 32768 * rows / hours:,.0f} h; normsim-inf against 1.28M ImageNet targets "
          f"{per_pair * 1.28e6 * rows / hours:,.0f} h")
    print(f"  classifier: fit (40K steps) {costs['classifier fit step (batch 256)'] * 40_000 / 60:.1f} min, apply "
          f"{costs['classifier apply'] * rows / hours:.2f} h; E-FLYT head {costs['E-FLYT head'] * rows / hours:.1f} h; "
          f"reading the npz {costs['npz read (b32 img + txt)'] * rows / hours:.2f} h")
    print(f"  openclip ViT-B-32: decoding {costs['JPEG decode + transform (256x320)'] * rows / hours:,.0f} h, forward "
          f"{costs['ViT-B-32 image + text forward'] * rows / hours:,.0f} h")


if __name__ == "__main__":
    main()
