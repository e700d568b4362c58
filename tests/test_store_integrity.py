"""The input store against hostile use: a store of another pool, inputs that change under it, names
that collide with its layout, damaged or hand-edited files, concurrent writers, dying workers, a
full disk, a missing GPU, Ray cleanup."""

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from poolgen import write_image_shards, write_metadata

from flyt_datacomp.cli import main as cli
from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.flyt.features import FeatureSpec, read_features
from flyt_datacomp.inputs import compute_inputs
from flyt_datacomp.pool import Pool
from flyt_datacomp.store import InputStore
from flyt_datacomp.uids import uids_to_hex

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def pool_dir(tmp_path):
    root, _ = write_metadata(tmp_path / "metadata", sizes=(60, 50, 90))
    return root


@pytest.fixture
def test_providers():
    import storeproviders

    storeproviders.register()
    yield storeproviders
    storeproviders.unregister()


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *needles):
    """The command failed with exit 2 and one ``Error:`` line holding every needle, no traceback."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def filter_args(pool_dir, store, tmp_path, *extra):
    return ["filter", "--metadata-dir", pool_dir, "--inputs-dir", store, "--fraction", "0.3", "--quiet",
            "--output", tmp_path / f"out{time.monotonic_ns()}.npy", *extra]


def stored(store_dir, name):
    """A stored input's raw values straight from the shard files, in the manifest's shard order."""
    manifest = json.loads((Path(store_dir) / "inputs.json").read_text())
    return np.concatenate([pq.read_table(Path(store_dir) / f"{s['stem']}.parquet").column(name).to_numpy()
                           for s in manifest["shards"]])


def shard_files(store):
    return sorted(Path(store).glob("*.parquet"))


# ------------------------------------------------------------------ a store of another pool


def copy_pool(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def reorder_shard(parquet: Path, perm: np.ndarray) -> None:
    """Reorder one metadata shard's rows (its parquet and npz alike): the same uids, another order."""
    table = pq.read_table(parquet)
    pq.write_table(table.take(pa.array(perm)), parquet)
    npz = parquet.with_suffix(".npz")
    with np.load(npz) as z:
        arrays = {k: z[k][perm] for k in z.files}
    np.savez(npz, **arrays)


def replace_uids(parquet: Path, seed: int) -> None:
    """Give one metadata shard other uids (same file name, same row count)."""
    from flyt_datacomp.uids import random_uids

    table = pq.read_table(parquet)
    hexes = uids_to_hex(random_uids(table.num_rows, seed))
    table = table.set_column(table.column_names.index("uid"), "uid", pa.array(list(hexes), pa.string()))
    pq.write_table(table, parquet)


@pytest.mark.parametrize("drift", ["reordered", "other uids"])
def test_a_store_is_refused_for_a_pool_with_the_same_shards_but_other_uids(pool_dir, tmp_path, drift):
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["s=column:clip_l14_similarity_score"], progress=False)
    other = copy_pool(pool_dir, tmp_path / "other")
    sizes = [s.num_rows for s in Pool(str(pool_dir), progress=False).shards]
    victim = sorted(other.glob("*.parquet"))[1]
    if drift == "reordered":
        reorder_shard(victim, np.random.default_rng(0).permutation(sizes[1]))
    else:
        replace_uids(victim, seed=77)
    pool = Pool(str(other), progress=False)
    assert [s.num_rows for s in pool.shards] == sizes and pool.size == 200
    # every read path: score source, mask, M-FLYT features, compute/resume
    r = invoke(filter_args(other, store, tmp_path, "--score", "store:s"))
    one_line_error(r, "another pool", victim.stem)
    r = invoke(filter_args(other, store, tmp_path, "--score", "clip_l14_similarity_score", "--mask", "store:s>=0.2"))
    one_line_error(r, "another pool", victim.stem)
    with pytest.raises(FlytInputError, match="another pool"):
        read_features(pool, FeatureSpec("m-flyt", ("s",), inputs_dir=str(store)))
    with pytest.raises(FlytInputError, match="another pool"):
        compute_inputs(str(other), str(store), ["s=column:clip_l14_similarity_score"], progress=False)
    with pytest.raises(FlytInputError, match="another pool"):
        compute_inputs(str(other), str(store), ["t=column:clip_b32_similarity_score"], progress=False)
    # the store's own pool still reads it
    r = invoke(filter_args(pool_dir, store, tmp_path, "--score", "store:s"))
    assert r.exit_code == 0, r.output


def test_a_shard_file_swapped_with_another_of_the_same_size_is_caught(tmp_path):
    root, _ = write_metadata(tmp_path / "metadata", sizes=(40, 40))
    store = tmp_path / "store"
    compute_inputs(str(root), str(store), ["s=column:clip_l14_similarity_score"], progress=False)
    a, b = shard_files(store)
    a.rename(tmp_path / "a")
    b.rename(a)
    (tmp_path / "a").rename(b)
    pool = Pool(str(root), progress=False)
    with pytest.raises(FlytInputError, match=f"is damaged: shard file {a.name} holds other uids"):
        InputStore(store).column("s", pool)


# ------------------------------------------------------------------ inputs that change under the store


