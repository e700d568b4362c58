"""A released M-FLYT mixing model as a score source: ``mixing:MODEL.pt:INPUT,INPUT,...``.

The FLYT authors release their M-FLYT model as the state dict of a single ``nn.Linear(k, 1)``
(keys ``layers.0.weight`` of shape ``[1, k]`` and ``layers.0.bias`` of shape ``[1]``), applied to
the k raw input scores in a fixed order, without standardisation: ``s = x @ w + b``. This source
computes exactly that, in float32 as their code does, one metadata shard at a time.

The inputs are named in the model's order. Each is a score source spec (``store:NAME``,
``file:...``), a column of the pool, or the name of an input of the input store (``inputs_dir``).
The file is loaded with ``weights_only=True``: a checkpoint holding pickled objects is refused.
Besides the raw state dict, the authors' training checkpoints (``{"state_dict": ...}``, keys
possibly prefixed ``module.``) and a bare ``nn.Linear`` state dict (``weight``, ``bias``) are read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import FlytInputError, quote
from ..pool import Pool
from .base import Scores, ScoreSource, load_scores, register_score_source


def _values(path: str, key: str, value: Any) -> np.ndarray:
    """A weight or bias of a mixing model as float64 numbers (a dense tensor of real numbers)."""
    import torch

    from ..torch_io import real_tensor

    return real_tensor(value, f"mixing model {path}: {key}").detach().to("cpu", torch.float64).numpy()


def read_mixing_model(path: str) -> tuple[np.ndarray, float]:
    """(weights ``(k,)`` float32, bias) of a released mixing-model file."""
    from .. import torch_io

    state: Any = torch_io.load(path, "mixing model")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FlytInputError(f"mixing model {path} holds {type(state).__name__}, not a state dict")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    weights = {k: v for k, v in state.items() if k.endswith("weight")}
    biases = {k: v for k, v in state.items() if k.endswith("bias")}
    if len(weights) != 1 or len(biases) > 1 or len(state) != len(weights) + len(biases):
        raise FlytInputError(f"mixing model {path} is not a single linear layer (keys: {', '.join(sorted(state))}); "
                             "expected layers.0.weight [1, k] and layers.0.bias [1]")
    (wkey, w), = weights.items()
    w = _values(path, wkey, w)
    if w.ndim != 2 or w.shape[0] != 1 or w.shape[1] < 1:
        raise FlytInputError(f"mixing model {path}: {wkey} has shape {list(w.shape)}; a mixing model's is [1, k]")
    b = 0.0
    if biases:
        (bkey, bias), = biases.items()
        bias = _values(path, bkey, bias)
        if bias.shape not in ((1,), ()):
            raise FlytInputError(f"mixing model {path}: {bkey} has shape {list(bias.shape)}, not [1]")
        b = float(bias.reshape(-1)[0])
    w = np.asarray(w[0], dtype=np.float32)
    if not np.isfinite(w).all() or not np.isfinite(b):
        raise FlytInputError(f"mixing model {path} holds non-finite weights")
    return w, b


def mix(block: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """``block @ w + b`` for one shard's ``(rows, k)`` float32 inputs, in float32 as the authors'
    ``nn.Linear`` computes it (the same matrix-vector product as a native mixing model's), as float64."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
    out = x @ torch.from_numpy(weights)
    if bias:
        out = out + torch.tensor(bias, dtype=torch.float32)
    return out.double().numpy()


@register_score_source
class MixingScore(ScoreSource):
    kind = "mixing"
    description = "a released M-FLYT mixing model over named inputs, applied to the raw inputs (mixing:MODEL.pt:A,B,...)"

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return False  # only by name

    def parse(self) -> tuple[str, list[str]]:
        path, sep, names = self.spec.rpartition(":")
        inputs = [n.strip() for n in names.split(",") if n.strip()] if sep else []
        if not sep or not path or not inputs:
            raise FlytInputError(f"score source mixing:{self.spec} must be mixing:MODEL.pt:INPUT,INPUT,... "
                                 "(the inputs in the model's order)")
        return path, inputs

    def input_spec(self, pool: Pool, name: str) -> str:
        if ":" in name or name in pool.column_names:
            return name
        if self.inputs_dir:
            from ..store import InputStore

            if name in InputStore(self.inputs_dir).input_names():
                return f"store:{name}"
        raise FlytInputError(f"mixing input {quote(name)} is neither a column of the pool at {pool.url} nor an input "
                             "of the input store (`inputs_dir`); name a score source as KIND:SPEC",
                             params=["inputs_dir"])

    def load(self, pool: Pool) -> Scores:
        path, names = self.parse()
        weights, bias = read_mixing_model(path)
        if weights.size != len(names):
            raise FlytInputError(f"mixing model {path} mixes {weights.size} inputs but {len(names)} were named "
                                 f"({', '.join(names)}); name them all, in the model's order")
        columns = [np.asarray(load_scores(pool, self.input_spec(pool, n), within=self.within,
                                          inputs_dir=self.inputs_dir, missing=self.missing,
                                          accept_changed_inputs=self.accept_changed_inputs).values, dtype=np.float32)
                   for n in names]
        out = np.empty(pool.size, dtype=np.float64)
        for shard in pool.shards:  # one shard at a time, as a native model scores the pool
            rows = slice(shard.offset, shard.offset + shard.num_rows)
            out[rows] = mix(np.stack([c[rows] for c in columns], axis=1), weights, bias)
        return Scores(out, self.spec, self.kind)
