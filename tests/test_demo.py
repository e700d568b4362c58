"""The built-in demo pool: layout, formats, domains, ground truth, determinism, caching, reports,
and the previous version (v3) still built as its own code built it."""

from __future__ import annotations

import io
import json
import re
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flyt_datacomp.demo import build_demo_pool, domain_breakdown, format_domain_breakdown, type_breakdown

N = 600
KW = dict(seed=3, pool_size=N, num_metadata_shards=2, shard_size=200, scorer_steps=3, progress=False)
HEX32 = re.compile(r"^[0-9a-f]{32}$")
V4_TRUTH_COLUMNS = ["uid", "domain", "type", "label", "caption_domain", "caption_label", "digit", "caption_digit",
                    "scan_index", "source_uid", "downloaded"]
V3_TRUTH_COLUMNS = ["uid", "type", "digit", "caption_digit", "scan_index", "source_uid", "downloaded"]
# The platform-independent content (truth.parquet's values, the metadata's uid/url/text columns, the
# metadata file names, splits.json) of the tiny v3 build below, as the v3 code (before v4 existed)
# built it; see _v3_digest. The build's every file was also byte-identical to the v3 code's on the
# machine that recorded this.
V3_DIGEST = "c2d4505d8f937f346cf6f4f5a43f199f1de71778e38c8b7845a28d2f357f4124"


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return build_demo_pool(tmp_path_factory.mktemp("cache_a"), **KW)


@pytest.fixture(scope="module")
def pool_b(tmp_path_factory):
    return build_demo_pool(tmp_path_factory.mktemp("cache_b"), **KW)


@pytest.fixture(scope="module")
def pool_v3(tmp_path_factory):
    return build_demo_pool(tmp_path_factory.mktemp("cache_v3"), version="v3", **KW)


def _metadata(pool):
    files = sorted(pool.metadata_dir.glob("*.parquet"))
    return files, pa.concat_tables([pq.read_table(f) for f in files])


def _tar_members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _shard_samples(pool):
    """{uid: (key, json dict, jpg bytes, txt)} over all image shards."""
    out = {}
    for tar_path in sorted(pool.shards_dir.glob("*.tar")):
        members = _tar_members(tar_path)
        keys = sorted({name.split(".", 1)[0] for name in members})
        for key in keys:
            meta = json.loads(members[f"{key}.json"])
            out[meta["uid"]] = (key, meta, members[f"{key}.jpg"], members[f"{key}.txt"].decode())
    return out


def _truth(pool):
    return pq.read_table(pool.truth_path).to_pydict()


def test_layout(pool):
    root = pool.root
    assert root.name.startswith("demo-v4-seed3-n600") and pool.version == "v4"
    assert pool.pool_size == N
    assert (root / "build.json").exists()
    build = json.loads((root / "build.json").read_text())
    assert build["parameters"]["pool_size"] == N and build["package"] == "flyt-datacomp"
    assert build["version_tag"] == "demo-v4"
    assert sorted(p.name for p in (root / "scorers").iterdir()) == ["b32.pt", "l14.pt"]
    stems = sorted(p.stem for p in pool.metadata_dir.iterdir())
    assert len(stems) == 4 and stems[0::2] == stems[1::2]  # parquet + npz pairs
    assert {p.suffix for p in pool.metadata_dir.iterdir()} == {".parquet", ".npz"}
    assert all(HEX32.match(s) for s in stems)
    names = sorted(p.name for p in pool.shards_dir.iterdir())
    assert names == sorted(f"{i:08d}{ext}" for i in range(3) for ext in (".tar", ".parquet", "_stats.json"))
    classes = json.loads(pool.classes_path.read_text())
    assert classes["classnames"][0] == "zero" and classes["classnames"][9] == "nine"
    assert len(classes["classnames"]) == 10 and all("{}" in t for t in classes["templates"])
    assert not list(root.parent.glob(".*tmp"))  # no temporary build folder left behind