def write_scores(path: Path, hexes, values) -> None:
    pq.write_table(pa.table({"uid": list(hexes), "score": values}), path)


def kill_after_first_shard(monkeypatch):
    """Make the next compute stop (as a kill would) right after its first shard file is written."""
    real = InputStore.write_shard

    def write_then_die(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(InputStore, "write_shard", write_then_die)


def test_a_score_file_changed_between_a_kill_and_the_resume_is_refused(pool_dir, tmp_path, monkeypatch):
    pool = Pool(str(pool_dir), progress=False)
    hexes = uids_to_hex(pool.uids)
    scores = tmp_path / "hype.parquet"
    write_scores(scores, hexes, np.arange(pool.size, dtype=np.float64))
    store = tmp_path / "store"
    spec = [f"hype=file:{scores}"]
    with monkeypatch.context() as m:
        kill_after_first_shard(m)
        with pytest.raises(KeyboardInterrupt):
            compute_inputs(str(pool_dir), str(store), spec, progress=False)
    new = 1000 + np.arange(pool.size, dtype=np.float64)
    write_scores(scores, hexes, new)
    with pytest.raises(FlytInputError, match=r"changed.*`recompute` hype"):
        compute_inputs(str(pool_dir), str(store), spec, progress=False)
    entries = compute_inputs(str(pool_dir), str(store), spec, recompute=["hype"], progress=False)
    assert entries["hype"]["status"] == "complete"
    np.testing.assert_array_equal(InputStore(store).column("hype", pool), new)


def test_a_recompute_cut_short_and_resumed_without_recompute_never_mixes(pool_dir, tmp_path, monkeypatch):
    pool = Pool(str(pool_dir), progress=False)
    hexes = uids_to_hex(pool.uids)
    scores = tmp_path / "hype.parquet"
    write_scores(scores, hexes, np.zeros(pool.size))
    store = tmp_path / "store"
    spec = [f"hype=file:{scores}"]
    compute_inputs(str(pool_dir), str(store), spec, progress=False)
    write_scores(scores, hexes, np.ones(pool.size))
    with monkeypatch.context() as m:
        kill_after_first_shard(m)
        with pytest.raises(KeyboardInterrupt):
            compute_inputs(str(pool_dir), str(store), spec, recompute=["hype"], progress=False)
    with pytest.raises(FlytInputError, match="not complete"):
        InputStore(store).column("hype", pool)
    compute_inputs(str(pool_dir), str(store), spec, progress=False)  # the resume: every shard of the new file
    assert (InputStore(store).column("hype", pool) == 1).all()


def test_a_reader_meeting_a_writer_at_work_says_so(pool_dir, tmp_path):
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["x=column:clip_b32_similarity_score"], progress=False)
    shard_files(store)[0].unlink()
    with InputStore(store).locked():
        with pytest.raises(FlytInputError, match="another run is writing the store now"):
            InputStore(store).column("x", Pool(str(pool_dir), progress=False))


def test_a_changed_input_file_of_a_complete_input_is_refused(pool_dir, tmp_path):
    pool = Pool(str(pool_dir), progress=False)
    hexes = uids_to_hex(pool.uids)
    scores = tmp_path / "hype.csv"
    scores.write_text("uid,score\n" + "".join(f"{u},{i}\n" for i, u in enumerate(hexes)))
    rng = np.random.default_rng(0)
    targets = tmp_path / "targets.npy"
    np.save(targets, rng.normal(size=(5, 8)))
    store = tmp_path / "store"
    specs = [f"hype=file:{scores}", f"ns=normsim:{targets}"]
    compute_inputs(str(pool_dir), str(store), specs, progress=False)
    # the same size, other bytes
    scores.write_text("uid,score\n" + "".join(f"{u},{i % 10}\n" for i, u in enumerate(hexes)).replace(",0\n", ",9\n"))
    with pytest.raises(FlytInputError, match=f"hype.*{scores.name}.*changed"):
        compute_inputs(str(pool_dir), str(store), specs[:1], progress=False)
    np.save(targets, rng.normal(size=(5, 8)))
    with pytest.raises(FlytInputError, match=f"ns.*{targets.name}.*changed"):
        compute_inputs(str(pool_dir), str(store), specs[1:], progress=False)
    compute_inputs(str(pool_dir), str(store), specs, recompute=["hype", "ns"], progress=False)
    entry = InputStore(store).entry("ns")
    assert entry["sources"][str(targets)]["bytes"] == targets.stat().st_size


def test_a_classifier_is_refitted_when_its_target_file_changes_at_the_same_size(pool_dir, tmp_path, monkeypatch):
    from flyt_datacomp.inputs.providers import classifier as classifier_module

    rng = np.random.default_rng(1)
    targets = tmp_path / "t.npy"
    np.save(targets, rng.normal(size=(20, 8)))
    store = tmp_path / "store"
    spec = [f"c=classifier:{targets}:steps=20:batch=16:warmup=2"]
    compute_inputs(str(pool_dir), str(store), spec, progress=False)
    fits = []
    real = classifier_module.fit_logistic
    monkeypatch.setattr(classifier_module, "fit_logistic", lambda *a, **k: fits.append(1) or real(*a, **k))
    compute_inputs(str(pool_dir), str(store), spec, recompute=["c"], progress=False)
    assert fits == []  # unchanged: the fitted classifier is reused
    np.save(targets, rng.normal(size=(20, 8)))
    compute_inputs(str(pool_dir), str(store), spec, recompute=["c"], progress=False)
    assert fits == [1]


