"""Inputs computed by models: a trained FLYT scoring model (``model:PATH.pt``), the image-text
cosine of any open_clip CLIP over the downloaded images (``openclip:ARCH:WEIGHTS``), and the FLYT
authors' released E-FLYT scoring model over the downloaded images (``flyt_released:PATH``).

``model:`` is how E-FLYT's score becomes an M-FLYT input, as in the paper: the scoring model is
applied to every pool example shard by shard (E-FLYT reads the npz embeddings; M-FLYT its input
columns, from the pool or from inputs already in the store).

``openclip:`` (DFN-style scores, e.g. the authors' DFN-Base and DFN-FT checkpoints) and
``flyt_released:`` make one pass over the image shards: each image and its caption go through the
model's CLIP (local weights, loaded without unpickling objects; nothing is downloaded), and the
score (the cosine, or the released GLU head on the concatenated normalised embeddings) is kept per
uid, resumably (one result file per image shard in the store's work folder); each metadata shard
then takes its rows' values by uid. Examples without an image have no value (the ``--missing``
policy decides). On a GPU when one is present.
"""

from __future__ import annotations

import hashlib
import io
import os
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


class _ImagePassInput(Provider):
    """An input computed from each downloaded image and its caption by a CLIP-based model: one pass
    over the image shards, resumable per shard, joined to the pool by uid (see the module docstring)."""

    options = (Option("batch", int, 256, "images per forward pass"),)
    uses_gpu = True
    columns = ("uid",)

    def weights(self) -> str:
        raise NotImplementedError

    def scorer(self, device: str) -> _Scorer:
        raise NotImplementedError

    def sources(self) -> list[str]:
        return [self.weights()]

    def fit(self, ctx: FitContext) -> Any:
        if not ctx.shards_dir:
            raise FlytInputError(f"input {quote(self.spec)} reads the images: give `shards_dir`", params=["shards_dir"])
        if not os.path.isfile(self.weights()):
            raise FlytInputError(f"{self.kind} weights {quote(self.weights())} not found (a local checkpoint)")
        from ...progress import progress_bar
        from ...shards import list_tars, open_folder

        fs, root = open_folder(ctx.shards_dir)
        names = list_tars(fs, root)
        # one folder of per-tar results per model: results of other weights are never reused
        model_id = hashlib.sha256(dumps({"spec": self.params(), "weights": ctx.sources}).encode()).hexdigest()[:16]
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
                model = self.scorer(ctx.device)
            uids, values = model.score_tar(url, fs, self.args["batch"])
            with atomic_path(done) as tmp, open(tmp, "wb") as out:
                np.savez(out, uids=uids, cos=values, tar_bytes=np.int64(size))
        parts = [np.load(folder / (os.path.basename(n) + ".npz")) for n in names]
        uids = np.concatenate([p["uids"] for p in parts]) if parts else np.zeros(0, dtype=UID_DTYPE)
        values = np.concatenate([p["cos"] for p in parts]) if parts else np.zeros(0, np.float32)
        order = uid_order(uids)
        joined = ctx.work_dir / f"{ctx.name}.scores.npz"
        with atomic_path(joined) as tmp, open(tmp, "wb") as out:
            np.savez(out, uids=uids[order], values=values[order])
        return str(joined)

    def compute(self, data: Any, state: Any, shard_name: str) -> np.ndarray:
        return values_by_uid(state, data.columns["uid"])


@register_provider
class OpenClipInput(_ImagePassInput):
    kind = "openclip"
    help = "the image-text cosine of an open_clip model (local weights) over the downloaded image shards"
    positional = ("arch", "weights")

    def default_name(self) -> str:
        stem = os.path.basename(self.args["weights"]).split(".")[0]
        return f"openclip_{self.args['arch'].replace('-', '_')}_{stem}"

    def weights(self) -> str:
        return self.args["weights"]

    def scorer(self, device: str) -> _Scorer:
        from ...clip_models import create_clip, resolve_arch

        resolved = resolve_arch(self.args["arch"])
        return _Scorer(resolved, create_clip(resolved, checkpoint=self.args["weights"]), None, device)


@register_provider
class ReleasedFlytInput(_ImagePassInput):
    kind = "flyt_released"
    help = ("the FLYT authors' released E-FLYT scoring model (flyt.pt: a CLIP and a GLU head) over the downloaded "
            "images and captions")
    positional = ("weights",)
    options = (*_ImagePassInput.options, Option("arch", str, "ViT-B-32", "the open_clip architecture of its CLIP"))

    def default_name(self) -> str:
        return "flyt_released"

    def weights(self) -> str:
        return self.args["weights"]

    def scorer(self, device: str) -> _Scorer:
        from ...clip_models import resolve_arch

        resolved = resolve_arch(self.args["arch"])
        clip, head = load_released_scoring_model(self.args["weights"], resolved)
        return _Scorer(resolved, clip, head, device)


