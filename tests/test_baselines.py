"""DataComp's baselines (``filter --name``): the same uid sets as DataComp's rules, on tiny assets.

Each test computes the expected subset with an independent implementation written here the way
DataComp's ``baselines/apply_filter.py`` does it (row by row, with the same library calls), and
compares the bytes of the files.
"""

import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from baselinegen import (
    read_pool_npz,
    read_pool_table,
    train_language_model,
    write_caption_pool,
    write_centroids,
    write_in1k,
    write_tiny_wordnet,
)
from click.testing import CliRunner

from flyt_datacomp.baselines import assets, rules
from flyt_datacomp.cli import main as cli_main
from flyt_datacomp.cli.filter import filter_command
from flyt_datacomp.errors import FlytInputError

fasttext = pytest.importorskip("fasttext", reason="the baselines extra (fasttext) is not installed")


def run(args, expect_ok=True):
    result = CliRunner().invoke(filter_command, [*args, "--quiet"])
    if expect_ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def datacomp_file(hex_uids) -> bytes:
    """What DataComp saves: the kept uids parsed with int(), sorted, np.save."""
    arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in hex_uids], np.dtype("u8,u8"))
    arr.sort()
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """The pool and every asset, built once for the module."""
    root = tmp_path_factory.mktemp("baselines")
    pool, _ = write_caption_pool(root / "metadata")
    crash_free, _ = write_caption_pool(root / "crash_free", seed=5, crash_free=True)
    model = train_language_model(root / "fasttext")
    wordnet_root, ids = write_tiny_wordnet(root / "nltk_data")
    ids_file = root / "imagenet21k_wordnet_ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    centroids = write_centroids(root / "small_centroids.pt")
    in1k = write_in1k(root / "in1k", centroids)
    return {"root": root, "pool": pool, "crash_free": crash_free, "model": model, "wordnet": wordnet_root, "ids": ids,
            "ids_file": ids_file, "centroids": centroids, "in1k": in1k}


def asset_args(kit):
    return ["--fasttext-model", str(kit["model"]), "--imagenet21k-wordnet-ids", str(kit["ids_file"]),
            "--wordnet-data", str(kit["wordnet"]), "--centroids", str(kit["root"] / "small_centroids.pt"),
            "--in1k-embeddings", str(kit["root"] / "in1k")]


def name_run(kit, tmp_path, name, *extra, out_name="out.npy", workers="1", pool="pool"):
    out = tmp_path / out_name
    run(["--metadata_dir", str(kit[pool]), "--name", name, *extra, *asset_args(kit), "--num_workers", workers,
         "--save_path", str(out)])
    return out


# --------------------------------------------------------------------------- independent implementations


def fasttext_lang_one(model, text):
    """DataComp's get_fasttext_language (one caption at a time): FastText.predict(text) calls the
    binding's predict; called here directly, as FastText.predict's numpy conversion fails under numpy 2."""
    labels = [label for _, label in model.f.predict(text.replace("\n", " "), 1, 0.0, "strict")]
    return labels[0].split("__label__")[1]


def fasttext_langs_batch(model, texts):
    """DataComp's caption_filter: one predict call on the list (the binding's multilinePredict)."""
    labels, _ = model.f.multilinePredict([t.replace("\n", " ") for t in texts], 1, 0.0, "strict")
    return [x[0].replace("__label__", "") for x in labels]


def expected_basic(kit):
    model = fasttext.load_model(str(kit["model"]))
    table = read_pool_table(kit["pool"]).to_pylist()
    kept = []
    for row in table:
        text, w, h = row["text"], row["original_width"], row["original_height"]
        if not text:  # DataComp's predict(...)[0][0] raises on an empty caption; it fails the length rule anyway
            continue
        short, long = min(w, h), max(w, h)
        ratio = long / short if short else float("inf")
        if (fasttext_lang_one(model, text) == "en" and len(text.split()) > 2 and len(text) > 5
                and short >= 200 and ratio <= 3.0):
            kept.append(row["uid"])
    return kept