class FakeScorer:
    """Stands in for an open_clip model: every image's cosine is the number in the weights file."""

    def __init__(self, weights):
        self.value = float(Path(weights).read_text())

    def score_tar(self, url, fs, batch):
        from flyt_datacomp.tars import iter_tar
        from flyt_datacomp.uids import hex_to_uids

        uids = [json.loads(s["json"])["uid"] for s in iter_tar(url, extensions=("json",), fs=fs) if s.get("json")]
        return hex_to_uids(np.array(uids)), np.full(len(uids), self.value, np.float32)


def test_openclip_results_of_other_weights_are_not_reused(tmp_path, monkeypatch):
    import flyt_datacomp.inputs.providers.models as models_module

    root, hexes = write_metadata(tmp_path / "metadata", sizes=(30, 30))
    write_image_shards(tmp_path / "shards", hexes, keep_fraction=1.0)
    monkeypatch.setattr(models_module.OpenClipInput, "scorer", lambda self, device: FakeScorer(self.weights()))
    weights = tmp_path / "w.pt"
    weights.write_text("0.25")
    store = tmp_path / "store"
    spec = [f"dfn=openclip:tiny:{weights}"]
    compute_inputs(str(root), str(store), spec, shards_dir=str(tmp_path / "shards"), device="cpu", progress=False)
    assert (stored(store, "dfn") == 0.25).all()
    weights.write_text("0.75")
    compute_inputs(str(root), str(store), spec, shards_dir=str(tmp_path / "shards"), device="cpu",
                   recompute=["dfn"], progress=False)
    assert (stored(store, "dfn") == 0.75).all()


def test_a_model_input_over_a_recomputed_stored_input_is_refused(pool_dir, tmp_path):
    import torch

    from flyt_datacomp.flyt.models import MixingModel, save_scoring_model

    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["a=column:clip_b32_similarity_score"], progress=False)
    stack = MixingModel(["a"], [0.0], [1.0])
    with torch.no_grad():
        stack.weight.copy_(torch.tensor([2.0]))
    save_scoring_model(tmp_path / "s.pt", stack)
    compute_inputs(str(pool_dir), str(store), [f"m=model:{tmp_path / 's.pt'}"], progress=False)
    compute_inputs(str(pool_dir), str(store), ["a=column:clip_l14_similarity_score"], recompute=["a"], progress=False)
    with pytest.raises(FlytInputError, match=r"m.*reads input 'a'.*recomputed.*`recompute` m"):
        compute_inputs(str(pool_dir), str(store), [f"m=model:{tmp_path / 's.pt'}"], progress=False)
    compute_inputs(str(pool_dir), str(store), [f"m=model:{tmp_path / 's.pt'}"], recompute=["m"], progress=False)
    l14 = Pool(str(pool_dir), progress=False).column("clip_l14_similarity_score").astype(np.float32)
    np.testing.assert_allclose(stored(store, "m"), 2 * l14, rtol=1e-6)  # the model over the recomputed input


# ------------------------------------------------------------------ names and foreign files


@pytest.mark.parametrize("spec", ["uid=column:clip_b32_similarity_score", "column:uid", "UID=column:original_width"])
def test_names_the_layout_uses_are_refused(pool_dir, tmp_path, spec):
    store = tmp_path / "store"
    with pytest.raises(FlytInputError, match="reserved"):
        compute_inputs(str(pool_dir), str(store), [spec], progress=False)
    assert not store.exists()


def test_an_input_named_like_another_pool_column_is_refused(pool_dir, tmp_path):
    # M-FLYT reads a pool column before a stored input of the same name: the stored one would never be read
    with pytest.raises(FlytInputError, match="clip_l14_similarity_score.*column of the pool"):
        compute_inputs(str(pool_dir), str(tmp_path / "s"), ["clip_l14_similarity_score=column:clip_b32_similarity_score"],
                       progress=False)
    compute_inputs(str(pool_dir), str(tmp_path / "s"), ["column:clip_l14_similarity_score"], progress=False)


