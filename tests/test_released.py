"""The FLYT authors' released artifacts, in their exact formats: a mixing model saved as their
``MixingModel``'s state dict, input scores as ``{key[:8]}_scores.parquet`` files keyed by webdataset
key, joined to uids through img2dataset's per-shard parquet files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from flyt_datacomp.cli import main as cli
from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.pool import Pool
from flyt_datacomp.uids import read_subset, uids_to_hex

INPUTS = ["clip_b32_similarity_score", "clip_l14_similarity_score", "noise_score"]
FIELDS = ["vit-b-32", "vit-l-14", "noise"]  # the authors' kind of names for the same inputs


class MixingModel(nn.Module):
    """The authors' M-FLYT model, as their flyt/factory.py defines it."""

    def __init__(self, num_scores, dtype=None):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(num_scores, 1, dtype=dtype))

    def forward(self, x):
        return self.layers(x).squeeze()


def invoke(args, code=0):
    r = CliRunner().invoke(cli, [*map(str, args)])
    assert r.exit_code == code, r.output + repr(r.exception)
    return r


def shard_keys(demo) -> dict[str, str]:
    """uid -> webdataset key of the demo's downloads (img2dataset's per-shard parquet files)."""
    out = {}
    for f in sorted(demo.shards_dir.glob("*.parquet")):
        t = pq.read_table(f, columns=["key", "uid", "status"]).to_pydict()
        out.update({u: k for k, u, s in zip(t["key"], t["uid"], t["status"]) if s == "success"})
    return out


def write_authors_scores(folder, keys: list[str], columns: dict[str, np.ndarray]) -> None:
    """``{key[:8]}_scores.parquet`` files with ``key`` and one float column per field (their notebook)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = np.asarray(keys)
    prefixes = np.array([k[:8] for k in keys])
    for prefix in sorted(set(prefixes)):
        rows = prefixes == prefix
        table = {"key": keys[rows].tolist(), **{n: np.asarray(v, dtype=np.float64)[rows] for n, v in columns.items()}}
        pq.write_table(pa.table(table), folder / f"{prefix}_scores.parquet")


@pytest.fixture(scope="module")
def native(tiny_demo_pool, tmp_path_factory):
    """A native M-FLYT model trained on the tiny demo pool, and the pool rows' standardised inputs."""
    from flyt_datacomp.flyt.config import build_config
    from flyt_datacomp.flyt.features import FeatureSpec, iter_features
    from flyt_datacomp.flyt.models import load_scoring_model
    from flyt_datacomp.flyt.trainer import Trainer

    run = tmp_path_factory.mktemp("mflyt")
    quick = {"steps": 3, "warmup_steps": 1, "batch_size": 16, "downstream_batch_size": 10, "adam_warmup_steps": 1,
             "shuffle_buffer": 40, "checkpoint_every": 3}
    cfg = build_config("m-flyt-demo", tiny_demo_pool.train_paths(), quick)
    model_path = Trainer(cfg, run, progress=False).run()["scoring_model"]
    model, meta = load_scoring_model(model_path)
    assert model.input_names == INPUTS
    pool = Pool(str(tiny_demo_pool.metadata_dir), progress=False)
    spec = FeatureSpec.of_scoring_model(model, meta, model_path)
    with torch.no_grad():  # each example's inputs as the model standardises them (float32), shard by shard
        z = np.concatenate([model.standardize(t.gather()).numpy() for _, t in iter_features(pool, spec, desc="")])
    return {"model": model, "path": model_path, "z": z, "pool": pool}


def export(native, demo, folder, *, shift: int = 0, drop: int = 0):
    """The native model and its inputs in the authors' formats: each field holds an input as the
    native model standardises it, and the mixing model its weights with a zero bias, so their raw mix
    is the native score exactly. ``shift`` moves every score to the next key (a download with
    another layout); ``drop`` leaves out that many downloaded examples."""
    keys = shard_keys(demo)
    hexes = uids_to_hex(native["pool"].uids)
    rows = [i for i, u in enumerate(hexes) if u in keys][drop:]
    key_list = [keys[hexes[i]] for i in rows]
    z = native["z"][rows]
    if shift:
        z = np.roll(z, shift, axis=0)
    write_authors_scores(folder, key_list, {f: z[:, j] for j, f in enumerate(FIELDS)})
    authors = MixingModel(len(FIELDS))
    with torch.no_grad():
        authors.layers[0].weight.copy_(native["model"].weight.detach()[None, :])
        authors.layers[0].bias.zero_()
    torch.save(authors.state_dict(), folder / "mflyt.pt")
    return folder / "mflyt.pt"