def test_metadata_columns_and_uids(pool):
    files, table = _metadata(pool)
    schema = table.schema
    assert schema.field("uid").type == pa.string()
    for col in ("url", "text", "sha256"):
        assert schema.field(col).type == pa.string()
    for col in ("original_width", "original_height"):
        assert schema.field(col).type == pa.int64()
    for col in ("clip_b32_similarity_score", "clip_l14_similarity_score", "noise_score"):
        assert pa.types.is_floating(schema.field(col).type)
    assert schema.field("face_bboxes").type == pa.list_(pa.list_(pa.float64()))
    assert all(len(b) == 0 for b in table["face_bboxes"].to_pylist())
    uids = table["uid"].to_pylist()
    assert len(uids) == N and len(set(uids)) == N
    assert all(HEX32.match(u) for u in uids)
    scores = table["clip_b32_similarity_score"].to_numpy()
    assert np.all(np.abs(scores) <= 1.0 + 1e-6) and np.std(scores) > 0


def test_npz_aligned_and_normalised(pool):
    files, _ = _metadata(pool)
    for f in files:
        rows = pq.read_metadata(f).num_rows
        t = pq.read_table(f, columns=["uid", "clip_b32_similarity_score", "clip_l14_similarity_score"])
        with np.load(f.with_suffix(".npz")) as npz:
            assert set(npz.files) == {"b32_img", "b32_txt", "l14_img", "l14_txt", "dedup"}
            for key in ("b32_img", "b32_txt", "l14_img", "l14_txt"):
                arr = npz[key]
                assert arr.dtype == np.float16 and arr.shape[0] == rows
                assert np.allclose(np.linalg.norm(arr.astype(np.float32), axis=1), 1.0, atol=3e-3)
            assert npz["b32_img"].shape[1] < npz["l14_img"].shape[1]  # two different model sizes
            assert npz["dedup"].shape == (rows,)
            # DataComp's score is the cosine of the stored embeddings
            for name in ("b32", "l14"):
                cos = (npz[f"{name}_img"].astype(np.float32) * npz[f"{name}_txt"].astype(np.float32)).sum(1)
                assert np.allclose(cos, t[f"clip_{name}_similarity_score"].to_numpy(), atol=5e-3)


def test_image_shards(pool):
    _, table = _metadata(pool)
    meta = {u: (txt, sha) for u, txt, sha in zip(table["uid"].to_pylist(), table["text"].to_pylist(),
                                                  table["sha256"].to_pylist())}
    samples = _shard_samples(pool)
    for uid, (key, js, jpg, txt) in samples.items():
        assert re.fullmatch(r"\d{9}", key) and key != uid and js["key"] == key
        assert js["status"] == "success" and js["caption"] == txt == meta[uid][0]
        assert js["sha256"] == meta[uid][1]
        assert js["width"] == js["height"] == 32 and js["url"].startswith("https://")
        img = Image.open(io.BytesIO(jpg))
        assert img.format == "JPEG" and img.size == (32, 32) and img.mode == "RGB"
    # ~10% of the pool "failed to download": present in metadata, absent from the shards
    assert set(samples) <= set(meta)
    missing = 1 - len(samples) / N
    assert 0.05 < missing < 0.16
    for stats_path in sorted(pool.shards_dir.glob("*_stats.json")):
        stats = json.loads(stats_path.read_text())
        idx = int(stats_path.name[:8])
        members = _tar_members(pool.shards_dir / f"{idx:08d}.tar")
        n_jpg = sum(name.endswith(".jpg") for name in members)
        assert stats["successes"] == n_jpg
        shard_table = pq.read_table(pool.shards_dir / f"{idx:08d}.parquet").to_pydict()
        assert stats["count"] == len(shard_table["uid"]) == 200
        assert sum(s == "success" for s in shard_table["status"]) == n_jpg
        # positional keys: shard index * shard size + position
        assert shard_table["key"][0] == f"{idx * 200:09d}"