def test_shard_columns_the_manifest_does_not_record_are_not_trusted(pool_dir, tmp_path):
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["x=column:clip_b32_similarity_score"], progress=False)
    pool = Pool(str(pool_dir), progress=False)
    b32 = pool.column("clip_b32_similarity_score").astype(np.float32)  # what input x holds (stored as float32)
    np.testing.assert_array_equal(InputStore(store).column("x", pool), b32)
    # inputs.json deleted: the folder holds shard files but is no store any more
    (store / "inputs.json").unlink()
    before = {p.name: p.read_bytes() for p in shard_files(store)}
    with pytest.raises(FlytInputError, match="not an input store.*holds"):
        compute_inputs(str(pool_dir), str(store), ["x=column:clip_l14_similarity_score"], progress=False)
    assert before == {p.name: p.read_bytes() for p in shard_files(store)}  # nothing the user had was touched
    # a shard file of another store of the same pool, holding a column of the same name
    a, b = tmp_path / "a", tmp_path / "b"
    compute_inputs(str(pool_dir), str(a), ["x=column:clip_b32_similarity_score"], progress=False)
    compute_inputs(str(pool_dir), str(b), ["x=column:clip_l14_similarity_score"], progress=False)
    victim = shard_files(a)[1].name
    shutil.copy(b / victim, a / victim)
    with pytest.raises(FlytInputError, match=f"{victim}.*does not hold input 'x'"):
        InputStore(a).column("x", pool)
    r = invoke(filter_args(pool_dir, a, tmp_path, "--score", "store:x"))
    one_line_error(r, victim)
    compute_inputs(str(pool_dir), str(a), ["x=column:clip_b32_similarity_score"], progress=False)  # heals that shard
    np.testing.assert_array_equal(InputStore(a).column("x", pool), b32)


def test_a_store_is_not_made_in_a_folder_that_holds_other_files(pool_dir, tmp_path):
    before = sorted(os.listdir(pool_dir))
    with pytest.raises(FlytInputError, match="not an input store"):
        compute_inputs(str(pool_dir), str(pool_dir), ["column:clip_b32_similarity_score"], progress=False)
    assert sorted(os.listdir(pool_dir)) == before  # not even a lock file
    r = invoke(["inputs", "compute", "--metadata-dir", pool_dir, "--inputs-dir", pool_dir, "--input",
                "column:clip_b32_similarity_score", "--quiet"])
    one_line_error(r, "not an input store", "--inputs-dir")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "README").write_text("mine")
    with pytest.raises(FlytInputError, match="not an input store"):
        compute_inputs(str(pool_dir), str(other), ["column:clip_b32_similarity_score"], progress=False)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FlytInputError, match="not a folder"):
        compute_inputs(str(pool_dir), str(a_file), ["column:clip_b32_similarity_score"], progress=False)
    # an empty folder, or one a killed first run left its lock in, is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".lock").touch()
    compute_inputs(str(pool_dir), str(empty), ["column:clip_b32_similarity_score"], progress=False)


def test_an_older_store_format_is_refused_with_the_way_out(pool_dir, tmp_path):
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["x=column:clip_b32_similarity_score"], progress=False)
    manifest = json.loads((store / "inputs.json").read_text())
    manifest["format"] = 1
    (store / "inputs.json").write_text(json.dumps(manifest))
    pool = Pool(str(pool_dir), progress=False)
    for call in (lambda: InputStore(store).column("x", pool),
                 lambda: compute_inputs(str(pool_dir), str(store), ["x=column:clip_b32_similarity_score"],
                                        progress=False)):
        with pytest.raises(FlytInputError, match="older version.*compute it again"):
            call()
    one_line_error(invoke(["inputs", "show", "--inputs-dir", store]), "older version")


# ------------------------------------------------------------------ damaged and hand-edited stores


def _drop_column(store):
    path = shard_files(store)[0]
    pq.write_table(pq.read_table(path).drop_columns(["x"]), path)
    return path.name


def _truncate(store):
    path = shard_files(store)[1]
    path.write_bytes(path.read_bytes()[:200])
    return path.name


def _delete(store):
    path = shard_files(store)[2]
    path.unlink()
    return path.name


def _edit_manifest(edit):
    def damage(store):
        path = store / "inputs.json"
        data = json.loads(path.read_text())
        path.write_text(json.dumps(edit(data)))
        return "inputs.json"
    return damage


def _set(data, keys, value):
    node = data
    for k in keys[:-1]:
        node = node[k]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


DAMAGE = {
    "shard deleted": _delete,
    "shard truncated": _truncate,
    "column dropped": _drop_column,
    "manifest a list": _edit_manifest(lambda d: [d]),
    "manifest without shards": _edit_manifest(lambda d: _set(d, ["shards"], KeyError)),
    "entry without its statistics": _edit_manifest(lambda d: _set(d, ["inputs", "x", "mean"], KeyError)),
    "rows not a number": _edit_manifest(lambda d: _set(d, ["shards", 0, "rows"], "sixty")),
    "fill value not a number": _edit_manifest(lambda d: _set(d, ["inputs", "x", "fill_value"], "low")),
    "mean not a number": _edit_manifest(lambda d: _set(d, ["inputs", "x", "mean"], [1])),
    "inputs a list": _edit_manifest(lambda d: _set(d, ["inputs"], ["x"])),
    "manifest not json": lambda store: (store / "inputs.json").write_text('{"format": 2, ') and "inputs.json",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_store_is_named_by_every_reader(pool_dir, tmp_path, damage):
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["x=column:clip_b32_similarity_score"], progress=False)
    part = DAMAGE[damage](store)
    r = invoke(["inputs", "show", "--inputs-dir", store])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert part in r.output and "is damaged" in r.output, r.output
    assert not any(line.startswith("x ") and "complete" in line for line in r.output.splitlines()), r.output
    one_line_error(invoke(filter_args(pool_dir, store, tmp_path, "--score", "store:x")), part)
    one_line_error(invoke(filter_args(pool_dir, store, tmp_path, "--score", "clip_l14_similarity_score",
                                      "--mask", "store:x>0")), part)
    with pytest.raises(FlytInputError, match=part):
        read_features(Pool(str(pool_dir), progress=False), FeatureSpec("m-flyt", ("x",), inputs_dir=str(store)))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_values_the_manifest_says_an_input_cannot_have_are_refused(pool_dir, tmp_path, value):
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["x=column:clip_b32_similarity_score"], progress=False)
    path = shard_files(store)[1]
    table = pq.read_table(path)  # a hand edit that keeps the file's metadata
    x = table.column("x").to_numpy().copy()
    x[3] = value
    pq.write_table(table.set_column(table.column_names.index("x"), "x", pa.array(x)), path)
    # a mask would silently drop (NaN) or keep (inf) the row
    one_line_error(invoke(filter_args(pool_dir, store, tmp_path, "--score", "clip_l14_similarity_score", "--mask",
                                      "store:x>0")), path.name, "input 'x'")
    one_line_error(invoke(filter_args(pool_dir, store, tmp_path, "--score", "store:x")), path.name, "input 'x'")


