"""Hard filters (``filter --mask``) under every sampler, and the two-stage negCLIPLoss-then-NormSim rule."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from poolgen import write_image_shards, write_metadata

from flyt_datacomp.cli.filter import filter_command
from flyt_datacomp.uids import hex_to_uids, read_subset, uids_to_hex


def run(args, expect_ok=True):
    result = CliRunner().invoke(filter_command, [*args, "--quiet"])
    if expect_ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def subset_bytes(hex_uids) -> bytes:
    arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in hex_uids], np.dtype("u8,u8"))
    arr.sort()
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def add_columns(root, columns_fn, seed=1):
    """Add columns to every parquet file: columns_fn(rng, n, shard index) -> {name: array}."""
    rng = np.random.default_rng(seed)
    for k, f in enumerate(sorted(root.glob("*.parquet"))):
        t = pq.read_table(f)
        for name, values in columns_fn(rng, t.num_rows, k).items():
            t = t.append_column(name, pa.array(values))
        pq.write_table(t, f)


def table(root):
    return pa.concat_tables([pq.read_table(p) for p in sorted(root.glob("*.parquet"))]).to_pylist()


@pytest.fixture
def pool(tmp_path):
    root, hexes = write_metadata(tmp_path / "metadata", sizes=(60, 50, 90))

    def extra(rng, n, k):
        score = np.round(rng.normal(0, 1, n), 1)  # ties
        lang = rng.choice(["en", "fr"], n).astype(object)
        if k == 2:
            score[:3] = np.nan
            lang[5] = None
        return {"negclip": np.round(rng.normal(-1, 0.3, n), 1), "normsim": np.round(rng.normal(0.5, 0.1, n), 2),
                "quality": score, "lang": lang}

    add_columns(root, extra)
    half = tmp_path / "half.npy"
    chosen = sorted(hexes[::2])
    half.write_bytes(subset_bytes(chosen))
    return root, list(hexes), half, set(chosen)


@pytest.mark.parametrize("sampler_args", [
    ["--sampler", "scs", "--scs-alpha", "0.5", "--scs-batch", "7"],
    ["--sampler", "hcs", "--hcs-cap", "3"],
    ["--sampler", "nocap"],
    ["--sampler", "threshold", "--fraction", "0.5", "--exact-count"],
])
def test_every_sampler_draws_only_inside_every_mask(pool, tmp_path, sampler_args):
    root, hexes, half, chosen = pool
    rows = table(root)
    inside = {r["uid"] for r in rows if r["original_width"] >= 300 and r["uid"] in chosen}
    out = tmp_path / "m.npy"
    run(["--metadata-dir", str(root), "--score", "clip_l14_similarity_score", *sampler_args,
         "--mask", "column:original_width>=300", "--mask", str(half), "--output", str(out)])
    uids, counts = read_subset(out)
    drawn = set(uids_to_hex(uids))
    assert drawn and drawn <= inside
    side = json.loads(out.with_name("m.npy.json").read_text())
    wide = sum(r["original_width"] >= 300 for r in rows)
    assert [m["surviving"] for m in side["masks"]] == [wide, len(inside)]
    assert [m["kind"] for m in side["masks"]] == ["column", "subset"]
    assert side["inputs"]["pool_size_surviving"] == len(inside)
    assert side["score_transform"]["statistics_over"] == "surviving examples"
    if sampler_args[1] == "threshold":  # the fraction refers to the survivors
        score = {r["uid"]: r["clip_l14_similarity_score"] for r in rows}
        position = {r["uid"]: i for i, r in enumerate(rows)}
        ranked = sorted(inside, key=lambda u: (-score[u], position[u]))
        assert drawn == set(ranked[: len(inside) // 2])
    else:  # N defaults to the number of survivors
        assert counts.sum() == len(inside)


def test_standardize_uses_the_survivors_statistics(pool, tmp_path):
    """A masked SCS run equals the same run on a pool that holds only the survivors."""
    root, hexes, half, chosen = pool
    small = tmp_path / "survivors"
    small.mkdir()
    for f in sorted(root.glob("*.parquet")):
        t = pq.read_table(f)
        keep = np.array([u in chosen and w >= 300 for u, w in zip(t.column("uid").to_pylist(),
                                                                    t.column("original_width").to_pylist())])
        pq.write_table(t.filter(pa.array(keep)), small / f.name)
    args = ["--score", "clip_l14_similarity_score", "--standardize", "--temperature", "0.5", "--scs-alpha", "0.3",
            "--scs-batch", "5", "--num-samples", "150", "--seed", "4"]
    run(["--metadata-dir", str(root), *args, "--mask", "column:original_width>=300", "--mask", str(half),
         "--output", str(tmp_path / "masked.npy")])
    run(["--metadata-dir", str(small), *args, "--output", str(tmp_path / "small.npy")])
    assert (tmp_path / "masked.npy").read_bytes() == (tmp_path / "small.npy").read_bytes()


def test_two_stage_negcliploss_then_normsim(pool, tmp_path):
    """top 30% of the pool by negCLIPLoss, then of those the top 20% of the pool by NormSim."""
    root, hexes, _, _ = pool
    rows = table(root)
    n = len(rows)
    first = sorted(range(n), key=lambda i: (-rows[i]["negclip"], i))[: int(0.3 * n)]
    second = sorted(first, key=lambda i: (-rows[i]["normsim"], i))[: int(0.2 * n)]
    out = tmp_path / "two_stage.npy"
    run(["--metadata-dir", str(root), "--mask", "top:0.3:negclip", "--mask", "top:0.2:normsim", "--output", str(out)])
    assert out.read_bytes() == subset_bytes([rows[i]["uid"] for i in second])
    side = json.loads(out.with_name("two_stage.npy.json").read_text())
    assert [m["surviving"] for m in side["masks"]] == [int(0.3 * n), int(0.2 * n)]
    assert side["sampler"] is None and side["inputs"]["pool_size_surviving"] == int(0.2 * n)
    # the same first stage under SCS: NormSim drives the draw, only stage-one examples can appear
    run(["--metadata-dir", str(root), "--mask", "top:0.3:negclip", "--score", "normsim", "--scs-batch", "4",
         "--output", str(tmp_path / "scs.npy")])
    drawn = set(uids_to_hex(read_subset(tmp_path / "scs.npy")[0]))
    assert drawn <= {rows[i]["uid"] for i in first}


def test_column_conditions_never_pass_missing_values(pool, tmp_path):
    root, hexes, _, _ = pool
    rows = table(root)
    for spec, keep in [("quality!=0.5", lambda r: r["quality"] == r["quality"] and r["quality"] != 0.5),
                       ("quality<0", lambda r: r["quality"] == r["quality"] and r["quality"] < 0),
                       ("lang==en", lambda r: r["lang"] == "en"), ("lang!='en'", lambda r: r["lang"] == "fr")]:
        out = tmp_path / "c.npy"
        run(["--metadata-dir", str(root), "--mask", f"column:{spec}", "--output", str(out), "--overwrite"])
        assert out.read_bytes() == subset_bytes([r["uid"] for r in rows if keep(r)]), spec
    # a bare condition on an existing column is a column mask
    run(["--metadata-dir", str(root), "--mask", "original_height<500", "--output", str(out), "--overwrite"])
    assert out.read_bytes() == subset_bytes([r["uid"] for r in rows if r["original_height"] < 500])


def test_baseline_masks_and_name_with_masks(pool, tmp_path):
    """A DataComp baseline as a mask keeps its own rule (the CLIP fraction over the whole pool)."""
    from test_dropin import datacomp_clip_score_file

    root, hexes, half, chosen = pool
    rows = table(root)
    scores = np.array([r["clip_l14_similarity_score"] for r in rows], dtype=np.float32)
    t = -np.sort(-scores)[int(len(scores) * 0.3)]
    clip_set = [r["uid"] for r, s in zip(rows, scores) if s >= t]
    out = tmp_path / "b.npy"
    run(["--metadata-dir", str(root), "--mask", "clip_score:arch=l14,fraction=0.3", "--output", str(out)])
    assert out.read_bytes() == datacomp_clip_score_file(root, "l14", fraction=0.3) == subset_bytes(clip_set)
    run(["--metadata-dir", str(root), "--name", "clip_score", "--arch", "l14", "--fraction", "0.3", "--mask", str(half),
         "--output", str(tmp_path / "n.npy")])
    assert (tmp_path / "n.npy").read_bytes() == subset_bytes([u for u in clip_set if u in chosen])
    # under a sampler: top half of the survivors by the B/32 score
    run(["--metadata-dir", str(root), "--mask", "clip_score:arch=l14,fraction=0.3", "--score",
         "clip_b32_similarity_score", "--fraction", "0.5", "--exact-count", "--output", str(tmp_path / "s.npy")])
    b32 = {r["uid"]: r["clip_b32_similarity_score"] for r in rows}
    position = {r["uid"]: i for i, r in enumerate(rows)}
    ranked = sorted(clip_set, key=lambda u: (-b32[u], position[u]))
    assert set(uids_to_hex(read_subset(tmp_path / "s.npy")[0])) == set(ranked[: len(clip_set) // 2])


def test_masks_with_downloaded_shards(pool, tmp_path):
    root, hexes, _, _ = pool
    kept = set(write_image_shards(tmp_path / "shards", hexes, keep_fraction=0.7))
    everything = table(root)  # in pool order
    rows = [r for r in everything if r["uid"] in kept]
    out = tmp_path / "d.npy"
    run(["--metadata-dir", str(root), "--shards-dir", str(tmp_path / "shards"), "--mask", "top:0.5:negclip",
         "--output", str(out)])
    order = {r["uid"]: i for i, r in enumerate(everything)}
    best = sorted(rows, key=lambda r: (-r["negclip"], order[r["uid"]]))[: int(0.5 * len(kept))]
    assert out.read_bytes() == subset_bytes([r["uid"] for r in best])
    side = json.loads(out.with_name("d.npy.json").read_text())
    assert side["inputs"]["pool_size_downloaded"] == len(kept) and side["masks"][0]["of"] == len(kept)


@pytest.mark.parametrize("masks, message", [
    (["nonsense"], "is not a baseline name"),
    (["column:no_such_column>=3"], "has no column 'no_such_column'"),
    (["column:original_width=>3"], "is not a condition"),
    (["column:lang>=3"], "cannot be compared"),
    (["top:1.5:negclip"], "F in (0, 1]"),
    (["top:0.3:no_such_score"], "score source 'no_such_score'"),
    (["clip_score:arch=l14"], "exactly one of --fraction and --threshold"),
    (["clip_score:arch=l14,size=3"], "is not one of arch=..."),
    (["subset:missing.npy"], "does not exist"),
    (["column:original_width>10000"], "no example of the pool survives"),
])
def test_bad_masks_are_named(pool, tmp_path, masks, message):
    root = pool[0]
    args = [x for m in masks for x in ("--mask", m)]
    r = run(["--metadata-dir", str(root), *args, "--score", "clip_l14_similarity_score", "--output",
             str(tmp_path / "x.npy")], expect_ok=False)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "x.npy").exists()


def test_survivors_only_mode_rejects_sampler_options(pool, tmp_path):
    root = pool[0]
    r = run(["--metadata-dir", str(root), "--mask", "top:0.3:negclip", "--fraction", "0.5",
             "--output", str(tmp_path / "x.npy")], expect_ok=False)
    assert r.exit_code == 2 and "setting --fraction does not apply to masks without a score" in r.output
    assert hex_to_uids(["0" * 32]).dtype == np.dtype("u8,u8")


def test_the_basic_filters_caption_rule_alone(tmp_path):
    root, hexes = write_metadata(tmp_path / "m", sizes=(6,))
    t = pq.read_table(sorted(root.glob("*.parquet"))[0])
    texts = ["a b c", "ab cd", "abcdef", "a photo of two", "x y z w", "one two three"]
    pq.write_table(t.set_column(t.schema.get_field_index("text"), "text", pa.array(texts)),
                   sorted(root.glob("*.parquet"))[0])
    out = tmp_path / "c.npy"
    run(["--metadata-dir", str(root), "--mask", "caption:basic", "--output", str(out)])
    # independent: more than 2 whitespace-separated words and more than 5 characters
    keep = [u for u, s in zip(hexes, texts) if len(s.split()) > 2 and len(s) > 5]
    assert keep and out.read_bytes() == subset_bytes(keep)
    r = run(["--metadata-dir", str(root), "--mask", "caption:long", "--output", str(tmp_path / "d.npy")],
            expect_ok=False)
    assert r.exit_code == 2 and "caption:basic" in r.output


@pytest.mark.parametrize("spec, hint", [("clip_b32_similarity_score", "--mask 'clip_b32_similarity_score>=VALUE'"),
                                        ("column:original_width", "--mask 'column:original_width>=VALUE'"),
                                        ("store:lang_en", "--mask 'store:lang_en>=VALUE'"),
                                        ("basic_filterr", None)])
def test_a_condition_without_an_operator_names_the_unquoted_shell_redirection(tmp_path, spec, hint):
    root, _ = write_metadata(tmp_path / "metadata")
    r = CliRunner().invoke(filter_command, ["--metadata-dir", str(root), "--mask", spec, "--output",
                                            str(tmp_path / "m.npy"), "--quiet"])
    assert r.exit_code == 2, r.output
    if hint is None:  # not a column or a condition: no talk of quoting
        assert "redirection" not in r.output
    else:
        assert "the shell takes > as a redirection" in r.output and hint in r.output, r.output
