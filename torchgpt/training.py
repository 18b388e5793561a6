"""The PyTorch backend of npgpt's trainer: the same loop, with torch doing the arithmetic.

`TorchBackend` satisfies npgpt's `Backend` protocol (npgpt.training.backend); `cli.py train
--backend torch` hands the class to npgpt's loop. What is torch's own here, and what is npgpt's
(imported, never redefined):

  npgpt  settings, data (windows, order, position), learning-rate schedule, which parameters
         decay (`npgpt.optim.decaying`), the AdamW hyper-parameters and the optimizer state's
         names, the run directory and checkpoint layout, metrics, plot, sampler, the loop itself.
  torch  the model (`torchgpt.model.GPT`), autograd, `torch.optim.AdamW` (fused kernel on CUDA),
         autocast (`--amp bf16|fp16`, with a GradScaler for fp16), TF32 matmuls on Ampere and
         newer, `torch.compile`, DistributedDataParallel across processes (distributed.py) and
         the RNG states a checkpoint carries (rng.py).

`torch.optim.AdamW` performs npgpt's AdamW update in the same order (see `npgpt.optim`), and
its state is saved under npgpt's names (`exp_avg.<name>`, `exp_avg_sq.<name>`): both backends
write the same checkpoint directory, and a numpy run can be resumed here (its dropout stream
then starts afresh: numpy's generator state means nothing to torch).

    python cli.py train --backend torch --device cuda --amp bf16 --compile ...
    torchrun --nproc_per_node N cli.py train --backend torch ...

Data parallel. Every process runs npgpt's loop in lock-step, so every one knows the global
batch; `--batch-size` is the micro-batch of all processes together, and each takes its own
contiguous rows of it (`torchgpt.distributed`). DDP averages the gradients across processes
during the backward of the last micro-batch of an accumulation only (`no_sync` on the others);
the loss reported is the mean over processes. Process 0 alone logs, samples and writes
checkpoints; at a checkpoint every process hands in its RNG state first (an all-gather), so that
`--resume` restores each one's. A signal may reach the processes at different times: they agree
on stopping by an all-reduce of their requests (`agreed_stop`, npgpt.training.stopping).
"""

import contextlib
import math

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from npgpt.optim import AdamWSettings, decaying
from npgpt.training.backend import BackendState, never
from npgpt.training.settings import TrainError, adamw_settings
from torchgpt.distributed import leave, max_over_ranks, mean_over_ranks, start_distributed
from torchgpt.generate import generate
from torchgpt.model import GPT
from torchgpt.rng import (
    local_rng_state,
    restore_rng_states,
    rng_states,
    seed_everything,
    set_local_rng_state,
)

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # the --amp choices


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


class TorchBackend:
    """npgpt's `Backend` on torchgpt; made by npgpt's loop as `TorchBackend(config, settings,
    state, step)` (npgpt.training.backend), in every process that torchrun started."""

    def __init__(self, config, settings, state, step):
        self.ranks, self.device = join(settings)
        self.is_main = self.ranks.is_main
        self.amp_dtype = AMP_DTYPES[settings.amp]
        if self.device.type == "cuda":
            enable_tf32()
        if state.rng is None:
            seed_everything(settings.seed + self.ranks.rank)  # each rank its own dropout masks
        self.model = GPT.from_params(config, state.params, attn=settings.attn, device=self.device)
        self.model.train()
        self.optimizer = make_optimizer(self.model, settings.lr, adamw_settings(settings))
        import_moments(self.optimizer, self.model, state.moments, step)
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        if state.rng is not None:
            restore_rng_states(state.rng, self.ranks, self.device, self.scaler, settings.seed, step)
        self.runner = torch.compile(self.model) if settings.compile else self.model
        if self.ranks.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.runner = DDP(self.runner, device_ids=ids)
        self.max_norm = settings.clip if settings.clip > 0 else math.inf
        self.description = describe(settings, self.device, self.ranks)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def my_rows(self, x, y):
        """This process's rows of the batch (x, y), as tensors on its device."""
        mine = self.ranks.rows(len(x))
        return tuple(torch.from_numpy(a[mine]).to(self.device, non_blocking=True) for a in (x, y))

    def train_step(self, micro_batches, lr, stop_now=never):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n = len(micro_batches)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        rng_before = local_rng_state(self.device)  # to undo an abandoned step's dropout draws
        for i, (x, y) in enumerate(micro_batches):
            if i > 0 and stop_now():  # every rank asks here: all abandon, or none
                self.optimizer.zero_grad(set_to_none=True)
                set_local_rng_state(rng_before, self.device)
                return None
            # DDP all-reduces gradients during backward; do it once, on the last micro-batch
            sync = self.ranks.world_size == 1 or i == n - 1
            with contextlib.nullcontext() if sync else self.runner.no_sync():
                with self.autocast():
                    _, loss = self.runner(*self.my_rows(x, y))
                self.scaler.scale(loss / n).backward()  # the gradient of the mean
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_over_ranks(loss_sum.item() / n, self.ranks, self.device), norm.item()

    def agreed_stop(self, signum):
        return max_over_ranks(signum, self.ranks, self.device)

    @torch.no_grad()
    def eval_loss(self, x, y):
        self.model.eval()
        with self.autocast():
            if len(x) % self.ranks.world_size:  # a short last batch: every rank does it all
                x, y = (torch.from_numpy(a).to(self.device) for a in (x, y))
                loss = self.model(x, y)[1].item()
            else:
                loss = self.model(*self.my_rows(x, y))[1].item()
                loss = mean_over_ranks(loss, self.ranks, self.device)
        self.model.train()
        return loss

    def sample(self, prompt_ids, sampling):
        ids = list(generate(self.model, prompt_ids, sampling, amp_dtype=self.amp_dtype))
        self.model.train()
        return ids

    def state(self):
        return BackendState(
            self.model.to_params(),
            export_moments(self.optimizer, self.model),
            rng_states(self.ranks, self.device, self.scaler),
        )

    def close(self):
        leave(self.ranks)


def join(settings):
    """(Ranks, device) of this process, and a batch that splits evenly among the processes."""
    try:
        ranks, device = start_distributed(settings.device)
    except ValueError as err:
        raise TrainError(str(err)) from None
    if settings.batch_size % ranks.world_size:
        raise TrainError(
            f"--batch-size {settings.batch_size} is the micro-batch of all "
            f"{ranks.world_size} processes together and must divide evenly among them"
        )
    return ranks, device


def describe(settings, device, ranks):
    """e.g. "torch float32 on cuda:0, amp bf16, attn sdpa, compiled, 8 processes (DDP)"."""
    words = f"torch {settings.dtype} on {device}, amp {settings.amp}, attn {settings.attn}"
    if settings.compile:
        words += ", compiled"
    if ranks.world_size > 1:
        words += f", {ranks.world_size} processes (DDP)"
    return words
