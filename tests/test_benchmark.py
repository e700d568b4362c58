"""The mini-DataComp benchmark: data, training, zero-shot maths, caching, the table, and that no
pool file exposes the demo's ground truth."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from flyt_datacomp.benchmark import data as bdata
from flyt_datacomp.benchmark.data import PoolImages, load_pool_images, subset_index
from flyt_datacomp.benchmark.recipe import Recipe, get_recipe
from flyt_datacomp.benchmark.train import batch_positions, train_and_evaluate
from flyt_datacomp.benchmark.zeroshot import accuracy, class_embeddings, prompts
from flyt_datacomp.cli import main
from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.uids import hex_to_uids, random_uids, uid_order, uids_to_hex, write_subset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------- no leak


def _labels(truth: dict) -> dict[str, np.ndarray]:
    types = np.asarray(truth["type"], dtype=str)
    domain = np.asarray(truth["domain"], dtype=str)
    correct = np.isin(types, ["correct", "near_duplicate"])
    return {
        "type": types,
        "domain": domain,
        "domain_and_type": np.char.add(np.char.add(domain, "/"), types),
        "near_duplicate": types == "near_duplicate",
        "correct_caption": correct,
        "clutter": types == "clutter",
        "task": correct & (domain == "digits"),  # the task oracle's examples
    }


def _as_values(column) -> np.ndarray:
    arr = np.asarray(column, dtype=object) if not isinstance(column, np.ndarray) else column
    if arr.dtype == object:
        return np.asarray([repr(v) for v in arr], dtype=str)
    return arr


def exposed_labels(values: np.ndarray, labels: dict[str, np.ndarray]) -> list[str]:
    """The labels a per-row column gives away.

    A column with few distinct values exposes a label when every value maps to one label (the
    label is a function of it). A numeric column with many distinct values exposes a binary
    label when it ranks it almost perfectly (AUC outside [0.03, 0.97]). Identifiers (a distinct
    value per row, non-numeric) carry no information and are skipped.
    """
    from sklearn.metrics import roc_auc_score

    values = _as_values(values)
    n = len(values)
    distinct, inverse = np.unique(values, return_inverse=True)
    inverse = inverse.reshape(-1)
    found = []
    for name, y in labels.items():
        y_codes = np.unique(y, return_inverse=True)[1].reshape(-1)
        if len(np.unique(y_codes)) < 2:
            continue
        if len(distinct) <= n // 2:
            # function test: the number of distinct (value, label) pairs equals the number of values
            pairs = len(np.unique(inverse * (y_codes.max() + 1) + y_codes))
            if pairs == len(distinct):
                found.append(name)
        elif values.dtype.kind in "biuf" and y.dtype == bool:
            auc = roc_auc_score(y, values.astype(np.float64))
            if not 0.03 <= auc <= 0.97:
                found.append(name)
    return found


def _pool_columns(pool):
    """(where, values) for every metadata parquet column, npz key (each column of 2-D keys) and
    image-shard parquet column, aligned with truth.parquet's rows by uid."""
    truth = pq.read_table(pool.truth_path).to_pydict()
    row_of = {u: i for i, u in enumerate(truth["uid"])}
    n = len(truth["uid"])
    for parquet in sorted(pool.metadata_dir.glob("*.parquet")):
        table = pq.read_table(parquet)
        rows = np.array([row_of[u] for u in table["uid"].to_pylist()])
        for name in table.column_names:
            yield f"{parquet.name}:{name}", rows, table[name].to_pylist()
        with np.load(parquet.with_suffix(".npz")) as npz:
            for key in npz.files:
                arr = npz[key]
                assert arr.shape[0] == len(rows), key
                if arr.ndim == 1:
                    yield f"{parquet.with_suffix('.npz').name}:{key}", rows, arr
                else:
                    for j in range(arr.shape[1]):
                        yield f"{parquet.with_suffix('.npz').name}:{key}[:, {j}]", rows, arr[:, j]
    for parquet in sorted(pool.shards_dir.glob("*.parquet")):
        table = pq.read_table(parquet)
        rows = np.array([row_of[u] for u in table["uid"].to_pylist()])
        for name in table.column_names:
            yield f"shards/{parquet.name}:{name}", rows, table[name].to_pylist()
    assert n > 0