def test_v4_domains_mix_and_truth(pool):
    from flyt_datacomp.demo.domains import DEFAULT_MIX, DOMAINS, label_names

    truth = _truth(pool)
    _, table = _metadata(pool)
    assert pq.read_schema(pool.truth_path).names == V4_TRUTH_COLUMNS
    assert sorted(truth["uid"]) == sorted(table["uid"].to_pylist())
    domain, types = np.array(truth["domain"]), np.array(truth["type"])
    assert set(domain) == {*DOMAINS, "clutter"}
    for (d, t), frac in DEFAULT_MIX.items():
        if t != "near_duplicate":
            assert abs(np.mean((domain == d) & (types == t)) - frac) < 0.005, (d, t)
    assert abs(np.mean(types == "near_duplicate") - DEFAULT_MIX[("any", "near_duplicate")]) < 0.005
    # most of the correctly captioned examples are not digits: alignment and the task differ
    correct = np.isin(types, ["correct", "near_duplicate"])
    assert 0.25 < np.mean(domain[correct] == "digits") < 0.4
    cap_domain, label, cap_label = np.array(truth["caption_domain"]), truth["label"], truth["caption_label"]
    for i in range(N):
        d, t = domain[i], types[i]
        if t in ("correct", "near_duplicate"):
            assert cap_domain[i] == d and cap_label[i] == label[i] is not None
        elif t == "wrong":
            assert cap_domain[i] == d and cap_label[i] != label[i] and label[i] is not None
        else:
            assert d == "clutter" and label[i] is None and cap_domain[i] in DOMAINS
        if d in DOMAINS:
            assert label[i] in label_names(d)
        assert cap_label[i] in label_names(cap_domain[i])
    # the digit columns: the digit shown / named, -1 where none is
    digit, cap_digit = np.array(truth["digit"]), np.array(truth["caption_digit"])
    assert np.all((digit >= 0) == (domain == "digits")) and np.all((cap_digit >= 0) == (cap_domain == "digits"))
    assert np.all((np.array(truth["scan_index"]) >= 0) == (domain == "digits"))
    # every caption names what truth says it names
    text = dict(zip(table["uid"].to_pylist(), table["text"].to_pylist()))
    for u, d, name in zip(truth["uid"], cap_domain, cap_label):
        words = text[u].rstrip(".").split()
        if d == "digits":
            assert name in words or str(label_names("digits").index(name)) in words
        else:
            assert " ".join(words).find(name) >= 0 and (d != "letters" or name in words)
    # near-duplicates copy an earlier correct example of the same domain
    pos = {u: i for i, u in enumerate(truth["uid"])}
    for i, (t, src) in enumerate(zip(types, truth["source_uid"])):
        if t == "near_duplicate":
            j = pos[src]
            assert types[j] == "correct" and j < i and domain[j] == domain[i] and label[j] == label[i]
        else:
            assert src is None
    files, _ = _metadata(pool)
    dedup = np.concatenate([np.load(f.with_suffix(".npz"))["dedup"] for f in files])
    assert dedup.shape == (N,) and not dedup.any()


def test_v4_images_of_each_domain(pool):
    """Every domain's images are real pictures (not blank), 32x32 grey, and differ within a domain."""
    truth = _truth(pool)
    samples = _shard_samples(pool)
    by_domain: dict[str, list[np.ndarray]] = {}
    for u, d in zip(truth["uid"], truth["domain"]):
        if u in samples:
            by_domain.setdefault(d, []).append(np.asarray(Image.open(io.BytesIO(samples[u][2])).convert("L")))
    for d, images in by_domain.items():
        stack = np.stack(images[:20]).astype(np.float32)
        assert stack.shape[1:] == (32, 32)
        assert (stack.reshape(len(stack), -1).max(1) > 100).all(), d  # something bright on every canvas
        assert np.std(stack, axis=0).mean() > 10, d