def test_round_trip_gives_the_native_subset_byte_for_byte(native, tiny_demo_pool, tmp_path):
    demo = tiny_demo_pool
    mflyt = export(native, demo, tmp_path / "released")
    store = tmp_path / "store"
    r = invoke(["inputs", "import", tmp_path / "released", "--metadata-dir", demo.metadata_dir, "--inputs-dir", store,
                "--shards-dir", demo.shards_dir, "--missing", "min", "--check", "vit-b-32=clip_b32_similarity_score",
                "--min-correlation", "0.5", "--quiet"])
    assert "join check: vit-b-32 correlates" in r.output
    manifest = json.loads((store / "inputs.json").read_text())
    entry = manifest["inputs"]["vit-b-32"]
    assert entry["source_key"] == "key" and entry["fill_value"] is not None and entry["missing"] == "min"
    assert entry["join_check"]["correlation"] > 0.999
    common = ["--metadata-dir", demo.metadata_dir, "--shards-dir", demo.shards_dir, "--scs-alpha", "1.0",
              "--scs-group-size", "5", "--num-samples", "900", "--seed", "4", "--quiet"]
    invoke(["filter", "--score", native["path"], "--output", tmp_path / "native.npy", *common])
    invoke(["filter", "--score", f"mixing:{mflyt}:{','.join(FIELDS)}", "--inputs-dir", store,
            "--output", tmp_path / "released.npy", *common])
    assert (tmp_path / "native.npy").read_bytes() == (tmp_path / "released.npy").read_bytes()
    assert read_subset(tmp_path / "native.npy")[1].sum() == 900


def test_a_download_with_shifted_keys_is_refused(native, tiny_demo_pool, tmp_path):
    demo = tiny_demo_pool
    export(native, demo, tmp_path / "released", shift=1)
    r = invoke(["inputs", "import", tmp_path / "released", "--metadata-dir", demo.metadata_dir,
                "--inputs-dir", tmp_path / "store", "--shards-dir", demo.shards_dir, "--missing", "min",
                "--check", "vit-b-32=clip_b32_similarity_score", "--quiet"], code=2)
    assert "correlates" in r.output and "below 0.99" in r.output and "joined to the wrong examples" in r.output
    assert not (tmp_path / "store" / "inputs.json").exists() or "complete" not in (tmp_path / "store" / "inputs.json").read_text()


def test_missing_rows_need_a_fill_policy(native, tiny_demo_pool, tmp_path):
    demo = tiny_demo_pool
    export(native, demo, tmp_path / "released", drop=7)
    args = ["inputs", "import", tmp_path / "released", "--metadata-dir", demo.metadata_dir, "--inputs-dir",
            tmp_path / "store", "--shards-dir", demo.shards_dir, "--field", "vit-b-32", "--quiet"]
    r = invoke(args, code=2)
    assert "has no value for" in r.output and "--missing min or mean" in r.output
    invoke([*args, "--missing", "mean"])
    entry = json.loads((tmp_path / "store" / "inputs.json").read_text())["inputs"]["vit-b-32"]
    assert entry["missing"] == "mean" and entry["missing_count"] > 7  # the 7 dropped + the failed downloads


