"""The `filter` command end to end on tiny DataComp-format pools."""

import json
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from poolgen import write_image_shards, write_metadata

from flyt_datacomp.cli import main as cli_main
from flyt_datacomp.cli.filter import filter_command
from flyt_datacomp.pool import Pool
from flyt_datacomp.uids import UID_DTYPE, hex_to_uids, read_subset, uid_order


def run(args, expect_ok=True):
    result = CliRunner().invoke(filter_command, [*args, "--quiet"])
    if expect_ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture
def pool_dir(tmp_path):
    root, hexes = write_metadata(tmp_path / "metadata", sizes=(60, 50, 90))
    return root, hexes


def outputs(path):
    return [path, path.with_name(path.name + ".json"), path.with_suffix(".png")]


@pytest.mark.parametrize("sampler_args, total", [
    (["--sampler", "scs", "--scs-alpha", "0.5", "--scs-batch", "20", "--num-samples", "150"], 150),
    (["--sampler", "hcs", "--hcs-cap", "3", "--num-samples", "120"], 120),
    (["--sampler", "nocap", "--num-samples", "90"], 90),
    (["--sampler", "threshold", "--fraction", "0.25", "--exact-count"], 50),
])
def test_samplers_write_subset_sidecar_histogram(pool_dir, tmp_path, sampler_args, total):
    root, hexes = pool_dir
    out = tmp_path / "out" / "subset.npy"
    result = run(["--metadata-dir", str(root), "--score", "clip_l14_similarity_score", *sampler_args,
                  "--standardize", "--output", str(out), "--seed", "3"])
    assert "distinct uids" in result.output and str(out) in result.output
    assert all(p.exists() for p in outputs(out))
    arr = np.load(out)
    assert arr.dtype == UID_DTYPE and len(arr) == total
    uids, counts = read_subset(out)
    assert set(map(tuple, uids.tolist())) <= set(map(tuple, hex_to_uids(hexes).tolist()))
    side = json.loads(out.with_name("subset.npy.json").read_text())
    assert side["total_entries"] == total and side["seed"] == 3
    assert side["sampler"] == sampler_args[1] and side["inputs"]["pool_size"] == 200
    assert side["inputs"]["score_source"] == "clip_l14_similarity_score"
    assert side["score_transform"]["standardize"] is True
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_threshold_datacomp_rule_and_top_scores(pool_dir, tmp_path):
    root, _ = pool_dir
    pool = Pool(str(root), progress=False)
    scores = pool.column("clip_b32_similarity_score").astype(np.float64)
    out = tmp_path / "dc.npy"
    run(["--metadata-dir", str(root), "--score", "clip_b32_similarity_score", "--sampler", "threshold",
         "--fraction", "0.3", "--output", str(out)])  # DataComp's rule is the default
    t = -np.sort(-scores)[int(len(scores) * 0.3)]
    expect = pool.uids[scores >= t]
    got, counts = read_subset(out)
    assert (got == expect[uid_order(expect)]).all() and (counts == 1).all()


def test_same_seed_same_bytes_and_scale_defaults(pool_dir, tmp_path):
    root, _ = pool_dir
    a, b, c = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "c.npy"
    common = ["--metadata-dir", str(root), "--score", "clip_l14_similarity_score", "--standardize"]
    run([*common, "--output", str(a), "--seed", "1", "--num-samples", "300"])
    run([*common, "--output", str(b), "--seed", "1", "--num-samples", "300"])
    run([*common, "--output", str(c), "--seed", "2", "--num-samples", "300"])
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    side = json.loads((tmp_path / "a.npy.json").read_text())
    assert side["sampler_params"]["group_size"] == 1  # ceil(300 / 1280 rounds)
    assert side["sampler_params"]["alpha"] == 0.15
    d = tmp_path / "d.npy"
    # small's G = 10K is clamped to this 200-row pool: every round takes the whole pool, so the
    # draw ignores the scores; refused unless accepted explicitly
    r = run([*common, "--output", str(d), "--scale", "small", "--num-samples", "400"], expect_ok=False)
    assert r.exit_code == 2 and "whole pool" in r.output and not d.exists()
    run([*common, "--output", str(d), "--scale", "small", "--num-samples", "400", "--allow-score-independent"])
    side = json.loads((tmp_path / "d.npy.json").read_text())
    assert side["sampler_params"] == {"alpha": 0.5, "group_size": 200, "num_samples": 400}
    assert any("whole pool" in w for w in side["warnings"])
    assert (read_subset(d)[1] == 2).all()