@pytest.mark.parametrize("damage", ["shard deleted", "shard truncated", "column dropped"])
def test_compute_repairs_damaged_shards_and_keeps_the_rest(pool_dir, tmp_path, damage):
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["x=column:clip_b32_similarity_score"], progress=False)
    pool = Pool(str(pool_dir), progress=False)
    want = pool.column("clip_b32_similarity_score").astype(np.float32)
    name = DAMAGE[damage](store)
    kept = {p.name: p.stat().st_mtime_ns for p in shard_files(store) if p.name != name}
    compute_inputs(str(pool_dir), str(store), ["x=column:clip_b32_similarity_score"], progress=False)
    assert kept == {p.name: p.stat().st_mtime_ns for p in shard_files(store) if p.name != name}
    np.testing.assert_array_equal(InputStore(store).column("x", pool), want)
    assert invoke(["inputs", "show", "--inputs-dir", store]).exit_code == 0


# ------------------------------------------------------------------ one writer at a time

WRITER = """
import sys, time
from pathlib import Path
import storeproviders
storeproviders.register()
from flyt_datacomp.cli import main
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
sys.argv = ["flyt-datacomp", *sys.argv[2:]]
main()
"""


def test_six_writers_started_together_leave_one_complete_store(pool_dir, tmp_path):
    store, go = tmp_path / "store", tmp_path / "go"
    args = ["inputs", "compute", "--metadata-dir", str(pool_dir), "--inputs-dir", str(store), "--quiet",
            "--input", "s=sleepy:4", "--input", "c=column:clip_l14_similarity_score"]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(go), *args], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(6)]
    time.sleep(3)  # every writer has imported everything and waits for the go
    go.touch()
    results = [(p.wait(timeout=120), p.stdout.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert set(codes) <= {0, 2} and codes.count(0) >= 1 and codes.count(2) >= 1, results
    for rc, out in results:
        if rc == 2:
            assert out.count("Error:") == 1 and "another run is writing the input store" in out, out
            assert "Traceback" not in out
    pool = Pool(str(pool_dir), progress=False)
    store_ = InputStore(store)
    assert store_.input_names() == ["s", "c"]
    np.testing.assert_array_equal(store_.column("s", pool), pool.column("clip_b32_similarity_score").astype(np.float32))
    np.testing.assert_array_equal(store_.column("c", pool), pool.column("clip_l14_similarity_score").astype(np.float32))
    assert (store / ".lock").exists()
    assert sorted(p.name for p in store.iterdir()) == sorted([".lock", "inputs.json", "work",
                                                             *(p.name for p in shard_files(store))])
    assert invoke(["inputs", "show", "--inputs-dir", store]).exit_code == 0


def test_the_lock_file_is_never_removed_or_rewritten(pool_dir, tmp_path):
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["column:clip_b32_similarity_score"], progress=False)
    lock = store / ".lock"
    inode, content = lock.stat().st_ino, lock.read_bytes()
    compute_inputs(str(pool_dir), str(store), ["column:clip_l14_similarity_score"], progress=False)
    with pytest.raises(FlytInputError):
        compute_inputs(str(pool_dir), str(store), ["bad=column:nope"], progress=False)
    assert lock.stat().st_ino == inode and lock.read_bytes() == content


# ------------------------------------------------------------------ a worker killed


def test_a_killed_worker_is_one_line_and_a_rerun_resumes(pool_dir, tmp_path, test_providers):
    store, trigger = tmp_path / "store", tmp_path / "trigger"
    trigger.touch()
    args = ["inputs", "compute", "--metadata-dir", pool_dir, "--inputs-dir", store, "--quiet", "--workers", "2",
            "--input", f"k=killer:{trigger}"]
    one_line_error(invoke(args), "worker process died")
    pool = Pool(str(pool_dir), progress=False)
    stems = [Path(s.parquet).stem for s in pool.shards]
    done = {p.stem: p.stat().st_mtime_ns for p in shard_files(store)}
    assert sorted(done) == sorted(stems[:-1])  # the finished shards were written
    trigger.unlink()
    Path(f"{trigger}.log").unlink()
    r = invoke(args)
    assert r.exit_code == 0, r.output
    assert Path(f"{trigger}.log").read_text().split() == [stems[-1]]  # only the unfinished shard ran again
    assert {p.stem: p.stat().st_mtime_ns for p in shard_files(store) if p.stem in done} == done
    np.testing.assert_array_equal(InputStore(store).column("k", pool),
                                  pool.column("clip_l14_similarity_score").astype(np.float32))


# ------------------------------------------------------------------ Ray


class FakeRay:
    """The few Ray calls the executor makes, run in this process, recording init and shutdown."""

    def __init__(self, initialized=False):
        self.initialized = initialized
        self.calls = []

    def is_initialized(self):
        return self.initialized

    def init(self, address=None, **kwargs):
        self.calls.append(("init", address))
        self.initialized = True

    def shutdown(self):
        self.calls.append(("shutdown",))
        self.initialized = False

    def remote(self, **kwargs):
        def wrap(fn):
            class Remote:
                @staticmethod
                def remote(task):
                    return FakeRef(fn(task))
            return Remote
        return wrap

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.value


class FakeRef:
    def __init__(self, value):
        self.value = value


@pytest.fixture
def fake_ray(monkeypatch):
    import types

    ray = FakeRay()
    module = types.ModuleType("ray")
    for name in ("is_initialized", "init", "shutdown", "remote", "wait", "get"):
        setattr(module, name, getattr(ray, name))
    monkeypatch.setitem(sys.modules, "ray", module)
    return ray


def test_a_local_ray_instance_is_shut_down_however_the_run_ends(fake_ray):
    from flyt_datacomp.inputs.executors import run_ray

    assert list(run_ray(lambda t: t * 2, [1, 2, 3], "local")) == [(0, 2), (1, 4), (2, 6)]
    assert fake_ray.calls == [("init", None), ("shutdown",)]
    fake_ray.calls.clear()
    runner = run_ray(lambda t: t, [1, 2, 3], "local")
    next(runner)
    runner.close()  # the consumer failed (a full disk, Ctrl-C)
    assert fake_ray.calls == [("init", None), ("shutdown",)]
    fake_ray.calls.clear()

    def boom(task):
        raise RuntimeError("a task failed")

    with pytest.raises(RuntimeError):
        list(run_ray(boom, [1], "local"))
    assert fake_ray.calls == [("init", None), ("shutdown",)]
    fake_ray.calls.clear()
    list(run_ray(lambda t: t, [1], "ray://cluster:10001"))  # a cluster it connected to: left running
    assert fake_ray.calls == [("init", "ray://cluster:10001")]
    fake_ray.calls.clear()
    fake_ray.initialized = True  # an instance the caller started: left to the caller
    list(run_ray(lambda t: t, [1], "local"))
    assert fake_ray.calls == []


def test_compute_on_local_ray_shuts_it_down_when_a_write_fails(pool_dir, tmp_path, fake_ray, monkeypatch):
    import flyt_datacomp.store as store_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.pq, "write_table", full)
    with pytest.raises(FlytInputError, match="No space left"):
        compute_inputs(str(pool_dir), str(tmp_path / "s"), ["column:clip_b32_similarity_score"], ray_address="local",
                       progress=False)
    assert fake_ray.calls == [("init", None), ("shutdown",)]


