"""Training-data streams (flyt/: tars, join, features, stream, upstream/downstream streams, loader) and the
downstream shard builder (downstream.py)."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from poolgen import write_image_shards, write_metadata

from flyt_datacomp.cli.downstream import downstream_group
from flyt_datacomp.downstream import build_downstream_shards
from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.flyt.downstream_stream import DownstreamStream
from flyt_datacomp.flyt.features import FeatureSpec, FeatureTable, read_features
from flyt_datacomp.flyt.join import UidIndex, scan_upstream
from flyt_datacomp.flyt.loader import BatchIterableDataset
from flyt_datacomp.flyt.stream import Slot, assign_shards
from flyt_datacomp.flyt.upstream_stream import UpstreamStream
from flyt_datacomp.pool import Pool
from flyt_datacomp.tars import iter_tar, list_shards
from flyt_datacomp.uids import hex_to_uids, random_uids, uids_to_hex

IMG = 8  # tiny images keep decoding cheap


def transform(im: Image.Image) -> torch.Tensor:
    """A cheap stand-in for an open_clip image transform: resize to IMG, to a float tensor."""
    arr = np.asarray(im.resize((IMG, IMG)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def tokenizer(texts):
    """Stand-in tokenizer: a length-4 long tensor per caption (the last number in it, its length)."""
    out = torch.zeros(len(texts), 4, dtype=torch.long)
    for i, t in enumerate(texts):
        out[i, 0] = len(t)
    return out


def jpeg(value: int, size: int = 10) -> bytes:
    """A real little JPEG whose pixel colour encodes ``value``."""
    im = Image.new("RGB", (size, size), (value % 256, (value * 7) % 256, (value * 13) % 256))
    buf = io.BytesIO()
    im.save(buf, format="JPEG")
    return buf.getvalue()


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    """``samples``: dicts of ``{"__key__": key, ext: payload}`` in order."""
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for ext, payload in s.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def write_upstream_shards(root: Path, hex_uids, *, per_shard=10, keys_shuffled=True, seed=0) -> None:
    """Shards with real JPEGs; keys are positional and deliberately unrelated to the uid order."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    uids = list(hex_uids)
    keys = [f"{i:06d}" for i in range(len(uids))]
    if keys_shuffled:  # keys tell nothing about which uid a sample holds
        rng.shuffle(uids)
    for s in range(0, len(uids), per_shard):
        samples = [
            {"__key__": keys[i], "jpg": jpeg(i), "txt": f"caption {uids[i]}".encode(),
             "json": json.dumps({"uid": uids[i], "key": keys[i]}).encode()}
            for i in range(s, min(s + per_shard, len(uids)))
        ]
        write_tar(root / f"{s // per_shard:08d}.tar", samples)


@pytest.fixture(scope="module")
def pool_setup(tmp_path_factory):
    """A 60-uid pool; shards hold 50 of its uids plus 5 foreign uids (no features) and 2 bad samples."""
    tmp = tmp_path_factory.mktemp("pool")
    meta, hex_uids = write_metadata(tmp / "metadata", sizes=(25, 35), dim=8)
    pool = Pool(str(meta), progress=False)
    index = UidIndex.from_pool(pool)
    scores = np.arange(len(hex_uids), dtype=np.float32)[:, None] * np.array([[1.0, -1.0]], np.float32)
    in_shards = list(hex_uids[:50])
    foreign = list(uids_to_hex(random_uids(5, 123)))
    write_upstream_shards(tmp / "shards", in_shards + foreign, per_shard=11)
    # two bad samples: one without json, one with a malformed uid
    write_tar(tmp / "shards" / "99999999.tar", [
        {"__key__": "x0", "jpg": jpeg(1), "txt": b"no json"},
        {"__key__": "x1", "jpg": jpeg(2), "txt": b"bad uid", "json": b'{"uid": "nothex"}'},
    ])
    return {"tmp": tmp, "pool": pool, "index": index, "hex": hex_uids, "scores": scores,
            "in_shards": in_shards, "foreign": foreign, "shards": str(tmp / "shards")}


def upstream(ps, **kw) -> UpstreamStream:
    kw.setdefault("batch_size", 7)
    kw.setdefault("shuffle_buffer", 16)
    return UpstreamStream(ps["shards"], ps["index"], FeatureTable(ps["scores"]),
                          image_transform=transform, tokenizer=tokenizer, **kw)


def uids_of(batches):
    return [u for b in batches for u in b["uids"]]