def test_no_pool_file_exposes_the_ground_truth(tiny_demo_pool):
    truth = pq.read_table(tiny_demo_pool.truth_path).to_pydict()
    labels = _labels(truth)
    # the check itself catches the old leak (npz `dedup` = the near-duplicate flag) ...
    assert exposed_labels(labels["near_duplicate"].astype(np.uint8), labels) == ["near_duplicate"]
    assert "type" in exposed_labels(np.asarray(truth["type"]), labels)
    assert "domain" in exposed_labels(np.asarray(truth["domain"]), labels)
    assert "task" in exposed_labels(labels["task"].astype(np.float64), labels)
    # ... and a column that ranks a label almost perfectly
    noisy = labels["clutter"] + 1e-3 * np.random.default_rng(0).standard_normal(len(truth["uid"]))
    assert exposed_labels(noisy, labels) == ["clutter"]
    checked = 0
    for where, rows, values in _pool_columns(tiny_demo_pool):
        local = {k: v[rows] for k, v in labels.items()}
        assert exposed_labels(np.asarray(values, dtype=object) if isinstance(values, list) else values,
                              local) == [], where
        checked += 1
    assert checked > 20


# ---------------------------------------------------------------------------- data


def _fake_pool_images(n=6, seed=0):
    uids = random_uids(n, seed)
    uids = uids[uid_order(uids)]
    return PoolImages(uids=uids, images=np.arange(n, dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2),
                      caption_ids=np.zeros(n, dtype=np.int32), captions=["x"], fingerprint="f")


def test_subset_index_honours_repetitions_and_skips_uids_without_images(tmp_path):
    pool = _fake_pool_images()
    absent = random_uids(2, 99)
    uids = np.concatenate([pool.uids[[0, 2, 5]], absent])
    counts = np.array([1, 3, 2, 4, 1])
    path = tmp_path / "s.npy"
    write_subset(path, uids, counts)
    idx = subset_index(path, pool)
    assert sorted(idx.index.tolist()) == [0, 2, 2, 2, 5, 5]
    assert (idx.distinct, idx.entries) == (5, 11)
    assert (idx.distinct_with_image, idx.entries_with_image) == (3, 6)
    assert (idx.skipped_distinct, idx.skipped_entries) == (2, 5)
    # a subset of another pool altogether is an error, not an empty training set
    write_subset(tmp_path / "other.npy", absent, np.array([1, 1]))
    with pytest.raises(FlytInputError, match="none of the 2 uids"):
        subset_index(tmp_path / "other.npy", pool)


