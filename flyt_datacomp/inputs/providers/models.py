"""Inputs computed by models: a trained FLYT scoring model (``model:PATH.pt``), and the image-text
cosine of any open_clip CLIP over the downloaded images (``openclip:ARCH:WEIGHTS``).

``model:`` is how E-FLYT's score becomes an M-FLYT input, as in the paper: the scoring model is
applied to every pool example shard by shard (E-FLYT reads the npz embeddings; M-FLYT its input
columns, from the pool or from inputs already in the store).

``openclip:`` is how DFN-style scores are made: one pass over the image shards decodes each image,
encodes it and its caption with the given checkpoint (local weights: nothing is downloaded) and
keeps the cosine per uid, resumably (one result file per image shard in the store's work folder,
in a folder of its own per checkpoint, redone when the image shard's size changes);
each metadata shard then takes its rows' values by uid. Examples without an image have no value
(the ``--missing`` policy decides). On a GPU when one is present.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from typing import Any

import numpy as np

from ...errors import FlytInputError, quote
from ...io import atomic_path, dumps
from ...uids import UID_DTYPE, hex_to_uids, uid_order
from .base import FitContext, Option, Provider, register_provider
from .simple import values_by_uid


@register_provider
class ScoringModelInput(Provider):
    kind = "model"
    help = "a trained FLYT scoring model (E-FLYT or M-FLYT) applied to the pool"
    positional = ("path",)

    def __init__(self, spec: str, args: dict[str, Any]):
        super().__init__(spec, args)
        from ...flyt.features import FeatureSpec
        from ...flyt.models import load_scoring_model

        self.model, meta = load_scoring_model(args["path"])
        self.features = FeatureSpec.of_scoring_model(self.model, meta, args["path"])
        self.npz_keys = self.features.npz_keys

    def default_name(self) -> str:
        return f"model_{self.model.kind.replace('-', '_')}"

    def params(self) -> dict[str, Any]:
        return {**self.args, "kind": self.model.kind}

    def sources(self) -> list[str]:
        return [self.args["path"]]

    def stored_inputs(self, pool: Any) -> tuple[str, ...]:
        return tuple(c for c in self.features.columns if c not in pool.column_names)

    def fit(self, ctx: FitContext) -> Any:
        self.columns = tuple(c for c in self.features.columns if c in ctx.pool.column_names)
        return {"stored_inputs": list(self.stored_inputs(ctx.pool))}

    def compute(self, data: Any, state: Any, shard_name: str) -> np.ndarray:
        """The model on this shard's features, built as training and pool scoring build them."""
        import torch

        from ...flyt.features import shard_features
        from ...flyt.models import score_features

        columns = {**data.columns, **data.inputs}
        missing = [c for c in self.features.columns if c not in columns]
        if missing:
            raise FlytInputError(f"scoring model {self.args['path']} needs input {missing[0]!r}, which is neither a "
                                 "pool column nor an input in the store")
        table = shard_features(self.features, columns, data.arrays, str(data.shard.parquet))
        self.model.eval()
        with torch.no_grad():
            return score_features(self.model, table.gather()).double().numpy().astype(np.float32)