def take(it, n):
    return [next(it) for _ in range(n)]


# --------------------------------------------------------------------------- reading shards


def test_list_shards_errors(tmp_path):
    with pytest.raises(FlytInputError, match="does not exist"):
        list_shards(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FlytInputError, match="no .tar"):
        list_shards(str(tmp_path / "empty"))
    with pytest.raises(FlytInputError, match="does not exist"):
        UpstreamStream(str(tmp_path / "missing"), UidIndex(random_uids(3, 0)), FeatureTable(np.zeros((3, 1))),
                       image_transform=transform, tokenizer=tokenizer, batch_size=2)


def test_list_shards_sorted_and_fsspec_url(tmp_path):
    for name in ("00000002.tar", "00000000.tar", "00000001.tar"):
        write_tar(tmp_path / name, [{"__key__": "a", "cls": b"1"}])
    assert [Path(p).name for p in list_shards(str(tmp_path))] == ["00000000.tar", "00000001.tar", "00000002.tar"]
    urls = list_shards(f"file://{tmp_path}")
    assert len(urls) == 3
    assert list(iter_tar(urls[0]))[0]["cls"] == b"1"


def test_iter_tar_groups_by_key(tmp_path):
    write_tar(tmp_path / "a.tar", [
        {"__key__": "k1", "JPG": b"i1", "txt": b"t1", "json": b"{}"},
        {"__key__": "k2", "jpg": b"i2", "seg.png": b"s2"},
    ])
    samples = list(iter_tar(str(tmp_path / "a.tar")))
    assert [s["__key__"] for s in samples] == ["k1", "k2"]
    assert samples[0]["jpg"] == b"i1" and samples[0]["txt"] == b"t1"
    assert samples[1]["seg.png"] == b"s2"
    only_json = list(iter_tar(str(tmp_path / "a.tar"), extensions=["json"]))
    assert only_json[0]["json"] == b"{}" and "jpg" in only_json[0]


# --------------------------------------------------------------------------- join


def test_join_by_json_uid_not_key(pool_setup):
    ps = pool_setup
    stream = upstream(ps, batch_size=5)
    batches = take(stream.batches(), 10)  # 50 joined samples = exactly one epoch
    pos_of = {u: i for i, u in enumerate(ps["hex"])}
    for b in batches:
        for u, p, f, t in zip(b["uids"], b["positions"].tolist(), b["features"], b["texts"]):
            assert pos_of[u] == p
            assert f.tolist() == [float(p), -float(p)]  # features of the uid's pool row
            assert t[0].item() == len(f"caption {u}")  # caption of the same sample
        assert b["images"].shape == (5, 3, IMG, IMG) and b["images"].dtype == torch.float32
        assert b["texts"].dtype == torch.long
        assert b["features"].dtype == torch.float32
    assert sorted(uids_of(batches)) == sorted(ps["in_shards"])
    # image bytes travelled with their own uid: the JPEG colour encodes the sample's write index
    raw = [s for tar in list_shards(ps["shards"]) for s in iter_tar(tar)]
    by_uid = {json.loads(s["json"])["uid"]: s for s in raw if "json" in s and len(json.loads(s["json"])["uid"]) == 32}
    b = batches[0]
    for u, im in zip(b["uids"], b["images"]):
        assert torch.allclose(im, transform(Image.open(io.BytesIO(by_uid[u]["jpg"])).convert("RGB")))


def test_counters_and_features_without_images(pool_setup, caplog):
    ps = pool_setup
    stream = upstream(ps, batch_size=5)
    with caplog.at_level(logging.INFO, logger="flyt_datacomp.flyt.upstream_stream"):
        take(stream.iter_raw_batches(), 11)  # one full epoch plus one batch
    assert stream.full_passes == 1
    assert stream.no_features >= 5 and stream.bad >= 2  # epoch 0 plus part of epoch 1
    assert stream.features_without_images == 10  # 60 pool uids, 50 have images
    assert stream.distinct_joined == 50
    assert "features but no image" in caplog.text
    one = upstream(ps)
    assert len(list(one.iter_epoch(0))) == 50  # missing-feature and bad samples are skipped
    assert one.counters() == {"seen": 57, "joined": 50, "no_features": 5, "bad": 2}
    report = scan_upstream(ps["shards"], ps["index"])
    assert report == {"seen": 57, "joined": 50, "no_features": 5, "bad": 2,
                      "distinct_joined": 50, "features_without_images": 10}