def test_pool_images_decoded_once_and_cached(tiny_demo_pool, tmp_path, monkeypatch):
    import io
    import tarfile

    from PIL import Image

    cache = tmp_path / "images.npz"
    imgs = load_pool_images(tiny_demo_pool.shards_dir, cache, progress=False)
    shard_stats = [json.loads(p.read_text()) for p in sorted(tiny_demo_pool.shards_dir.glob("*_stats.json"))]
    assert len(imgs) == sum(s["successes"] for s in shard_stats) < tiny_demo_pool.pool_size
    assert imgs.images.dtype == np.uint8 and imgs.images.shape[1:] == (32, 32)
    assert uids_to_hex(imgs.uids).tolist() == sorted(uids_to_hex(imgs.uids).tolist())
    # one sample, decoded by hand, matches its row (found by the json uid, not the key)
    with tarfile.open(sorted(tiny_demo_pool.shards_dir.glob("*.tar"))[0]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    key = sorted(n for n in members if n.endswith(".jpg"))[3][:-4]
    uid = json.loads(members[f"{key}.json"])["uid"]
    row = int(np.flatnonzero(uids_to_hex(imgs.uids) == uid)[0])
    expect = np.asarray(Image.open(io.BytesIO(members[f"{key}.jpg"])).convert("L"))
    assert np.array_equal(imgs.images[row], expect)
    assert imgs.captions[imgs.caption_ids[row]] == members[f"{key}.txt"].decode()
    # the second call reads the cache
    monkeypatch.setattr(bdata, "decode_shards", lambda *a, **k: pytest.fail("decoded again"))
    again = load_pool_images(tiny_demo_pool.shards_dir, cache, progress=False)
    assert np.array_equal(again.images, imgs.images) and np.array_equal(again.uids, imgs.uids)
    # a cache made from other shards is not used
    monkeypatch.setattr(bdata, "shards_fingerprint", lambda d: "changed")
    with pytest.raises(pytest.fail.Exception, match="decoded again"):
        load_pool_images(tiny_demo_pool.shards_dir, cache, progress=False)


def test_batches_cover_every_entry_with_its_repetitions():
    index = np.array([7, 7, 7, 3, 9, 9])
    batches = list(batch_positions(index, batch_size=4, steps=6, seed=1))  # 24 draws = 4 passes
    assert all(len(b) == 4 for b in batches)
    flat = np.concatenate(batches)
    for p in range(4):
        assert sorted(flat[6 * p:6 * (p + 1)].tolist()) == sorted(index.tolist())
    again = np.concatenate(list(batch_positions(index, 4, 6, seed=1)))
    other = np.concatenate(list(batch_positions(index, 4, 6, seed=2)))
    assert np.array_equal(flat, again) and not np.array_equal(flat, other)
    with pytest.raises(FlytInputError, match="nothing to train on"):
        next(batch_positions(np.zeros(0, dtype=np.int64), 4, 1, seed=0))


# ---------------------------------------------------------------------------- zero-shot maths


def test_zero_shot_accuracy_on_a_constructed_case():
    assert prompts(["a", "b"], ["x {}", "{} y"]) == ["x a", "a y", "x b", "b y"]
    e = torch.eye(3)
    # class 0's two prompts average to e0, class 1's to e1 (+ e2 - e2), class 2's to e2
    text = torch.stack([e[0], e[0], e[1] + e[2], e[1] - e[2], e[2], e[2]]) * 5
    cls = class_embeddings(text, 3)
    np.testing.assert_allclose(cls.numpy(), np.eye(3), atol=1e-6)
    images = torch.tensor([[1.0, 0.1, 0], [0.2, 1.0, 0], [0, 0.3, 1.0], [1.0, 0.9, 0]])
    labels = np.array([0, 1, 2, 1])  # the last is nearer class 0: wrong
    assert accuracy(images, cls, labels) == pytest.approx(0.75)
    assert accuracy(images * 7, cls, labels) == pytest.approx(0.75)  # scale-free
    with pytest.raises(FlytInputError):
        accuracy(images, cls, labels[:3])


# ---------------------------------------------------------------------------- recipe


def test_recipe_hash_tracks_what_changes_a_result():
    base = Recipe("a")
    assert Recipe("b").hash() == base.hash()  # the display name does not matter
    assert get_recipe("default", samples_seen=base.samples_seen + 256).hash() != base.hash()
    assert get_recipe("default", lr=1e-3).hash() != base.hash()
    assert Recipe("a", threads=base.threads + 1).hash() != base.hash()
    with pytest.raises(FlytInputError):
        get_recipe("nope")
    with pytest.raises(FlytInputError):
        Recipe("bad", samples_seen=10, batch_size=32)


# ---------------------------------------------------------------------------- end to end


def _oracle_and_random(pool, tmp_path):
    """The task oracle (correctly captioned digits) and a random subset of its size."""
    from flyt_datacomp.pool import Pool

    truth = pq.read_table(pool.truth_path).to_pydict()
    good = np.isin(truth["type"], ["correct", "near_duplicate"]) & (np.asarray(truth["domain"]) == "digits")
    uids = hex_to_uids(np.asarray(truth["uid"]))
    oracle, random = tmp_path / "oracle.npy", tmp_path / "random.npy"
    write_subset(oracle, uids, good.astype(np.int64))
    rng = np.random.default_rng(0)
    pick = np.zeros(len(good), dtype=np.int64)
    pick[rng.choice(len(good), int(good.sum()), replace=False)] = 1
    write_subset(random, uids, pick)
    assert Pool(str(pool.metadata_dir), progress=False).size == len(good)
    return oracle, random


def test_benchmark_subset_json_cache_and_determinism(tiny_demo_pool, tmp_path, monkeypatch):
    oracle, random = _oracle_and_random(tiny_demo_pool, tmp_path)
    runner = CliRunner()
    base = ["benchmark", "--quick", "--quiet", "--pool-dir", str(tiny_demo_pool.root),
            "--cache-dir", str(tmp_path / "cache"), "--seeds", "2", "--jobs", "1"]
    res = runner.invoke(main, base + ["--subset", str(oracle), "--json", str(tmp_path / "a.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "a.json").read_text())
    (row,) = out["rows"]
    assert {"name", "mean", "std", "seeds", "distinct", "entries"} <= set(row)
    assert row["name"] == "oracle" and len(row["seeds"]) == 2 and row["cached_seeds"] == 0
    assert all(0.0 <= a <= 1.0 for a in row["seeds"])
    assert row["mean"] == pytest.approx(np.mean(row["seeds"]))
    assert row["std"] == pytest.approx(np.std(row["seeds"], ddof=1))
    assert row["entries"] == row["distinct"] > row["entries_with_image"] > 0
    assert out["recipe"]["name"] == "quick" and len(out["recipe"]["hash"]) == 64
    assert out["run"]["trained_runs"] == 2 and 0 < out["run"]["data_loading_share"] < 1
    assert "| oracle |" in res.output
    results = sorted((tmp_path / "cache" / "results").rglob("*.json"))
    assert len(results) == 2
    # a rerun trains nothing and reports the same numbers
    import flyt_datacomp.benchmark.evaluate as ev

    def no_training(*args, **kwargs):
        raise RuntimeError("trained a cached run")

    monkeypatch.setattr(ev, "train_and_evaluate", no_training)
    res = runner.invoke(main, base + ["--subset", str(oracle), "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert again["seeds"] == row["seeds"] and again["cached_seeds"] == 2
    # another subset (or another seed) is a miss
    res = runner.invoke(main, base + ["--subset", str(random)])
    assert res.exit_code != 0 and "trained a cached run" in str(res.exception)
    monkeypatch.undo()
    # the same seed trains to the same result from scratch (determinism), also when the runs
    # train in two worker processes
    for p in results:
        p.unlink()
    res = runner.invoke(main, base + ["--subset", str(oracle), "--json", str(tmp_path / "c.json"), "--jobs", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c.json").read_text())["rows"][0]["seeds"] == row["seeds"]


def test_benchmark_cli_errors(tiny_demo_pool, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["benchmark", "--pool-dir", str(tmp_path), "--quick"])
    assert res.exit_code == 2 and "not a built demo pool" in res.output
    oracle, _ = _oracle_and_random(tiny_demo_pool, tmp_path)
    res = runner.invoke(main, ["benchmark", "--subset", str(oracle), "--rows", "oracle"])
    assert res.exit_code == 2 and "--rows" in res.output
    res = runner.invoke(main, ["benchmark", "--quick", "--pool-dir", str(tiny_demo_pool.root),
                               "--cache-dir", str(tmp_path / "c"), "--rows", "task_oracle,nonsense"])
    assert res.exit_code == 2 and "unknown table row(s) nonsense" in res.output


def test_standard_table_quick(tiny_demo_pool, tmp_path):
    """Every standard row is made by the package's commands and evaluated (smoke run)."""
    from flyt_datacomp.benchmark.table import rows_for

    ROW_IDS = rows_for("v4")
    assert "task_oracle" in ROW_IDS and "alignment_oracle" in ROW_IDS and "oracle" not in ROW_IDS
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["benchmark", "--quick", "--quiet", "--seeds", "1", "--jobs", "1", "--pool-dir",
                                    str(tiny_demo_pool.root), "--cache-dir", str(tmp_path / "cache"),
                                    "--output-dir", str(out)])
    assert res.exit_code == 0, res.output
    table = json.loads((out / "table.json").read_text())
    assert [r["id"] for r in table["rows"]] == ROW_IDS
    rows = {r["id"]: r for r in table["rows"]}
    n = tiny_demo_pool.pool_size
    assert rows["no_filter"]["distinct"] == rows["no_filter"]["entries"] == n
    for r in ("random_30", "b32_top30", "l14_top30", "mflyt_top30", "stdsum_top30"):
        assert rows[r]["entries"] == rows[r]["distinct"] == int(0.3 * n), r
    s = table["settings"]
    for r in ("b32_scs", "stdsum_scs", "inweighted_scs", "mflyt_scs", "eflyt_scs", "caption_mflyt_scs",
              "stdsum_all_scs", "mflyt_all_scs"):
        assert rows[r]["entries"] == s["num_samples"] == get_recipe("quick").samples_seen, r
        sidecar = json.loads((tmp_path / "cache" / "table" / "subsets" / f"{r}.npy.json").read_text())
        assert sidecar["sampler_params"]["alpha"] == s["scs_alpha"]
        assert sidecar["sampler_params"]["group_size"] == s["scs_batch"]
    truth = pq.read_table(tiny_demo_pool.truth_path).to_pydict()
    correct = np.isin(truth["type"], ["correct", "near_duplicate"])
    digits = np.asarray(truth["domain"]) == "digits"
    assert rows["task_oracle"]["distinct"] == int(np.sum(correct & digits))
    assert rows["alignment_oracle"]["distinct"] == int(np.sum(correct)) > 2 * rows["task_oracle"]["distinct"]
    assert set(rows["task_oracle"]["true_split"]) == {"digits/correct", "digits/near_duplicate"}
    assert rows["alignment_oracle"]["true_split"]["letters/correct"] > 0.1
    assert set(rows["alignment_oracle"]["true_types"]) == {"correct", "near_duplicate"}
    assert abs(sum(rows["no_filter"]["true_split"].values()) - 1) < 1e-3
    assert set(table["flyt_runs"]) == {"m-flyt-demo", "e-flyt-demo", "m-flyt-demo-all"}
    assert set(table["flyt_runs"]["m-flyt-demo-all"]["mixing_weights"]) == {
        "clip_b32_similarity_score", "clip_l14_similarity_score", "neg_clip_loss_b32", "neg_clip_loss_l14",
        "normsim_digits", "classifier_digits", "eflyt"}
    caption = json.loads((tmp_path / "cache" / "table" / "subsets" / "caption_mflyt_scs.npy.json").read_text())
    assert [m["mask"] for m in caption["masks"]] == ["caption:basic"]
    assert 0 < caption["masks"][0]["surviving"] < n
    weighted = json.loads((tmp_path / "cache" / "table" / "subsets" / "inweighted_scs.npy.json").read_text())
    assert weighted["inputs"]["score_source"].startswith("in_weighted:r=4:clip_b32_similarity_score=")
    assert (out / "table.md").read_text().count("\n") == len(ROW_IDS) + 2
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_v3_pool_keeps_its_table_and_recipe(tiny_demo_pool, tmp_path):
    """`benchmark --pool-dir` on a v3 pool: its one oracle row and its own recipe; a v4 pool has the
    two oracles instead."""
    from flyt_datacomp.benchmark.recipe import Recipe, pool_recipe
    from flyt_datacomp.demo import build_demo_pool

    v3 = build_demo_pool(tmp_path / "pools", version="v3", pool_size=300, num_metadata_shards=1, shard_size=100,
                         scorer_steps=2, progress=False)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["benchmark", "--quick", "--quiet", "--seeds", "1", "--jobs", "1", "--pool-dir",
                                    str(v3.root), "--rows", "no_filter,oracle", "--output-dir", str(out)])
    assert res.exit_code == 0, res.output
    table = json.loads((out / "table.json").read_text())
    assert [r["id"] for r in table["rows"]] == ["no_filter", "oracle"]
    truth = pq.read_table(v3.truth_path).to_pydict()
    assert table["rows"][1]["distinct"] == int(np.sum(np.asarray(truth["digit"]) == np.asarray(truth["caption_digit"])))
    assert set(table["rows"][0]["true_split"]) <= {"digits/correct", "digits/near_duplicate", "digits/wrong",
                                                   "clutter/clutter"}
    res = CliRunner().invoke(main, ["benchmark", "--quick", "--pool-dir", str(v3.root), "--rows", "task_oracle"])
    assert res.exit_code == 2 and "rows of a v3 demo pool" in res.output
    res = CliRunner().invoke(main, ["benchmark", "--quick", "--pool-dir", str(tiny_demo_pool.root),
                                    "--cache-dir", str(tmp_path / "c"), "--rows", "oracle"])
    assert res.exit_code == 2 and "task_oracle, alignment_oracle" in res.output
    # each version is benchmarked with its own recipe; v3's is unchanged (its cached results stay valid)
    assert pool_recipe("v3") == "v3" and pool_recipe("v4") == "default"
    assert get_recipe("v3").hash() == Recipe("v3").hash()


@pytest.mark.slow
def test_oracle_far_above_random_on_the_default_pool(tmp_path):
    """`benchmark --subset` ranks the task oracle (the correctly captioned digits) far above a random
    subset of the same size (default demo pool, default recipe, 2 seeds)."""
    from flyt_datacomp.demo import build_demo_pool

    pool = build_demo_pool(tmp_path / "pools", progress=False)
    oracle, random = _oracle_and_random(pool, tmp_path)
    res = CliRunner().invoke(main, ["benchmark", "--quiet", "--seeds", "2", "--subset", str(oracle),
                                    "--subset", str(random), "--json", str(tmp_path / "r.json"),
                                    "--pool-dir", str(pool.root)])
    assert res.exit_code == 0, res.output
    a, b = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert a["mean"] - b["mean"] > 0.15 and a["mean"] - a["std"] > b["mean"] + b["std"], (a, b)


def test_the_demo_and_the_table_sample_alike(tiny_demo_pool, monkeypatch, tmp_path):
    """One set of demo SCS settings: `filter --demo` samples as every SCS row of the table does."""
    import json

    from click.testing import CliRunner

    import flyt_datacomp.demo as demo_module
    from flyt_datacomp.benchmark.recipe import get_recipe, pool_recipe
    from flyt_datacomp.benchmark.table import TableSettings
    from flyt_datacomp.cli.filter import filter_command
    from flyt_datacomp.demo import DEMO_SCS_ALPHA, DEMO_SCS_NUM_SAMPLES, demo_scs_num_samples

    for version in ("v4", "v3"):
        recipe = get_recipe(pool_recipe(version))
        table = TableSettings().resolved(20_000, recipe.samples_seen)
        assert (table["scs_alpha"], table["scs_batch"], table["num_samples"]) == (
            DEMO_SCS_ALPHA, 200, demo_scs_num_samples(version))
    assert DEMO_SCS_NUM_SAMPLES == demo_scs_num_samples("v4")
    monkeypatch.setattr(demo_module, "build_demo_pool", lambda **kw: tiny_demo_pool)
    out = tmp_path / "d.npy"
    r = CliRunner().invoke(filter_command, ["--demo", "--score", "clip_b32_similarity_score", "--standardize",
                                            "--temperature", "0.1", "--output", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    side = json.loads(out.with_name("d.npy.json").read_text())
    assert side["sampler_params"] == {"alpha": DEMO_SCS_ALPHA, "group_size": tiny_demo_pool.pool_size // 100,
                                      "num_samples": DEMO_SCS_NUM_SAMPLES}
    assert "example type" in r.output and "demo: the digits pool (v4: digits, the task, among" in r.output
    assert "digits, correct caption: the task" in r.output and "well aligned, not the task" in r.output


def test_demo_version_selects_the_pool_each_command_builds(tiny_demo_pool, monkeypatch, tmp_path):
    """`--demo-version` reaches the pool build of `filter --demo`, `benchmark` and `train --preset
    m-flyt-demo`, and is refused where no demo pool is built."""
    import flyt_datacomp.demo as demo_module

    asked = []

    def fake_build(**kw):
        asked.append(kw.get("version"))
        raise FlytInputError("stop here")

    monkeypatch.setattr(demo_module, "build_demo_pool", fake_build)
    runner = CliRunner()
    for args in (["filter", "--demo", "--demo-version", "v3", "--quiet"],
                 ["benchmark", "--demo-version", "v3", "--quiet"],
                 ["train", "--preset", "m-flyt-demo", "--demo-version", "v3", "--output-dir", str(tmp_path / "r")],
                 ["filter", "--demo", "--quiet"]):
        res = runner.invoke(main, args)
        assert res.exit_code == 2 and "stop here" in res.output, (args, res.output)
    assert asked == ["v3", "v3", "v3", None]
    refused = {
        "--demo-version applies with --demo": ["filter", "--demo-version", "v3", "--score", "uid",
                                               "--metadata-dir", str(tiny_demo_pool.metadata_dir),
                                               "--output", str(tmp_path / "s.npy")],
        "--pool-dir or --demo-version": ["benchmark", "--pool-dir", str(tiny_demo_pool.root), "--demo-version", "v4"],
        "--demo-version applies with a demo preset": ["train", "--preset", "m-flyt-base", "--demo-version", "v4",
                                                      "--output-dir", str(tmp_path / "r")],
    }
    for message, args in refused.items():
        res = runner.invoke(main, args)
        assert res.exit_code == 2 and message in res.output, (args, res.output)
    assert asked == ["v3", "v3", "v3", None]
    assert not (tmp_path / "s.npy").exists() and not (tmp_path / "r").exists()
    res = runner.invoke(main, ["filter", "--demo", "--demo-version", "v5"])
    assert res.exit_code == 2 and "v5" in res.output


def test_outputs_and_seeds_are_checked_before_any_training(tiny_demo_pool, tmp_path, monkeypatch):
    """--output a folder, a --cache-dir or --output-dir that cannot be made, an absurd --num-seeds: one
    line, exit 2, before any run trains."""
    import flyt_datacomp.benchmark.evaluate as ev

    monkeypatch.setattr(ev, "train_and_evaluate", lambda *a, **k: pytest.fail("a run was trained"))
    oracle, _ = _oracle_and_random(tiny_demo_pool, tmp_path)
    (tmp_path / "a-file").write_text("keep")
    (tmp_path / "a-folder").mkdir()
    base = ["benchmark", "--quick", "--quiet", "--pool-dir", str(tiny_demo_pool.root), "--jobs", "1"]
    cases = [
        (["--subset", str(oracle), "--output", str(tmp_path / "a-folder"), "--cache-dir", str(tmp_path / "c")],
         "--output", "is a folder"),
        (["--subset", str(oracle), "--cache-dir", str(tmp_path / "a-file" / "cache")], "--cache-dir", "cannot create"),
        (["--cache-dir", str(tmp_path / "c"), "--output-dir", str(tmp_path / "a-file" / "table")], "--output-dir",
         "cannot create"),
        (["--subset", str(oracle), "--num-seeds", str(10**20)], "--num-seeds", "not in the range"),
    ]
    for extra, flag, why in cases:
        res = CliRunner().invoke(main, [*base, *extra])
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit), (extra, res.output, res.exception)
        errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and flag in errors[0] and why in errors[0], res.output
    assert (tmp_path / "a-file").read_text() == "keep" and not any((tmp_path / "a-folder").iterdir())
    assert not (tmp_path / "c").exists()  # nothing created by a refused run


def test_one_seed_shows_no_spread():
    """With --num-seeds 1 a spread of "± 0.0" would claim what one run cannot show."""
    from flyt_datacomp.benchmark.evaluate import format_markdown, spread

    assert spread([0.5]) is None and spread([0.5, 0.7]) == pytest.approx(np.std([0.5, 0.7], ddof=1))
    row = {"name": "oracle", "mean": 0.723, "std": spread([0.723]), "seeds": [0.723], "distinct_with_image": 5,
           "entries_with_image": 6}
    line = format_markdown([row]).splitlines()[-1]
    assert "72.3 (one seed)" in line and "±" not in line
    two = {**row, "mean": 0.7, "std": spread([0.6, 0.8]), "seeds": [0.6, 0.8]}
    assert "70.0 ± 14.1" in format_markdown([two])


def test_the_progress_bar_of_parallel_runs_counts_their_steps(tiny_demo_pool, tmp_path, monkeypatch):
    """Runs in worker processes report their steps as they go: the bar moves while they train
    (in steps, all runs together), not only when a whole run has finished."""
    import threading

    import flyt_datacomp.benchmark.evaluate as ev
    import flyt_datacomp.progress as progress_module
    from flyt_datacomp.benchmark.recipe import get_recipe

    class Bar:
        def __init__(self, **kw):
            self.total, self.unit, self.n, self.updates = kw["total"], kw.get("unit"), 0, []

        def update(self, n=1):
            self.n += n
            self.updates.append(n)

        def set_postfix_str(self, text):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    bars = []
    monkeypatch.setattr(progress_module, "progress_bar", lambda **kw: bars.append(Bar(**kw)) or bars[-1])
    started = threading.Event()

    def fake_training(data, index, recipe, seed, progress=False, on_steps=None):  # a run reporting as it trains
        for _ in range(recipe.steps // 10):
            on_steps(10)
        assert started.wait(5)  # the parent's bar has moved while this run is still training
        return {"accuracy": 0.5, "steps": recipe.steps, "final_loss": 1.0, "loss_curve": [1.0], "seconds": 0.0,
                "data_seconds": 0.0, "model_seconds": 0.0, "eval_seconds": 0.0}

    def in_process(fn, items, workers, *, ordered, what, initializer, initargs):  # the pool, in this process
        initializer(*initargs)
        for i, item in enumerate(items):
            yield i, fn(item)

    monkeypatch.setattr(ev, "train_and_evaluate", fake_training)
    monkeypatch.setattr(ev, "process_map", in_process)
    real_count = ev._count_steps

    def counting(steps, bar):
        threading.Thread(target=lambda: (_wait_for(lambda: bar.n > 0), started.set()), daemon=True).start()
        real_count(steps, bar)

    monkeypatch.setattr(ev, "_count_steps", counting)
    recipe = get_recipe("quick")
    bench = ev.Benchmark(tiny_demo_pool, recipe, tmp_path / "cache", progress=True, jobs=2)
    oracle, random = _oracle_and_random(tiny_demo_pool, tmp_path)
    bench.evaluate_many([(oracle, None), (random, None)], [0])
    (bar,) = [b for b in bars if b.unit == "step"]
    assert bar.total == 2 * recipe.steps and bar.n == 2 * (recipe.steps // 10) * 10 and len(bar.updates) >= 2


def _wait_for(condition, seconds=5.0):
    import time

    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_run_can_be_observed_as_it_trains_without_changing_it(tiny_demo_pool, tmp_path):
    """``observe`` sees the model after the asked step counts, in evaluation mode and without a graph,
    and the run's result is bit for bit the one without it."""
    import flyt_datacomp.benchmark.evaluate as ev

    recipe = get_recipe("quick")
    bench = ev.Benchmark(tiny_demo_pool, recipe, tmp_path / "cache", progress=False, jobs=1)
    oracle, _ = _oracle_and_random(tiny_demo_pool, tmp_path)
    index = subset_index(oracle, bench.images, bench.pool_uids).index
    seen = []

    def observe(n, model):
        seen.append((n, model.training, torch.is_grad_enabled(), float(model.logit_scale)))
        side = model.visual.image_size
        model.encode_image(torch.zeros(2, 3, side, side), normalize=True)  # a look, which must not train it

    plain = train_and_evaluate(bench.data, index, recipe, 0, progress=False)
    watched = train_and_evaluate(bench.data, index, recipe, 0, progress=False, observe=observe,
                                 observe_at={1, 3, recipe.steps, recipe.steps + 5})
    assert [s[:3] for s in seen] == [(1, False, False), (3, False, False), (recipe.steps, False, False)]
    assert len({s[3] for s in seen}) == 3  # the model it sees is the one training
    assert watched["accuracy"] == plain["accuracy"] and watched["loss_curve"] == plain["loss_curve"]
