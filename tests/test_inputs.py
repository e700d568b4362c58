"""The input-score store: providers against independent computations, resume, executors, store reads."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from poolgen import write_metadata
from scipy.special import expit, logsumexp

from flyt_datacomp.cli import main as cli
from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.inputs import compute_inputs
from flyt_datacomp.inputs.providers import classifier as classifier_module
from flyt_datacomp.inputs.providers.base import parse_spec
from flyt_datacomp.inputs.providers.neg_clip_loss import (
    _normaliser_numpy,
    _torch_normaliser,
    batch_plan,
    neg_clip_loss,
)
from flyt_datacomp.inputs.providers.normsim import _normsim_torch, normsim
from flyt_datacomp.pool import Pool
from flyt_datacomp.store import InputStore
from flyt_datacomp.uids import uids_to_hex


@pytest.fixture
def pool_dir(tmp_path):
    root, hexes = write_metadata(tmp_path / "metadata", sizes=(60, 50, 90))
    return root


def pool_arrays(root, key):
    pool = Pool(str(root), progress=False)
    return pool, pool.embeddings(key).astype(np.float32)


def store_column(store_dir, name):
    """Read a stored input straight from the shard files, in the manifest's shard order."""
    manifest = json.loads((Path(store_dir) / "inputs.json").read_text())
    return np.concatenate([pq.read_table(Path(store_dir) / f"{s['stem']}.parquet").column(name).to_numpy()
                           for s in manifest["shards"]])


# ------------------------------------------------------------------ specs


def test_spec_parsing():
    name, p = parse_spec("neg_clip_loss:arch=l14:batch=64")
    assert name == "neg_clip_loss_l14" and p.args["batch"] == 64 and p.npz_keys == ("l14_img", "l14_txt")
    name, p = parse_spec("hype=file:s3://bucket/hype_scores.parquet")
    assert name == "hype" and p.args["path"] == "s3://bucket/hype_scores.parquet"
    for bad, msg in [("nope:x", "unknown input kind"), ("neg_clip_loss:arch=b16", "arch must be one of"),
                     ("neg_clip_loss:color=red", "unknown option"), ("normsim", "takes <target>"),
                     ("neg_clip_loss:batch=many", "bad value")]:
        with pytest.raises(FlytInputError, match=msg):
            parse_spec(bad)


# ------------------------------------------------------------------ neg_clip_loss


def test_batch_plan_scores_every_row_once_in_full_batches():
    rng = np.random.default_rng(0)
    plan = batch_plan(103, 25, rng)
    scored = np.concatenate([s for _, s in plan])
    assert sorted(scored) == list(range(103))
    assert all(len(m) == 25 and len(set(m)) == 25 for m, _ in plan)  # the short last batch is topped up
    members, last = plan[-1]
    assert len(last) == 3 and not set(members[3:]) & set(last)
    assert [len(m) for m, _ in batch_plan(10, 25, rng)] == [10]  # a shard smaller than |B| is one batch


def test_neg_clip_loss_matches_a_dense_float64_computation():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(70, 6))
    txt = img + 0.5 * rng.normal(size=(70, 6))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    tau, b, k = 0.05, 16, 4
    got = neg_clip_loss(img, txt, seed=7, tau=tau, batch=b, repeats=k, chunk=5)
    # independent: the same batches, each batch's full similarity matrix in float64
    plan_rng = np.random.default_rng(7)
    norm = np.zeros(70)
    for _ in range(k):
        for members, scored in batch_plan(70, b, plan_rng):
            s = img[members] @ txt[members].T / tau
            r = tau / 2 * (logsumexp(s, axis=1) + logsumexp(s, axis=0))
            norm[scored] += r[: len(scored)]
    want = (img * txt).sum(1) - norm / k
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    assert (got <= 1e-6).all()  # s_ii can never exceed its own normaliser


def test_neg_clip_loss_does_not_overflow_at_the_papers_temperature():
    rng = np.random.default_rng(2)
    img = rng.normal(size=(40, 8)).astype(np.float16)
    got = neg_clip_loss(img, img, seed=0, tau=0.01, batch=32, repeats=2)
    assert np.isfinite(got).all()


