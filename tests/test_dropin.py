"""DataComp's command line as a drop-in, the same bytes on every machine, and the plug-in registries."""

import io
import json
import subprocess
import sys

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from poolgen import run_filter_cli, write_image_shards, write_metadata

from flyt_datacomp import sampling, selection
from flyt_datacomp.errors import FlytError, FlytInputError
from flyt_datacomp.scores import SCORE_SOURCES, Scores, ScoreSource, load_scores, register_score_source
from flyt_datacomp.uids import read_subset, uids_to_hex

run = run_filter_cli


@pytest.fixture
def tied_pool(tmp_path):
    """A pool whose CLIP scores have many exact ties (rounded to 2 decimals), as real float32 columns can."""
    root, hexes = write_metadata(tmp_path / "metadata", sizes=(70, 45, 85))
    for f in sorted(root.glob("*.parquet")):
        t = pq.read_table(f)
        for col in ("clip_b32_similarity_score", "clip_l14_similarity_score"):
            i = t.schema.get_field_index(col)
            t = t.set_column(i, col, pa.array(np.round(t.column(col).to_numpy(), 2).astype(np.float32)))
        pq.write_table(t, f)
    return root, hexes


def datacomp_clip_score_file(metadata_dir, arch, fraction=None, threshold=None):
    """DataComp's clip_score baseline written independently: concatenate the column over the
    parquet files, t = -sort(-s)[int(N*f)], keep s >= t, parse hex uids with int(), sort, np.save."""
    key = {"b32": "clip_b32_similarity_score", "l14": "clip_l14_similarity_score"}[arch]
    tables = [pq.read_table(p, columns=["uid", key]) for p in sorted(metadata_dir.glob("*.parquet"))]
    scores = np.concatenate([t.column(key).to_numpy() for t in tables])
    uids = [u for t in tables for u in t.column("uid").to_pylist()]
    if threshold is None:
        threshold = -np.sort(-scores)[int(len(scores) * fraction)]
    kept = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u, s in zip(uids, scores) if s >= threshold],
                    np.dtype("u8,u8"))
    kept.sort()
    buf = io.BytesIO()
    np.save(buf, kept)
    return buf.getvalue()