# ------------------------------------------------------------------ small refusals and records


def test_recompute_of_an_unknown_input_is_refused(pool_dir, tmp_path):
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["a=column:clip_b32_similarity_score"], progress=False)
    with pytest.raises(FlytInputError, match=r"`recompute` names 'nope'.*inputs of this run: a\b"):
        compute_inputs(str(pool_dir), str(store), ["a=column:clip_b32_similarity_score"], recompute=["nope"],
                       progress=False)
    r = invoke(["inputs", "compute", "--metadata-dir", pool_dir, "--inputs-dir", store, "--input",
                "a=column:clip_b32_similarity_score", "--recompute", "b", "--quiet"])
    one_line_error(r, "--recompute", "'b'")


def test_score_file_uids_outside_the_pool_are_counted(pool_dir, tmp_path):
    from flyt_datacomp.uids import random_uids

    pool = Pool(str(pool_dir), progress=False)
    foreign = uids_to_hex(random_uids(7, 12345))
    hexes = np.concatenate([uids_to_hex(pool.uids), foreign])
    write_scores(tmp_path / "s.parquet", hexes, np.arange(len(hexes), dtype=np.float64))
    store = tmp_path / "store"
    r = invoke(["inputs", "compute", "--metadata-dir", pool_dir, "--inputs-dir", store, "--quiet",
                "--input", f"h=file:{tmp_path / 's.parquet'}"])
    assert r.exit_code == 0, r.output
    assert InputStore(store).entry("h")["extra_uids"] == 7
    assert "7 uids that are not in the pool" in r.output
    assert "7 uids that are not in the pool" in invoke(["inputs", "show", "--inputs-dir", store]).output