def test_keys_without_shards_uid_keyed_files_and_bad_keys(native, tiny_demo_pool, tmp_path):
    demo = tiny_demo_pool
    export(native, demo, tmp_path / "released")
    base = ["inputs", "import", tmp_path / "released", "--metadata-dir", demo.metadata_dir, "--inputs-dir",
            tmp_path / "store", "--field", "noise", "--missing", "min", "--quiet"]
    r = invoke(base, code=2)
    assert "keyed by webdataset key" in r.output and "--shards-dir" in r.output
    hexes = uids_to_hex(native["pool"].uids)  # a uid-keyed file needs no shards
    pq.write_table(pa.table({"uid": list(hexes), "noise": native["z"][:, 2].astype(np.float64)}),
                   tmp_path / "by_uid.parquet")
    invoke(["inputs", "import", tmp_path / "by_uid.parquet", "--metadata-dir", demo.metadata_dir, "--inputs-dir",
            tmp_path / "store2", "--quiet"])
    for bad, message in ((["000000001", "000000001"], "more than once"), (["00000000x", "000000002"], "malformed key")):
        folder = tmp_path / f"bad{len(message)}"
        write_authors_scores(folder, bad, {"noise": np.zeros(2)})
        r = invoke(["inputs", "import", folder, "--metadata-dir", demo.metadata_dir, "--inputs-dir",
                    tmp_path / f"s{len(message)}", "--shards-dir", demo.shards_dir, "--missing", "min", "--quiet"],
                   code=2)
        assert message in r.output, r.output


def test_mixing_models_of_the_wrong_width_or_holding_objects_are_refused(native, tiny_demo_pool, tmp_path):
    from flyt_datacomp.scores.mixing import read_mixing_model

    demo = tiny_demo_pool
    torch.save(MixingModel(12).state_dict(), tmp_path / "twelve.pt")  # the released model's shape
    w, b = read_mixing_model(str(tmp_path / "twelve.pt"))
    assert w.shape == (12,) and isinstance(b, float)
    r = invoke(["filter", "--metadata-dir", demo.metadata_dir, "--score", f"mixing:{tmp_path / 'twelve.pt'}:{','.join(INPUTS)}",
                "--output", tmp_path / "x.npy", "--quiet"], code=2)
    assert "mixes 12 inputs but 3 were named" in r.output
    torch.save(MixingModel(3), tmp_path / "pickled.pt")  # the whole module: a pickled class
    with pytest.raises(FlytInputError, match="holds Python objects"):
        read_mixing_model(str(tmp_path / "pickled.pt"))
    torch.save({"epoch": 5, "name": "run", "state_dict": {f"module.{k}": v for k, v in MixingModel(3).state_dict().items()},
                "optimizer": {}}, tmp_path / "training.pt")  # their training checkpoint
    assert read_mixing_model(str(tmp_path / "training.pt"))[0].shape == (3,)
    torch.save({"layers.0.weight": torch.zeros(2, 3)}, tmp_path / "two_rows.pt")
    with pytest.raises(FlytInputError, match=r"shape \[2, 3\]"):
        read_mixing_model(str(tmp_path / "two_rows.pt"))


def test_the_paper_recipe_builds_the_papers_selection(tmp_path):
    from flyt_datacomp.recipes import RELEASED_INPUTS, recipe_selection
    from flyt_datacomp.selection import sampler_params

    sel = recipe_selection("flyt_mflyt_scs", metadata_dir="m", output=str(tmp_path / "s.npy"), inputs_dir="store",
                           mixing_model="mflyt.pt")
    assert sel.score.source == f"mixing:mflyt.pt:{','.join(RELEASED_INPUTS)}" and sel.score.inputs_dir == "store"
    assert sampler_params(sel.sample, 100_000_000) == {"alpha": 0.15, "group_size": 100_000, "device": "cpu",
                                                       "num_samples": 128_000_000}
    small = recipe_selection("flyt_mflyt_scs", metadata_dir="m", output="s.npy", inputs_dir="s", mixing_model="m.pt",
                             scale="small")
    assert sampler_params(small.sample, 10_000_000) == {"alpha": 0.5, "group_size": 10_000, "device": "cpu",
                                                        "num_samples": 12_800_000}
    top = recipe_selection("flyt_mflyt_top20", metadata_dir="m", output="s.npy", inputs_dir="s", mixing_model="m.pt")
    assert top.sample.sampler == "threshold" and top.sample.options == {"fraction": 0.2}
    with pytest.raises(FlytInputError, match="needs `mixing_model`"):
        recipe_selection("flyt_mflyt_scs", metadata_dir="m", output="s.npy", inputs_dir="s", mixing_model=None)