def test_neg_clip_loss_torch_path_equals_the_numpy_path():
    # the GPU code path (torch), run here on the CPU device, against the numpy path checked above
    rng = np.random.default_rng(5)
    u = rng.normal(size=(70, 16)).astype(np.float32)
    v = rng.normal(size=(70, 16)).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    want = _normaliser_numpy(u, v, 0.01, 16)
    np.testing.assert_allclose(_torch_normaliser("cpu")(u, v, 0.01, 16), want, rtol=1e-5)
    np.testing.assert_allclose(_torch_normaliser("cpu")(u, v, 0.01, 70), want, rtol=1e-5)


# ------------------------------------------------------------------ normsim


@pytest.mark.parametrize("p", ["inf", "2"])
def test_normsim_blockwise_equals_the_full_matrix(p):
    rng = np.random.default_rng(3)
    img = rng.normal(size=(57, 5)).astype(np.float32)
    targets = rng.normal(size=(23, 5)).astype(np.float32)
    sims = img.astype(np.float64) @ targets.T.astype(np.float64)
    want = sims.max(axis=1) if p == "inf" else np.sqrt((sims ** 2).sum(axis=1))
    np.testing.assert_allclose(normsim(img, targets, p, row_chunk=8, target_chunk=6), want, rtol=1e-5)
    # the GPU code path (torch), run here on the CPU device
    np.testing.assert_allclose(_normsim_torch(img, targets, p, row_chunk=8, target_chunk=6, device="cpu"), want,
                               rtol=1e-5)


# ------------------------------------------------------------------ the store end to end


def test_compute_store_layout_and_statistics(pool_dir, tmp_path):
    rng = np.random.default_rng(4)
    np.save(tmp_path / "targets.npy", rng.normal(size=(12, 8)))
    store = tmp_path / "store"
    entries = compute_inputs(str(pool_dir), str(store), ["column:clip_b32_similarity_score",
                                                        "ncl=neg_clip_loss:batch=32:repeats=2",
                                                        f"normsim:p=2:{tmp_path / 'targets.npy'}"], progress=False)
    manifest = json.loads((store / "inputs.json").read_text())
    pool = Pool(str(pool_dir), progress=False)
    assert [s["stem"] + ".parquet" for s in manifest["shards"]] == [Path(s.parquet).name for s in pool.shards]
    for shard in pool.shards:  # one file per metadata shard, rows in the shard's order
        t = pq.read_table(store / Path(shard.parquet).name)
        assert t.column_names == ["uid", "clip_b32_similarity_score", "ncl", "normsim_2_targets"]
        assert t.column("uid").to_pylist() == pq.read_table(shard.parquet).column("uid").to_pylist()
        assert all(t.schema.field(c).type == pa.float32() for c in t.column_names[1:])
    col = pool.column("clip_b32_similarity_score").astype(np.float32).astype(np.float64)
    assert entries["clip_b32_similarity_score"]["mean"] == pytest.approx(col.mean())
    assert entries["clip_b32_similarity_score"]["std"] == pytest.approx(col.std())
    img = pool.embeddings("b32_img").astype(np.float32)
    targets = np.load(tmp_path / "targets.npy")
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    np.testing.assert_allclose(store_column(store, "normsim_2_targets"),
                               np.sqrt(((img @ targets.T) ** 2).sum(1)), rtol=1e-5)
    # each shard's neg_clip_loss is the per-shard computation with that shard's seed
    first = pool.shards[0]
    shard_img = img[: first.num_rows]
    shard_txt = pool.embeddings("b32_txt")[: first.num_rows].astype(np.float32)
    # the shard's seed follows its name, not its place in a listing: sha256("<seed>:<stem>"), first 8 bytes, little-endian
    seed = int.from_bytes(hashlib.sha256(f"0:{Path(first.parquet).stem}".encode()).digest()[:8], "little")
    want = neg_clip_loss(shard_img, shard_txt, seed=seed, batch=32, repeats=2)
    np.testing.assert_array_equal(store_column(store, "ncl")[: first.num_rows], want)
    e = manifest["inputs"]["ncl"]
    assert e["spec"] == "neg_clip_loss:batch=32:repeats=2" and e["params"]["batch"] == 32 and e["status"] == "complete"
    assert InputStore(store).input_names() == ["clip_b32_similarity_score", "ncl", "normsim_2_targets"]


