import hashlib
import json

import numpy as np
import pytest

from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.uids import (
    UID_DTYPE,
    hex_to_uids,
    is_sorted,
    lookup,
    random_uids,
    read_subset,
    uid_order,
    uids_digest,
    uids_to_hex,
    write_subset,
)


def python_hex_to_pair(h):  # the definition from DataComp, one uid at a time
    return (int(h[:16], 16), int(h[16:32], 16))


def test_hex_roundtrip_matches_reference_definition():
    uids = random_uids(500, seed=1)
    hexes = uids_to_hex(uids)
    assert all(len(h) == 32 and h == h.lower() for h in hexes)
    for h, rec in zip(hexes[:50], uids[:50]):
        assert python_hex_to_pair(h) == (int(rec["f0"]), int(rec["f1"]))
        assert h == f"{int(rec['f0']):016x}{int(rec['f1']):016x}"
    back = hex_to_uids(list(hexes))
    assert back.dtype == UID_DTYPE and (back == uids).all()
    # bytes, object arrays, uppercase and extreme values
    assert (hex_to_uids(np.array([h.encode() for h in hexes])) == uids).all()
    assert (hex_to_uids(np.array(list(hexes), dtype=object)) == uids).all()
    extreme = hex_to_uids(["F" * 32, "0" * 32])
    assert extreme["f0"][0] == 2**64 - 1 and extreme["f1"][1] == 0


@pytest.mark.parametrize("bad, row", [
    (["a" * 32, "a" * 31], 1),
    (["a" * 33], 0),
    (["a" * 32, "a" * 32, "z" + "a" * 31], 2),
    (["a" * 16 + " " + "a" * 15], 0),
    (["é" * 32], 0),
])
def test_malformed_uid_named_with_row_and_source(bad, row):
    with pytest.raises(FlytInputError, match=rf"row {row} of shard-7\.parquet"):
        hex_to_uids(bad, source="shard-7.parquet")


def test_uid_order_equals_lexicographic_sort_including_shared_high_bits():
    rng = np.random.default_rng(0)
    uids = random_uids(5000, seed=2)
    # adversarial: many uids share f0 or only differ in low bits of f0
    uids["f0"][::5] = 42
    uids["f0"][1::5] = uids["f0"][2::5] ^ np.uint64(1)
    uids["f1"][3::11] = 7
    perm = uid_order(uids)
    expect = np.lexsort((uids["f1"], uids["f0"]))
    assert (uids[perm] == uids[expect]).all()
    assert is_sorted(uids[perm])
    assert not is_sorted(uids[rng.permutation(len(uids))])
    assert len(uid_order(uids[:1])) == 1 and len(uid_order(uids[:0])) == 0


def test_lookup_finds_present_and_rejects_absent():
    uids = random_uids(1000, seed=3)
    uids["f0"][:10] = 5  # a run of shared f0 values
    s = uids[uid_order(uids)]
    query = np.concatenate([s[::7], random_uids(20, seed=99)])
    pos = lookup(s, query)
    assert (pos[: len(s[::7])] == np.arange(0, len(s), 7)).all()
    assert (pos[len(s[::7]):] == -1).all()


def test_lookup_rejects_absent_uids_whose_high_half_is_present():
    """An absent uid whose f0 equals that of present uids (a run of several, or just one) is absent:
    the f1 half decides, wherever the query's f1 falls among the run's."""
    uids = random_uids(300, seed=8)
    uids["f0"][:6] = 5  # a run of six present uids sharing f0 = 5 ...
    uids["f1"][:6] = [10, 20, 30, 40, 50, 60]  # ... with these low halves
    s = uids[np.lexsort((uids["f1"], uids["f0"]))]
    lone = s[100]  # a present uid whose f0 no other uid has
    query = np.zeros(8, dtype=UID_DTYPE)
    query["f0"] = [5, 5, 5, 5, 5, 5, lone["f0"], lone["f0"]]
    query["f1"] = [9, 25, 55, 61, 30, 60, lone["f1"] ^ np.uint64(1), lone["f1"]]
    # independent: the position of the equal record in s, by brute force
    expected = [int(np.flatnonzero((s["f0"] == q["f0"]) & (s["f1"] == q["f1"]))[0])
                if ((s["f0"] == q["f0"]) & (s["f1"] == q["f1"])).any() else -1 for q in query]
    assert expected[:4] == [-1, -1, -1, -1] and expected[6] == -1 and min(expected[4], expected[5], expected[7]) >= 0
    assert lookup(s, query).tolist() == expected


