"""The pool-wide passes that stream shard by shard (the bucket-sorted uid index, the subset written
from the pool's uid shards, the downloaded examples, the mix of stored inputs) give exactly what the
whole-array computations give."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from poolgen import write_image_shards, write_metadata
from test_import_scale import make_pool

from flyt_datacomp import sampling
from flyt_datacomp.cli import main as cli
from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.pool import Pool
from flyt_datacomp.scores.mixing import mix
from flyt_datacomp.shards import downloaded_mask, index_shards
from flyt_datacomp.store import InputStore
from flyt_datacomp.uids import UidIndex, hex_to_uids, random_uids, uid_order, uids_to_hex, write_subset


def awkward_uids(n: int, seed: int) -> np.ndarray:
    """Random uids, with runs that share f0 (differing in f1) and runs that share f0's top bits."""
    u = random_uids(n, seed)
    u["f0"][10:20] = u["f0"][10]
    u["f0"][30:40] = (u["f0"][30] >> np.uint64(20)) << np.uint64(20) | np.arange(10, dtype=np.uint64)
    return u


def naive_subset_bytes(uids: np.ndarray, counts: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.sort(np.repeat(uids, counts)))  # structured sort: by f0, then f1
    return buf.getvalue()


def test_uid_index_sorts_and_looks_up_like_a_dict():
    uids = awkward_uids(5000, 1)
    payload = np.arange(5000) * 3
    index = UidIndex(np.int64, flush_rows=700)  # several flushes into the buckets
    for a in range(0, 5000, 1234):
        index.add(uids[a:a + 1234], payload[a:a + 1234])
    assert index.finish() is None and len(index) == 5000
    parts = list(index.sorted_buckets())
    f0 = np.concatenate([p[0] for p in parts])
    f1 = np.concatenate([p[1] for p in parts])
    order = uid_order(uids)
    assert np.array_equal(f0, uids["f0"][order]) and np.array_equal(f1, uids["f1"][order])
    assert np.array_equal(np.concatenate([p[2] for p in parts]), payload[order])
    query = np.concatenate([uids[::7], awkward_uids(300, 2)])
    query["f1"][-5:] += np.uint64(1)  # same f0 as a held uid, another f1
    query["f0"][-5:] = uids["f0"][10:15]
    want = {(int(a), int(b)): p for a, b, p in zip(uids["f0"], uids["f1"], payload)}
    expect = np.array([want.get((int(a), int(b)), -1) for a, b in zip(query["f0"], query["f1"])])
    assert np.array_equal(index.lookup(query), expect) and np.array_equal(index.contains(query), expect >= 0)
    twice = UidIndex(np.int64)
    twice.add(uids[:100], np.arange(100))
    twice.add(uids[40:41], [7])
    uid, a, b = twice.finish()
    assert uid[0] == uids[40] and {int(a), int(b)} == {40, 7}


def test_the_subset_written_from_chunks_is_the_whole_arrays_file(tmp_path):
    uids = awkward_uids(20_000, 3)
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, 20_000) * (rng.random(20_000) < 0.5)
    meta = write_subset(tmp_path / "whole.npy", uids, counts)
    write_subset(tmp_path / "chunks.npy", (uids[a:a + 3001] for a in range(0, 20_000, 3001)), counts.astype(np.int32))
    want = naive_subset_bytes(uids, counts)
    assert (tmp_path / "whole.npy").read_bytes() == want == (tmp_path / "chunks.npy").read_bytes()
    assert meta["total_entries"] == counts.sum() and meta["distinct_uids"] == (counts > 0).sum()
    with pytest.raises(FlytInputError, match="appears more than once"):
        write_subset(tmp_path / "dup.npy", [uids[:10], uids[5:6]], np.ones(11, np.int64))
    with pytest.raises(FlytInputError, match="shape"):
        write_subset(tmp_path / "short.npy", [uids[:10]], np.ones(11, np.int64))


def test_the_downloaded_mask_equals_the_shard_index(tmp_path):
    """From img2dataset's parquet files (a generated download) and from the tars' json members."""
    paths = make_pool(tmp_path / "scale", rows=6000, shard_size=400)
    pool = Pool(str(paths["metadata"]), progress=False)
    want = index_shards(paths["shards"], progress=False).images_of(pool.uids) > 0
    assert np.array_equal(downloaded_mask(paths["shards"], pool, progress=False), want) and 0 < want.sum() < 6000
    root, hexes = write_metadata(tmp_path / "meta", sizes=(40, 25, 35))
    kept = write_image_shards(tmp_path / "tars", hexes, per_shard=30)
    pool = Pool(str(root), progress=False)
    got = downloaded_mask(tmp_path / "tars", pool, progress=False)
    assert np.array_equal(got, np.isin(uids_to_hex(pool.uids), kept)) and 0 < got.sum() < 100