def expected_text_based(kit):
    import nltk

    if str(kit["wordnet"]) not in nltk.data.path:
        nltk.data.path.insert(0, str(kit["wordnet"]))
    from nltk.corpus import wordnet

    model = fasttext.load_model(str(kit["model"]))
    entity = [int(x.strip()[1:]) for x in kit["ids"]]
    kept = []
    for row in read_pool_table(kit["pool"]).to_pylist():
        text = row["text"]
        if not text or fasttext_lang_one(model, text) != "en":
            continue
        for word in text.split():
            synsets = wordnet.synsets(word)
            if synsets and synsets[0].offset() in entity:
                kept.append(row["uid"])
                break
    return kept


def in1k_targets(kit):
    """The nearest centroids (largest inner product, float32) of every ImageNet embedding."""
    import torch

    target = np.concatenate([torch.load(p)["image_features"].float().numpy() for p in kit["in1k"]])
    return set(np.argmax(target @ kit["centroids"].T, axis=1).tolist())


def expected_image_based(kit, arch=None, fraction=None, threshold=None):
    model = fasttext.load_model(str(kit["model"]))
    table = read_pool_table(kit["pool"])
    uids = table.column("uid").to_pylist()
    texts = table.column("text").to_pylist()
    emb = read_pool_npz(kit["pool"], "l14_img").astype(np.float32)
    c = kit["centroids"]
    targets = in1k_targets(kit)
    rows = range(len(uids))
    if arch is not None:
        scores = table.column(f"clip_{arch}_similarity_score").to_numpy()
        if threshold is None:
            threshold = -np.sort(-scores)[int(len(scores) * fraction)]
        rows = [i for i in rows if scores[i] >= threshold]
    rows = [i for i in rows if texts[i]]  # DataComp's caption_filter raises on an empty caption (no label)
    preds = fasttext_langs_batch(model, [texts[i] for i in rows])
    kept = []
    for i, lang in zip(rows, preds):
        if lang == "en" and len(fasttext.tokenize(texts[i])) > 1 and len(texts[i]) > 5:
            if int(np.argmax(emb[i] @ c.T)) in targets:
                kept.append(uids[i])
    return kept


# --------------------------------------------------------------------------- the baselines


def test_no_filter_keeps_every_uid(kit, tmp_path):
    out = name_run(kit, tmp_path, "no_filter")
    assert out.read_bytes() == datacomp_file(read_pool_table(kit["pool"]).column("uid").to_pylist())
    side = json.loads(out.with_name("out.npy.json").read_text())
    assert side["baseline"] == {"name": "no_filter", "params": {}} and side["sampler"] is None


def test_basic_filter_matches_datacomps_rule(kit, tmp_path):
    expected = expected_basic(kit)
    assert 0 < len(expected) < 60  # the pool exercises both sides of the rule
    out = name_run(kit, tmp_path, "basic_filter")
    assert out.read_bytes() == datacomp_file(expected)
    side = json.loads(out.with_name("out.npy.json").read_text())
    fasttext_asset = side["masks"][0]["assets"]["fasttext"]
    assert fasttext_asset["datacomp_file"] is False and len(fasttext_asset["sha256"]) == 64
    assert any("not the file DataComp publishes" in w for w in side["warnings"])
    # worker processes give the same bytes
    parallel = name_run(kit, tmp_path, "basic_filter", out_name="p.npy", workers="2")
    assert parallel.read_bytes() == out.read_bytes()


