r"""Many processes: shard the work, gather the results (``torchrun --nproc-per-node N -m diffsolve ...``).

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`init` then starts
``torch.distributed`` with gloo (CPU) or nccl (CUDA, one device per local rank).

Two ways to share n items (seeds, data points) over the ranks:

- :meth:`DistContext.shard`: one contiguous slice per rank, for work whose results are gathered
  (``diffsolve bench``). Because sample i depends on seeds[i] only (:class:`diffsolve.NoiseSource`)
  and fixed-step solvers treat samples independently, the gathered batch is the batch one process
  would have drawn, and rank 0 computes the same metrics from it.
- :meth:`DistContext.blocks`: fixed blocks of ``block`` items, dealt to the ranks in turn, for work
  written to files as it finishes (``diffsolve sample --outdir``, ``diffsolve likelihood --out``).
  The block boundaries do not depend on the number of processes, so 1 and N processes write the
  same files, and a resumed run with another number of processes skips the same finished blocks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from ._text import count

__all__ = ["DistContext", "init", "shard_bounds"]


def shard_bounds(n: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) slices of n items over world_size ranks (the first n % W get one more)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    base, extra = divmod(n, world_size)
    out, start = [], 0
    for r in range(world_size):
        end = start + base + (1 if r < extra else 0)
        out.append((start, end))
        start = end
    return out


@dataclass
class DistContext:
    """The process group as the benchmark sees it (a single process when ``world_size == 1``)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"
    _owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def bounds(self, n: int) -> list[tuple[int, int]]:
        return shard_bounds(n, self.world_size)

    def shard(self, items: list) -> list:
        """This rank's contiguous slice of ``items``."""
        if len(items) < self.world_size:
            raise ValueError(f"{count(len(items), 'sample')} cannot be shared by {self.world_size} processes; "
                             f"use at least one seed per process")
        s, e = self.bounds(len(items))[self.rank]
        return items[s:e]

    def blocks(self, n: int, block: int) -> list[tuple[int, int]]:
        """This rank's [start, end) blocks of ``range(n)``: blocks k·block … (k+1)·block (the last one
        shorter), block k going to rank k mod world_size (boundaries independent of world_size)."""
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        return [(s, min(s + block, n)) for s in range(self.rank * block, n, self.world_size * block)]

    def gather(self, x: Tensor, n_total: int) -> Tensor:
        """Concatenate every rank's (n_r, ...) slice in rank order (result on every rank)."""
        if not self.active:
            return x
        import torch.distributed as dist

        sizes = [e - s for s, e in self.bounds(n_total)]
        if x.shape[0] != sizes[self.rank]:
            raise RuntimeError(f"rank {self.rank} holds {x.shape[0]} samples, expected {sizes[self.rank]}")
        comm_dev = torch.device(self.device) if self.backend == "nccl" else torch.device("cpu")
        m = max(sizes)
        pad = torch.zeros(m, *x.shape[1:], dtype=x.dtype, device=comm_dev)
        pad[: x.shape[0]] = x.to(comm_dev)
        parts = [torch.empty_like(pad) for _ in range(self.world_size)]
        dist.all_gather(parts, pad)
        return torch.cat([p[:k] for p, k in zip(parts, sizes)]).to(x.device)

    def reduce(self, value: float, op: str = "max") -> float:
        """A float reduced over ranks (``"max"`` or ``"sum"``), the same on every rank."""
        if not self.active:
            return float(value)
        import torch.distributed as dist

        dev = torch.device(self.device) if self.backend == "nccl" else torch.device("cpu")
        t = torch.tensor([float(value)], dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return float(t.item())

    def broadcast_object(self, obj):
        """``obj`` from rank 0 on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def first_error(self, error: str | None) -> str | None:
        """The first failing rank's error message (``None`` if none failed), the same on every rank, so
        that a row which raised on one process is given up by all of them (a collective after it
        would otherwise wait for the failed process forever)."""
        if not self.active:
            return error
        import torch.distributed as dist

        errors = [None] * self.world_size
        dist.all_gather_object(errors, error)
        return next((f"rank {r}: {e}" for r, e in enumerate(errors) if e is not None), None)

    def barrier(self):
        if self.active:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[torch.device(self.device).index or 0])
            else:
                dist.barrier()

    def close(self):
        if self._owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owns_group = False


def init(device: str = "cpu") -> DistContext:
    """A :class:`DistContext` from torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``).

    Without ``WORLD_SIZE`` (or with 1) this is a single process and nothing is initialised.
    With CUDA each process takes ``cuda:LOCAL_RANK``.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
    if world < 1:
        raise ValueError(f"WORLD_SIZE={world}: the number of processes is at least 1 (torchrun sets it)")
    if world > 1 and not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..{world - 1} for WORLD_SIZE={world}: each process needs its own "
                         f"rank below the world size (torchrun sets both)")
    device = str(device)
    if world <= 1:
        return DistContext(device=device)
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was requested but CUDA is not available")
        n_dev = torch.cuda.device_count()
        device = f"cuda:{local % n_dev}"
        torch.cuda.set_device(torch.device(device))
    backend = "nccl" if cuda else "gloo"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        owns = True
    return DistContext(world_size=world, rank=rank, local_rank=local, backend=backend, device=device,
                       _owns_group=owns)
