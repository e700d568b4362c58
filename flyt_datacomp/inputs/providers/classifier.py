"""A linear target-vs-pool classifier on CLIP embeddings; its logit is the score (paper B.2).

Logistic regression, target examples labelled 1 and pool examples 0, on the image embedding
(``features=image``, the paper's IN1K-Classifier) or the concatenated image and text embeddings
(``features=image+text``, its CC2M-Classifier). The paper's recipe: 40K steps of batch 256, a
cosine learning rate peaking at 0.01 after 500 warm-up steps (AdamW here, no weight decay).
Every batch holds half target and half pool examples, so the logit compares the two on equal
terms. Pool examples are a seeded random sample of up to ``negatives`` rows. The fitted weights are
saved in the store (``work/<name>.classifier.pt`` plus its JSON record) and reused while the
target file's bytes, the options and the pool's uids are unchanged.

Targets: a ``.npy`` of shape (T, d) (image) or (T, 2d) (image+text: image then text), or an
``.npz`` with keys ``img`` and ``txt``, or DataComp's ``.pt`` files (image only).

A classifier someone else fitted is used as it is: a ``.pt`` holding an ``nn.Linear`` state dict
(``weight`` [k, d], ``bias`` [k]; the FLYT authors' released CC2M- and IN1K-Classifier) instead of
targets. Its score is the logit of its single output, or for two outputs the second's logit minus
the first's (``output=N`` picks one output's logit); ``features`` and ``arch`` say which embeddings
it reads (d must match). It is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from ...errors import FlytInputError, quote
from ...io import write_json
from .base import FitContext, Option, Provider, register_provider
from .normsim import embedding_matrix, load_target_embeddings, read_npy


def load_targets(path: str, features: str) -> np.ndarray:
    """The positive class's features: ``img`` (and ``txt`` for image+text) of a .npz, a .npy, or the
    targets NormSim reads; checked to be non-empty finite real matrices."""
    if path.endswith(".npz"):
        keys = ("img",) if features == "image" else ("img", "txt")
        parts = [embedding_matrix(read_npy(path, "classifier targets", k), f"classifier targets {path} ({k})")
                 for k in keys]
        if len({len(p) for p in parts}) != 1:
            raise FlytInputError(f"classifier targets {path}: 'img' and 'txt' have {len(parts[0])} and {len(parts[1])} "
                                 "rows; they must pair up")
        return np.concatenate(parts, axis=1)
    if path.endswith(".npy"):
        return embedding_matrix(read_npy(path, "classifier targets"), f"classifier targets {path}")
    return load_target_embeddings(path)


def pool_features(data_arrays: dict[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([np.asarray(data_arrays[k], dtype=np.float32) for k in keys], axis=1)


def fit_logistic(pos: np.ndarray, neg: np.ndarray, *, steps: int, batch: int, lr: float, warmup: int,
                 seed: int) -> tuple[np.ndarray, float]:
    """Balanced-batch logistic regression by AdamW with a warm-up + cosine schedule; (w, b)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x_pos, x_neg = torch.from_numpy(pos), torch.from_numpy(neg)
    model = torch.nn.Linear(pos.shape[1], 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    half = batch // 2
    labels = torch.cat([torch.ones(half), torch.zeros(batch - half)])
    for step in range(steps):
        if step < warmup:
            scale = (step + 1) / warmup
        else:
            scale = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        xb = torch.cat([x_pos[torch.randint(len(x_pos), (half,), generator=gen)],
                        x_neg[torch.randint(len(x_neg), (batch - half,), generator=gen)]])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb).squeeze(1), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.weight.detach().numpy()[0].astype(np.float32), float(model.bias.detach())