def test_text_based_matches_datacomps_rule(kit, tmp_path):
    pytest.importorskip("nltk", reason="the baselines extra (nltk) is not installed")
    expected = expected_text_based(kit)
    table = read_pool_table(kit["pool"]).to_pylist()
    by_uid = {r["uid"]: r["text"] for r in table}
    kept_texts = {by_uid[u] for u in expected}
    assert "we jog in the park" in kept_texts  # a verb whose offset is a listed noun's counts, as in DataComp
    assert "the mice are here" in kept_texts and "Dogs in the park" in kept_texts  # morphy and lower-casing
    assert not kept_texts & {"the dog, the cat", "the cat", "le chien est sur le tapis"}
    out = name_run(kit, tmp_path, "text_based")
    assert out.read_bytes() == datacomp_file(expected)


@pytest.mark.parametrize("extra", [(), ("--arch", "l14", "--fraction", "0.3"), ("--arch", "b32", "--threshold", "0.27")])
def test_image_based_variants_match_datacomps_rule(kit, tmp_path, extra):
    name = "image_based" if not extra else "image_based_intersect_clip_score"
    kw = {}
    if extra:
        kw = {"arch": extra[1], extra[2].lstrip("-"): float(extra[3])}
    expected = expected_image_based(kit, **kw)
    assert expected
    out = name_run(kit, tmp_path, name, *extra, workers="2" if extra and extra[2] == "--threshold" else "1")
    assert out.read_bytes() == datacomp_file(expected)
    side = json.loads(out.with_name("out.npy.json").read_text())
    assert side["masks"][0]["target_centroids"] == len(in1k_targets(kit))


def test_nearest_centroid_uses_unnormalised_centroids():
    """The inner product, not the cosine: a long centroid wins over a better-aligned short one."""
    import torch

    from flyt_datacomp.baselines.centroids import nearest_centroids

    c = torch.tensor([[1.0, 0.0], [0.0, 5.0], [0.0, 0.1]])
    x = np.array([[0.9, 0.4], [0.99, 0.1], [0.0, 1.0]], dtype=np.float16)
    assert nearest_centroids(x, c, batch_size=2).tolist() == [1, 0, 1]
    cos = (x.astype(np.float32) @ c.numpy().T) / np.linalg.norm(c.numpy(), axis=1)
    assert np.argmax(cos, axis=1).tolist() == [0, 0, 1]  # what a cosine rule would pick instead


@pytest.mark.parametrize("args", [("--arch", "l14", "--fraction", "0.3"), ("--arch", "b32", "--threshold", "0.28"),
                                  ("--arch", "b32", "--threshold", "0.22")])
def test_clip_score_by_name_matches_datacomp(kit, tmp_path, args):
    from test_dropin import datacomp_clip_score_file

    fraction = float(args[3]) if args[2] == "--fraction" else None
    threshold = float(args[3]) if args[2] == "--threshold" else None
    out = name_run(kit, tmp_path, "clip_score", *args)
    assert out.read_bytes() == datacomp_clip_score_file(kit["pool"], args[1], fraction=fraction,
                                                        threshold=None if threshold is None else np.float32(threshold))
    if threshold is not None:  # DataComp's spelling without --name: the threshold sampler, the same file
        run(["--metadata_dir", str(kit["pool"]), *args, "--save_path", str(tmp_path / "sampler.npy")])
        assert (tmp_path / "sampler.npy").read_bytes() == out.read_bytes()
    # the command group spelling writes the same file
    out2 = tmp_path / "group.npy"
    r = CliRunner().invoke(cli_main, ["baseline", "clip_score", *args, "--metadata-dir", str(kit["pool"]),
                                      "--output", str(out2), "--quiet"])
    assert r.exit_code == 0, r.output
    assert out2.read_bytes() == out.read_bytes()


def test_laion2b_rule_with_a_stand_in_language_identifier(kit, tmp_path, monkeypatch):
    """The rule without gcld3: language labels from a stand-in, the same in both implementations."""
    from flyt_datacomp.baselines import language

    def stand_in(texts):
        return np.array([None if t is None else ("en" if "the" in t.replace("\n", " ").split() else "xx")
                         for t in texts], dtype=object)

    monkeypatch.setattr(language, "gcld3_languages", stand_in)
    monkeypatch.setattr("flyt_datacomp.baselines.optional.require", lambda module: None)
    table = read_pool_table(kit["pool"]).to_pylist()
    expected = [r["uid"] for r in table if r["text"] is not None and stand_in([r["text"]])[0] == "en"
                and np.float32(r["clip_b32_similarity_score"]) >= np.float32(0.28)]
    assert expected
    out = name_run(kit, tmp_path, "laion2b")
    assert out.read_bytes() == datacomp_file(expected)