@pytest.mark.parametrize("where", ["shard", "manifest", "last manifest"])
def test_a_full_disk_is_one_line_and_keeps_what_was_finished(pool_dir, tmp_path, monkeypatch, where):
    import flyt_datacomp.store as store_module

    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["a=column:clip_b32_similarity_score"], progress=False)
    pool = Pool(str(pool_dir), progress=False)
    a = pool.column("clip_b32_similarity_score").astype(np.float32)
    np.testing.assert_array_equal(InputStore(store).column("a", pool), a)
    manifest = (store / "inputs.json").read_bytes()
    calls = []

    def full_on(call, real):
        def write(*args, **kwargs):
            calls.append(1)
            if len(calls) == call:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)
        return write

    if where == "shard":  # the second shard file
        monkeypatch.setattr(store_module.pq, "write_table", full_on(2, store_module.pq.write_table))
    else:  # the first manifest write of the run, or the last (input b's statistics)
        monkeypatch.setattr(store_module, "write_json", full_on(1 if where == "manifest" else 4, store_module.write_json))
    r = invoke(["inputs", "compute", "--metadata-dir", pool_dir, "--inputs-dir", store, "--quiet",
                "--input", "a=column:clip_b32_similarity_score", "--input", "b=column:clip_l14_similarity_score"])
    one_line_error(r, "No space left on device", str(store))
    monkeypatch.undo()
    if where == "manifest":
        assert (store / "inputs.json").read_bytes() == manifest
    assert InputStore(store).input_names() == ["a"]
    np.testing.assert_array_equal(InputStore(store).column("a", pool), a)
    assert not [p for p in store.iterdir() if p.name.endswith(".flyt-tmp")]
    compute_inputs(str(pool_dir), str(store), ["a=column:clip_b32_similarity_score", "b=column:clip_l14_similarity_score"],
                   progress=False)
    assert InputStore(store).input_names() == ["a", "b"]


def test_cuda_without_cuda_is_refused_before_any_work(pool_dir, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    store = tmp_path / "store"
    r = invoke(["inputs", "compute", "--metadata-dir", pool_dir, "--inputs-dir", store, "--device", "cuda",
                "--input", "neg_clip_loss:batch=16:repeats=1", "--quiet"])
    one_line_error(r, "--device", "CUDA")
    assert not store.exists()


# ------------------------------------------------------------------ what an input read from the pool


def regenerate_in_place(pool_dir: Path, seed: int) -> None:
    """Write the pool's metadata again with the same uids (same shards, same order) but other scores
    and embeddings, as a regenerated download would."""
    rng = np.random.default_rng(seed)
    for parquet in sorted(pool_dir.glob("*.parquet")):
        table = pq.read_table(parquet)
        for name in ("clip_b32_similarity_score", "clip_l14_similarity_score"):
            values = rng.normal(0.3, 0.05, table.num_rows).astype(np.float32)
            table = table.set_column(table.column_names.index(name), name, pa.array(values))
        pq.write_table(table, parquet)
        npz = parquet.with_suffix(".npz")
        with np.load(npz) as old:
            arrays = {k: old[k] for k in old.files}
        for key in ("b32_img", "b32_txt", "l14_img", "l14_txt"):
            e = rng.normal(size=arrays[key].shape)
            arrays[key] = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float16)
        np.savez(npz, **arrays)


@pytest.mark.parametrize("spec", ["x=column:clip_b32_similarity_score", "x=neg_clip_loss:batch=16:repeats=1"])
def test_an_input_read_from_the_pool_is_refused_after_the_metadata_is_regenerated(pool_dir, tmp_path, spec):
    store = tmp_path / "store"
    compute = ["inputs", "compute", "--metadata-dir", pool_dir, "--inputs-dir", store, "--input", spec, "--quiet"]
    assert invoke(compute).exit_code == 0
    assert invoke(filter_args(pool_dir, store, tmp_path, "--score", "store:x")).exit_code == 0
    # the files rewritten with the same values (a copy that did not keep their times): still read
    for path in pool_dir.iterdir():
        os.utime(path, (time.time() + 100, time.time() + 100))
    assert invoke(filter_args(pool_dir, store, tmp_path, "--score", "store:x")).exit_code == 0
    assert invoke(compute).exit_code == 0  # records the new times
    pool = Pool(str(pool_dir), progress=False)
    calls = []
    real = Pool.read_shard


    def recorded(self, shard, columns=(), npz_keys=(), **kw):
        calls.append((list(columns), list(npz_keys)))
        return real(self, shard, columns, npz_keys, **kw)

    Pool.read_shard = recorded
    try:
        InputStore(store).column("x", pool)
    finally:
        Pool.read_shard = real
    assert calls and all(c == (["uid"], []) for c in calls)  # the stamps match again: only the uids are read
    before = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()}

    regenerate_in_place(pool_dir, seed=7)
    one_line_error(invoke(filter_args(pool_dir, store, tmp_path, "--score", "store:x")),
                   "input 'x'", "computed from the pool", "holds other values", "--recompute x")
    one_line_error(invoke(filter_args(pool_dir, store, tmp_path, "--score", "clip_l14_similarity_score",
                                      "--mask", "store:x>0")), "input 'x'", "computed from the pool")
    with pytest.raises(FlytInputError, match="computed from the pool"):
        read_features(Pool(str(pool_dir), progress=False), FeatureSpec("m-flyt", ("x",), inputs_dir=str(store)))
    one_line_error(invoke(compute), "input 'x'", "computed from the pool", "--recompute x")
    assert {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()} == before
    assert invoke([*compute, "--recompute", "x"]).exit_code == 0
    assert invoke(filter_args(pool_dir, store, tmp_path, "--score", "store:x")).exit_code == 0
    fresh = tmp_path / "fresh"
    compute_inputs(str(pool_dir), str(fresh), [spec], progress=False)
    pool = Pool(str(pool_dir), progress=False)
    np.testing.assert_array_equal(InputStore(store).column("x", pool), InputStore(fresh).column("x", pool))