def test_the_recipe_on_the_command_line(native, tiny_demo_pool, tmp_path):
    demo = tiny_demo_pool
    mflyt = export(native, demo, tmp_path / "released")
    store = tmp_path / "store"
    invoke(["inputs", "import", tmp_path / "released", "--metadata-dir", demo.metadata_dir, "--inputs-dir", store,
            "--shards-dir", demo.shards_dir, "--missing", "min", "--quiet"])
    r = invoke(["baseline", "flyt_mflyt_top20", "--metadata-dir", demo.metadata_dir, "--inputs-dir", store,
                "--mixing-model", mflyt, "--mixing-inputs", ",".join(FIELDS), "--output", tmp_path / "top.npy",
                "--quiet"])
    side = json.loads((tmp_path / "top.npy.json").read_text())
    assert side["sampler"] == "threshold" and side["sampler_params"]["fraction"] == 0.2
    assert side["inputs"]["score_source"].startswith("mixing:") and "selected" in r.output
    r = invoke(["baseline", "flyt_mflyt_top20", "--metadata-dir", demo.metadata_dir, "--inputs-dir", store,
                "--mixing-model", mflyt, "--output", tmp_path / "x.npy", "--quiet"], code=2)
    assert "mixing input 'vit-b-32'" not in r.output and "DFN-Base" in r.output  # the 12 released names by default
    r = invoke(["baseline", "basic_filter", "--metadata-dir", demo.metadata_dir, "--mixing-model", mflyt,
                "--output", tmp_path / "y.npy", "--quiet"], code=2)
    assert "--mixing-model applies to the flyt_* recipes" in r.output


def test_a_released_classifier_is_applied_as_it_is(tiny_demo_pool, tmp_path):
    from flyt_datacomp.store import InputStore

    demo = tiny_demo_pool
    pool = Pool(str(demo.metadata_dir), progress=False)
    emb = np.concatenate([pool.read_shard(s, npz_keys=["b32_img", "b32_txt"]).arrays["b32_img"] for s in pool.shards])
    dim = emb.shape[1]
    torch.manual_seed(0)
    one, two = nn.Linear(dim, 1), nn.Linear(2 * dim, 2)  # the authors' IN1K- and CC2M-Classifier kinds
    torch.save(one.state_dict(), tmp_path / "IN1K-Classifier.pt")
    torch.save(two.state_dict(), tmp_path / "CC2M-Classifier.pt")
    store = tmp_path / "store"
    invoke(["inputs", "compute", "--metadata-dir", demo.metadata_dir, "--inputs-dir", store, "--quiet",
            "--input", f"in1k=classifier:{tmp_path / 'IN1K-Classifier.pt'}",
            "--input", f"cc2m=classifier:{tmp_path / 'CC2M-Classifier.pt'}:features=image+text"])
    got = InputStore(store).columns(["in1k", "cc2m"], pool)
    x = emb.astype(np.float64)
    want_in1k = x @ one.weight.detach().double().numpy()[0] + float(one.bias[0])
    both = np.concatenate([x, np.concatenate([pool.read_shard(s, npz_keys=["b32_txt"]).arrays["b32_txt"]
                                              for s in pool.shards]).astype(np.float64)], axis=1)
    w, b = two.weight.detach().double().numpy(), two.bias.detach().double().numpy()
    want_cc2m = both @ (w[1] - w[0]) + (b[1] - b[0])  # the second class's log-odds
    assert np.allclose(got["in1k"], want_in1k, atol=1e-5) and np.allclose(got["cc2m"], want_cc2m, atol=1e-5)
    entry = json.loads((store / "inputs.json").read_text())["inputs"]["in1k"]
    assert entry["fitted"] == "given" and str(tmp_path / "IN1K-Classifier.pt") in entry["sources"]
    r = invoke(["inputs", "compute", "--metadata-dir", demo.metadata_dir, "--inputs-dir", tmp_path / "s2", "--quiet",
                "--input", f"x=classifier:{tmp_path / 'CC2M-Classifier.pt'}"], code=2)  # read as image-only
    assert f"reads {2 * dim} features but the pool's b32_img give {dim}" in r.output