@register_provider
class OpenClipInput(Provider):
    kind = "openclip"
    help = "the image-text cosine of an open_clip model (local weights) over the downloaded image shards"
    positional = ("arch", "weights")
    options = (Option("batch", int, 256, "images per forward pass"),)
    uses_gpu = True
    columns = ("uid",)

    def default_name(self) -> str:
        stem = os.path.basename(self.args["weights"]).split(".")[0]
        return f"openclip_{self.args['arch'].replace('-', '_')}_{stem}"

    def sources(self) -> list[str]:
        return [self.args["weights"]]

    def fit(self, ctx: FitContext) -> Any:
        if not ctx.shards_dir:
            raise FlytInputError(f"input {quote(self.spec)} reads the images: give `shards_dir`", params=["shards_dir"])
        if not os.path.isfile(self.args["weights"]):
            raise FlytInputError(f"openclip weights {quote(self.args['weights'])} not found (a local checkpoint)")
        from ...progress import progress_bar
        from ...shards import list_tars, open_folder

        fs, root = open_folder(ctx.shards_dir)
        names = list_tars(fs, root)
        # one folder of per-tar results per model: results of other weights are never reused
        model_id = hashlib.sha256(dumps({"arch": self.args["arch"], "weights": ctx.sources}).encode()).hexdigest()[:16]
        folder = ctx.work_dir / f"{ctx.name}.images-{model_id}"
        folder.mkdir(parents=True, exist_ok=True)
        model = None
        for name in progress_bar(names, desc=f"{ctx.name}: image shards", unit="shard", disable=not ctx.progress):
            done = folder / (os.path.basename(name) + ".npz")
            url = f"{root}/{name}" if root else name
            size = int(fs.size(url))
            if _scored(done, size):
                continue  # resumable: this shard was scored by an earlier run (and has not changed since)
            if model is None:
                model = _Scorer(self.args["arch"], self.args["weights"], ctx.device)
            with fs.open(url, "rb") as fh:
                uids, cos = model.score_tar(fh, self.args["batch"])
            with atomic_path(done) as tmp, open(tmp, "wb") as out:
                np.savez(out, uids=uids, cos=cos, tar_bytes=np.int64(size))
        parts = [np.load(folder / (os.path.basename(n) + ".npz")) for n in names]
        uids = np.concatenate([p["uids"] for p in parts]) if parts else np.zeros(0, dtype=UID_DTYPE)
        cos = np.concatenate([p["cos"] for p in parts]) if parts else np.zeros(0, np.float32)
        order = uid_order(uids)
        joined = ctx.work_dir / f"{ctx.name}.scores.npz"
        with atomic_path(joined) as tmp, open(tmp, "wb") as out:
            np.savez(out, uids=uids[order], values=cos[order])
        return str(joined)

    def compute(self, data: Any, state: Any, shard_name: str) -> np.ndarray:
        return values_by_uid(state, data.columns["uid"])


def _scored(done, size: int) -> bool:
    """True when ``done`` holds the results of an image shard of ``size`` bytes."""
    try:
        with np.load(done) as z:
            return "tar_bytes" in z.files and int(z["tar_bytes"]) == size
    except (OSError, ValueError, EOFError):
        return False


class _Scorer:
    """An open_clip model with its transform and tokenizer, scoring the samples of one tar."""

    def __init__(self, arch: str, weights: str, device: str):
        import open_clip
        import torch

        from ...clip_models import create_clip, image_normalization, resolve_arch, tokenizer

        resolved = resolve_arch(arch)
        self.device = torch.device(device)
        self.model = create_clip(resolved, checkpoint=weights).to(self.device).eval()
        size = self.model.visual.image_size
        self.transform = open_clip.image_transform(size if isinstance(size, int) else size[0], is_train=False,
                                                   mean=image_normalization(resolved)[0],
                                                   std=image_normalization(resolved)[1])
        self.tokenizer = tokenizer(resolved)

    def score_tar(self, fh, batch: int) -> tuple[np.ndarray, np.ndarray]:
        import json

        import torch
        from PIL import Image

        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(fileobj=fh, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                if ext in ("jpg", "jpeg", "png", "webp", "txt", "json"):
                    samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        image_exts = ("jpg", "jpeg", "png", "webp")
        keys = [k for k, v in samples.items() if "json" in v and "txt" in v and any(e in v for e in image_exts)]
        uids, cos = [], []
        for a in range(0, len(keys), batch):
            chunk = keys[a:a + batch]
            images, texts = [], []
            for k in chunk:
                s = samples[k]
                raw = next(s[e] for e in image_exts if e in s)
                with Image.open(io.BytesIO(raw)) as im:
                    images.append(self.transform(im.convert("RGB")))
                texts.append(s["txt"].decode("utf-8", "replace"))
                uids.append(json.loads(s["json"])["uid"])
            with torch.no_grad():
                img = self.model.encode_image(torch.stack(images).to(self.device), normalize=True)
                txt = self.model.encode_text(self.tokenizer(texts).to(self.device), normalize=True)
            cos.append((img * txt).sum(dim=1).float().cpu().numpy())
        if not uids:
            return np.zeros(0, dtype=UID_DTYPE), np.zeros(0, np.float32)
        return hex_to_uids(np.array(uids), source="image shard json"), np.concatenate(cos).astype(np.float32)