def test_laion2b_with_gcld3(kit, tmp_path):
    gcld3 = pytest.importorskip("gcld3", reason="gcld3 is not installed (optional extra 'gcld3', builds from source)")
    detector = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    table = read_pool_table(kit["pool"]).to_pylist()
    expected = [r["uid"] for r in table if r["text"] is not None
                and detector.FindLanguage(text=r["text"].replace("\n", " ")).language == "en"
                and np.float32(r["clip_b32_similarity_score"]) >= np.float32(0.28)]
    assert expected
    out = name_run(kit, tmp_path, "laion2b")
    assert out.read_bytes() == datacomp_file(expected)


# --------------------------------------------------------------------------- rules on arrays


def test_rank_threshold_and_comparison_follow_numpy_as_datacomp_uses_it():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(0.3, 0.05, 101), 2).astype(np.float32)
    s[[3, 50]] = np.nan  # missing scores sort last in -np.sort(-s)
    for f in (0.01, 0.3, 0.5, 0.97):
        t = -np.sort(-s)[int(len(s) * f)]
        assert rules.rank_threshold(s, f) == t
        assert (rules.at_least(s, rules.rank_threshold(s, f)) == (s >= t)).all()
    # a Python float threshold compares in float32 against a float32 column, as DataComp's pandas does
    x = np.array([np.float32(0.22), np.nextafter(np.float32(0.22), np.float32(0))], dtype=np.float32)
    assert rules.at_least(x, 0.22).tolist() == (x >= np.float32(0.22)).tolist() == [True, False]
    assert (x.astype(np.float64) >= 0.22).tolist() == [False, False]  # a float64 comparison would differ


def test_basic_rule_edges_on_arrays():
    texts = np.array(["a b c", "ab cd", "a b cdef", None, "a\nb\nc dd", "abc def ghi"], dtype=object)
    langs = np.array(["en", "en", "en", None, "en", "fr"], dtype=object)
    w = np.array([200, 200, 600, 600, 601, 300])
    h = np.array([200, 300, 200, 200, 200, 300])
    # "a b c" has 5 characters (not > 5); "ab cd" 2 words; 601 x 200 exceeds ratio 3; "fr" is not English
    assert rules.basic_filter_mask(texts, langs, w, h).tolist() == [False, False, True, False, False, False]


# --------------------------------------------------------------------------- DataComp's checks and assets


@pytest.mark.parametrize("args, message", [
    (["--name", "laion2b", "--arch", "b32"], "laion2b takes none of"),
    (["--name", "clip_score", "--fraction", "0.3"], "needs --arch"),
    (["--name", "clip_score", "--arch", "l14"], "exactly one of --fraction and --threshold"),
    (["--name", "basic_filter", "--fraction", "0.3"], "--fraction applies only to the clip_score baselines"),
    (["--name", "text_based", "--image_based_scale", "small"], "--image-based-scale applies only"),
    (["--name", "basic_filter", "--score", "clip_l14_similarity_score"], "takes no --score"),
    (["--name", "no_filter", "--sampler", "scs"], "--sampler does not apply"),
])
def test_datacomps_option_rules(kit, tmp_path, args, message):
    r = run(["--metadata-dir", str(kit["pool"]), *args, "--output", str(tmp_path / "x.npy")], expect_ok=False)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "x.npy").exists()