def test_the_released_flyt_scoring_model_over_the_images(tiny_demo_pool, tmp_path):
    """flyt.pt as the authors' ScoringModel saves it (clip_model.* and glu_model.layers.0.w1/w2/w3),
    here with a tiny CLIP; the provider's scores match the head computed independently."""
    import io
    import tarfile

    import open_clip
    from PIL import Image

    from flyt_datacomp.clip_models import create_clip, named_tiny_configs
    from flyt_datacomp.store import InputStore

    demo = tiny_demo_pool
    arch = named_tiny_configs()["tiny"]
    clip = create_clip(arch, seed=3).eval()
    width = 2 * arch["embed_dim"]
    torch.manual_seed(1)
    w1, w2, w3 = nn.Linear(width, width), nn.Linear(width, 1), nn.Linear(width, width)
    state = {f"clip_model.{k}": v for k, v in clip.state_dict().items()}
    for name, layer in (("w1", w1), ("w2", w2), ("w3", w3)):
        state.update({f"glu_model.layers.0.{name}.{k}": v for k, v in layer.state_dict().items()})
    torch.save(state, tmp_path / "flyt.pt")
    store = tmp_path / "store"
    invoke(["inputs", "compute", "--metadata-dir", demo.metadata_dir, "--inputs-dir", store, "--shards-dir",
            demo.shards_dir, "--input", f"FLYT=flyt_released:{tmp_path / 'flyt.pt'}:arch=tiny", "--missing", "min",
            "--device", "cpu", "--quiet"])
    pool = Pool(str(demo.metadata_dir), progress=False)
    got = dict(zip(uids_to_hex(pool.uids), InputStore(store).column("FLYT", pool)))
    transform = open_clip.image_transform(32, is_train=False)
    tokenize = open_clip.get_tokenizer("ViT-B-32")
    tar = sorted(demo.shards_dir.glob("*.tar"))[0]
    samples = {}
    with tarfile.open(tar) as t:
        for m in t.getmembers():
            key, ext = m.name.rsplit(".", 1)
            samples.setdefault(key, {})[ext] = t.extractfile(m).read()
    checked = 0
    for s in list(samples.values())[:8]:
        uid = json.loads(s["json"])["uid"]
        with torch.no_grad():
            img = clip.encode_image(transform(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))[None], normalize=True)
            txt = clip.encode_text(tokenize([s["txt"].decode()], context_length=16), normalize=True)
            x = torch.cat([img, txt], dim=1)
            want = float(w2(torch.nn.functional.silu(w1(x)) * w3(x)))
        assert abs(got[uid] - want) < 1e-4, (got[uid], want)
        checked += 1
    assert checked == 8
    torch.save({k: v for k, v in state.items() if "w3" not in k}, tmp_path / "broken.pt")
    r = invoke(["inputs", "compute", "--metadata-dir", demo.metadata_dir, "--inputs-dir", tmp_path / "s2",
                "--shards-dir", demo.shards_dir, "--input", f"flyt_released:{tmp_path / 'broken.pt'}:arch=tiny",
                "--missing", "min", "--device", "cpu", "--quiet"], code=2)
    assert "is not the authors' FLYT scoring model" in r.output


def test_import_from_an_fsspec_url(native, tiny_demo_pool, tmp_path):
    """SRC may be any fsspec URL (hf://datasets/... in practice; memory:// here): listed, hashed
    for the store's record of the input's identity, and read without a local copy."""
    import fsspec

    demo = tiny_demo_pool
    local = tmp_path / "released"
    export(native, demo, local)
    fs = fsspec.filesystem("memory")
    for f in sorted(local.glob("*_scores.parquet")):
        fs.pipe(f"/released-scores/data/{f.name}", f.read_bytes())
    store = tmp_path / "store"
    invoke(["inputs", "import", "memory://released-scores", "--metadata-dir", demo.metadata_dir, "--inputs-dir", store,
            "--shards-dir", demo.shards_dir, "--field", "vit-b-32", "--missing", "min", "--quiet"])
    entry = json.loads((store / "inputs.json").read_text())["inputs"]["vit-b-32"]
    assert entry["source_files"] == len(list(local.glob("*_scores.parquet")))
    assert all(v["sha256"] for v in entry["sources"].values()) and entry["join_check"]["correlation"] > 0.999