def test_v3_type_mix_and_truth(pool_v3):
    pool = pool_v3
    assert pool.version == "v3" and pool.root.name.startswith("demo-v3-seed3-n600")
    assert pq.read_schema(pool.truth_path).names == V3_TRUTH_COLUMNS
    truth = _truth(pool)
    _, table = _metadata(pool)
    assert sorted(truth["uid"]) == sorted(table["uid"].to_pylist())
    types = np.array(truth["type"])
    expected = {"correct": 0.4, "wrong": 0.3, "clutter": 0.2, "near_duplicate": 0.1}
    for t, frac in expected.items():
        assert abs(np.mean(types == t) - frac) < 0.02, t
    digit, cap = np.array(truth["digit"]), np.array(truth["caption_digit"])
    assert np.all(digit[types == "correct"] == cap[types == "correct"])
    assert np.all(digit[types == "near_duplicate"] == cap[types == "near_duplicate"])
    assert np.all(digit[types == "wrong"] != cap[types == "wrong"])
    assert np.all(digit[types == "clutter"] == -1)
    assert np.all((cap >= 0) & (cap <= 9)) and np.all(digit[types != "clutter"] >= 0)
    # captions name the caption digit
    from flyt_datacomp.demo.digits import DIGIT_WORDS

    text = dict(zip(table["uid"].to_pylist(), table["text"].to_pylist()))
    for u, c in zip(truth["uid"], cap):
        assert DIGIT_WORDS[c] in text[u] or str(c) in text[u]
    # near-duplicates copy an earlier correct example (pool order = truth order = shard keys)
    pos = {u: i for i, u in enumerate(truth["uid"])}
    type_of = dict(zip(truth["uid"], truth["type"]))
    for u, t, src in zip(truth["uid"], truth["type"], truth["source_uid"]):
        if t == "near_duplicate":
            assert type_of[src] == "correct" and pos[src] < pos[u]
        else:
            assert src is None
    # DataComp's dedup flags pool images that duplicate an evaluation image; the demo's test
    # digits are disjoint from the pool's, so it is all False (the pool's own near-duplicates are
    # ground truth, in truth.parquet alone)
    files, _ = _metadata(pool)
    dedup = np.concatenate([np.load(f.with_suffix(".npz"))["dedup"] for f in files])
    assert dedup.shape == (N,) and not dedup.any()


@pytest.mark.parametrize("version", ["v4", "v3"])
def test_splits_disjoint_and_downstream(pool, pool_v3, version):
    from sklearn.datasets import load_digits

    pool = pool if version == "v4" else pool_v3
    splits = json.loads((pool.root / "splits.json").read_text())
    a, b, c = (set(splits[k]) for k in ("pool_source", "downstream_train", "test"))
    assert not (a & b) and not (a & c) and not (b & c)
    assert (len(a), len(b), len(c)) == (898, 449, 450)
    assert a | b | c == set(range(1797))
    truth = _truth(pool)
    scans = {s for s in truth["scan_index"] if s >= 0}
    assert scans <= a  # the pool only uses pool-source scans
    targets = load_digits().target
    for folder, key in ((pool.downstream_dir, "downstream_train"), (pool.downstream_test_dir, "test")):
        labels = []
        for tar_path in sorted(folder.glob("*.tar")):
            members = _tar_members(tar_path)
            keys = sorted({n.split(".", 1)[0] for n in members})
            assert set(members) == {f"{k}.{e}" for k in keys for e in ("jpg", "cls")}
            assert len(keys) <= 100
            for k in keys:
                labels.append(int(members[f"{k}.cls"].decode()))
                assert Image.open(io.BytesIO(members[f"{k}.jpg"])).size == (32, 32)
        assert labels == targets[splits[key]].tolist()
        assert set(labels) == set(range(10))