def test_score_file_join_by_uid(pool_dir, tmp_path):
    root, hexes = pool_dir
    pool = Pool(str(root), progress=False)
    col = pool.column("clip_l14_similarity_score").astype(np.float64)
    from flyt_datacomp.uids import uids_to_hex

    perm = np.random.default_rng(0).permutation(len(col))
    extra = ["f" * 32]
    table = pa.table({"uid": list(uids_to_hex(pool.uids)[perm]) + extra, "score": list(col[perm]) + [9.0]})
    pq.write_table(table, tmp_path / "scores.parquet")
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    args = ["--metadata-dir", str(root), "--sampler", "threshold", "--fraction", "0.2"]
    run([*args, "--score", "clip_l14_similarity_score", "--output", str(a)])
    run([*args, "--score", str(tmp_path / "scores.parquet"), "--output", str(b)])
    assert a.read_bytes() == b.read_bytes()


def test_existing_output_needs_overwrite(pool_dir, tmp_path):
    root, _ = pool_dir
    out = tmp_path / "s.npy"
    args = ["--metadata-dir", str(root), "--score", "clip_l14_similarity_score", "--output", str(out)]
    run(args)
    before = out.read_bytes()
    r = run([*args, "--seed", "5"], expect_ok=False)
    assert r.exit_code != 0 and "already exists" in r.output and out.read_bytes() == before
    run([*args, "--seed", "5", "--overwrite"])
    assert out.read_bytes() != before


def _bad(tmp_path, args, message):
    out = tmp_path / "bad" / "s.npy"
    r = run([*args, "--output", str(out)], expect_ok=False)
    assert r.exit_code != 0, r.output
    assert message in r.output, r.output
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_bad_inputs_clear_errors_no_output(pool_dir, tmp_path):
    root, hexes = pool_dir
    base = ["--metadata-dir", str(root)]
    _bad(tmp_path, ["--metadata-dir", str(tmp_path / "missing"), "--score", "x"], "does not exist")
    _bad(tmp_path, [*base, "--score", "nonexistent_column"], "neither a column")
    _bad(tmp_path, [*base, "--score", "clip_l14_similarity_score", "--scs-alpha", "0"], "alpha")
    _bad(tmp_path, [*base, "--score", "clip_l14_similarity_score", "--scs-batch", "0"], "group_size")
    _bad(tmp_path, [*base, "--score", "clip_l14_similarity_score", "--num-samples", "0"], "--num-samples")
    _bad(tmp_path, [*base, "--score", "clip_l14_similarity_score", "--sampler", "hcs"], "--hcs-cap")
    _bad(tmp_path, [*base, "--score", "clip_l14_similarity_score", "--sampler", "hcs", "--hcs-cap", "0"], "cap")
    _bad(tmp_path, [*base, "--score", "clip_l14_similarity_score", "--sampler", "threshold", "--fraction", "1.5"], "fraction")
    _bad(tmp_path, [*base, "--score", "clip_l14_similarity_score", "--sampler", "threshold"], "exactly one of")
    _bad(tmp_path, [*base, "--score", "clip_l14_similarity_score", "--hcs-cap", "2"], "does not apply")
    _bad(tmp_path, [*base, "--score", "clip_l14_similarity_score", "--temperature", "0"], "--temperature")
    r = run([*base, "--score", "clip_l14_similarity_score", "--output", str(tmp_path / "x.txt")], expect_ok=False)
    assert r.exit_code != 0 and ".npy" in r.output
    # NaN scores in a score file: named, nothing written
    pool = Pool(str(root), progress=False)
    from flyt_datacomp.uids import uids_to_hex

    vals = np.zeros(pool.size)
    vals[17] = np.nan
    pq.write_table(pa.table({"uid": list(uids_to_hex(pool.uids)), "score": vals}), tmp_path / "nan.parquet")
    _bad(tmp_path, [*base, "--score", str(tmp_path / "nan.parquet")], "missing score(s) (empty, NaN or n/a); the first at row 17")
    pq.write_table(pa.table({"uid": list(uids_to_hex(pool.uids))[1:], "score": np.zeros(pool.size - 1)}),
                   tmp_path / "short.parquet")
    _bad(tmp_path, [*base, "--score", str(tmp_path / "short.parquet")], "no score for 1 of the pool's 200 uids")
    pq.write_table(pa.table({"id": ["a"], "score": [1.0]}), tmp_path / "nouid.parquet")
    _bad(tmp_path, [*base, "--score", str(tmp_path / "nouid.parquet")], "needs columns 'uid' and 'score'")