def load_released_scoring_model(path: str, arch: Any):
    """The authors' ``ScoringModel``: an open_clip CLIP (state dict keys ``clip_model.*``) and their
    GLU head over the concatenated normalised image and text embeddings (``glu_model.layers.0.w1/w2/w3``:
    ``w2(silu(w1 x) * w3 x)``), from a weights-only state dict (optionally ``{"state_dict": ...}``,
    keys optionally prefixed ``module.``)."""
    import torch

    from ... import torch_io
    from ...clip_models import create_clip

    state = torch_io.load(path, "FLYT scoring model")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FlytInputError(f"FLYT scoring model {path} holds no state dict")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    clip_state = {k[len("clip_model."):]: v for k, v in state.items() if k.startswith("clip_model.")}
    head_state = {k[len("glu_model.layers.0."):]: v for k, v in state.items() if k.startswith("glu_model.layers.0.")}
    others = sorted(k for k in state if not k.startswith(("clip_model.", "glu_model.layers.0.")))
    need = {f"{w}.{p}" for w in ("w1", "w2", "w3") for p in ("weight", "bias")}
    if not clip_state or set(head_state) != need or others:
        raise FlytInputError(f"{path} is not the authors' FLYT scoring model: it needs clip_model.* and "
                             f"glu_model.layers.0.{{w1,w2,w3}}.{{weight,bias}} (found {len(clip_state)} clip keys, "
                             f"head keys {sorted(head_state)}, others {others[:3]})")
    clip = create_clip(arch)
    try:
        clip.load_state_dict(clip_state)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])
        raise FlytInputError(f"the CLIP of {path} does not fit the architecture given (arch=): {detail}") from None
    w1, w2, w3 = (head_state[f"{w}.weight"] for w in ("w1", "w2", "w3"))
    width = 2 * clip.text_projection.shape[1] if getattr(clip, "text_projection", None) is not None else None
    if w1.shape != w3.shape or w2.shape[0] != 1 or w2.shape[1] != w1.shape[0] or (width and w1.shape[1] != width):
        raise FlytInputError(f"the GLU head of {path} has shapes w1 {list(w1.shape)}, w2 {list(w2.shape)}, "
                             f"w3 {list(w3.shape)}; it must read the {width}-wide concatenated embeddings")

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = torch.nn.Linear(w1.shape[1], w1.shape[0])
            self.w2 = torch.nn.Linear(w2.shape[1], 1)
            self.w3 = torch.nn.Linear(w3.shape[1], w3.shape[0])

        def forward(self, x):
            return self.w2(torch.nn.functional.silu(self.w1(x)) * self.w3(x))[:, 0]

    head = Head()
    head.load_state_dict({k: v.float() for k, v in head_state.items()})
    return clip, head.eval()


def _scored(done, size: int) -> bool:
    """True when ``done`` holds the results of an image shard of ``size`` bytes."""
    try:
        with np.load(done) as z:
            return "tar_bytes" in z.files and int(z["tar_bytes"]) == size
    except (OSError, ValueError, EOFError):
        return False


class _Scorer:
    """A CLIP (open_clip) with its evaluation transform and tokenizer, scoring the samples of a tar:
    the image-text cosine, or ``head`` on the concatenated normalised embeddings."""

    def __init__(self, arch: Any, clip, head, device: str):
        import open_clip
        import torch

        from ...clip_models import image_normalization, tokenizer

        self.device = torch.device(device)
        self.model = clip.to(self.device).eval()
        self.head = None if head is None else head.to(self.device).eval()
        size = self.model.visual.image_size
        mean, std = image_normalization(arch)
        self.transform = open_clip.image_transform(size if isinstance(size, int) else size[0], is_train=False,
                                                   mean=mean, std=std)
        self.tokenizer = tokenizer(arch)

    def score_tar(self, url: str, fs: Any, batch: int) -> tuple[np.ndarray, np.ndarray]:
        import json

        from ...tars import iter_tar

        image_exts = ("jpg", "jpeg", "png", "webp")
        chunk: list[dict[str, bytes]] = []
        uids, values = [], []
        for sample in iter_tar(url, extensions=(*image_exts, "txt", "json"), fs=fs):
            if sample.get("json") and sample.get("txt") is not None and any(sample.get(e) for e in image_exts):
                chunk.append(sample)
            if len(chunk) == batch:
                values.append(self._score(chunk, uids, image_exts, json))
                chunk = []
        if chunk:
            values.append(self._score(chunk, uids, image_exts, json))
        if not uids:
            return np.zeros(0, dtype=UID_DTYPE), np.zeros(0, np.float32)
        return hex_to_uids(np.array(uids), source=f"{url} (json)"), np.concatenate(values).astype(np.float32)

    def _score(self, chunk, uids, image_exts, json) -> np.ndarray:
        import torch
        from PIL import Image

        images, texts = [], []
        for s in chunk:
            raw = next(s[e] for e in image_exts if s.get(e))
            with Image.open(io.BytesIO(raw)) as im:
                images.append(self.transform(im.convert("RGB")))
            texts.append(s["txt"].decode("utf-8", "replace"))
            uids.append(json.loads(s["json"])["uid"])
        with torch.no_grad():
            img = self.model.encode_image(torch.stack(images).to(self.device), normalize=True)
            txt = self.model.encode_text(self.tokenizer(texts).to(self.device), normalize=True)
            if self.head is None:
                out = (img * txt).sum(dim=1)
            else:
                out = self.head(torch.cat([img, txt], dim=1).float())
        return out.float().cpu().numpy()