def test_embedding_features_stay_float16_until_batching(pool_setup):
    ps = pool_setup
    table = read_features(ps["pool"], FeatureSpec("e-flyt", embedding_prefix="b32"))
    assert table.arrays[0].dtype == np.float16
    stream = UpstreamStream(ps["shards"], ps["index"], table, image_transform=transform,
                            tokenizer=tokenizer, batch_size=4, shuffle_buffer=4)
    b = next(stream.batches())
    img, txt = b["features"]
    assert img.shape == (4, 8) and txt.dtype == torch.float32
    emb = ps["pool"].embeddings("b32_txt")
    assert torch.equal(txt, torch.from_numpy(emb[b["positions"].numpy()].astype(np.float32)))


def test_feature_table_size_mismatch(pool_setup):
    ps = pool_setup
    with pytest.raises(FlytInputError, match="rows"):
        UpstreamStream(ps["shards"], ps["index"], FeatureTable(np.zeros((3, 2))), image_transform=transform,
                       tokenizer=tokenizer, batch_size=2)


# --------------------------------------------------------------------------- determinism and resume


def test_determinism_and_seeds(pool_setup):
    ps = pool_setup
    a = uids_of(take(upstream(ps, seed=3).batches(), 16))  # spans 2+ epochs
    b = uids_of(take(upstream(ps, seed=3).batches(), 16))
    c = uids_of(take(upstream(ps, seed=4).batches(), 16))
    assert a == b
    assert a != c
    # epochs reshuffle: the second epoch's order differs from the first's
    assert a[:50] != a[50:100]
    assert sorted(a[:50]) == sorted(a[50:100]) == sorted(ps["in_shards"])


@pytest.mark.parametrize("start", [0, 3, 9, 15])
def test_exact_resume(pool_setup, start):
    ps = pool_setup
    full = take(upstream(ps, seed=1).batches(), 18)
    resumed = take(upstream(ps, seed=1).batches(start), 18 - start)
    for x, y in zip(full[start:], resumed):
        assert x["uids"] == y["uids"]
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["features"], y["features"])


def test_resume_skips_before_decoding(pool_setup, monkeypatch):
    ps = pool_setup
    calls = []
    stream = upstream(ps, seed=1)
    original = stream.decode
    monkeypatch.setattr(stream, "decode", lambda raw: calls.append(len(raw)) or original(raw))
    next(stream.batches(12))
    assert calls == [7]


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_workers_resume(pool_setup, workers):
    ps = pool_setup
    n, start = 12, 5

    def run(num_workers, start_batch, count):
        ds = BatchIterableDataset(upstream(ps, seed=2), num_workers=num_workers, start_batch=start_batch)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers)
        it = iter(loader)
        out = [next(it)["uids"] for _ in range(count)]
        del it
        return out

    full = run(workers, 0, n)
    assert run(workers, start, n - start) == full[start:]
    if workers:
        # the same logical streams without worker processes give the identical sequence
        ds = BatchIterableDataset(upstream(ps, seed=2), num_workers=workers)
        it = iter(ds)
        assert [next(it)["uids"] for _ in range(n)] == full
        # global batch i is local batch i // W of logical stream i % W
        s1 = upstream(ps, seed=2).with_slot(worker_id=1, num_workers=workers)
        assert uids_of(take(s1.batches(), 2)) == full[1] + full[3]
    else:
        assert full == [b["uids"] for b in take(upstream(ps, seed=2).batches(), n)]


def test_dataloader_worker_count_mismatch(pool_setup, monkeypatch):
    ds = BatchIterableDataset(upstream(pool_setup), num_workers=3)
    info = type("Info", (), {"id": 0, "num_workers": 1})()  # what a 1-worker DataLoader reports
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
    with pytest.raises(FlytInputError, match="built for 3 workers but the DataLoader runs 1"):
        next(iter(ds))


# --------------------------------------------------------------------------- rank / worker splitting


@pytest.mark.parametrize("world,workers", [(2, 1), (2, 2), (3, 4)])
def test_rank_worker_split_disjoint_and_covering(pool_setup, world, workers):
    ps = pool_setup  # 6 shards: (3, 4) = 12 slots falls back to sample-level splitting
    parts = []
    for rank in range(world):
        for w in range(workers):
            s = upstream(ps, rank=rank, world_size=world, worker_id=w, num_workers=workers)
            parts.append([x["__uid__"] for x in s.iter_epoch(0)])
    if world * workers > 7:  # sample-level fallback: no slot is empty
        assert all(parts)
    flat = [u for p in parts for u in p]
    assert len(flat) == len(set(flat)) == 50
    assert set(flat) == set(ps["in_shards"])