def test_a_pool_column_is_filled_like_a_concatenation(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    for i, values in enumerate((np.arange(3, dtype=np.float32), np.arange(4, dtype=np.float64) / 3)):
        uids = ["%032x" % (i * 10 + j) for j in range(len(values))]
        pq.write_table(pa.table({"uid": uids, "x": values}), root / f"{i}.parquet")
    got = Pool(str(root), progress=False).column("x")
    want = np.concatenate([np.arange(3, dtype=np.float32), np.arange(4) / 3])
    assert got.dtype == want.dtype and np.array_equal(got, want)


def _mflyt(tmp_path):
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 1)
    path = tmp_path / "mflyt.pt"
    torch.save({f"layers.0.{k}": v for k, v in layer.state_dict().items()}, path)
    return path, layer.weight.detach().numpy()[0].astype(np.float32), float(layer.bias.detach()[0])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    paths = make_pool(root / "pool", rows=20_000, shard_size=500, metadata_files=4)
    store = root / "store"
    r = CliRunner().invoke(cli, ["inputs", "import", str(paths["released"]), "--metadata-dir", str(paths["metadata"]),
                                 "--inputs-dir", str(store), "--shards-dir", str(paths["shards"]), "--missing", "min",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    return paths, store


def test_the_mix_top_20_percent_is_the_whole_array_computation(imported, tmp_path):
    """flyt_mflyt_top20 (the mix streamed shard by shard, the subset written from the uid shards)
    against the whole-array path: every stored input read whole, mixed shard by shard as float32,
    DataComp's rule (t = -sort(-s)[int(N * 0.2)], keep s >= t), the kept uids sorted and saved."""
    from flyt_datacomp.recipes import RELEASED_INPUTS

    paths, store = imported
    model, w, b = _mflyt(tmp_path)
    out = tmp_path / "top20.npy"
    r = CliRunner().invoke(cli, ["baseline", "flyt_mflyt_top20", "--metadata-dir", str(paths["metadata"]),
                                 "--inputs-dir", str(store), "--mixing-model", str(model), "--output", str(out),
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    pool = Pool(str(paths["metadata"]), progress=False)
    columns = [InputStore(store).column(n, pool).astype(np.float32) for n in RELEASED_INPUTS]
    s = np.empty(pool.size)
    for shard in pool.shards:
        rows = slice(shard.offset, shard.offset + shard.num_rows)
        s[rows] = mix(np.stack([c[rows] for c in columns], axis=1), w, b)
    t = -np.sort(-s)[int(len(s) * 0.2)]
    hexes = [u for f in sorted(paths["metadata"].glob("*.parquet")) for u in pq.read_table(f).column("uid").to_pylist()]
    kept = hex_to_uids(np.array(hexes)[s >= t])
    assert out.read_bytes() == naive_subset_bytes(kept, np.ones(len(kept), np.int64))


def test_scs_over_the_downloaded_examples_is_the_whole_array_computation(imported, tmp_path):
    """SCS with --shards-dir: the same bytes as the draw over the positions the shard index gives,
    from the whole column, written from the whole uid array."""
    paths, _ = imported
    out = tmp_path / "scs.npy"
    r = CliRunner().invoke(cli, ["filter", "--metadata-dir", str(paths["metadata"]), "--score",
                                 "clip_l14_similarity_score", "--shards-dir", str(paths["shards"]), "--scs-alpha", "0.5",
                                 "--scs-group-size", "100", "--num-samples", "20000", "--seed", "3", "--output", str(out),
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    pool = Pool(str(paths["metadata"]), progress=False)
    keep = np.flatnonzero(index_shards(paths["shards"], progress=False).images_of(pool.uids) > 0)
    values = pool.column("clip_l14_similarity_score").astype(np.float64)[keep]
    counts = sampling.scs(values, alpha=0.5, group_size=100, num_samples=20_000, seed=3)
    assert out.read_bytes() == naive_subset_bytes(pool.uids[keep], counts)