def test_bad_pools_clear_errors(tmp_path):
    root, _ = write_metadata(tmp_path / "m", sizes=(10, 10))
    args = ["--metadata-dir", str(root), "--score", "clip_l14_similarity_score"]
    first = sorted(root.glob("*.parquet"))[0]
    t = pq.read_table(first)
    pq.write_table(t.drop(["uid"]), first)
    _bad(tmp_path, args, "has no 'uid' column")
    pq.write_table(t.set_column(0, "uid", pa.array(["not-a-uid"] + t.column("uid").to_pylist()[1:])), first)
    _bad(tmp_path, args, "malformed uid 'not-a-uid' at row 0")
    pq.write_table(t, first)
    npz = first.with_suffix(".npz")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["b32_img"] = arrays["b32_img"][:3]
    np.savez(npz, **arrays)
    _bad(tmp_path, args, "misaligned")


def test_cli_group_and_module_entry_point(pool_dir, tmp_path):
    root, _ = pool_dir
    out = tmp_path / "m.npy"
    r = CliRunner().invoke(cli_main, ["filter", "--metadata-dir", str(root), "--score",
                                      "clip_l14_similarity_score", "--output", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    proc = subprocess.run([sys.executable, "-m", "flyt_datacomp.filter", "--metadata-dir", str(root),
                           "--score", "nope", "--output", str(tmp_path / "n.npy")], capture_output=True, text=True)
    assert proc.returncode != 0 and "neither a column" in proc.stderr
    assert not (tmp_path / "n.npy").exists()


def emulate_datacomp_resharder(shards_dir, subset_path):
    """DataComp's resharder semantics, written independently of our uid code: load the subset
    with np.load, and for every sample of every input shard count its uid's copies with two
    binary searches on the structured array; emit `count` copies keyed `<uid>-k`."""
    subset = np.load(subset_path, mmap_mode="r")
    assert subset.dtype == np.dtype("u8,u8")
    out = {}
    for tar_path in sorted(shards_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if not m.name.endswith(".json"):
                    continue
                uid = json.load(tar.extractfile(m))["uid"]
                key = np.array([(int(uid[:16], 16), int(uid[16:32], 16))], dtype=np.dtype("u8,u8"))
                n = int(np.searchsorted(subset, key, "right")[0] - np.searchsorted(subset, key, "left")[0])
                for k in range(n):
                    out[f"{uid}-{k}"] = uid
    return out


def test_subset_reshards_to_exact_copies(pool_dir, tmp_path):
    root, hexes = pool_dir
    kept = write_image_shards(tmp_path / "shards", list(hexes), keep_fraction=0.85)
    assert 0 < len(kept) < len(hexes)
    out = tmp_path / "s.npy"
    run(["--metadata-dir", str(root), "--score", "clip_l14_similarity_score", "--standardize",
         "--temperature", "0.3", "--scs-alpha", "0.3", "--scs-batch", "10", "--num-samples", "400",
         "--output", str(out)])
    copies = emulate_datacomp_resharder(tmp_path / "shards", out)
    uids, counts = read_subset(out)
    from flyt_datacomp.uids import uids_to_hex

    requested = dict(zip(uids_to_hex(uids), counts))
    assert max(counts) > 1  # repetitions are exercised
    got = {}
    for uid in copies.values():
        got[uid] = got.get(uid, 0) + 1
    expect = {u: int(requested[u]) for u in kept if u in requested}
    assert got == expect


def test_non_numeric_scores_and_empty_files(pool_dir, tmp_path):
    root, hexes = pool_dir
    base = ["--metadata-dir", str(root)]
    _bad(tmp_path, [*base, "--score", "text"], "not numbers")
    pq.write_table(pa.table({"uid": list(hexes), "score": ["high"] * len(hexes)}), tmp_path / "str.parquet")
    _bad(tmp_path, [*base, "--score", str(tmp_path / "str.parquet")], "the score 'high' at row 0")
    (tmp_path / "empty.parquet").write_bytes(b"")
    _bad(tmp_path, [*base, "--score", str(tmp_path / "empty.parquet")], "cannot read score file")
    (root / "0000.parquet").write_bytes(b"")
    _bad(tmp_path, [*base, "--score", "clip_l14_similarity_score"], "0000.parquet")


def _uid_score_records(pool, dtype):
    arr = np.zeros(pool.size, dtype=dtype)
    names = arr.dtype.names
    if "uid" in names:
        arr["uid"] = pool.uids
    else:
        arr["f0"], arr["f1"] = pool.uids["f0"], pool.uids["f1"]
    arr["score"] = pool.column("clip_l14_similarity_score")
    return arr


def test_an_output_that_is_one_of_the_inputs_is_refused_with_overwrite(pool_dir, tmp_path):
    """--output equal to the score file (an .npy score file is a natural name clash), to a file of an
    aggregation, or inside the metadata folder: refused before any work, every input byte kept."""
    root, _ = pool_dir
    pool = Pool(str(root), progress=False)
    scores = tmp_path / "scores.npy"
    np.save(scores, _uid_score_records(pool, [("uid", UID_DTYPE), ("score", "f8")]))
    before = scores.read_bytes()
    metadata = {p.name: p.read_bytes() for p in root.iterdir()}
    for spec, out in ((str(scores), scores), (f"file:{scores}", scores),
                      (f"sum:{scores},clip_b32_similarity_score", scores),
                      ("clip_l14_similarity_score", root / "subset.npy")):
        r = run(["--metadata-dir", str(root), "--score", spec, "--num-samples", "50", "--output", str(out),
                 "--overwrite"], expect_ok=False)
        assert r.exit_code == 2 and "an output must be apart from the command's inputs" in r.output, r.output
        assert scores.read_bytes() == before and {p.name: p.read_bytes() for p in root.iterdir()} == metadata
    sidecar = tmp_path / "s.npy.json"  # the subset's sidecar may not be an input either
    np.save(tmp_path / "x.npy", _uid_score_records(pool, [("uid", UID_DTYPE), ("score", "f8")]))
    (tmp_path / "x.npy").rename(sidecar)
    r = run(["--metadata-dir", str(root), "--score", f"file:{sidecar}", "--num-samples", "50", "--output",
             str(tmp_path / "s.npy"), "--overwrite"], expect_ok=False)
    assert r.exit_code == 2 and "s.npy.json" in r.output


def test_a_threshold_that_keeps_nothing_writes_nothing(pool_dir, tmp_path):
    root, _ = pool_dir
    out = tmp_path / "t.npy"
    for extra in (["--threshold", "5"], ["--threshold", "50", "--standardize"]):
        r = run(["--metadata-dir", str(root), "--score", "clip_l14_similarity_score", "--output", str(out), *extra],
                expect_ok=False)
        assert r.exit_code == 2 and "--threshold" in r.output and "keeps no example" in r.output, r.output
        assert "range from" in r.output and not out.exists()
    run(["--metadata-dir", str(root), "--score", "clip_l14_similarity_score", "--output", str(out), "--threshold",
         "0.3"])
    assert read_subset(out)[1].sum() > 0


@pytest.mark.parametrize("layout", ["uid u8,u8 records", "f0 f1 fields", "parquet struct"])
def test_a_score_file_in_the_packages_own_uid_form_is_read(pool_dir, tmp_path, layout):
    root, _ = pool_dir
    pool = Pool(str(root), progress=False)
    args = ["--metadata-dir", str(root), "--sampler", "threshold", "--fraction", "0.2"]
    run([*args, "--score", "clip_l14_similarity_score", "--output", str(tmp_path / "a.npy")])
    if layout == "parquet struct":
        path = tmp_path / "scores.parquet"
        uid = pa.StructArray.from_arrays([pa.array(pool.uids["f0"]), pa.array(pool.uids["f1"])], names=["f0", "f1"])
        pq.write_table(pa.table({"uid": uid, "score": pool.column("clip_l14_similarity_score")}), path)
    else:
        path = tmp_path / "scores.npy"
        dtype = ([("uid", UID_DTYPE), ("score", "f4")] if layout.startswith("uid")
                 else [("f0", "u8"), ("f1", "u8"), ("score", "f4")])
        np.save(path, _uid_score_records(pool, dtype))
    run([*args, "--score", str(path), "--output", str(tmp_path / "b.npy")])
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


def _csv(path, rows):
    path.write_text("uid,score\n" + "".join(f"{u},{s}\n" for u, s in rows))


def test_a_score_file_for_part_of_the_pool_is_filled_with_missing(pool_dir, tmp_path):
    """5 of 20 uids scored: refused, naming --missing; with --missing min or mean the rest get the
    file's min or mean, the sidecar says how many."""
    root, _ = pool_dir
    pool = Pool(str(root), progress=False)
    from flyt_datacomp.uids import uids_to_hex

    hexes = uids_to_hex(pool.uids)
    part = tmp_path / "part.csv"
    _csv(part, [(u, float(i)) for i, u in enumerate(hexes[:50])])
    out = tmp_path / "s.npy"
    args = ["--metadata-dir", str(root), "--score", str(part), "--sampler", "threshold", "--output", str(out)]
    r = run([*args, "--fraction", "0.1"], expect_ok=False)
    assert r.exit_code == 2 and "no score for 150 of the pool's 200 uids" in r.output and "--missing" in r.output
    from flyt_datacomp.scores import load_scores

    for policy, fill in (("min", 0.0), ("mean", 24.5)):
        values = load_scores(pool, str(part), missing=policy).values
        position = {u: i for i, u in enumerate(hexes)}
        assert values[[position[u] for u in hexes[:50]]].tolist() == [float(i) for i in range(50)]
        assert np.all(values[[position[u] for u in hexes[50:]]] == fill)
        run([*args, "--threshold", "40", "--missing", policy, "--overwrite"])
        side = json.loads(out.with_name("s.npy.json").read_text())
        assert side["inputs"]["missing"] == {"policy": policy, "filled": 150}
        assert read_subset(out)[1].sum() == 10  # scores 40..49


@pytest.mark.parametrize("bad, message", [("NaN", "missing score(s)"), ("n/a", "missing score(s)"),
                                          ("", "missing score(s)"), ("abc", "'abc'"), ("inf", "infinite")])
def test_a_bad_score_row_is_named_by_row_line_and_uid(pool_dir, tmp_path, bad, message):
    root, hexes = pool_dir
    path = tmp_path / "s.csv"
    _csv(path, [(u, bad if i == 7 else i) for i, u in enumerate(hexes)])
    r = run(["--metadata-dir", str(root), "--score", str(path), "--num-samples", "10", "--output",
             str(tmp_path / "o.npy")], expect_ok=False)
    assert r.exit_code == 2 and message in r.output, r.output
    assert "row 7 (line 9)" in r.output and hexes[7] in r.output, r.output
    if message == "missing score(s)":  # a row without a score is an example without one: --missing fills it
        run(["--metadata-dir", str(root), "--score", str(path), "--num-samples", "10", "--missing", "mean",
             "--output", str(tmp_path / "o.npy")])