def test_assign_shards():
    shards = [f"s{i}" for i in range(5)]
    got = [assign_shards(shards, seed=0, epoch=0, slot=Slot(0, 1, w, 2)) for w in range(2)]
    assert sorted(got[0][0] + got[1][0]) == shards and got[0][1:] == (1, 0)
    other_epoch = assign_shards(shards, seed=0, epoch=1, slot=Slot(0, 1, 0, 1))[0]
    assert sorted(other_epoch) == shards
    few = assign_shards(shards[:2], seed=0, epoch=0, slot=Slot(1, 2, 1, 2))
    assert sorted(few[0]) == shards[:2] and few[1:] == (4, 3)
    with pytest.raises(FlytInputError):
        Slot(rank=2, world_size=2)


# --------------------------------------------------------------------------- downstream


def write_downstream(root: Path, labels, per_shard=4):
    root.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(labels), per_shard):
        write_tar(root / f"{s // per_shard:08d}.tar", [
            {"__key__": f"k{i:04d}", "jpg": jpeg(i), "cls": str(labels[i]).encode()}
            for i in range(s, min(s + per_shard, len(labels)))
        ])


def test_downstream_labels_and_resume(tmp_path):
    labels = [i % 3 for i in range(14)]
    write_downstream(tmp_path / "ds", labels)
    ds = DownstreamStream(str(tmp_path / "ds"), image_transform=transform, batch_size=7, seed=0,
                          shuffle_buffer=5, num_classes=3)
    batches = take(ds.batches(), 4)
    for b in batches:
        assert b["labels"].dtype == torch.long and b["images"].shape == (7, 3, IMG, IMG)
        for key, label in zip(b["keys"], b["labels"].tolist()):
            assert label == labels[int(key.rsplit(":k", 1)[1])]
    assert sorted(k for b in batches[:2] for k in b["keys"]) == sorted(set(k for b in batches for k in b["keys"]))
    again = DownstreamStream(str(tmp_path / "ds"), image_transform=transform, batch_size=7, seed=0, shuffle_buffer=5)
    assert [b["keys"] for b in take(again.batches(2), 2)] == [b["keys"] for b in batches[2:]]


def test_downstream_label_errors(tmp_path):
    write_downstream(tmp_path / "neg", [0, -1])
    ds = DownstreamStream(str(tmp_path / "neg"), image_transform=transform, batch_size=2, shuffle_buffer=0)
    with pytest.raises(FlytInputError, match="negative"):
        next(ds.batches())
    write_downstream(tmp_path / "big", [0, 5])
    ds = DownstreamStream(str(tmp_path / "big"), image_transform=transform, batch_size=2, num_classes=3,
                          shuffle_buffer=0)
    with pytest.raises(FlytInputError, match=r"k0001.*00000000\.tar.*out of range"):
        next(ds.batches())


def test_empty_downstream_set(tmp_path):
    (tmp_path / "ds").mkdir()
    write_tar(tmp_path / "ds" / "00000000.tar", [{"__key__": "a", "txt": b"no image, no label"}])
    ds = DownstreamStream(str(tmp_path / "ds"), image_transform=transform, batch_size=2)
    with pytest.raises(FlytInputError, match="empty downstream set"):
        next(ds.batches())
    with pytest.raises(FlytInputError, match="does not exist"):
        DownstreamStream(str(tmp_path / "nope"), image_transform=transform, batch_size=2)
    (tmp_path / "no_tars").mkdir()
    with pytest.raises(FlytInputError, match="empty downstream set.*no .tar"):
        DownstreamStream(str(tmp_path / "no_tars"), image_transform=transform, batch_size=2)


def test_poolgen_shards_join_without_decoding(tmp_path):
    """poolgen's fake-JPEG shards join fine; decoding them is a clear error naming the sample."""
    meta, hex_uids = write_metadata(tmp_path / "metadata", sizes=(30, 30))
    kept = write_image_shards(tmp_path / "shards", hex_uids, per_shard=20, keep_fraction=0.8)
    index = UidIndex(hex_to_uids(hex_uids))
    report = scan_upstream(str(tmp_path / "shards"), index)
    assert report["joined"] == len(kept) and report["features_without_images"] == 60 - len(kept)
    stream = UpstreamStream(str(tmp_path / "shards"), index, FeatureTable(np.zeros((60, 1))),
                            image_transform=transform, tokenizer=tokenizer, batch_size=4)
    raw = next(stream.iter_raw_batches())
    assert all(s["__uid__"] == hex_uids[s["__pos__"]] for s in raw)
    with pytest.raises(FlytInputError, match="cannot decode image"):
        stream.decode(raw)


