"""Data parallelism: several processes (one per GPU) training one model in lock-step.

torchrun starts the processes and tells each its place (RANK, WORLD_SIZE, LOCAL_RANK in the
environment). Every process runs npgpt's training loop on the same global batches; each takes
its own contiguous rows of every micro-batch:

    8 windows, 4 ranks:   rank 0 takes rows 0 1, rank 1 rows 2 3, rank 2 rows 4 5, rank 3 rows 6 7

so `--batch-size` means the same thing on any number of processes, and the same command trains
the same model on 1 or 8 GPUs. The collectives here (an all-reduce of the loss, one of the stop
requests at every step's start and between its micro-batches, an all-gather of the RNG states)
and DDP's gradient all-reduce keep the processes together: one that runs ahead
waits at the next of them. So no barrier is needed during a run: while the main process writes
a checkpoint, the others go on to the next step and wait there, at the gradient all-reduce. At
the end there is no next collective, and a process that tears down its connections while
another still writes the last checkpoint can abort (SIGABRT, seen with gloo; an NCCL
communicator's teardown may itself be collective): `leave` waits for all of them first.

>>> shard(list(range(8)), rank=1, world_size=4)
[2, 3]
"""

import atexit
import dataclasses
import os

import torch
import torch.distributed as dist

from torchgpt.device import resolve_device


def shard(indices, rank, world_size):
    """Rank `rank`'s contiguous slice of a global batch (its length must divide evenly)."""
    if len(indices) % world_size:
        raise ValueError(
            f"a global batch of {len(indices)} windows does not split over {world_size} ranks"
        )
    per_rank = len(indices) // world_size
    return indices[rank * per_rank : (rank + 1) * per_rank]


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel processes torchrun started (1 if none)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        """The process that prints, samples and writes the run directory."""
        return self.rank == 0

    def rows(self, batch_size):
        """This rank's contiguous slice of a micro-batch's rows (`shard`)."""
        mine = shard(list(range(batch_size)), self.rank, self.world_size)
        return slice(mine[0], mine[-1] + 1)


def start_distributed(device_name):
    """(Ranks, device). Under torchrun (WORLD_SIZE > 1 in the environment) join the process
    group: NCCL between CUDA GPUs, one GPU per process (cuda:LOCAL_RANK), else gloo on CPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return Ranks(), device
    ranks = Ranks(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            rank=ranks.rank,
            world_size=world_size,
            device_id=device if device.type == "cuda" else None,
        )
        atexit.register(leave_on_exit)
    return ranks, device


def leave(ranks):
    """Leave the process group together with every other process: the end of a run."""
    if ranks.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def leave_on_exit():
    """A process that ends without `leave` (an error) leaves at once: it cannot wait for the
    others, which may be stuck waiting for it."""
    if dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(value, ranks, device):
    """The mean of a Python float over all ranks (each rank holds an equal share of rows)."""
    if ranks.world_size == 1:
        return value
    t = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(t)  # SUM: gloo has no AVG
    return t.item() / ranks.world_size


def max_over_ranks(value, ranks, device):
    """The largest of a Python int over all ranks: what every rank then acts on."""
    if ranks.world_size == 1:
        return value
    t = torch.tensor(value, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_hex(state, ranks, device):
    """Every rank's RNG state (a uint8 tensor) as hex strings, in rank order."""
    if ranks.world_size == 1:
        return [bytes(state.tolist()).hex()]
    local = state.to(device)
    parts = [torch.empty_like(local) for _ in range(ranks.world_size)]
    dist.all_gather(parts, local)
    return [bytes(p.cpu().tolist()).hex() for p in parts]


def from_hex(text):
    """The uint8 tensor `gather_hex` wrote as `text`."""
    return torch.tensor(list(bytes.fromhex(text)), dtype=torch.uint8)
