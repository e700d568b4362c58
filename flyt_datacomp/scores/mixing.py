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
from ..progress import progress_bar
from .base import Scores, ScoreSource, as_float, load_scores, register_score_source


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
        specs = [self.input_spec(pool, n) for n in names]
        return Scores(mix_pool(pool, specs, weights, bias, within=self.within, inputs_dir=self.inputs_dir,
                               missing=self.missing, accept_changed_inputs=self.accept_changed_inputs),
                      self.spec, self.kind)


def mix_pool(pool: Pool, specs: list[str], weights: np.ndarray, bias: float, *, within: np.ndarray | None = None,
             inputs_dir: str | None = None, missing: str = "error",
             accept_changed_inputs: tuple[str, ...] = ()) -> np.ndarray:
    """The mix over the whole pool (float64, pool order), one metadata shard at a time: the inputs
    that are stored inputs (``store:NAME``) or pool columns are read shard by shard with the shard's
    mix, so only the result is pool-sized; any other score source is loaded whole first."""
    streamed_store = [s.partition(":")[2] for s in specs if s.startswith("store:")]
    streamed_columns = [s for s in specs if s in pool.column_names]
    whole = {s: np.asarray(load_scores(pool, s, within=within, inputs_dir=inputs_dir, missing=missing,
                                       accept_changed_inputs=accept_changed_inputs).values, dtype=np.float32)
             for s in specs if not s.startswith("store:") and s not in pool.column_names}
    stored = None
    if streamed_store:
        from ..store import InputStore

        stored = InputStore(inputs_dir).iter_columns(streamed_store, pool)
    bad = {}  # pool column -> [count of non-finite values, first position, its value]
    out = np.empty(pool.size, dtype=np.float64)
    for shard in progress_bar(pool.shards, desc="mixing the inputs", unit="shard", disable=not pool.progress):
        rows = slice(shard.offset, shard.offset + shard.num_rows)
        from_store = next(stored) if stored is not None else {}
        from_pool = pool.read_shard(shard, streamed_columns, no_missing=streamed_columns).columns \
            if streamed_columns else {}
        block = np.empty((shard.num_rows, len(specs)), dtype=np.float32)
        for j, spec in enumerate(specs):
            if spec.startswith("store:"):
                block[:, j] = from_store[spec.partition(":")[2]]
            elif spec in from_pool:
                values = as_float(from_pool[spec], f"column {spec!r} of the pool at {pool.url}")
                _note_non_finite(bad, spec, values, shard.offset)
                block[:, j] = values
            else:
                block[:, j] = whole[spec][rows]
        out[rows] = mix(block, weights, bias)
    for spec, (count, first, value) in bad.items():
        raise FlytInputError(f"score source {quote(spec)} has {count} non-finite scores; the first, {value}, is at "
                             f"{pool.locate(first)}")
    return out


def _note_non_finite(bad: dict, spec: str, values: np.ndarray, offset: int) -> None:
    wrong = ~np.isfinite(values)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        count, first, value = bad.get(spec, (0, offset + i, values[i]))
        bad[spec] = (count + int(wrong.sum()), first, value)