def test_deterministic(pool, pool_b):
    files_a, table_a = _metadata(pool)
    files_b, table_b = _metadata(pool_b)
    assert [f.name for f in files_a] == [f.name for f in files_b]
    assert table_a.equals(table_b)
    for fa, fb in zip(files_a, files_b):
        assert fa.read_bytes() == fb.read_bytes()
        with np.load(fa.with_suffix(".npz")) as za, np.load(fb.with_suffix(".npz")) as zb:
            for key in za.files:
                assert np.array_equal(za[key], zb[key]), key
    for rel in ("truth.parquet", "shards/00000000.tar", "downstream/00000000.tar"):
        assert (pool.root / rel).read_bytes() == (pool_b.root / rel).read_bytes(), rel


def _v3_digest(pool) -> str:
    import hashlib

    truth = pq.read_table(pool.truth_path).to_pydict()
    meta = pa.concat_tables([pq.read_table(f, columns=["uid", "url", "text"])
                             for f in sorted(pool.metadata_dir.glob("*.parquet"))]).to_pydict()
    blob = json.dumps({"truth": truth, "meta": meta, "files": sorted(p.name for p in pool.metadata_dir.iterdir()),
                       "splits": json.loads((pool.root / "splits.json").read_text())}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def test_v3_is_still_built_as_the_v3_code_built_it(pool_v3, pool):
    assert _v3_digest(pool_v3) == V3_DIGEST
    assert _v3_digest(pool) != V3_DIGEST
    # v4 draws from its own streams: no uid of one version is in the other
    assert not set(_truth(pool)["uid"]) & set(_truth(pool_v3)["uid"])


def test_version_is_recorded_and_read_back(pool, pool_v3, tmp_path):
    from flyt_datacomp.demo import DemoPool
    from flyt_datacomp.errors import FlytInputError

    assert DemoPool.open(pool.root) == pool and DemoPool.open(pool.root).version == "v4"
    assert DemoPool.open(pool_v3.root) == pool_v3 and pool_v3.version == "v3"
    # a pool built before versions were read back: its build.json names v3
    assert json.loads((pool_v3.root / "build.json").read_text())["version_tag"] == "demo-v3"
    marker = tmp_path / "build.json"
    marker.write_text(json.dumps({"parameters": {"pool_size": 5}, "version_tag": "demo-v9"}))
    with pytest.raises(FlytInputError, match="v9"):
        DemoPool.open(tmp_path)
    with pytest.raises(FlytInputError, match="`version`"):
        build_demo_pool(tmp_path, version="v9", **KW)


def test_a_build_killed_midway_leaves_nothing_a_later_build_keeps(tmp_path):
    """kill -9 during a build: no pool appears, and the next build removes the dead build's folder
    (but never the folder of a build still running) and completes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from flyt_datacomp.demo.build import pool_dir_name
    from flyt_datacomp.io import temp_folder

    cache = tmp_path / "cache"
    code = (f"from flyt_datacomp.demo import build_demo_pool; build_demo_pool({str(cache)!r}, seed=3, pool_size={N}, "
            "num_metadata_shards=2, shard_size=200, scorer_steps=3, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    while not list(cache.glob(".*.flyt-tmp/*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = list(cache.glob(".*.flyt-tmp"))
    assert len(left) == 1 and not [p for p in cache.iterdir() if not p.name.startswith(".")]
    params = {"seed": 3, "pool_size": N, "num_metadata_shards": 2, "shard_size": 200, "scorer_steps": [3, 3]}
    running = temp_folder(cache / pool_dir_name(3, N, params))  # as if another build (this process) were at work
    pool = build_demo_pool(cache, **KW)
    assert running.name.startswith(f".{pool.root.name}.") and left[0].name.startswith(f".{pool.root.name}.")
    assert (pool.root / "build.json").is_file() and not left[0].exists() and running.is_dir()


def test_cache_reuse_and_other_seed(pool, tmp_path, monkeypatch):
    import flyt_datacomp.demo.build as build_mod

    stamp = (pool.root / "build.json").stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(build_mod, "_build", lambda *a, **k: calls.append(a))
    again = build_demo_pool(pool.root.parent, **KW)
    assert again == pool and calls == []
    assert (pool.root / "build.json").stat().st_mtime_ns == stamp
    # default cache folder comes from the environment
    monkeypatch.setenv("FLYT_DATACOMP_CACHE", str(pool.root.parent))
    assert build_demo_pool(**KW) == pool and calls == []


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    import flyt_datacomp.demo.build as build_mod

    def boom(root, params, progress):
        (root / "metadata").mkdir()
        raise RuntimeError("boom")

    monkeypatch.setattr(build_mod, "_build", boom)
    with pytest.raises(RuntimeError):
        build_demo_pool(tmp_path, **KW)
    assert list(tmp_path.iterdir()) == []


def test_type_breakdown(pool):
    truth = _truth(pool)
    uids = [u for u, t in zip(truth["uid"], truth["type"]) if t in ("correct", "wrong")][:50]
    rep = type_breakdown(pool.truth_path, uids)
    assert rep["n_selected"] == 50 and rep["n_pool"] == N
    assert rep["selected"]["clutter"] == 0 and rep["selected"]["near_duplicate"] == 0
    assert abs(sum(rep["selected"].values()) - 1) < 1e-9
    assert abs(rep["pool"]["correct"] - 0.62) < 0.01
    # weights, and a subset file (u8,u8) as input
    clutter = [u for u, t in zip(truth["uid"], truth["type"]) if t == "clutter"][:1]
    rep = type_breakdown(pool.truth_path, uids[:1] + clutter, counts=[1, 3])
    assert rep["selected"]["clutter"] == pytest.approx(0.75)
    arr = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in clutter * 2], dtype=np.dtype("u8,u8"))
    assert type_breakdown(pool.truth_path, arr)["selected"]["clutter"] == 1.0
    from flyt_datacomp.errors import FlytInputError

    with pytest.raises(FlytInputError):
        type_breakdown(pool.truth_path, ["0" * 32])


def test_domain_breakdown(pool, pool_v3):
    truth = _truth(pool)
    pick = {("digits", "correct"): 10, ("letters", "correct"): 20, ("textures", "wrong"): 5, ("clutter", "clutter"): 5}
    uids = []
    for (d, t), k in pick.items():
        uids += [u for u, dd, tt in zip(truth["uid"], truth["domain"], truth["type"]) if (dd, tt) == (d, t)][:k]
    rep = domain_breakdown(pool.truth_path, uids, counts=[2] * 10 + [1] * 30)
    assert rep["n_selected"] == 50 and rep["n_unique"] == 40 and rep["n_pool"] == N
    assert rep["selected"]["digits/correct"] == pytest.approx(0.4)
    assert rep["selected"]["letters/correct"] == pytest.approx(0.4)
    assert rep["selected"]["other/wrong"] == pytest.approx(0.1)
    assert rep["selected"]["clutter/clutter"] == pytest.approx(0.1)
    assert rep["selected"]["shapes/correct"] == 0
    assert abs(sum(rep["pool"].values()) - 1) < 1e-9 and abs(rep["pool"]["digits/correct"] - 0.2) < 0.005
    text = format_domain_breakdown(rep)
    for line in ("digits, correct caption: the task", "letters, correct caption: well aligned, not the task",
                 "digits, wrong caption: noise", "letters/shapes/textures, wrong caption: noise",
                 "clutter (no object, a random caption): noise"):
        assert line in text
    task_line = text.splitlines()[-1]
    assert task_line.startswith("the task") and "40.0%" in task_line
    # a v3 pool (no domain column): only digits and clutter
    truth3 = _truth(pool_v3)
    rep = domain_breakdown(pool_v3.truth_path, truth3["uid"][:100])
    assert set(rep["pool"]) == {"digits/correct", "digits/near_duplicate", "digits/wrong", "clutter/clutter"}
    assert "letters" not in format_domain_breakdown(rep)


@pytest.mark.slow
def test_default_pool_scores_measure_alignment_not_the_task(tmp_path):
    """The default (v4) pool's CLIP scores tell correct captions from wrong ones in every domain, but
    rank the task's examples (correctly captioned digits) no better than chance against the rest."""
    from sklearn.metrics import roc_auc_score

    pool = build_demo_pool(tmp_path, progress=False)
    _, table = _metadata(pool)
    truth = _truth(pool)
    row = {u: i for i, u in enumerate(truth["uid"])}
    order = np.array([row[u] for u in table["uid"].to_pylist()])
    types, domain = np.array(truth["type"])[order], np.array(truth["domain"])[order]
    correct = np.isin(types, ["correct", "near_duplicate"])
    for c in ("clip_b32_similarity_score", "clip_l14_similarity_score"):
        score = table[c].to_numpy()
        for d in ("digits", "letters", "shapes", "textures"):
            m = domain == d
            assert roc_auc_score(correct[m], score[m]) > 0.75, (c, d)
        assert roc_auc_score(correct, score) > 0.9, c
        assert roc_auc_score(correct & (domain == "digits"), score) < 0.6, c
    assert abs(roc_auc_score(correct, table["noise_score"].to_numpy()) - 0.5) < 0.03


def test_a_warm_demo_says_it_reuses_its_model(tiny_demo_pool, monkeypatch, tmp_path):
    """`filter --demo` announces training M-FLYT only when it trains; a warm run says it reuses the model."""
    import shutil

    import torch
    from click.testing import CliRunner

    import flyt_datacomp.demo as demo_module
    from flyt_datacomp.cli import main
    from flyt_datacomp.demo.pool import DemoPool, TrainedModel
    from flyt_datacomp.flyt.models import MixingModel, save_scoring_model
    from flyt_datacomp.flyt.trainer import SCORING_MODEL_FILE
    from flyt_datacomp.pool import Pool

    pool = DemoPool.open(shutil.copytree(tiny_demo_pool.root, tmp_path / "pool"))
    monkeypatch.setattr(demo_module, "build_demo_pool", lambda **kw: pool)
    trained = []

    def fake_train(self, preset, *, overrides=None, runs_dir=None, threads=None, progress=True):
        run_dir = self._run_dir(preset, self.train_config(preset, overrides, progress=False), runs_dir)
        names = ["clip_b32_similarity_score", "clip_l14_similarity_score", "noise_score"]
        if not (run_dir / SCORING_MODEL_FILE).is_file():
            trained.append(preset)
            p = Pool(str(self.metadata_dir), progress=False)
            x = np.stack([p.column(n).astype(np.float64) for n in names], 1)
            run_dir.mkdir(parents=True)
            model = MixingModel(names, x.mean(0), x.std(0))
            model.weight.data[:] = torch.tensor([1.0, 1.0, 0.0])
            save_scoring_model(run_dir / SCORING_MODEL_FILE, model)
        return TrainedModel(str(run_dir / SCORING_MODEL_FILE), run_dir, {n: 1.0 for n in names})

    monkeypatch.setattr(DemoPool, "train", fake_train)
    first = CliRunner().invoke(main, ["filter", "--demo", "--quiet"])
    assert first.exit_code == 0, first.output
    assert "demo: training M-FLYT" in first.output and "reusing" not in first.output and trained == ["m-flyt-demo"]
    warm = CliRunner().invoke(main, ["filter", "--demo", "--quiet"])
    assert warm.exit_code == 0, warm.output
    assert "training M-FLYT" not in warm.output and "demo: reusing the M-FLYT model" in warm.output
    assert trained == ["m-flyt-demo"]