@pytest.mark.parametrize("arch, fraction", [("l14", "0.3"), ("b32", "0.25"), ("l14", "0.05")])
def test_datacomp_spelling_writes_datacomp_clip_score_file_byte_for_byte(tied_pool, tmp_path, arch, fraction):
    root, _ = tied_pool
    out = tmp_path / "x.npy"
    proc = subprocess.run([sys.executable, "-m", "flyt_datacomp.filter", "--metadata_dir", str(root), "--arch", arch,
                           "--fraction", fraction, "--save_path", str(out), "--num_workers", "3", "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    expected = datacomp_clip_score_file(root, arch, fraction=float(fraction))
    assert out.read_bytes() == expected
    side = json.loads(out.with_name("x.npy.json").read_text())
    assert side["sampler"] == "threshold" and side["sampler_params"]["exact_count"] is False
    # the tie-free exact-count variant keeps exactly int(M*F) rows
    exact = tmp_path / "exact.npy"
    run(["--metadata_dir", str(root), "--arch", arch, "--fraction", fraction, "--exact-count", "--save_path", str(exact)])
    assert len(np.load(exact)) == max(1, int(200 * float(fraction)))
    assert len(np.load(out)) > int(200 * float(fraction))  # rank int(M*F) itself and ties at the cut are kept


def test_threshold_value_and_bad_combinations(tied_pool, tmp_path):
    root, _ = tied_pool
    out = tmp_path / "t.npy"
    run(["--metadata_dir", str(root), "--arch", "b32", "--threshold", "0.3", "--save_path", str(out)])
    assert out.read_bytes() == datacomp_clip_score_file(root, "b32", threshold=np.float32(0.3))
    r = run(["--metadata_dir", str(root), "--arch", "b32", "--score", "clip_b32_similarity_score", "--fraction",
             "0.3", "--save_path", str(tmp_path / "a.npy")], expect_ok=False)
    assert r.exit_code == 2 and "not both" in r.output
    r = run(["--metadata_dir", str(root), "--arch", "b32", "--threshold", "0.3", "--exact-count",
             "--save_path", str(tmp_path / "b.npy")], expect_ok=False)
    assert r.exit_code == 2 and "--exact-count applies to --fraction" in r.output
    r = run(["--metadata_dir", str(root), "--arch", "b32", "--fraction", "0.3", "--scs-alpha", "0.2",
             "--save_path", str(tmp_path / "c.npy")], expect_ok=False)
    assert r.exit_code == 2 and "--scs-alpha does not apply to --sampler threshold" in r.output


def test_debug_scale_and_scs_defaults_are_reported(tied_pool, tmp_path):
    root, _ = tied_pool
    out = tmp_path / "d.npy"
    run(["--metadata-dir", str(root), "--arch", "l14", "--scale", "debug", "--num-samples", "400", "--output", str(out)])
    side = json.loads(out.with_name("d.npy.json").read_text())
    assert side["sampler_params"] == {"alpha": 0.5, "group_size": 100, "num_samples": 400}
    assert side["scale"] == "debug" and side["warnings"] == []
    r = run(["--metadata-dir", str(root), "--arch", "l14", "--output", str(tmp_path / "e.npy")])
    side = json.loads((tmp_path / "e.npy.json").read_text())
    assert side["sampler_params"] == {"alpha": 0.15, "group_size": 1, "num_samples": 200}
    assert side["sampler_defaults"] == ["alpha", "group_size"]
    assert "no --scale: SCS uses alpha 0.15" in r.output and "tuned for the medium pool" in r.output
    assert "consider --scale or --scs-alpha" in r.output
    assert "tuned for the medium pool" in side["warnings"][0]
    r = run(["--metadata-dir", str(root), "--arch", "l14", "--scs-alpha", "0.4", "--scs-batch", "5",
             "--output", str(tmp_path / "f.npy")])
    assert "no --scale" not in r.output


def test_parallel_metadata_reading_gives_the_same_bytes(tmp_path):
    root, _ = write_metadata(tmp_path / "m", sizes=tuple(range(5, 45, 3)))
    outs = []
    for workers in (1, 4):
        out = tmp_path / f"w{workers}.npy"
        run(["--metadata-dir", str(root), "--arch", "l14", "--standardize", "--scs-batch", "7",
             "--num_workers", str(workers), "--output", str(out)])
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    r = run(["--metadata-dir", str(root), "--arch", "l14", "--num-workers", "0", "--output", str(tmp_path / "z.npy")],
            expect_ok=False)
    assert r.exit_code == 2 and "--num-workers" in r.output


def test_shards_dir_restricts_the_pool_to_downloaded_examples(tmp_path):
    root, hexes = write_metadata(tmp_path / "m", sizes=(60, 50, 90))
    kept = set(write_image_shards(tmp_path / "shards", list(hexes), keep_fraction=0.8))
    out = tmp_path / "s.npy"
    run(["--metadata-dir", str(root), "--arch", "l14", "--fraction", "0.5", "--exact-count",
         "--shards-dir", str(tmp_path / "shards"), "--output", str(out)])
    uids, counts = read_subset(out)
    chosen = set(uids_to_hex(uids))
    assert chosen <= kept and len(chosen) == len(kept) // 2
    side = json.loads(out.with_name("s.npy.json").read_text())
    assert side["inputs"]["pool_size"] == 200 and side["inputs"]["pool_size_downloaded"] == len(kept)
    # the top half of the downloaded examples by score, not of the whole pool
    table = pa.concat_tables([pq.read_table(p) for p in sorted(root.glob("*.parquet"))])
    score = dict(zip(table.column("uid").to_pylist(), table.column("clip_l14_similarity_score").to_numpy()))
    ranked = sorted(kept, key=lambda u: -score[u])
    assert chosen == set(ranked[: len(kept) // 2])
    r = run(["--metadata-dir", str(root), "--arch", "l14", "--shards-dir", str(tmp_path / "m"),
             "--output", str(tmp_path / "none.npy")], expect_ok=False)
    assert r.exit_code != 0


def test_clip_score_baseline_on_a_partly_downloaded_pool_ranks_the_downloaded_rows(tied_pool, tmp_path):
    """``baseline clip_score --fraction`` with ``--shards-dir``: DataComp's rule (t = -sort(-s)[int(N f)],
    keep s >= t) applied to the downloaded rows alone, N their number; the sidecar records that threshold."""
    from click.testing import CliRunner

    from flyt_datacomp.cli import main as cli_main

    root, _ = tied_pool
    table = pa.concat_tables([pq.read_table(p, columns=["uid", "clip_l14_similarity_score"])
                              for p in sorted(root.glob("*.parquet"))])
    uids, pool_scores = table.column("uid").to_pylist(), table.column("clip_l14_similarity_score").to_numpy()
    # every other one of the 80 best-scored examples failed to download: the downloaded rows rank lower
    failed = {uids[i] for i in np.argsort(-pool_scores, kind="stable")[:80:2]}
    write_image_shards(tmp_path / "shards", [u for u in uids if u not in failed], keep_fraction=1.0)
    out = tmp_path / "b.npy"
    r = CliRunner().invoke(cli_main, ["baseline", "clip_score", "--arch", "l14", "--fraction", "0.3", "--metadata-dir",
                                      str(root), "--shards-dir", str(tmp_path / "shards"), "--output", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    rows = [(u, s) for u, s in zip(uids, pool_scores) if u not in failed]
    scores = np.array([s for _, s in rows])
    t = -np.sort(-scores)[int(len(scores) * 0.3)]
    kept = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u, s in rows if s >= t], np.dtype("u8,u8"))
    kept.sort()
    expected = io.BytesIO()
    np.save(expected, kept)
    pool_wide = -np.sort(-pool_scores)[int(len(pool_scores) * 0.3)]
    assert (scores >= pool_wide).sum() < len(kept)  # the threshold over the whole pool would keep fewer rows
    side = json.loads(out.with_name("b.npy.json").read_text())
    assert side["inputs"]["pool_size_downloaded"] == len(rows) == 160 and side["inputs"]["pool_size"] == 200
    (mask,) = side["masks"]
    assert (mask["threshold"], mask["threshold_over"]) == (float(t), "restricted pool")
    assert mask["surviving"] == side["distinct_uids"] == len(kept)
    assert out.read_bytes() == expected.getvalue()


def test_same_bytes_on_a_machine_with_a_gpu(tied_pool, tmp_path, monkeypatch):
    import torch

    root, _ = tied_pool
    args = ["--metadata-dir", str(root), "--arch", "l14", "--standardize", "--scs-batch", "10", "--seed", "11"]
    run([*args, "--output", str(tmp_path / "laptop.npy")])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU box: the default must not use it
    run([*args, "--output", str(tmp_path / "gpu_box.npy")])
    assert (tmp_path / "laptop.npy").read_bytes() == (tmp_path / "gpu_box.npy").read_bytes()
    assert json.loads((tmp_path / "gpu_box.npy.json").read_text())["device"] == "cpu"
    monkeypatch.undo()
    if not torch.cuda.is_available():
        r = run([*args, "--device", "cuda", "--output", str(tmp_path / "cuda.npy")], expect_ok=False)
        assert r.exit_code == 2 and "CUDA is not available" in r.output
    r = run([*args[:4], "--fraction", "0.3", "--device", "cuda", "--output", str(tmp_path / "t.npy")], expect_ok=False)
    assert r.exit_code == 2 and "--device does not apply to --sampler threshold" in r.output


def test_a_new_sampler_is_one_function_and_one_registration(tied_pool, tmp_path):
    root, _ = tied_pool

    @sampling.register_sampler("top_k_twice", help="the k best examples, twice each",
                               params=(sampling.Param("k", int, "how many", required=True),))
    def top_k_twice(scores, *, k):
        counts = np.zeros(len(scores), dtype=np.int64)
        counts[np.argsort(-scores, kind="stable")[:k]] = 2
        return counts

    try:
        out = tmp_path / "k.npy"
        def run(sampler, options, *, output):
            return selection.run(selection.Selection(
                str(root), selection.Output(output), score=selection.ScoreStage("clip_l14_similarity_score"),
                sample=selection.Sample(sampler, options), progress=False))

        run("top_k_twice", {"k": 7}, output=out)
        _, counts = read_subset(out)
        assert len(counts) == 7 and (counts == 2).all()
        with pytest.raises(FlytInputError, match="`sampler` top_k_twice needs `k`") as info:
            run("top_k_twice", {}, output=tmp_path / "n.npy")
        assert info.value.render() == "--sampler top_k_twice needs --k"  # as the command line shows it
        with pytest.raises(FlytInputError, match="setting `alpha` does not apply to `sampler` top_k_twice"):
            run("top_k_twice", {"k": 3, "alpha": 0.1}, output=tmp_path / "n.npy")
        with pytest.raises(FlytInputError, match="setting `k` does not apply to `sampler` scs"):
            run("scs", {"k": 3}, output=tmp_path / "n.npy")
    finally:
        del sampling.SAMPLERS["top_k_twice"]


def test_registries_carry_every_existing_source_and_sampler(tied_pool):
    assert list(sampling.SAMPLERS) == ["threshold", "scs", "hcs", "nocap"]
    assert list(SCORE_SOURCES) == ["column", "model", "file", "store", "sum", "standardized_sum", "in_weighted",
                                  "mixing"]
    from flyt_datacomp.pool import Pool

    pool = Pool(str(tied_pool[0]), progress=False)
    assert load_scores(pool, "column:clip_b32_similarity_score").kind == "column"
    with pytest.raises(FlytInputError, match="no column 'nope'"):
        load_scores(pool, "column:nope")
    with pytest.raises(FlytInputError, match="score file 'missing.parquet' does not exist"):
        load_scores(pool, "file:missing.parquet")


def test_a_new_score_source_is_one_class_and_one_registration(tied_pool):
    from flyt_datacomp.pool import Pool

    @register_score_source
    class CaptionLength(ScoreSource):
        kind = "caption_length"
        description = "the caption's length in characters"

        @classmethod
        def claims(cls, spec, pool):
            return False  # only by name: caption_length:

        def load(self, pool):
            text = pool.column("text")
            return Scores(np.array([len(t) for t in text], dtype=np.float64), self.spec, self.kind)

    try:
        pool = Pool(str(tied_pool[0]), progress=False)
        scores = load_scores(pool, "caption_length:")
        assert scores.kind == "caption_length" and scores.values.max() == len("caption 199")
    finally:
        del SCORE_SOURCES["caption_length"]


def test_library_errors_do_not_depend_on_click():
    assert not issubclass(FlytError, click.ClickException)
    code = ("import sys, flyt_datacomp.errors, flyt_datacomp.sampling, flyt_datacomp.scores, flyt_datacomp.pool, "
            "flyt_datacomp.uids, flyt_datacomp.io, flyt_datacomp.torch_io, flyt_datacomp.flyt.checkpoints; "
            "print('click' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "False", proc.stderr