def test_uids_digest_is_the_documented_bytes():
    """Every input store records its pool shards' uid digests and refuses a pool whose digest differs:
    the bytes hashed (each uid's f0 then f1, little-endian 64-bit) may never change, or every store
    written before would be refused as made for another pool."""
    hexes = ["0123456789abcdeffedcba9876543210", "ffffffffffffffff0000000000000001",
             "00000000000000010000000000000000", "8000000000000000ffffffffffffffff"]
    uids = hex_to_uids(hexes)
    by_rule = hashlib.sha256(b"".join(int(h[:16], 16).to_bytes(8, "little") + int(h[16:], 16).to_bytes(8, "little")
                                      for h in hexes)).hexdigest()
    assert uids_digest(uids) == by_rule == "e5214461721606e996b93ad51f7656e206793beefdb6456888924953f9db11c4"
    assert uids_digest(uids[:0]) == hashlib.sha256(b"").hexdigest()
    assert uids_digest(uids[::-1]) != by_rule  # the order counts
    assert uids_digest(np.repeat(uids, 2)[::2]) == by_rule  # a strided view hashes its values, not its memory


def test_write_and_read_subset_with_repetitions(tmp_path):
    uids = random_uids(300, seed=4)
    counts = np.random.default_rng(0).integers(0, 5, 300)
    path = tmp_path / "subset.npy"
    meta = write_subset(path, uids, counts, info={"sampler": "test", "seed": 3})
    arr = np.load(path)
    assert arr.dtype == np.dtype("u8,u8") and arr.dtype.names == ("f0", "f1")
    assert len(arr) == counts.sum() and is_sorted(arr)
    # every uid appears exactly `count` times, checked by DataComp-style binary searches
    for rec, c in zip(uids, counts):
        key = np.array([rec], dtype=UID_DTYPE)
        n = np.searchsorted(arr, key, side="right")[0] - np.searchsorted(arr, key, side="left")[0]
        assert n == c
    side = json.loads((tmp_path / "subset.npy.json").read_text())
    assert side == json.loads(json.dumps(meta))
    assert side["distinct_uids"] == int((counts > 0).sum())
    assert side["total_entries"] == int(counts.sum())
    assert side["max_repetitions"] == int(counts.max())
    assert side["repetition_histogram"] == {str(k): int((counts == k).sum()) for k in range(1, 5) if (counts == k).any()}
    assert side["sampler"] == "test" and side["seed"] == 3 and "version" in side
    got_uids, got_counts = read_subset(path)
    keep = counts > 0
    order = np.lexsort((uids["f1"][keep], uids["f0"][keep]))  # sorted on (f0, f1), independently of uid_order
    assert (got_uids == uids[keep][order]).all() and (got_counts == counts[keep][order]).all()
    assert not list(tmp_path.glob(".*tmp"))


def test_read_raw_headerless_subset(tmp_path):
    uids = random_uids(50, seed=5)
    arr = np.repeat(uids[uid_order(uids)], 2)
    arr.tofile(tmp_path / "raw.bin")
    u, c = read_subset(tmp_path / "raw.bin")
    assert len(u) == 50 and (c == 2).all()


def test_read_subset_rejects_bad_files(tmp_path):
    with pytest.raises(FlytInputError, match="does not exist"):
        read_subset(tmp_path / "nope.npy")
    np.save(tmp_path / "wrong.npy", np.arange(4, dtype=np.uint64))
    with pytest.raises(FlytInputError, match="dtype"):
        read_subset(tmp_path / "wrong.npy")
    named = np.zeros(3, dtype=[("a", "u8"), ("b", "u8")])
    np.save(tmp_path / "names.npy", named)
    with pytest.raises(FlytInputError, match="f0, f1"):
        read_subset(tmp_path / "names.npy")
    uids = random_uids(20, seed=6)
    np.save(tmp_path / "unsorted.npy", uids[::-1][np.argsort(uids[::-1]["f0"])[::-1]])
    with pytest.raises(FlytInputError, match="not sorted"):
        read_subset(tmp_path / "unsorted.npy")
    (tmp_path / "odd.bin").write_bytes(b"x" * 17)
    with pytest.raises(FlytInputError, match="multiple of 16"):
        read_subset(tmp_path / "odd.bin")


def test_write_subset_rejects_bad_input_and_leaves_nothing(tmp_path):
    uids = random_uids(10, seed=7)
    out = tmp_path / "s.npy"
    with pytest.raises(FlytInputError, match="shape"):
        write_subset(out, uids, np.ones(9, dtype=int))
    with pytest.raises(FlytInputError, match="integers"):
        write_subset(out, uids, np.ones(10))
    with pytest.raises(FlytInputError, match="non-negative"):
        write_subset(out, uids, -np.ones(10, dtype=int))
    dup = uids.copy()
    dup[3] = dup[8]
    with pytest.raises(FlytInputError, match="more than once"):
        write_subset(out, dup, np.ones(10, dtype=int))
    with pytest.raises(FlytInputError, match="dtype"):
        write_subset(out, uids["f0"], np.ones(10, dtype=int))
    assert list(tmp_path.iterdir()) == []