def test_missing_assets_are_named_with_where_datacomp_publishes_them(kit, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FLYT_DATACOMP_ASSETS", raising=False)
    r = run(["--metadata-dir", str(kit["pool"]), "--name", "basic_filter", "--output", str(tmp_path / "x.npy")],
            expect_ok=False)
    assert r.exit_code == 2 and "lid.176.bin" in r.output and "--fasttext-model" in r.output
    assert "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin" in r.output
    r = run(["--metadata-dir", str(kit["pool"]), "--name", "image_based", "--image_based_scale", "medium",
             "--fasttext-model", str(kit["model"]), "--output", str(tmp_path / "x.npy")], expect_ok=False)
    assert r.exit_code == 2 and "medium pool" in r.output and "medium_centroids_l14.pt" in r.output
    r = run(["--metadata-dir", str(kit["pool"]), "--name", "image_based", "--fasttext-model", str(kit["model"]),
             "--output", str(tmp_path / "x.npy")], expect_ok=False)
    assert r.exit_code == 2 and "--image-based-scale" in r.output
    r = run(["--metadata-dir", str(kit["pool"]), "--name", "text_based", "--fasttext-model", str(kit["model"]),
             "--imagenet21k-wordnet-ids", str(kit["ids_file"]), "--wordnet-data", str(tmp_path / "nowhere"),
             "--output", str(tmp_path / "x.npy")], expect_ok=False)
    if "WordNet corpus" in r.output:  # not when a real WordNet is on this machine's NLTK path
        assert r.exit_code == 2 and "nltk.downloader" in r.output
    assert not (tmp_path / "x.npy").exists()


def test_assets_are_found_in_a_cache_folder_under_datacomps_names(kit, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "lid.176.bin").write_bytes(kit["model"].read_bytes())
    (cache / "small_centroids.pt").write_bytes((kit["root"] / "small_centroids.pt").read_bytes())
    for p in kit["in1k"]:
        (cache / p.name).write_bytes(p.read_bytes())
    monkeypatch.setenv("FLYT_DATACOMP_ASSETS", str(cache))
    out = tmp_path / "cached.npy"
    run(["--metadata-dir", str(kit["pool"]), "--name", "image_based", "--image_based_scale", "small",
         "--output", str(out)])
    assert out.read_bytes() == datacomp_file(expected_image_based(kit))
    side = json.loads(out.with_name("cached.npy.json").read_text())
    used = side["masks"][0]["assets"]
    assert used["centroids"]["path"] == str(cache / "small_centroids.pt") and used["centroids"]["datacomp_file"] is False
    assert len(used["in1k_embeddings"]) == 5


def test_asset_readers_reject_wrong_files(tmp_path):
    bad = tmp_path / "ids.txt"
    bad.write_text("n00001740\nnot-an-id\n")
    with pytest.raises(FlytInputError, match="line 2"):
        assets.read_wordnet_ids(bad)
    text = tmp_path / "centroids.pt"
    text.write_text("hello")
    with pytest.raises(FlytInputError, match="centroid file"):
        assets.read_centroids(text)
    import torch

    torch.save({"features": torch.zeros(3, 2)}, tmp_path / "in1k.pt")
    with pytest.raises(FlytInputError, match="image_features"):
        assets.read_in1k_features(tmp_path / "in1k.pt")


# --------------------------------------------------------------------------- DataComp's own code, when available


@pytest.mark.skipif(not (os.environ.get("FLYT_DATACOMP_SRC") and os.environ.get("FLYT_DATACOMP_PYTHON")),
                    reason="set FLYT_DATACOMP_SRC (a DataComp checkout) and FLYT_DATACOMP_PYTHON (a python with its "
                           "filter dependencies) to compare with DataComp's own apply_filter")
@pytest.mark.parametrize("name, args", [
    ("no_filter", ()), ("basic_filter", ()), ("text_based", ()), ("image_based", ("--image_based_scale", "small")),
    ("image_based_intersect_clip_score", ("--image_based_scale", "small", "--arch", "l14", "--fraction", "0.4")),
    ("clip_score", ("--arch", "b32", "--fraction", "0.3")), ("clip_score", ("--arch", "l14", "--threshold", "0.22")),
    ("laion2b", ()),
])
def test_same_bytes_as_datacomps_own_apply_filter(kit, tmp_path, name, args):
    """DataComp's baselines.py itself (its code stops on null or empty captions: a pool without them)."""
    harness = Path(__file__).parent / "datacomp_reference" / "run_apply_filter.py"
    theirs = tmp_path / "datacomp.npy"
    config = {"src": os.environ["FLYT_DATACOMP_SRC"], "fasttext": str(kit["model"]), "wordnet_data": str(kit["wordnet"]),
              "imagenet21k_wordnet_ids": str(kit["ids_file"]), "small_centroids": str(kit["root"] / "small_centroids.pt"),
              "in1k": [str(p) for p in kit["in1k"]]}
    gpus = ["--num_gpus", "1"] if "image_based" in name else []
    proc = subprocess.run([os.environ["FLYT_DATACOMP_PYTHON"], str(harness), "--name", name, "--metadata_dir",
                           str(kit["crash_free"]), "--save_path", str(theirs), "--num_workers", "2", *gpus, *args],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DC_HARNESS_CONFIG": json.dumps(config)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ours = name_run(kit, tmp_path, name, *args, pool="crash_free", workers="2")
    assert len(np.load(ours)) and ours.read_bytes() == theirs.read_bytes()


def test_recipes_run_and_write_what_the_commands_write(kit, tmp_path):
    recipes = Path(__file__).parent.parent / "baselines"
    assets_dir = tmp_path / "assets"
    assets_dir.mkdir()
    (assets_dir / "lid.176.bin").write_bytes(kit["model"].read_bytes())
    relevance = tmp_path / "relevance.json"
    relevance.write_text(json.dumps({"clip_b32_similarity_score": 0.27, "clip_l14_similarity_score": 0.3}))
    env = {**os.environ, "NUM_WORKERS": "1"}
    for script, args in [("basic_filter.sh", [str(assets_dir)]), ("clip_score.sh", ["b32", "0.25"]),
                         ("negcliploss_normsim.sh", ["clip_b32_similarity_score", "clip_l14_similarity_score"]),
                         ("in_weighted.sh", ["4", str(relevance)])]:
        out = tmp_path / f"{script}.npy"
        proc = subprocess.run(["bash", str(recipes / script), str(kit["pool"]), str(out), *args], env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, script + proc.stderr[-2000:]
        assert json.loads(out.with_name(out.name + ".json").read_text())["total_entries"] > 0
    assert (tmp_path / "basic_filter.sh.npy").read_bytes() == datacomp_file(expected_basic(kit))
    from test_dropin import datacomp_clip_score_file

    assert (tmp_path / "clip_score.sh.npy").read_bytes() == datacomp_clip_score_file(kit["pool"], "b32", fraction=0.25)


def test_text_based_lists_every_missing_asset_at_once(tmp_path, monkeypatch):
    """A first run of text_based on a machine without its assets names all three things to fetch in one
    message, instead of one per run."""
    from poolgen import write_metadata

    nltk = pytest.importorskip("nltk")
    monkeypatch.setattr(nltk.data, "path", [])  # no WordNet another test put on NLTK's path
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLYT_DATACOMP_ASSETS", raising=False)
    root, _ = write_metadata(tmp_path / "metadata")
    empty = tmp_path / "assets"
    empty.mkdir()
    r = CliRunner().invoke(cli_main, ["baseline", "text_based", "--metadata-dir", str(root), "--output",
                                      str(tmp_path / "t.npy"), "--assets-dir", str(empty), "--wordnet-data", str(empty)])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    (error,) = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert "text_based lacks 3 things it needs" in error
    for needed in ("lid.176.bin", "imagenet21k_wordnet_ids", "WordNet corpus"):
        assert needed in error, needed
    assert not (tmp_path / "t.npy").exists()
