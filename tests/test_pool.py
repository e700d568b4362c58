import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from poolgen import write_metadata

from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.pool import Pool
from flyt_datacomp.uids import hex_to_uids


def test_discovers_pairs_in_stable_order_and_reads_columns(tmp_path):
    root, hexes = write_metadata(tmp_path / "metadata", sizes=(40, 25, 35))
    pool = Pool(str(root), progress=False)
    assert pool.size == 100 and len(pool.shards) == 3
    names = [s.parquet for s in pool.shards]
    assert names == sorted(names)
    assert [s.offset for s in pool.shards] == [0, pool.shards[0].num_rows, pool.shards[0].num_rows + pool.shards[1].num_rows]
    # pool order is shard-name order; uids converted exactly
    expect = np.concatenate([
        hex_to_uids(pq.read_table(s.parquet, columns=["uid"]).column("uid").to_pylist()) for s in pool.shards
    ])
    assert (pool.uids == expect).all()
    assert set(map(str, pool.column_names)) >= {"uid", "text", "clip_l14_similarity_score", "face_bboxes"}
    col = pool.column("clip_l14_similarity_score")
    assert col.shape == (100,) and col.dtype == np.float32
    emb = pool.embeddings("l14_img")
    assert emb.dtype == np.float16 and emb.shape == (100, 8)
    s = pool.uids[pool.sorted_order]
    assert (np.diff(s["f0"].astype(float)) >= 0).all()


def test_fsspec_url_and_memory_filesystem(tmp_path):
    root, _ = write_metadata(tmp_path / "metadata", sizes=(10, 10))
    assert Pool("file://" + str(root), progress=False).size == 20
    import fsspec

    mem = fsspec.filesystem("memory")
    for p in root.iterdir():
        mem.pipe(f"/pool/meta/{p.name}", p.read_bytes())
    pool = Pool("memory://pool/meta", progress=False)
    assert pool.size == 20 and pool.embeddings("b32_txt").shape == (20, 8)
    assert pool.shards[0].parquet.startswith("memory://")


def test_iter_shards_reads_only_requested(tmp_path):
    root, _ = write_metadata(tmp_path / "metadata", sizes=(7, 9))
    pool = Pool(str(root), progress=False)
    parts = list(pool.iter_shards(["text"], ["b32_img"]))
    assert [len(p.columns["text"]) for p in parts] == [s.num_rows for s in pool.shards]
    assert set(parts[0].columns) == {"text"} and set(parts[0].arrays) == {"b32_img"}


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(FlytInputError, match="does not exist"):
        Pool(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlytInputError, match="no .parquet"):
        Pool(str(tmp_path / "empty"))


def test_parquet_without_uid(tmp_path):
    root, _ = write_metadata(tmp_path / "m", sizes=(5,))
    pq.write_table(pa.table({"text": ["a"]}), root / "ffff.parquet")
    with pytest.raises(FlytInputError, match=r"ffff\.parquet has no 'uid' column"):
        Pool(str(root))


def test_npz_with_wrong_row_count(tmp_path):
    root, _ = write_metadata(tmp_path / "m", sizes=(5, 6))
    npz = sorted(root.glob("*.npz"))[1]
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["l14_img"] = arrays["l14_img"][:-1]
    np.savez(npz, **arrays)
    with pytest.raises(FlytInputError, match=r"l14_img' has (\d+) rows but .* has (?!\1)\d+: the pair is misaligned"):
        Pool(str(root), progress=False)


def test_missing_npz_key_and_missing_npz(tmp_path):
    root, _ = write_metadata(tmp_path / "m", sizes=(5,), with_npz=False)
    pool = Pool(str(root), progress=False)
    with pytest.raises(FlytInputError, match="no matching .npz"):
        pool.embeddings("b32_img")
    root2, _ = write_metadata(tmp_path / "m2", sizes=(5,))
    with pytest.raises(FlytInputError, match="no key 'h14_img'"):
        Pool(str(root2), progress=False).embeddings("h14_img")


def test_malformed_and_duplicate_uids(tmp_path):
    root, hexes = write_metadata(tmp_path / "m", sizes=(5, 5))
    first = sorted(root.glob("*.parquet"))[0]
    t = pq.read_table(first)
    bad = t.set_column(0, "uid", pa.array(["xyz"] + t.column("uid").to_pylist()[1:]))
    pq.write_table(bad, first)
    with pytest.raises(FlytInputError, match=rf"malformed uid 'xyz' at row 0 of .*{first.name}"):
        _ = Pool(str(root), progress=False).uids
    second = sorted(root.glob("*.parquet"))[1]
    pq.write_table(t, first)
    t2 = pq.read_table(second)
    dup = t2.set_column(0, "uid", pa.array([t.column("uid")[2].as_py()] + t2.column("uid").to_pylist()[1:]))
    pq.write_table(dup, second)
    with pytest.raises(FlytInputError, match=r"appears more than once in the pool .*row 2 and .*row 0"):
        _ = Pool(str(root), progress=False).uids


def test_missing_column_named(tmp_path):
    root, _ = write_metadata(tmp_path / "m", sizes=(5,))
    with pytest.raises(FlytInputError, match="no column 'nope'"):
        Pool(str(root), progress=False).column("nope")


@pytest.mark.skipif(not hasattr(__import__("flyt_datacomp.pool").pool.NPY_HEADERS, "locked"),
                    reason="this Python's AST constructor is thread-safe: npy headers need no lock")
def test_threads_parse_npy_headers_one_at_a_time(tmp_path, monkeypatch):
    """numpy parses .npy headers with ast.literal_eval, which threads must not run at once on the Pythons
    of CPython gh-106905 (a spurious "AST constructor recursion depth mismatch"): every header the pool
    parses, discovering its shards and reading embeddings on several threads, is parsed under the lock."""
    import ast

    import flyt_datacomp.pool as pool_module

    root, _ = write_metadata(tmp_path / "metadata", sizes=(10, 12, 9, 11))
    real, held = ast.literal_eval, []
    monkeypatch.setattr(ast, "literal_eval", lambda text: (held.append(pool_module.NPY_HEADERS.locked()), real(text))[1])
    pool = Pool(str(root), progress=False, workers=4)
    assert pool.embeddings("l14_img").shape == (42, 8)
    assert len(held) >= 8 and all(held), held
