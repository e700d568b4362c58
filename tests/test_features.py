"""The scoring model's features: one reader for training and scoring, and scores equal to the model
applied to the trainer's own feature table."""

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from poolgen import write_metadata
from test_train import small_config

from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.flyt.features import FeatureSpec, FeatureTable, iter_features, read_features
from flyt_datacomp.flyt.models import GLUHead, load_scoring_model, save_scoring_model, score_features, score_pool
from flyt_datacomp.flyt.trainer import Trainer
from flyt_datacomp.pool import Pool
from flyt_datacomp.scores import load_scores


def _trainer_with_saved_model(pool_fixture, tmp_path, **overrides):
    """A set-up (untrained) Trainer whose scoring model got non-trivial weights, saved as a trainer
    would save it, and loaded back as the filter's score source loads it."""
    trainer = Trainer(small_config(pool_fixture, **overrides), tmp_path / "run", progress=False)
    with torch.no_grad():
        for p in trainer.scoring.parameters():
            p.add_(torch.linspace(-0.5, 0.5, p.numel(), dtype=p.dtype).reshape(p.shape))
    path = tmp_path / "scoring_model.pt"
    save_scoring_model(path, trainer.scoring, {"config": {"embedding_prefix": trainer.cfg.embedding_prefix}})
    model, meta = load_scoring_model(path)
    return trainer, model, FeatureSpec.of_scoring_model(model, meta, str(path)), path


@pytest.mark.parametrize("kind", ["m-flyt", "e-flyt"])
def test_trainer_and_scorer_read_identical_features_and_scores(tiny_demo_pool, tmp_path, kind):
    overrides = {"model": "e-flyt", "inputs": [], "downstream_loss": "ce_temp"} if kind == "e-flyt" else {}
    trainer, model, spec, path = _trainer_with_saved_model(tiny_demo_pool, tmp_path, **overrides)
    pool = Pool(str(tiny_demo_pool.metadata_dir), progress=False)
    trained_on = FeatureSpec.of_config(trainer.cfg)
    assert (spec.kind, spec.columns, spec.npz_keys) == (trained_on.kind, trained_on.columns, trained_on.npz_keys)

    # the scorer's shard-by-shard features are the trainer's table, array for array, dtype for dtype
    shards = list(iter_features(pool, spec))
    assert len(shards) == 2
    for i, train_array in enumerate(trainer.features.arrays):
        scored = np.concatenate([table.arrays[i] for _, table in shards])
        assert scored.dtype == train_array.dtype == (np.float16 if kind == "e-flyt" else np.float32)
        assert np.array_equal(scored, train_array)

    # scoring the pool = the trained model applied to the trainer's table (each metadata shard's rows)
    got = load_scores(pool, str(path)).values
    with torch.no_grad():
        expect = np.concatenate([
            score_features(trainer.scoring, trainer.features.gather(np.arange(s.offset, s.offset + s.num_rows)))
            .double().numpy() for s in pool.shards])
        whole = score_features(trainer.scoring, trainer.features.gather()).double().numpy()
    assert got.dtype == np.float64 and np.array_equal(got, expect)
    np.testing.assert_allclose(got, whole, rtol=1e-6, atol=1e-6)
    assert got.std() > 0


def test_read_features_is_iter_features_concatenated(tmp_path):
    meta, _ = write_metadata(tmp_path / "m", sizes=(5, 7, 3), dim=4)
    pool = Pool(str(meta), progress=False)
    spec = FeatureSpec("m-flyt", ("clip_l14_similarity_score", "clip_b32_similarity_score"))
    table = read_features(pool, spec)
    assert table.arrays[0].shape == (15, 2) and table.arrays[0].dtype == np.float32
    expect = np.stack([pool.column("clip_l14_similarity_score"), pool.column("clip_b32_similarity_score")], 1)
    assert np.array_equal(table.arrays[0], expect.astype(np.float32))
    emb = read_features(pool, FeatureSpec("e-flyt", embedding_prefix="l14"))
    assert emb.is_embeddings and emb.dim == 4 and emb.arrays[1].dtype == np.float16
    assert np.array_equal(emb.arrays[1], pool.embeddings("l14_txt"))
    img, txt = emb.gather([14, 0])
    assert img.dtype == txt.dtype == torch.float32 and torch.equal(txt[1], torch.from_numpy(
        pool.embeddings("l14_txt")[0].astype(np.float32)))


def _rewrite_column(meta, name, values_of):
    """Replace column ``name`` of the pool's second parquet file by ``values_of(n)``."""
    path = sorted(meta.glob("*.parquet"))[1]
    table = pq.read_table(path)
    i = table.column_names.index(name)
    pq.write_table(table.set_column(i, name, pa.array(values_of(table.num_rows))), path)
    return path


def test_bad_features_name_input_file_and_row(tmp_path):
    meta, _ = write_metadata(tmp_path / "m", sizes=(4, 6))
    pool = Pool(str(meta), progress=False)
    with pytest.raises(FlytInputError, match=r"'nope' is not a column of the pool .* named by scoring model x\.pt"):
        read_features(pool, FeatureSpec("m-flyt", ("nope",), origin="scoring model x.pt"))
    nan_at_2 = lambda n: np.where(np.arange(n) == 2, np.nan, 0.5)  # noqa: E731
    path = _rewrite_column(meta, "clip_b32_similarity_score", nan_at_2)
    message = rf"'clip_b32_similarity_score' has 1 non-finite values in {re.escape(str(path))}, the first at row 2"
    with pytest.raises(FlytInputError, match=message):
        read_features(Pool(str(meta), progress=False), FeatureSpec("m-flyt", ("clip_b32_similarity_score",)))
    with pytest.raises(FlytInputError, match=r"'text' holds object values .*not numbers"):
        read_features(pool, FeatureSpec("m-flyt", ("text",)))
    with pytest.raises(FlytInputError, match="at least one input"):
        FeatureSpec("m-flyt", ())
    with pytest.raises(FlytInputError, match="unknown scoring model kind"):
        FeatureSpec("x-flyt")


def test_e_flyt_model_of_another_width_is_refused_naming_the_npz(tmp_path):
    meta, _ = write_metadata(tmp_path / "m", sizes=(3, 3), dim=8)
    pool = Pool(str(meta), progress=False)
    spec = FeatureSpec("e-flyt", origin="scoring model e.pt")
    with pytest.raises(FlytInputError, match=r"scoring model e\.pt expects 16-dim embeddings but b32_img in .*\.npz has 8"):
        score_pool(pool, GLUHead(16), spec)
    scores = score_pool(pool, GLUHead(8, cosine_init=True), spec)
    assert scores.shape == (6,) and scores.dtype == np.float64


def test_feature_table_shapes():
    table = FeatureTable(np.arange(6.0))
    assert table.arrays[0].shape == (6, 1) and table.dim == 1 and not table.is_embeddings
    with pytest.raises(FlytInputError, match=r"\(N, k\)"):
        FeatureTable(np.zeros((2, 2, 2)))
    with pytest.raises(FlytInputError, match="both be"):
        FeatureTable(np.zeros((3, 2), np.float16), np.zeros((3, 4), np.float16))
