"""The paper's aggregation baselines as score sources: sum, standardized_sum, in_weighted (C.5)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from poolgen import write_metadata

from flyt_datacomp.cli.filter import filter_command
from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.pool import Pool
from flyt_datacomp.scores import SCORE_SOURCES, load_scores
from flyt_datacomp.uids import read_subset, uids_to_hex


@pytest.fixture
def pool(tmp_path):
    root, _ = write_metadata(tmp_path / "metadata", sizes=(40, 70))
    rng = np.random.default_rng(7)
    for f in sorted(root.glob("*.parquet")):
        t = pq.read_table(f)
        n = t.num_rows
        t = t.append_column("a", pa.array(rng.normal(3, 5, n))).append_column("b", pa.array(rng.gamma(2, 0.1, n)))
        pq.write_table(t.append_column("c", pa.array(rng.integers(0, 100, n))), f)
    table = pa.concat_tables([pq.read_table(p) for p in sorted(root.glob("*.parquet"))])
    cols = {k: table.column(k).to_numpy().astype(np.float64) for k in ("a", "b", "c")}
    cols["l14"] = table.column("clip_l14_similarity_score").to_numpy().astype(np.float64)
    return root, cols, table.column("uid").to_pylist()


def z(x, within=None):
    part = x if within is None else x[within]
    return (x - part.mean()) / part.std()


def test_sum_and_standardized_sum(pool):
    root, cols, _ = pool
    p = Pool(str(root), progress=False)
    assert np.allclose(load_scores(p, "sum:a,b,c").values, cols["a"] + cols["b"] + cols["c"])
    assert np.allclose(load_scores(p, "standardized_sum:a,b,c").values, z(cols["a"]) + z(cols["b"]) + z(cols["c"]))
    within = np.flatnonzero(cols["c"] >= 50)
    assert np.allclose(load_scores(p, "standardized_sum:a,b", within=within).values,
                       z(cols["a"], within) + z(cols["b"], within))
    # inputs are score sources themselves (here: an aggregation of aggregations)
    assert np.allclose(load_scores(p, "sum:standardized_sum:a").values, z(cols["a"]))
    assert list(SCORE_SOURCES)[-4:-1] == ["sum", "standardized_sum", "in_weighted"]


@pytest.mark.parametrize("r", [2, 4, 8, 16])
def test_imagenet_weighted_sum_follows_appendix_c5(pool, tmp_path, r):
    root, cols, _ = pool
    relevance = {"a": 0.31, "b": 0.28, "clip_l14_similarity_score": 0.35, "c": 0.2}
    p = Pool(str(root), progress=False)
    spec = f"in_weighted:r={r}:" + ",".join(f"{k}={v}" for k, v in relevance.items())
    got = load_scores(p, spec).values
    inn = np.array(list(relevance.values()))
    w = (inn - inn.min()) / (inn.max() - inn.min()) + 1 / (r - 1)
    assert w.max() / w.min() == pytest.approx(r)
    expected = w[0] * z(cols["a"]) + w[1] * z(cols["b"]) + w[2] * z(cols["l14"]) + w[3] * z(cols["c"])
    assert np.allclose(got, expected)
    path = tmp_path / "relevance.json"
    path.write_text(json.dumps(relevance))
    assert np.allclose(load_scores(p, f"in_weighted:r={r}:{path}").values, expected)


def test_aggregation_drives_any_sampler_and_restricted_standardisation(pool, tmp_path):
    root, cols, uids = pool
    out = tmp_path / "s.npy"
    result = CliRunner().invoke(filter_command, [
        "--metadata-dir", str(root), "--score", "standardized_sum:a,b", "--mask", "column:c>=50",
        "--sampler", "threshold", "--fraction", "0.25", "--exact-count", "--output", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    within = np.flatnonzero(cols["c"] >= 50)
    s = z(cols["a"], within) + z(cols["b"], within)
    best = within[np.argsort(-s[within], kind="stable")[: int(0.25 * len(within))]]
    assert set(uids_to_hex(read_subset(out)[0])) == {uids[i] for i in best}
    side = json.loads(out.with_name("s.npy.json").read_text())
    assert side["inputs"]["score_kind"] == "standardized_sum"


@pytest.mark.parametrize("spec, message", [
    ("sum:", "names no inputs"),
    ("sum:a,nope", "score source 'nope'"),
    ("in_weighted:a=0.3,b=0.2", "must start with r=R"),
    ("in_weighted:r=1:a=0.3,b=0.2", "must start with r=R"),
    ("in_weighted:r=4:a=0.3", "at least two inputs"),
    ("in_weighted:r=4:a=0.3,b=0.3", "must not all be equal"),
    ("in_weighted:r=4:a=0.3,b", "is not SOURCE=RELEVANCE"),
    ("in_weighted:r=4:missing.json", "cannot read the ImageNet relevance file"),
])
def test_bad_aggregations_are_named(pool, spec, message):
    p = Pool(str(pool[0]), progress=False)
    with pytest.raises(FlytInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_scores(p, spec)


def test_standardising_a_constant_input_is_an_error(pool, tmp_path):
    root = pool[0]
    for f in sorted(root.glob("*.parquet")):
        t = pq.read_table(f)
        pq.write_table(t.append_column("flat", pa.array(np.ones(t.num_rows))), f)
    with pytest.raises(FlytInputError, match="input 'flat'.*all equal"):
        load_scores(Pool(str(root), progress=False), "standardized_sum:a,flat")