def test_resume_adds_only_what_is_missing(pool_dir, tmp_path, monkeypatch):
    from flyt_datacomp.inputs.providers.simple import PoolColumnInput

    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["column:clip_b32_similarity_score"], progress=False)
    calls = []
    real = PoolColumnInput.compute

    def counting(self, data, state, shard_name):
        calls.append((self.args["name"], shard_name))
        return real(self, data, state, shard_name)

    monkeypatch.setattr(PoolColumnInput, "compute", counting)
    before = {p.name: p.stat().st_mtime_ns for p in store.glob("*.parquet")}
    compute_inputs(str(pool_dir), str(store), ["column:clip_b32_similarity_score"], progress=False)
    assert calls == [] and before == {p.name: p.stat().st_mtime_ns for p in store.glob("*.parquet")}
    compute_inputs(str(pool_dir), str(store), ["column:clip_b32_similarity_score", "column:clip_l14_similarity_score"],
                   progress=False)
    assert {c[0] for c in calls} == {"clip_l14_similarity_score"} and len(calls) == 3
    # a shard file lost (a kill before its rename) is recomputed alone, for every input
    victim = sorted(store.glob("*.parquet"))[1]
    victim.unlink()
    calls.clear()
    compute_inputs(str(pool_dir), str(store), ["column:clip_b32_similarity_score", "column:clip_l14_similarity_score"],
                   progress=False)
    assert sorted(calls) == sorted([("clip_b32_similarity_score", victim.stem), ("clip_l14_similarity_score", victim.stem)])
    compute_inputs(str(pool_dir), str(store), ["w=column:original_width"], progress=False)
    with pytest.raises(FlytInputError, match="other settings.*`recompute`"):
        compute_inputs(str(pool_dir), str(store), ["w=column:original_height"], progress=False)


def table_digest(table) -> str:
    h = hashlib.sha256(json.dumps(table.column_names).encode())
    h.update("".join(table.column("uid").to_pylist()).encode())
    for name in table.column_names[1:]:
        h.update(table.column(name).to_numpy().tobytes())
    return h.hexdigest()


def test_the_same_bytes_from_every_executor(pool_dir, tmp_path):
    specs = ["column:clip_l14_similarity_score", "neg_clip_loss:batch=16:repeats=2"]
    digests = {}
    runs = [("inline", dict(workers=1)), ("processes", dict(workers=2))]
    try:
        import ray  # noqa: F401

        runs.append(("ray", dict(ray_address="local")))
    except ImportError:
        pass
    for label, kwargs in runs:
        store = tmp_path / label
        compute_inputs(str(pool_dir), str(store), specs, progress=False, **kwargs)
        # the shard files' data, byte for byte (their metadata also names the run's computation, which differs)
        digests[label] = {p.name: table_digest(pq.read_table(p)) for p in sorted(store.glob("*.parquet"))}
    if "ray" in digests:
        import ray

        ray.shutdown()
    assert all(d == digests["inline"] for d in digests.values()), digests
    assert len(digests) == len(runs)


