"""The PyTorch backend of npgpt's trainer: the same loop, with torch doing the arithmetic.

What is torch's own here, and what is npgpt's (imported, never redefined):

  npgpt  data (windows, order, position, rank slices), learning-rate schedule, which parameters
         decay (`npgpt.optim.decaying`), the AdamW hyper-parameters and the optimizer state's
         names, the checkpoint layout, metrics, plot, sampler, the loop itself.
  torch  the model (`torchgpt.model.GPT`), autograd, `torch.optim.AdamW` (fused kernel on CUDA),
         autocast (`--amp bf16|fp16`, with a GradScaler for fp16), TF32 matmuls on Ampere and
         newer, `torch.compile`, and DistributedDataParallel across processes.

`torch.optim.AdamW` performs npgpt's AdamW update in the same order (see `npgpt.optim`), and
its state is saved under npgpt's names (`exp_avg.<name>`, `exp_avg_sq.<name>`): both backends
write the same checkpoint directory, and a numpy run can be resumed here (its dropout stream
then starts afresh: numpy's generator state means nothing to torch).

    python cli.py train --backend torch --device cuda --amp bf16 --compile ...
    torchrun --nproc_per_node N cli.py train --backend torch ...

Data parallel. Every process runs npgpt's loop in lock-step, so every one knows the global
batch; `--batch-size` is the micro-batch of all processes together, and each takes its own
contiguous rows of it (`npgpt.training.data.shard`). The same command thus trains the same
model on any number of processes. DDP averages the gradients across processes during the
backward of the last micro-batch of an accumulation only (`no_sync` on the others); the loss
reported is the mean over processes. Process 0 alone logs, samples and writes checkpoints; at a
checkpoint every process hands in its RNG state first (an all-gather), so that `--resume`
restores each one's.
"""

import atexit
import contextlib
import dataclasses
import functools
import math
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from npgpt.optim import AdamWSettings, decaying
from npgpt.training.corpus import shard
from npgpt.training.settings import Backend, TrainError, adamw_settings
from torchgpt.device import resolve_device
from torchgpt.generate import generate
from torchgpt.model import ATTN_CHOICES, GPT

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def enable_tf32():
    """Let float32 matmuls and convolutions use TF32 tensor cores (Ampere and newer): 10 bits of
    mantissa in the products, float32 accumulation; ~8x float32's throughput on an A100."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def make_optimizer(model, lr, settings=None):
    """torch's AdamW over two groups: the parameters npgpt decays, and the rest (no decay).
    Fused (one kernel for all parameters) when the model is on a CUDA device."""
    settings = settings or AdamWSettings()
    named = dict(model.named_parameters())
    decay = set(decaying({name: tuple(p.shape) for name, p in named.items()}))
    groups = [
        {
            "params": [p for n, p in named.items() if n in decay],
            "weight_decay": settings.weight_decay,
        },
        {"params": [p for n, p in named.items() if n not in decay], "weight_decay": 0.0},
    ]
    on_cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(
        groups,
        lr=lr,
        betas=(settings.beta1, settings.beta2),
        eps=settings.eps,
        fused=True if on_cuda else None,
    )


# ---- data parallel -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel processes torchrun started (1 if none)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def rows(self, batch_size):
        """This rank's contiguous slice of a micro-batch's rows (`npgpt.training.data.shard`)."""
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
        atexit.register(dist.destroy_process_group)
    return ranks, device


def mean_over_ranks(value, ranks, device):
    """The mean of a Python float over all ranks (each rank holds an equal share of rows)."""
    if ranks.world_size == 1:
        return value
    t = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(t)  # SUM: gloo has no AVG
    return t.item() / ranks.world_size


def gather_hex(state, ranks, device):
    """Every rank's RNG state (a uint8 tensor) as hex strings, in rank order."""
    if ranks.world_size == 1:
        return [bytes(state.tolist()).hex()]
    local = state.to(device)
    parts = [torch.empty_like(local) for _ in range(ranks.world_size)]
    dist.all_gather(parts, local)
    return [bytes(p.cpu().tolist()).hex() for p in parts]


def from_hex(text):
    return torch.tensor(list(bytes.fromhex(text)), dtype=torch.uint8)


# ---- optimizer state under npgpt's names ---------------------------------------------------


def export_moments(optimizer, model):
    """{"exp_avg.<name>", "exp_avg_sq.<name>": numpy array}; zeros before the first update."""
    moments = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            tensor = state.get(key, torch.zeros_like(p))
            moments[f"{key}.{name}"] = tensor.detach().cpu().numpy().copy()
    return moments


def import_moments(optimizer, model, moments, step):
    """Load npgpt-named moments after `step` updates into torch's AdamW (which then takes
    update step + 1 next, as `npgpt.optim.adamw_step` would)."""
    if step == 0:
        return  # torch starts its moments at zero on the first update, as npgpt does
    names = {id(p): name for name, p in model.named_parameters()}
    flat = [p for group in optimizer.param_groups for p in group["params"]]
    state = {
        i: {
            "step": torch.tensor(float(step)),
            "exp_avg": torch.from_numpy(np.array(moments[f"exp_avg.{names[id(p)]}"])),
            "exp_avg_sq": torch.from_numpy(np.array(moments[f"exp_avg_sq.{names[id(p)]}"])),
        }
        for i, p in enumerate(flat)
    }
    # load_state_dict casts the moments to each parameter's dtype and device, and puts `step`
    # where this AdamW implementation (fused, foreach or single-tensor) wants it.
    optimizer.load_state_dict(optimizer.state_dict() | {"state": state})


