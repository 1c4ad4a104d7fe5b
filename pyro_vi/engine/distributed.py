"""Data-parallel SVI on ``torch.distributed``: each rank takes its shard of every global batch.

With W ranks, a global batch B of the epoch's permutation (the same on every rank) and N points::

    shard of rank r        S_r = B[r::W]                       |S_r| = |B| / W
    loss of rank r         L_r = -(N / |S_r|) sum_{n in S_r} ELBO_n      (the plate's subsample scale)
    mean over ranks        (1/W) sum_r grad L_r = -(N / |B|) sum_{n in B} grad ELBO_n

which is the one-process gradient on B. So the gradients of all Pyro params (and the loss) are
averaged with one all-reduce before the optimizer step; every rank then takes the same step and the
parameters stay identical without being broadcast. Rank 0 alone writes checkpoints, metrics and
figures.

Randomness: the data order must agree across ranks, the noise must not. The epoch's permutation is
drawn from its own generator seeded by ``(seed, epoch)``; each rank's global RNG (z draws, dynamic
binarization) is re-seeded from one common draw plus its rank, at the start and after a resume.

Launch with ``torchrun`` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); the
backend is gloo on CPU and nccl on CUDA, one device per local rank.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import pyro
import torch
import torch.distributed
from torch import Tensor

from pyro_vi.device import resolve_device
from pyro_vi.errors import ConfigError, PyroVIError

__all__ = ["launched", "DataParallel", "init", "agreed"]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True inside a multi-process ``torchrun`` launch (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class DataParallel:
    """One rank of a data-parallel run: its place, its device, and the collectives ``fit`` needs.

    With ``world_size == 1`` no process group is needed and every collective is the identity, so
    the same object gives the one-process reference of a distributed run.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, device: torch.device | str = "cpu"):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = torch.device(device)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file."""
        return self.rank == 0

    def validate(self, batch_size: int) -> None:
        """Refuse a global batch that does not split evenly over the ranks (``ConfigError``)."""
        if batch_size % self.world_size:
            raise ConfigError(
                f"batch size {batch_size} does not split evenly over {self.world_size} processes; "
                f"use a multiple of {self.world_size}"
            )

    def seed_ranks(self) -> None:
        """Give each rank its own noise stream, derived from the (common) current RNG state."""
        base = int(torch.randint(2**31 - 1, ()))
        pyro.set_rng_seed(base + self.rank)

    def permutation(self, num_data: int, seed: int, epoch: int, device: torch.device) -> Tensor:
        """The epoch's data order: a function of ``(seed, epoch)`` only, so all ranks agree."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(num_data, generator=generator).to(device)

    def shard(self, indices: Tensor) -> Tensor:
        """This rank's part of a global batch."""
        return indices[self.rank :: self.world_size]

    def reduce(self, loss: float, grads: list[Tensor]) -> float:
        """Average the loss and the gradients (in place) over ranks, in one all-reduce."""
        if self.world_size == 1:
            return loss
        like = grads[0] if grads else torch.zeros((), device=self.device)
        flat = torch.cat([like.new_tensor([loss]), *(g.reshape(-1) for g in grads)])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        flat /= self.world_size
        offset = 1
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()
        return float(flat[0])

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (e.g. a Ctrl-C seen by one process)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item() > 0)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def first_error(self, error: PyroVIError | None) -> PyroVIError | None:
        """The user error of the lowest rank that raised one (or ``None``), on every rank.

        Each rank checks its own inputs (its data directory, its device); exchanging the outcome
        stops every rank on one rank's bad input instead of leaving the others waiting in a
        collective. An error from another rank than 0 names that rank."""
        if self.world_size == 1:
            return error
        errors: list = [None] * self.world_size
        torch.distributed.all_gather_object(errors, error)
        for rank, found in enumerate(errors):
            if found is not None:
                return found if rank == 0 else type(found)(f"on rank {rank}: {found}")
        return None

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing to wait for with one process)."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        """Leave the process group (``destroy_process_group``), if one is initialized."""
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init(device: str = "auto", timeout_seconds: float = 1800.0) -> DataParallel:
    """Join the process group described by torchrun's environment variables.

    Args:
        device: ``auto`` (``cuda:LOCAL_RANK`` when CUDA is present, else CPU), ``cpu`` or ``cuda``.
        timeout_seconds: how long a collective waits for the other ranks.

    Raises:
        ConfigError: the environment variables of a launcher are missing, or the process group
            cannot be joined (port in use, address unreachable, other ranks missing).
        DeviceError: ``cuda`` was asked for without CUDA.
    """
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise ConfigError(
            f"--distributed needs the launcher's environment ({', '.join(missing)} not set); "
            "start with 'torchrun --nproc_per_node N -m pyro_vi vae ...'"
        )
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        try:
            torch.distributed.init_process_group(
                backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_seconds)
            )
        except torch.distributed.DistError as error:  # port in use, unreachable address, ranks missing
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ConfigError(
                f"cannot join the process group at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({reason}); "
                "check --master_addr/--master_port of torchrun and that the port is free"
            ) from None
    return DataParallel(rank, world_size, local_rank, chosen)


def agreed(check, data_parallel: DataParallel | None) -> tuple[Any, bool]:
    """``(check(), failed)``, with a user error shared by all ranks of a data-parallel run.

    Each rank checks its own inputs (its data, its device); one rank's error stops every rank
    instead of leaving the others waiting in a collective. Rank 0 raises it (the CLI prints it);
    the other ranks return ``failed=True`` without a word, so the user reads it once."""
    if data_parallel is None:
        return check(), False
    value, error = None, None
    try:
        value = check()
    except PyroVIError as caught:
        error = caught
    error = data_parallel.first_error(error)
    if error is not None and data_parallel.is_main:
        raise error
    return value, error is not None