def test_a_store_column_edited_with_its_footer_kept_is_refused_and_repaired(pool_dir, tmp_path):
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), ["x=column:clip_b32_similarity_score"], progress=False)
    pool = Pool(str(pool_dir), progress=False)
    want = InputStore(store).column("x", pool)
    path = shard_files(store)[1]
    table = pq.read_table(path)
    x = table.column("x").to_numpy().copy()
    x[[2, 5]] = x[[5, 2]]  # two values swapped: the same count, mean and range
    pq.write_table(table.set_column(table.column_names.index("x"), "x", pa.array(x)), path)
    assert pq.read_schema(path).metadata == table.schema.metadata  # the footer kept
    one_line_error(invoke(filter_args(pool_dir, store, tmp_path, "--score", "store:x")), path.name,
                   "other values in input 'x'")
    r = invoke(["inputs", "show", "--inputs-dir", store])
    assert r.exit_code == 2 and f"damaged: shard file {path.name} holds other values in input 'x'" in r.output
    compute_inputs(str(pool_dir), str(store), ["x=column:clip_b32_similarity_score"], progress=False)
    np.testing.assert_array_equal(InputStore(store).column("x", pool), want)
    assert invoke(["inputs", "show", "--inputs-dir", store]).exit_code == 0


def test_a_hand_edited_manifest_entry_is_refused_and_named_by_show(pool_dir, tmp_path):
    pool = Pool(str(pool_dir), progress=False)
    hexes = uids_to_hex(pool.uids)
    scores = tmp_path / "s.parquet"
    write_scores(scores, hexes[10:], np.linspace(0, 1, len(hexes) - 10))
    store = tmp_path / "store"
    compute_inputs(str(pool_dir), str(store), [f"x=file:{scores}"], missing="min", progress=False)
    manifest = store / "inputs.json"
    good = json.loads(manifest.read_text())
    assert good["inputs"]["x"]["fill_value"] == 0.0
    edited = json.loads(manifest.read_text())
    edited["inputs"]["x"]["fill_value"] = 0.75
    manifest.write_text(json.dumps(edited, indent=1))
    one_line_error(invoke(filter_args(pool_dir, store, tmp_path, "--score", "store:x")), "input 'x'",
                   "changed after the store wrote it")
    r = invoke(["inputs", "show", "--inputs-dir", store])
    assert r.exit_code == 2 and "damaged: input 'x' was changed after the store wrote it" in r.output, r.output
    # computing another input does not make the edit the store's own
    compute_inputs(str(pool_dir), str(store), ["y=column:clip_l14_similarity_score"], progress=False)
    one_line_error(invoke(filter_args(pool_dir, store, tmp_path, "--score", "store:x")), "input 'x'",
                   "changed after the store wrote it")
    assert invoke(filter_args(pool_dir, store, tmp_path, "--score", "store:y")).exit_code == 0
    # a run with the input restores it
    compute_inputs(str(pool_dir), str(store), [f"x=file:{scores}"], missing="min", progress=False)
    assert json.loads(manifest.read_text())["inputs"]["x"]["fill_value"] == 0.0
    assert invoke(["inputs", "show", "--inputs-dir", store]).exit_code == 0
    assert invoke(filter_args(pool_dir, store, tmp_path, "--score", "store:x")).exit_code == 0


def test_a_failed_first_run_leaves_a_store_show_does_not_call_damaged(pool_dir, tmp_path):
    """A first run that failed before writing any shard file leaves inputs still computing and no shard
    files: nothing is damaged (a missing file of a complete input still is)."""
    store = tmp_path / "store"
    (tmp_path / "bad.parquet").write_text("x")
    r = invoke(["inputs", "compute", "--metadata-dir", pool_dir, "--inputs-dir", store, "--input",
                f"x=file:{tmp_path / 'bad.parquet'}", "--quiet"])
    assert r.exit_code == 2 and not shard_files(store)
    r = invoke(["inputs", "show", "--inputs-dir", store])
    assert r.exit_code == 0 and "damaged" not in r.output, r.output
    assert any(line.startswith("x ") and "computing" in line for line in r.output.splitlines()), r.output
    compute_inputs(str(pool_dir), str(store), ["y=column:clip_b32_similarity_score"], progress=False)
    shard_files(store)[0].unlink()
    r = invoke(["inputs", "show", "--inputs-dir", store])
    assert r.exit_code == 2 and "is missing" in r.output