# ---- the backend ---------------------------------------------------------------------------


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 -- the global generators are what gets saved
    torch.manual_seed(seed)


def rng_states(ranks, device, scaler):
    """A JSON-able snapshot: each rank's torch RNG (dropout draws from it), numpy's and
    Python's global generators, and the fp16 GradScaler."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    states = {
        "torch": gather_hex(torch.get_rng_state(), ranks, device),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }
    if device.type == "cuda":
        states["cuda"] = gather_hex(torch.cuda.get_rng_state(device), ranks, device)
    if scaler.is_enabled():
        states["scaler"] = scaler.state_dict()
    return states


def restore_rng_states(states, ranks, device, scaler, settings, step):
    """Undo `rng_states` on every rank. A checkpoint from the numpy backend, or from a run
    with another number of processes, has no torch state for this rank: its dropout then
    starts afresh from the seed, the step and the rank (the run continues, not bit for bit)."""
    torch_states = (states or {}).get("torch")
    if torch_states is None or len(torch_states) != ranks.world_size:
        seed_everything(hash((settings.seed, step, ranks.rank)) % 2**32)
        return
    torch.set_rng_state(from_hex(torch_states[ranks.rank]))
    if device.type == "cuda" and len(states.get("cuda", ())) == ranks.world_size:
        torch.cuda.set_rng_state(from_hex(states["cuda"][ranks.rank]), device)
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "scaler" in states and scaler.is_enabled():
        scaler.load_state_dict(states["scaler"])


def backend_factory(device="auto", amp="off", attn="sdpa", compile=False):
    """The `make_backend` of `npgpt.training.settings`'s interface, for these torch-only options."""
    if amp not in AMP_DTYPES:
        raise TrainError(f"--amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    if attn not in ATTN_CHOICES:
        raise TrainError(f"--attn must be one of {', '.join(ATTN_CHOICES)}, got {attn!r}")

    def make_backend(config, settings, params, optimizer, step, rng_state):
        try:
            ranks, dev = start_distributed(device)
        except ValueError as err:
            raise TrainError(str(err)) from None
        if settings.batch_size % ranks.world_size:
            raise TrainError(
                f"--batch-size {settings.batch_size} is the micro-batch of all "
                f"{ranks.world_size} processes together and must divide evenly among them"
            )
        amp_dtype = AMP_DTYPES[amp]
        if amp_dtype is not None and settings.dtype != "float32":
            raise TrainError(f"--amp {amp} keeps float32 master weights: use --dtype float32")
        if dev.type == "cuda":
            enable_tf32()
        if step == 0 and rng_state is None:
            seed_everything(settings.seed + ranks.rank)  # each rank its own dropout masks
        model = GPT.from_params(config, params, attn=attn, device=dev).train()
        opt = make_optimizer(model, settings.lr, adamw_settings(settings))
        import_moments(opt, model, optimizer, step)
        scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
        if rng_state is not None:
            restore_rng_states(rng_state, ranks, dev, scaler, settings, step)
        runner = torch.compile(model) if compile else model
        if ranks.world_size > 1:
            runner = DDP(runner, device_ids=[dev.index] if dev.type == "cuda" else None)
        autocast = (
            functools.partial(torch.autocast, dev.type, dtype=amp_dtype)
            if amp_dtype is not None
            else contextlib.nullcontext
        )
        max_norm = settings.clip if settings.clip > 0 else math.inf

        def tensors(x, y):
            mine = ranks.rows(len(x))
            as_tensor = lambda a: torch.from_numpy(a[mine]).to(dev, non_blocking=True)  # noqa: E731
            return as_tensor(x), as_tensor(y)

        def train_step(micro_batches, lr):
            for group in opt.param_groups:
                group["lr"] = lr
            n = len(micro_batches)
            loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
            for i, (x, y) in enumerate(micro_batches):
                # DDP all-reduces gradients during backward; do it once, on the last micro-batch
                sync = ranks.world_size == 1 or i == n - 1
                with contextlib.nullcontext() if sync else runner.no_sync():
                    with autocast():
                        _, loss = runner(*tensors(x, y))
                    scaler.scale(loss / n).backward()  # the gradient of the mean
                loss_sum += loss.detach()
            scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            return mean_over_ranks(loss_sum.item() / n, ranks, dev), norm.item()

        @torch.no_grad()
        def eval_loss(x, y):
            model.eval()
            with autocast():
                if len(x) % ranks.world_size:  # a short last batch: every rank does it all
                    as_tensor = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
                    loss = model(as_tensor(x), as_tensor(y))[1].item()
                else:
                    loss = mean_over_ranks(model(*tensors(x, y))[1].item(), ranks, dev)
            model.train()
            return loss

        def sample(prompt_ids, sampling):
            ids = list(generate(model, prompt_ids, sampling, amp_dtype=amp_dtype))
            model.train()
            return ids

        def state():
            return model.to_params(), export_moments(opt, model), rng_states(ranks, dev, scaler)

        def barrier():
            if ranks.world_size > 1:
                dist.barrier()

        description = f"torch {settings.dtype} on {dev}, amp {amp}, attn {attn}" + (
            ", compiled" if compile else ""
        )
        if ranks.world_size > 1:
            description += f", {ranks.world_size} processes (DDP)"
        return Backend(train_step, eval_loss, sample, state, description, ranks.rank == 0, barrier)

    return make_backend
