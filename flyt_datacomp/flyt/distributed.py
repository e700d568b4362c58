"""Hook points for data-parallel FLYT steps (paper Appendix A).

Every quantity of the bilevel step is either a sum over examples (the gradients g and v, the
downstream-parameter gradient) or a per-example tensor (embeddings, scores, J_e u rows). Across
devices the sums are all-reduced and the per-example tensors all-gathered; on one device (or with
``group=None``) both are the identity. The bilevel step calls only these functions, so wiring a
process group in is all that data parallelism needs. The multi-process path is not yet tested.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor


def world_size(group=None) -> int:
    """Number of ranks taking part (1 without a process group or without torch.distributed)."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def rank(group=None) -> int:
    return 0 if world_size(group) == 1 else dist.get_rank(group)


def all_reduce_sum(tensors: Mapping[str, Tensor], group=None) -> dict[str, Tensor]:
    """Sum a dict of tensors over ranks (in place on the rank-local tensors); no-op on one rank."""
    if world_size(group) > 1:
        for t in tensors.values():
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return dict(tensors)


def all_gather_cat(tensor: Tensor, group=None) -> Tensor:
    """Concatenate every rank's rows (dim 0) in rank order, without a graph; identity on one rank.

    Rank-local batches must have the same size on every rank.
    """
    n = world_size(group)
    if n == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(n)]
    dist.all_gather(parts, tensor.detach().contiguous(), group=group)
    return torch.cat(parts, dim=0)


def local_rows(tensor: Tensor, group=None) -> Tensor:
    """This rank's rows of a gathered tensor (the inverse of :func:`all_gather_cat`)."""
    n = world_size(group)
    if n == 1:
        return tensor
    size = tensor.shape[0] // n
    return tensor[rank(group) * size:(rank(group) + 1) * size]


# ------------------------------------------------------------------ process group lifecycle


def init_from_env() -> None:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); nothing otherwise.

    NCCL when CUDA is present (each rank on ``cuda:LOCAL_RANK``), gloo on CPUs.
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)


def default_group():
    """The world group when a process group is initialised, else None (single process)."""
    return dist.group.WORLD if dist.is_available() and dist.is_initialized() else None


def barrier() -> None:
    if default_group() is not None:
        dist.barrier()


def shutdown() -> None:
    if default_group() is not None:
        dist.destroy_process_group()