# --------------------------------------------------------------------------- downstream build


def image_folder(root: Path, counts=(3, 4, 2)) -> Path:
    for c, n in enumerate(counts):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (12 + i, 9), (40 * c, 0, 0)).save(d / f"img{i}.png")
    return root


def test_downstream_build_cli(tmp_path):
    src = image_folder(tmp_path / "src")
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(downstream_group, ["build", str(src), str(out), "--per-shard", "4", "--seed", "1",
                                           "--image-size", "6"])
    assert res.exit_code == 0, res.output
    tars = sorted(out.glob("*.tar"))
    assert [t.name for t in tars] == ["00000000.tar", "00000001.tar", "00000002.tar"]
    per = [list(iter_tar(str(t))) for t in tars]
    assert [len(p) for p in per] == [4, 4, 1]
    for samples in per:
        for s in samples:
            meta = json.loads(s["json"])
            assert int(s["cls"]) == int(meta["src"].split("/")[0].split("_")[1]) == meta["label"]
            with Image.open(io.BytesIO(s["jpg"])) as im:
                assert im.format == "JPEG" and min(im.size) == 6
    classes = json.loads((out / "classes.json").read_text())
    assert classes["classnames"] == ["class 0", "class 1", "class 2"] and "{}" in classes["templates"][0]
    build = json.loads((out / "build.json").read_text())
    assert build["count"] == 9 and build["per_shard"] == 4 and build["seed"] == 1 and build["src"] == str(src)
    # readable by the downstream stream
    ds = DownstreamStream(str(out), image_transform=transform, batch_size=9, num_classes=3)
    assert sorted(next(ds.batches())["labels"].tolist()) == [0] * 3 + [1] * 4 + [2] * 2
    # refusal to overwrite, then overwrite
    res = runner.invoke(downstream_group, ["build", str(src), str(out)])
    assert res.exit_code != 0 and "not empty" in res.output
    res = runner.invoke(downstream_group, ["build", str(src), str(out), "--overwrite", "--per-shard", "100"])
    assert res.exit_code == 0, res.output
    assert len(list(out.glob("*.tar"))) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_downstream_build_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(downstream_group, ["build", str(tmp_path / "missing"), str(tmp_path / "o")])
    assert res.exit_code != 0 and "does not exist" in res.output
    (tmp_path / "flat").mkdir()
    with pytest.raises(FlytInputError, match="no class folders"):
        build_downstream_shards(tmp_path / "flat", tmp_path / "o")
    (tmp_path / "flat" / "a").mkdir()
    with pytest.raises(FlytInputError, match="no images"):
        build_downstream_shards(tmp_path / "flat", tmp_path / "o")
    src = image_folder(tmp_path / "src", counts=(2, 2))
    (src / "class_1" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(FlytInputError, match="broken.jpg"):
        build_downstream_shards(src, tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_downstream_build_same_seed_same_shards(tmp_path):
    src = image_folder(tmp_path / "src")
    a = build_downstream_shards(src, tmp_path / "a", per_shard=5, seed=3, progress=False)
    build_downstream_shards(src, tmp_path / "b", per_shard=5, seed=3, progress=False)
    build_downstream_shards(src, tmp_path / "c", per_shard=5, seed=4, progress=False)
    def order(d):
        return [json.loads(s["json"])["src"] for t in sorted(d.glob("*.tar")) for s in iter_tar(str(t))]

    assert order(tmp_path / "a") == order(tmp_path / "b") != order(tmp_path / "c")
    assert a["num_shards"] == 2


def test_open_clip_transform_and_tokenizer(pool_setup):
    from flyt_datacomp.clip_models import TINY_CLIP_CONFIG
    from flyt_datacomp.clip_models import tokenizer as clip_tokenizer
    from flyt_datacomp.flyt.decode import default_image_transform

    ps = pool_setup
    stream = UpstreamStream(ps["shards"], ps["index"], FeatureTable(ps["scores"]),
                            image_transform=default_image_transform(32),
                            tokenizer=clip_tokenizer(TINY_CLIP_CONFIG), batch_size=3)
    b = next(stream.batches())
    assert b["images"].shape == (3, 3, 32, 32) and b["texts"].shape == (3, 16)
    assert b["texts"].dtype == torch.long and b["features"].shape == (3, 2)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_downstream_build_overwrite_never_removes_its_inputs(tmp_path):
    src = image_folder(tmp_path / "data" / "src")
    (tmp_path / "data" / "notes.txt").write_text("keep")
    before = _files(tmp_path / "data")
    runner = CliRunner()
    for out in (src, f"{src}/", src / "class_0" / ".." , tmp_path / "data", src / "shards"):
        res = runner.invoke(downstream_group, ["build", str(src), "--output-dir", str(out), "--overwrite", "--quiet"])
        assert res.exit_code == 2 and "source folder" in res.output, (out, res.output)
        assert _files(tmp_path / "data") == before, out
    link = tmp_path / "link"
    link.symlink_to(src)
    res = runner.invoke(downstream_group, ["build", str(src), "--output-dir", str(link), "--overwrite", "--quiet"])
    assert res.exit_code == 2 and "source folder" in res.output and _files(tmp_path / "data") == before
    assert not [p for p in (tmp_path / "data").rglob(".*")]  # no temporary folder left in the source


def test_downstream_build_overwrite_replaces_only_its_own_output(tmp_path):
    src = image_folder(tmp_path / "src")
    runner = CliRunner()
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("keep")
    res = runner.invoke(downstream_group, ["build", str(src), "--output-dir", str(other), "--overwrite", "--quiet"])
    assert res.exit_code == 2 and "build.json" in res.output and (other / "thesis.tex").read_text() == "keep"
    out = tmp_path / "out"
    assert runner.invoke(downstream_group, ["build", str(src), "--output-dir", str(out), "--quiet"]).exit_code == 0
    classes = out / "my-classes.json"
    classes.write_text(json.dumps({"classnames": ["a", "b", "c"]}))
    res = runner.invoke(downstream_group, ["build", str(src), "--output-dir", str(out), "--overwrite", "--quiet",
                                           "--classes", str(classes)])
    assert res.exit_code == 2 and "class file" in res.output and classes.is_file()
    link = tmp_path / "link-to-out"
    link.symlink_to(out)
    res = runner.invoke(downstream_group, ["build", str(src), "--output-dir", str(link), "--overwrite", "--quiet",
                                           "--per-shard", "2"])
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and len(list(out.glob("*.tar"))) == 5 and not classes.exists()


def test_downstream_build_overwrite_leaves_a_folder_whose_build_json_it_did_not_write(tmp_path):
    """A demo pool's root (its build.json marks the pool, written by the demo's builder), another
    program's build.json and an empty one: `--overwrite` refuses each, leaving every byte in place."""
    from flyt_datacomp.io import provenance

    src = image_folder(tmp_path / "src")
    runner = CliRunner()
    for name, marker in (("demo-pool", provenance(kind="demo-pool", version_tag="demo-v4", parameters={})),
                         ("webapp", {"name": "my-app", "version": "1.0"}), ("empty", {})):
        pool = tmp_path / name
        (pool / "metadata").mkdir(parents=True)
        (pool / "metadata" / "00000000.parquet").write_bytes(b"PAR1 pool metadata")
        (pool / "build.json").write_text(json.dumps(marker))
        before = _files(pool)
        res = runner.invoke(downstream_group, ["build", str(src), "--output-dir", str(pool), "--overwrite", "--quiet"])
        assert res.exit_code == 2, res.output
        assert "did not write (its build.json is no record written by downstream build)" in res.output
        assert _files(pool) == before and len(res.output.strip().splitlines()) == 1
    out = tmp_path / "out"  # its own earlier output is still replaced
    assert runner.invoke(downstream_group, ["build", str(src), "--output-dir", str(out), "--quiet"]).exit_code == 0
    assert json.loads((out / "build.json").read_text())["written_by"] == "downstream build"
    res = runner.invoke(downstream_group, ["build", str(src), "--output-dir", str(out), "--overwrite", "--quiet",
                                           "--per-shard", "2"])
    assert res.exit_code == 0, res.output and len(list(out.glob("*.tar"))) == 5


def test_downstream_build_into_an_impossible_folder_is_one_line(tmp_path):
    src = image_folder(tmp_path / "src")
    (tmp_path / "a-file").write_text("x")
    res = CliRunner().invoke(downstream_group, ["build", str(src), "--output-dir", str(tmp_path / "a-file" / "out")])
    assert res.exit_code == 2 and "cannot write the output folder" in res.output