def test_file_inputs_and_the_missing_value_policy(pool_dir, tmp_path):
    pool = Pool(str(pool_dir), progress=False)
    hexes = uids_to_hex(pool.uids)
    values = np.arange(pool.size, dtype=np.float64)
    pq.write_table(pa.table({"uid": hexes[5:], "score": values[5:]}), tmp_path / "part.parquet")
    (tmp_path / "all.csv").write_text("uid,score\n" + "".join(f"{u},{v}\n" for u, v in zip(hexes, values)))
    rec = np.zeros(pool.size, dtype=[("uid", "U32"), ("score", "f8")])
    rec["uid"], rec["score"] = hexes, values
    np.save(tmp_path / "all.npy", rec)
    store = tmp_path / "store"
    entries = compute_inputs(str(pool_dir), str(store), [f"csv=file:{tmp_path / 'all.csv'}",
                                                        f"npy=file:{tmp_path / 'all.npy'}"], progress=False)
    np.testing.assert_array_equal(store_column(store, "csv"), values.astype(np.float32))
    np.testing.assert_array_equal(store_column(store, "npy"), values.astype(np.float32))
    assert entries["csv"]["missing_count"] == 0
    with pytest.raises(FlytInputError, match="no value for 5 of 200 examples"):
        compute_inputs(str(pool_dir), str(store), [f"part=file:{tmp_path / 'part.parquet'}"], progress=False)
    entries = compute_inputs(str(pool_dir), str(store), [f"part=file:{tmp_path / 'part.parquet'}"], missing="mean",
                             progress=False)
    assert entries["part"]["missing_count"] == 5 and entries["part"]["fill_value"] == pytest.approx(values[5:].mean())
    col = InputStore(store).column("part", pool)
    assert (col[:5] == values[5:].mean()).all() and (col[5:] == values[5:]).all()
    pq.write_table(pa.table({"uid": [hexes[0], hexes[0]], "score": [1.0, 2.0]}), tmp_path / "dup.parquet")
    with pytest.raises(FlytInputError, match="more than once"):
        compute_inputs(str(pool_dir), str(store), [f"dup=file:{tmp_path / 'dup.parquet'}"], progress=False)


def test_the_join_check_refuses_an_anti_correlated_join(pool_dir):
    """Imported values must follow the check column (correlation >= min_corr, signed): a field that
    falls as the pool's CLIP score rises was joined to the wrong rows or is another score."""
    from flyt_datacomp.inputs.providers.imported import check_join

    pool = Pool(str(pool_dir), progress=False)
    ref = pool.column("clip_b32_similarity_score").astype(np.float64)
    noise = np.random.default_rng(0).normal(0, 0.1 * ref.std(), ref.shape)
    follows = ref + noise
    follows[[3, 77]] = np.nan  # rows the import has no value for are left out of the comparison
    both = ~np.isnan(follows)
    r = np.corrcoef(follows[both], ref[both])[0, 1]
    assert 0.99 < r < 0.999
    record = check_join(follows, pool, "clip_b32_similarity_score", 0.99, "input 'x'")
    assert record == {"column": "clip_b32_similarity_score", "correlation": round(r, 6), "rows": 198, "min": 0.99}
    for values, shown in ((-follows, f"{-r:.4f}"), (-ref, "-1.0000")):
        with pytest.raises(FlytInputError, match=rf"input 'x' correlates {shown} with the pool's "
                                                 r"clip_b32_similarity_score over \d+ joined rows, below 0.99"):
            check_join(values, pool, "clip_b32_similarity_score", 0.99, "input 'x'")


def test_classifier_separates_target_like_examples_and_is_reused(pool_dir, tmp_path, monkeypatch):
    pool, img = pool_arrays(pool_dir, "b32_img")
    direction = np.zeros(8)
    direction[0] = 1.0
    rng = np.random.default_rng(5)
    targets = direction + 0.3 * rng.normal(size=(300, 8))
    np.save(tmp_path / "t.npy", targets / np.linalg.norm(targets, axis=1, keepdims=True))
    store = tmp_path / "store"
    spec = f"classifier:{tmp_path / 't.npy'}:steps=300:batch=64:warmup=20:lr=0.05"
    compute_inputs(str(pool_dir), str(store), [spec], progress=False)
    logits = store_column(store, "classifier_t")
    assert np.corrcoef(logits, img[:, 0])[0, 1] > 0.9  # the logit follows the target direction
    from flyt_datacomp import torch_io

    saved = torch_io.load(store / "work" / "classifier_t.classifier.pt")
    np.testing.assert_allclose(logits, img @ saved["weight"].numpy() + float(saved["bias"]), rtol=1e-5, atol=1e-6)
    assert ((expit(logits) > 0.5) == (img @ saved["weight"].numpy() + float(saved["bias"]) > 0)).all()
    monkeypatch.setattr(classifier_module, "fit_logistic", lambda *a, **k: pytest.fail("refitted"))
    compute_inputs(str(pool_dir), str(tmp_path / "store"), [spec], recompute=["classifier_t"], progress=False)