@register_provider
class ClassifierInput(Provider):
    kind = "classifier"
    help = "the logit of a linear target-vs-pool classifier on the embeddings (paper B.2)"
    positional = ("target",)
    options = (
        Option("features", str, "image", "image (IN1K-Classifier) or image+text (CC2M-Classifier)",
               ("image", "image+text")),
        Option("arch", str, "b32", "pool embeddings to use", ("b32", "l14")),
        Option("steps", int, 40_000, "optimisation steps"),
        Option("batch", int, 256, "batch size (half target, half pool)"),
        Option("lr", float, 0.01, "peak learning rate"),
        Option("warmup", int, 500, "warm-up steps"),
        Option("negatives", int, 1_000_000, "pool examples sampled as the negative class"),
        Option("seed", int, 0, "seed of the pool sample and the batches"),
        Option("output", int, -1, "a fitted classifier's output whose logit is the score (-1: the only one, or "
               "the second minus the first)"),
    )

    def __init__(self, spec: str, args: dict[str, Any]):
        super().__init__(spec, args)
        arch = args["arch"]
        self.npz_keys = (f"{arch}_img",) if args["features"] == "image" else (f"{arch}_img", f"{arch}_txt")

    def default_name(self) -> str:
        stem = os.path.basename(self.args["target"]).split(".")[0].replace("*", "")
        return f"classifier_{stem}" + ("_it" if self.args["features"] == "image+text" else "")

    def sources(self) -> list[str]:
        return [self.args["target"]]

    def fit(self, ctx: FitContext) -> Any:
        from ... import torch_io

        a = self.args
        fitted = released_classifier(a["target"], a["output"])
        if fitted is not None:
            dim = sum(ctx.pool.read_shard(ctx.pool.shards[0], npz_keys=self.npz_keys).arrays[k].shape[1]
                      for k in self.npz_keys)
            if fitted["weight"].shape[0] != dim:
                raise FlytInputError(f"the classifier {quote(a['target'])} reads {fitted['weight'].shape[0]} features "
                                     f"but the pool's {'+'.join(self.npz_keys)} give {dim}: set features= and arch= "
                                     "to the embeddings it was fitted on")
            ctx.record["fitted"] = "given"
            return fitted
        path = ctx.work_dir / f"{ctx.name}.classifier.pt"
        record = path.with_name(path.name + ".json")
        fingerprint = {"params": self.params(), "targets": ctx.sources, "pool": ctx.pool.shard_uid_digests}
        if path.exists() and record.exists():
            try:
                if json.loads(record.read_text())["fingerprint"] == fingerprint:
                    saved = torch_io.load(path, "fitted classifier")
                    return {"weight": saved["weight"].numpy(), "bias": float(saved["bias"])}
            except (OSError, ValueError, KeyError, FlytInputError):
                pass  # refit below
        pos = load_targets(a["target"], a["features"])
        neg = self._sample_pool(ctx)
        if pos.shape[1] != neg.shape[1]:
            raise FlytInputError(f"classifier targets {quote(a['target'])} have {pos.shape[1]} features but the pool's "
                                 f"{'+'.join(self.npz_keys)} give {neg.shape[1]}")
        w, b = fit_logistic(pos, neg, steps=a["steps"], batch=a["batch"], lr=a["lr"], warmup=a["warmup"],
                            seed=a["seed"])
        import torch

        torch_io.save({"weight": torch.from_numpy(w), "bias": b}, path)
        write_json(record, {"fingerprint": fingerprint, "targets": len(pos), "negatives": len(neg)})
        return {"weight": w, "bias": b}

    def _sample_pool(self, ctx: FitContext) -> np.ndarray:
        """Up to ``negatives`` pool rows, uniformly from a seeded random order of shards and rows."""
        rng = np.random.default_rng(self.args["seed"])
        want = min(self.args["negatives"], ctx.pool.size)
        share = want / ctx.pool.size
        parts, have = [], 0
        for i in rng.permutation(len(ctx.pool.shards)):
            shard = ctx.pool.shards[int(i)]
            data = ctx.pool.read_shard(shard, npz_keys=self.npz_keys)
            x = pool_features(data.arrays, self.npz_keys)
            take = min(len(x), max(1, round(share * len(x))), want - have)
            parts.append(x[np.sort(rng.choice(len(x), take, replace=False))])
            have += take
            if have >= want:
                break
        return np.concatenate(parts)

    def compute(self, data: Any, state: Any, shard_name: str) -> np.ndarray:
        x = pool_features(data.arrays, self.npz_keys)
        return (x @ state["weight"] + state["bias"]).astype(np.float32)


def released_classifier(path: str, output: int = -1) -> dict[str, Any] | None:
    """``{"weight": (d,), "bias": b}`` of a fitted ``nn.Linear`` saved as a state dict at ``path``,
    or None when ``path`` holds target embeddings instead."""
    if not path.endswith(".pt") or not os.path.isfile(path):
        return None
    from ... import torch_io

    state = torch_io.load(path, "classifier")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "weight" not in {str(k).removeprefix("module.") for k in state}:
        return None  # DataComp's target embeddings (image_features)
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    if set(state) - {"weight", "bias"}:
        raise FlytInputError(f"classifier {path} holds {', '.join(sorted(state))}, not a linear layer's weight and bias")
    w = state["weight"].detach().double().cpu().numpy()
    b = state.get("bias")
    b = np.zeros(w.shape[0]) if b is None else b.detach().double().cpu().numpy().reshape(-1)
    if w.ndim != 2 or b.shape != (w.shape[0],):
        raise FlytInputError(f"classifier {path}: weight {list(w.shape)} and bias {list(b.shape)} are not a linear layer's")
    k = w.shape[0]
    if output >= 0:
        if output >= k:
            raise FlytInputError(f"classifier {path} has {k} outputs; output={output} does not exist")
        vec, bias = w[output], b[output]
    elif k == 1:
        vec, bias = w[0], b[0]
    elif k == 2:  # the log-odds of the second class
        vec, bias = w[1] - w[0], b[1] - b[0]
    else:
        raise FlytInputError(f"classifier {path} has {k} outputs: say which one's logit is the score (output=N)")
    return {"weight": vec.astype(np.float32), "bias": float(bias)}