MALFORMED = {
    "bias a float": {"layers.0.weight": torch.ones(1, 3), "layers.0.bias": 0.5},
    "bias a list": {"layers.0.weight": torch.ones(1, 3), "layers.0.bias": [0.5]},
    "bias a string": {"layers.0.weight": torch.ones(1, 3), "layers.0.bias": "0.5"},
    "weight a list": {"layers.0.weight": [[1.0, 2.0, 3.0]], "layers.0.bias": torch.zeros(1)},
    "sparse weight": {"layers.0.weight": torch.ones(1, 3).to_sparse(), "layers.0.bias": torch.zeros(1)},
    "meta-device weight": {"layers.0.weight": torch.empty(1, 3, device="meta"), "layers.0.bias": torch.zeros(1)},
    "complex weight": {"layers.0.weight": torch.ones(1, 3, dtype=torch.complex64), "layers.0.bias": torch.zeros(1)},
    "complex bias": {"layers.0.weight": torch.ones(1, 3), "layers.0.bias": torch.zeros(1, dtype=torch.complex64)},
    "bool weight": {"layers.0.weight": torch.ones(1, 3, dtype=torch.bool)},
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_mixing_model_is_one_line(case, tmp_path):
    from poolgen import write_metadata

    pool_dir, _ = write_metadata(tmp_path / "metadata")
    model = tmp_path / "m.pt"
    torch.save(MALFORMED[case], model)
    out = tmp_path / "s.npy"
    r = invoke(["filter", "--metadata-dir", pool_dir, "--score",
                f"mixing:{model}:clip_b32_similarity_score,clip_l14_similarity_score,original_width",
                "--output", out, "--quiet"], code=2)
    assert "Traceback" not in r.output and not isinstance(r.exception, (AttributeError, TypeError, NotImplementedError))
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"mixing model {model}" in errors[0], r.output
    assert not out.exists()


def test_a_recipe_too_large_for_the_pool_names_the_command_that_can_sample_it(tmp_path):
    """The recipe's settings are the paper's; on a small pool its draw would ignore the scores: the
    message says so and points at `filter` (whose flags it names), not at flags `baseline` lacks;
    an empty --mixing-inputs is refused, not read as the default names."""
    import re

    from poolgen import write_metadata

    from flyt_datacomp.cli.filter import filter_command

    pool_dir, _ = write_metadata(tmp_path / "metadata", sizes=(60, 50, 90))
    store = tmp_path / "store"
    invoke(["inputs", "compute", "--metadata-dir", pool_dir, "--inputs-dir", store, "--input",
            "a=column:clip_b32_similarity_score", "--input", "b=column:clip_l14_similarity_score", "--quiet"])
    torch.save(MixingModel(2).state_dict(), tmp_path / "mflyt.pt")
    base = ["--metadata-dir", pool_dir, "--inputs-dir", store, "--mixing-model", tmp_path / "mflyt.pt",
            "--output", tmp_path / "s.npy", "--quiet"]
    filter_flags = {o for p in filter_command.params for o in p.opts}
    for command in (["baseline", "flyt_mflyt_scs", "--scale", "small"], ["filter", "--name", "flyt_mflyt_scs",
                                                                        "--scale", "small"]):
        r = invoke([*command, *base, "--mixing-inputs", "a,b"], code=2)
        (error,) = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert "flyt_mflyt_scs draws with the paper's small settings" in error and "flyt-datacomp filter" in error
        flags = set(re.findall(r"--[a-z][a-z-]*", error))
        assert flags and flags <= filter_flags, flags - filter_flags
        for empty in ("", " , "):
            r = invoke([*command, *base, "--mixing-inputs", empty], code=2)
            assert "--mixing-inputs" in r.output and "names nothing" in r.output, r.output
    # what the message advises works
    invoke(["filter", "--score", f"mixing:{tmp_path / 'mflyt.pt'}:a,b", "--metadata-dir", pool_dir, "--inputs-dir",
            store, "--scs-group-size", "2", "--num-samples", "200", "--output", tmp_path / "f.npy", "--quiet"])
    assert read_subset(tmp_path / "f.npy")[1].sum() == 200