def test_scoring_model_input_equals_applying_the_model(pool_dir, tmp_path):
    import torch

    from flyt_datacomp.flyt.models import GLUHead, MixingModel, save_scoring_model

    pool = Pool(str(pool_dir), progress=False)
    cols = ["clip_b32_similarity_score", "clip_l14_similarity_score"]
    x = np.stack([pool.column(c).astype(np.float64) for c in cols], axis=1)
    mix = MixingModel(cols, x.mean(0), x.std(0))
    with torch.no_grad():
        mix.weight.copy_(torch.tensor([0.7, -1.3]))
    save_scoring_model(tmp_path / "m.pt", mix)
    head = GLUHead(8, 16, seed=3)
    save_scoring_model(tmp_path / "e.pt", head, {"config": {"embedding_prefix": "l14"}})
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), [f"mflyt=model:{tmp_path / 'm.pt'}", f"eflyt=model:{tmp_path / 'e.pt'}"],
                   progress=False)
    z = (x - x.mean(0)) / x.std(0)
    np.testing.assert_allclose(store_column(store, "mflyt"), z @ np.array([0.7, -1.3]), rtol=1e-5, atol=1e-5)
    img = torch.from_numpy(pool.embeddings("l14_img").astype(np.float32))
    txt = torch.from_numpy(pool.embeddings("l14_txt").astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(store_column(store, "eflyt"), head(img, txt).numpy(), rtol=1e-5, atol=1e-6)
    # an M-FLYT model over a stored input (E-FLYT's score as an M-FLYT input, as in the paper)
    stack = MixingModel(["eflyt", "clip_b32_similarity_score"], [0.0, 0.0], [1.0, 1.0])
    with torch.no_grad():
        stack.weight.copy_(torch.tensor([2.0, 1.0]))
    save_scoring_model(tmp_path / "s.pt", stack)
    compute_inputs(str(pool_dir), str(store), [f"stacked=model:{tmp_path / 's.pt'}"], progress=False)
    np.testing.assert_allclose(store_column(store, "stacked"),
                               2 * store_column(store, "eflyt") + x[:, 0], rtol=1e-5, atol=1e-5)


def test_filter_reads_a_stored_input(pool_dir, tmp_path):
    from flyt_datacomp.cli.filter import filter_command

    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["column:clip_l14_similarity_score"], progress=False)
    common = ["--metadata-dir", str(pool_dir), "--fraction", "0.3", "--quiet"]
    a = CliRunner().invoke(filter_command, [*common, "--score", "clip_l14_similarity_score", "--output", str(tmp_path / "a.npy")])
    b = CliRunner().invoke(filter_command, [*common, "--score", "store:clip_l14_similarity_score", "--inputs-dir",
                                            str(store), "--output", str(tmp_path / "b.npy")])
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    r = CliRunner().invoke(filter_command, [*common, "--score", "store:nope", "--inputs-dir", str(store), "--output",
                                            str(tmp_path / "c.npy")])
    assert r.exit_code == 2 and "has no input 'nope'" in r.output
    r = CliRunner().invoke(filter_command, [*common, "--score", "store:x", "--output", str(tmp_path / "c.npy")])
    assert r.exit_code == 2 and "--inputs-dir" in r.output


def test_store_of_another_pool_and_a_second_writer_are_refused(pool_dir, tmp_path):
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["column:clip_l14_similarity_score"], progress=False)
    other, _ = write_metadata(tmp_path / "other", sizes=(10, 10), seed=9)
    with pytest.raises(FlytInputError, match="made for another pool"):
        InputStore(store).column("clip_l14_similarity_score", Pool(str(other), progress=False))
    (store / ".lock").write_text("a lock file left by a dead run does not block")
    compute_inputs(str(pool_dir), str(store), ["column:clip_b32_similarity_score"], progress=False)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(store / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FlytInputError, match="another run is writing the input store"):
            compute_inputs(str(pool_dir), str(store), ["column:clip_l14_similarity_score"], progress=False)
    finally:
        holder.kill()
        holder.wait()


