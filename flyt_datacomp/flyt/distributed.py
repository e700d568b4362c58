"""Hook points for data-parallel FLYT steps (paper Appendix A).

Every quantity of the bilevel step is either a sum over examples (the gradients g and v, the
downstream-parameter gradient) or a per-example tensor (embeddings, scores, J_e u rows). Across
devices the sums are all-reduced and the per-example tensors all-gathered; on one device (or with
``group=None``) both are the identity. The bilevel step calls only these functions, so wiring a
process group in is all that data parallelism needs (tested with 2 gloo ranks against the
single-process full batch in ``tests/test_distributed.py``).
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


def all_reduce_sum(tensors: Mapping[str, Tensor], group=None, bucket_numel: int = 1 << 26) -> dict[str, Tensor]:
    """Sum a dict of tensors over ranks; the identity (the same dict) on one rank.

    Several ranks: the tensors are packed into flat buffers (one per dtype/device, at most
    ``bucket_numel`` elements each, so there are few collective calls), all-reduced, and returned as
    new contiguous tensors; the inputs are not modified (autograd may hand out gradients that are
    expanded or that alias other tensors, so reducing them in place would be unsafe).
    """
    out = dict(tensors)
    if world_size(group) == 1:
        return out
    buckets: dict[tuple, list[list[str]]] = {}
    sizes: dict[tuple, int] = {}
    for name, t in out.items():
        key = (t.dtype, t.device)
        if key not in buckets or sizes[key] + t.numel() > bucket_numel:
            buckets.setdefault(key, []).append([])
            sizes[key] = 0
        buckets[key][-1].append(name)
        sizes[key] += t.numel()
    for lists in buckets.values():
        for names in lists:
            flat = torch.cat([out[n].detach().reshape(-1) for n in names])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            offset = 0
            for n in names:
                numel = out[n].numel()
                out[n] = flat[offset:offset + numel].view(out[n].shape)
                offset += numel
    return out


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
