"""Tiny assets and a caption-rich pool for the baseline tests (nothing is downloaded).

* a fastText language-id model trained in a second on a few labelled sentences (en / fr / de);
* a WordNet database with a few synsets (see ``wordnetgen``) and an ImageNet-21k id list;
* random, unnormalised k-means centroids and five ImageNet-1k embedding files near some of them;
* a pool whose captions, image sizes and CLIP scores sit on the rules' edges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from poolgen import write_metadata
from wordnetgen import write_wordnet

EN = ["the cat sat on the mat", "a dog runs in the park", "my house is big and red", "we like to eat apples",
      "the weather is nice today", "a photo of a small bird", "the mice jog in the garden"]
FR = ["le chat est sur le tapis", "un chien court dans le parc", "ma maison est grande", "nous aimons les pommes",
      "il fait beau aujourd hui", "une photo d un oiseau"]
DE = ["die katze sitzt auf der matte", "ein hund lauft im park", "mein haus ist gross", "wir essen gerne apfel",
      "das wetter ist schon heute", "ein foto von einem vogel"]

# captions on the edges of the rules: word and character counts, whitespace and newlines, languages,
# words with and without a listed first synset (plural, upper case, exception list, punctuation)
CAPTIONS = [
    "the dog sat on the mat", "Dogs in the park", "the cat", "a cat", "cat", "the mice are here", "mice",
    "we jog in the park", "the dog, the cat", "le chien est sur le tapis", "der hund ist im park",
    "a photo of\na dog", "the\tdog\tis red", "  the   big   dog  ", "a b c", "abcdef", "abcde", "a dog",
    "une photo d un chat", "the weather is nice", "my house is big and red", "a run in the park",
    "the runs of the dog", "ünïcödé dog photo", "the\n\ndog", "a small bird", "die katze sitzt",
    "the bird", "birds on a wire today", "the house of the dog", "",
]
SIZES = [(200, 200), (199, 400), (600, 200), (601, 200), (200, 601), (1024, 768), (0, 300), (300, 0), (512, 512),
         (3000, 1000), (3001, 1000), (250, 900)]


def train_language_model(folder: Path) -> Path:
    """A fastText supervised model whose labels are __label__en/fr/de, like lid.176.bin's."""
    import fasttext

    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "lid_train.txt"
    lines = [f"__label__{lab} {s}" for lab, ss in (("en", EN), ("fr", FR), ("de", DE)) for s in ss]
    train.write_text("\n".join(lines * 10) + "\n")
    for seed in range(20):  # fastText's tiny-data training can hit NaN for some seeds
        try:
            model = fasttext.train_supervised(str(train), epoch=30, lr=0.5, dim=16, minn=2, maxn=4, bucket=1000,
                                              thread=1, verbose=0, seed=seed)
        except RuntimeError:
            continue
        path = folder / "lid.176.bin"
        model.save_model(str(path))
        return path
    raise RuntimeError("could not train the test language model")


def write_tiny_wordnet(root: Path) -> tuple[Path, list[str]]:
    """The WordNet database and the ImageNet-21k id lines: dog, mouse and bird (nouns) are listed,
    and the verb 'jog', whose synset offset in data.verb equals the noun 'dog''s in data.noun."""
    synsets = [("n", ["dog", "domestic_dog"]), ("n", ["cat", "true_cat"]), ("n", ["mouse"]), ("n", ["run", "tally"]),
               ("n", ["bird"]), ("n", ["house"]), ("v", ["jog"]), ("v", ["run"]), ("v", ["dog"]), ("a", ["big"]),
               ("a", ["small"]), ("r", ["today"])]
    offsets = write_wordnet(root, synsets, {"n": {"mice": "mouse"}})
    assert offsets[("v", "jog")] == offsets[("n", "dog")]  # the same byte offset in two data files
    ids = [f"n{offsets[('n', w)]:08d}" for w in ("dog", "mouse", "bird")]
    return root, ids


def write_centroids(path: Path, k: int = 12, dim: int = 8, seed: int = 0) -> np.ndarray:
    """Random centroids with very different norms, saved as DataComp does (torch.save of a numpy array)."""
    import torch

    rng = np.random.default_rng(seed)
    c = rng.normal(size=(k, dim)) * rng.uniform(0.2, 3.0, size=(k, 1))
    c = c.astype(np.float32)
    torch.save(c, path)
    return c


def write_in1k(folder: Path, centroids: np.ndarray, seed: int = 0, near: int = 3) -> list[Path]:
    """Five embedding files ({"image_features": float16 tensor}) scattered around ``near`` of the centroids."""
    import torch

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(5):
        base = centroids[rng.integers(0, near, size=30)]
        x = base / np.linalg.norm(base, axis=1, keepdims=True) + 0.15 * rng.normal(size=base.shape)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        path = folder / f"in1k_clip_vit_l14_{i}.pt"
        torch.save({"image_features": torch.from_numpy(x.astype(np.float16))}, path)
        paths.append(path)
    return paths


def write_caption_pool(root: Path, sizes=(37, 29, 44), seed: int = 3, *, crash_free: bool = False) -> tuple[Path, list[str]]:
    """A pool (dim-8 embeddings) whose text, sizes and scores exercise every rule; scores are rounded to
    two and three decimals (float32), so thresholds can have ties, and one shard has a null caption.
    ``crash_free``: no null or empty caption (DataComp's own code stops on those)."""
    root, hexes = write_metadata(root, sizes=sizes, seed=seed, dim=8)
    rng = np.random.default_rng(seed)
    for k, f in enumerate(sorted(root.glob("*.parquet"))):
        t = pq.read_table(f)
        n = t.num_rows
        texts = [CAPTIONS[i] for i in rng.integers(0, len(CAPTIONS), n)]
        if crash_free:
            texts = [t or "an empty caption" for t in texts]
        elif k == 1:
            texts[3] = None
        wh = [SIZES[i] for i in rng.integers(0, len(SIZES), n)]
        columns = {
            "text": pa.array(texts, pa.string()),
            "original_width": pa.array([w for w, _ in wh], pa.int64()),
            "original_height": pa.array([h for _, h in wh], pa.int64()),
            "clip_b32_similarity_score": pa.array(np.round(rng.normal(0.28, 0.03, n), 2).astype(np.float32)),
            "clip_l14_similarity_score": pa.array(np.round(rng.normal(0.25, 0.04, n), 3).astype(np.float32)),
        }
        for name, col in columns.items():
            t = t.set_column(t.schema.get_field_index(name), name, col)
        pq.write_table(t, f)
    return root, hexes


def read_pool_table(root: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(root.glob("*.parquet"))])


def read_pool_npz(root: Path, key: str) -> np.ndarray:
    return np.concatenate([np.load(p)[key] for p in sorted(root.glob("*.npz"))])