def test_cli_compute_and_show(pool_dir, tmp_path):
    r = CliRunner().invoke(cli, ["inputs", "compute", "--metadata-dir", str(pool_dir), "--out", str(tmp_path / "s"),
                                 "--input", "column:clip_l14_similarity_score", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "clip_l14_similarity_score" in r.output and "complete" in r.output
    r = CliRunner().invoke(cli, ["inputs", "show", str(tmp_path / "s")])
    assert r.exit_code == 0 and "200 examples, 3 shards" in r.output
    r = CliRunner().invoke(cli, ["inputs", "compute", "--metadata-dir", str(pool_dir), "--out", str(tmp_path / "s"),
                                 "--input", "bogus:1"])
    assert r.exit_code == 2 and "unknown input kind" in r.output


def test_openclip_input_scores_downloaded_images_by_uid(tiny_demo_pool, tmp_path):
    import io
    import tarfile

    import open_clip
    import torch
    from PIL import Image

    from flyt_datacomp.clip_models import create_clip, resolve_arch, tokenizer

    model = create_clip(resolve_arch("tiny"), seed=3)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    store = tmp_path / "store"
    with pytest.raises(FlytInputError, match="no value for"):  # ~10% of the demo pool never downloaded
        compute_inputs(str(tiny_demo_pool.metadata_dir), str(store), [f"dfn=openclip:tiny:{tmp_path / 'tiny.pt'}"],
                       shards_dir=str(tiny_demo_pool.shards_dir), device="cpu", progress=False)
    entries = compute_inputs(str(tiny_demo_pool.metadata_dir), str(store), [f"dfn=openclip:tiny:{tmp_path / 'tiny.pt'}"],
                             shards_dir=str(tiny_demo_pool.shards_dir), device="cpu", missing="min", progress=False)
    # independent: every image of every tar, one at a time, joined by the uid in its json
    transform = open_clip.image_transform(32, is_train=False)
    tok = tokenizer(resolve_arch("tiny"))
    want = {}
    model.eval()
    for tar_path in sorted(tiny_demo_pool.shards_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        for name in files:
            if name.endswith(".json"):
                key = name[:-5]
                image = transform(Image.open(io.BytesIO(files[key + ".jpg"])).convert("RGB"))[None]
                with torch.no_grad():
                    u = model.encode_image(image, normalize=True)
                    v = model.encode_text(tok([files[key + ".txt"].decode()]), normalize=True)
                want[json.loads(files[name])["uid"]] = float((u * v).sum())
    pool = Pool(str(tiny_demo_pool.metadata_dir), progress=False)
    got = store_column(store, "dfn")
    hexes = uids_to_hex(pool.uids)
    have = np.array([h in want for h in hexes])
    assert 0 < (~have).sum() < 0.2 * len(hexes) and entries["dfn"]["missing_count"] == (~have).sum()
    np.testing.assert_allclose(got[have], [want[h] for h in hexes[have]], rtol=1e-4, atol=1e-5)
    assert np.isnan(got[~have]).all()  # stored as missing; the fill applies when read
    col = InputStore(store).column("dfn", pool)
    assert (col[~have] == min(want.values())).all() or np.allclose(col[~have], np.nanmin(got))
    # a second run finds every image shard already scored
    import flyt_datacomp.inputs.providers.models as models_module

    real = models_module._Scorer.score_tar
    models_module._Scorer.score_tar = lambda *a, **k: pytest.fail("rescored an image shard")
    try:
        compute_inputs(str(tiny_demo_pool.metadata_dir), str(store), [f"dfn=openclip:tiny:{tmp_path / 'tiny.pt'}"],
                       shards_dir=str(tiny_demo_pool.shards_dir), device="cpu", missing="min", recompute=["dfn"],
                       progress=False)
    finally:
        models_module._Scorer.score_tar = real


def test_train_and_score_m_flyt_on_stored_inputs(tiny_demo_pool, tmp_path):
    import torch
    from test_train import small_config

    from flyt_datacomp.flyt.trainer import Trainer
    from flyt_datacomp.scores import load_scores

    p = tiny_demo_pool
    store = tmp_path / "store"
    compute_inputs(str(p.metadata_dir), str(store), ["ncl=neg_clip_loss:batch=64:repeats=2"], progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = small_config(p, inputs=["clip_b32_similarity_score", "ncl"], inputs_dir=str(store))
        result = Trainer(cfg, tmp_path / "run", progress=False).run()
    finally:
        torch.set_num_threads(threads)
    from flyt_datacomp.flyt.models import load_scoring_model

    model, _ = load_scoring_model(result["scoring_model"])
    pool = Pool(str(p.metadata_dir), progress=False)
    ncl = InputStore(store).column("ncl", pool)
    # standardised with the store's pool statistics
    assert model.mean[1].item() == pytest.approx(np.float32(ncl).astype(np.float64).mean(), rel=1e-5)
    assert model.std[1].item() == pytest.approx(np.float32(ncl).astype(np.float64).std(), rel=1e-5)
    # scoring reads the store the model was trained with; the same as applying the model by hand
    scores = load_scores(pool, result["scoring_model"]).values
    x = np.stack([pool.column("clip_b32_similarity_score").astype(np.float32), ncl.astype(np.float32)], axis=1)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(scores, want, rtol=1e-6, atol=1e-6)
    cfg_no_store = small_config(p, inputs=["clip_b32_similarity_score", "ncl"])
    with pytest.raises(FlytInputError, match="no input store was given"):
        Trainer(cfg_no_store, tmp_path / "run2", progress=False)


def test_a_stored_input_as_a_hard_filter(pool_dir, tmp_path):
    from flyt_datacomp.cli.filter import filter_command

    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["width=column:original_width"], progress=False)
    out = tmp_path / "m.npy"
    r = CliRunner().invoke(filter_command, ["--metadata-dir", str(pool_dir), "--inputs-dir", str(store), "--mask",
                                            "store:width>=500", "--score", "clip_l14_similarity_score", "--scs-batch",
                                            "5", "--num-samples", "300", "--output", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    pool = Pool(str(pool_dir), progress=False)
    wide = set(uids_to_hex(pool.uids[pool.column("original_width") >= 500]))
    from flyt_datacomp.uids import read_subset

    chosen = set(uids_to_hex(read_subset(out)[0]))
    assert chosen and chosen <= wide
    side = json.loads(out.with_name("m.npy.json").read_text())
    assert side["masks"][0]["mask"] == "store:width>=500" and side["masks"][0]["surviving"] == len(wide)
    r = CliRunner().invoke(filter_command, ["--metadata-dir", str(pool_dir), "--mask", "store:width>=500", "--score",
                                            "clip_l14_similarity_score", "--output", str(tmp_path / "n.npy"), "--quiet"])
    assert r.exit_code == 2 and "--inputs-dir" in r.output


def test_a_model_refuses_a_stored_input_recomputed_since_its_training(tiny_demo_pool, tmp_path, one_torch_thread):
    """A trained M-FLYT model records each stored input's identity (the computation's token and the
    fill value); filtering with it after the input was recomputed with other values, or filled
    otherwise, is refused naming the input, unless the change is accepted by name."""
    from test_train import small_config

    from flyt_datacomp.flyt.models import load_scoring_model
    from flyt_datacomp.flyt.trainer import Trainer

    p = tiny_demo_pool
    pool = Pool(str(p.metadata_dir), progress=False)
    hexes = uids_to_hex(pool.uids)
    scores = tmp_path / "noise.parquet"
    rng = np.random.default_rng(0)

    def write_noise(drop=0):
        pq.write_table(pa.table({"uid": hexes[drop:], "score": rng.normal(size=len(hexes) - drop)}), scores)

    def compute(*extra):
        return CliRunner().invoke(cli, ["inputs", "compute", "--metadata-dir", str(p.metadata_dir), "--inputs-dir",
                                        str(store), "--input", f"noise=file:{scores}", "--missing", "min", "--quiet",
                                        *extra])

    write_noise(drop=5)
    store = tmp_path / "store"
    assert compute().exit_code == 0
    cfg = small_config(p, inputs=["clip_b32_similarity_score", "noise"], inputs_dir=str(store), steps=1)
    model_path = Trainer(cfg, tmp_path / "run", progress=False).run()["scoring_model"]
    _, meta = load_scoring_model(model_path)
    entry = InputStore(store).manifest()["inputs"]["noise"]
    assert meta["input_identity"] == {"noise": {"store": str(store), "token": entry["token"],
                                                "fill_value": entry["fill_value"]}}

    def filter_with_model(*extra):
        return CliRunner().invoke(cli, ["filter", "--metadata-dir", str(p.metadata_dir), "--score", model_path,
                                        "--num-samples", "100", "--output", str(tmp_path / "s.npy"), "--overwrite",
                                        "--quiet", *extra])

    assert filter_with_model().exit_code == 0
    write_noise(drop=5)  # other values under the same name
    assert compute("--recompute", "noise").exit_code == 0
    before = (tmp_path / "s.npy").read_bytes()
    r = filter_with_model()
    assert r.exit_code == 2 and "input 'noise'" in r.output and "recomputed since" in r.output, r.output
    assert "--accept-changed-inputs noise" in r.output and (tmp_path / "s.npy").read_bytes() == before
    r = filter_with_model("--accept-changed-inputs", "noise")
    assert r.exit_code == 0, r.output
    # the same computation, filled otherwise (a rerun with another missing-value policy)
    model_path = Trainer(cfg, tmp_path / "run2", progress=False).run()["scoring_model"]
    assert filter_with_model().exit_code == 0
    assert compute("--missing", "mean").exit_code == 0
    r = filter_with_model()
    assert r.exit_code == 2 and "fills its missing examples with" in r.output, r.output
    assert filter_with_model("--accept-changed-inputs", "*").exit_code == 0


def _bad_targets(tmp_path, case):
    """A target file that cannot be a matrix of embeddings."""
    good = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    path = tmp_path / f"targets-{case.replace(' ', '-')}.{'npz' if case.startswith('npz') else 'npy'}"
    if case == "empty":
        np.save(path, np.zeros((0, 8), np.float32))
    elif case == "objects":
        np.save(path, np.array([[1.0, "a"]], dtype=object), allow_pickle=True)
    elif case == "text":
        np.save(path, np.array([["a"] * 8, ["b"] * 8]))
    elif case == "truncated":
        np.save(path, good)
        path.write_bytes(path.read_bytes()[:100])
    elif case == "complex":
        np.save(path, good.astype(np.complex64))
    elif case == "nan":
        np.save(path, np.where(np.eye(5, 8) > 0, np.nan, good).astype(np.float32))
    elif case == "npz empty":
        np.savez(path, img=np.zeros((0, 8), np.float32))
    elif case == "npz text":
        np.savez(path, img=np.array([["a"] * 8]))
    elif case == "npz truncated":
        path.write_bytes(b"PK\x03\x04not a zip")
    return path


NPY_CASES = ["empty", "objects", "text", "truncated", "complex", "nan"]


@pytest.mark.parametrize("kind,case", [(k, c) for k in ("normsim", "classifier") for c in NPY_CASES]
                         + [("classifier", c) for c in ("npz empty", "npz text", "npz truncated")])
def test_target_files_that_hold_no_embeddings_are_one_line(pool_dir, tmp_path, kind, case):
    target = _bad_targets(tmp_path, case)
    r = CliRunner().invoke(cli, ["inputs", "compute", "--metadata-dir", str(pool_dir), "--inputs-dir",
                                 str(tmp_path / "store"), "--input", f"x={kind}:{target}", "--device", "cpu", "--quiet"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(target) in errors[0] and "Traceback" not in r.output, r.output
