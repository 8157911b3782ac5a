"""Data parallel over PyTorch's own engine (torch.distributed, launched by torchrun).

Each rank takes its slice of every global batch; after the last micro-batch the gradients (and
the token and loss sums) are summed across ranks through flat buckets, so the step normalises by
the global token count and every rank applies the same update.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from craft.errors import ConfigError, CraftError

BUCKET_BYTES = 25 * 2**20  # per all-reduce: few large collectives beat many small ones


@dataclass(frozen=True)
class World:
    """Which process this is among how many (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 logs and writes checkpoints."""
        return self.rank == 0


class RankLostError(CraftError):
    """A collective failed: another rank died, hung past the timeout or lost its connection."""


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """The world torchrun describes in the environment; one process when it describes none."""
    env = os.environ if env is None else env
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    given = {name: env[name] for name in names if name in env}
    if not given:
        return World()
    missing = [name for name in names if name not in given]
    if missing:
        raise ConfigError(
            f"incomplete torchrun environment: {', '.join(given)} set but not "
            f"{', '.join(missing)}; launch with torchrun --nproc_per_node=N -m craft.main ..."
        )
    try:
        rank, size, local = (int(given[name]) for name in names)
    except ValueError:
        raise ConfigError(
            f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got {given}"
        ) from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={size}")
    return World(rank=rank, size=size, local_rank=local)


def init(world: World, *, timeout_s: float = 300.0) -> None:
    """Join the process group (NCCL with CUDA, else gloo). A rank that dies or hangs makes the
    others' collectives fail after `timeout_s` instead of waiting forever."""
    if world.size == 1 or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend, rank=world.rank, world_size=world.size, timeout=dt.timedelta(seconds=timeout_s)
    )


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """How many processes train together (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensors: list[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Sum each tensor across ranks, in place, through flat buckets (one per dtype and size)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for tensor in group:
            bucket.append(tensor)
            size += tensor.numel() * tensor.element_size()
            if size >= bucket_bytes:
                _reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is set on any rank (one one-element sum)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    count = torch.tensor([int(flag)], device=device)
    _all_reduce(count, "agreeing whether to stop")
    return bool(count.item())


def reduce_scatter_sum(flat: torch.Tensor) -> torch.Tensor:
    """Sum a flat tensor across ranks and return this rank's equal slice of the sum (the size
    must divide by the world size). One process: the tensor itself."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flat
    out = flat.new_empty(flat.numel() // dist.get_world_size())
    _collective("reduce_scatter_single", "reduce_scatter_tensor")(out, flat)
    return out


def all_gather_flat(local: torch.Tensor) -> torch.Tensor:
    """Every rank's equal-sized flat tensor, laid end to end in rank order, on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    out = local.new_empty(local.numel() * dist.get_world_size())
    _collective("all_gather_single", "all_gather_into_tensor")(out, local)
    return out


def shard(batch: Mapping[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """This rank's contiguous slice of a global batch (dim 0)."""
    size = next(iter(batch.values())).shape[0]
    if size % world.size:
        raise ConfigError(f"global batch {size} does not split evenly over {world.size} ranks")
    part = size // world.size
    return {
        name: value[world.rank * part : (world.rank + 1) * part] for name, value in batch.items()
    }


def _collective(name: str, older: str) -> Callable[..., object]:
    # torch 2.13 renamed the flat collectives (`*_single`) and deprecated the older names,
    # which are all that earlier releases have.
    return getattr(dist, name, None) or getattr(dist, older)


def _reduce_bucket(bucket: list[torch.Tensor]) -> None:
    flat = torch.cat([t.reshape(-1) for t in bucket])
    _all_reduce(flat, "summing gradients")
    offset = 0
    for tensor in bucket:
        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def _all_reduce(tensor: torch.Tensor, doing: str) -> None:
    try:
        dist.all_reduce(tensor)
    except RuntimeError as error:  # gloo and NCCL report a lost peer or a timeout this way
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RankLostError(f"another rank stopped answering while {doing} ({reason})") from error


def backend() -> str:
    """The process group's backend (gloo, nccl), or "none" in a single process."""
    return str(dist.get_backend()) if dist.is_initialized() else "none"


def shutdown(*, wait: bool = True) -> None:
    """Leave the process group. A process that exits without it sometimes aborts in gloo's
    destructor ("terminate called without an active exception", about 1 launch in 3 on 2 busy
    cores). `wait`: first meet every rank at a barrier, so that no rank tears its connections
    down while another still uses them (not after a failure: the others may be gone)."""
    if not dist.is_initialized():
        return
    if wait:
        dist.barrier()
    gc.collect()  # finished work objects hold tensors: free them while Python is whole
    dist.destroy_process_group()
