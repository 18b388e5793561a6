"""Training and decode speed of torchgpt at GPT-2 124M shapes: tokens/s and MFU.

Training: full optimizer steps (forward, backward, gradient clipping, AdamW) on random tokens,
warm-up steps (which include torch.compile's compilation and cuDNN/cuBLAS autotuning) excluded
from the timing, the device synchronised before the clock is read.

MFU (model FLOPs utilisation) = achieved model FLOP/s / the device's peak FLOP/s, with the
model's FLOPs per trained token counted as in the PaLM paper (appendix B):

    6 N           each weight takes part in one multiply-add forward and two backward
                  (N: every parameter but wpe, which is a lookup; wte counts: it is the LM head)
  + 12 L T C      attention's q k^T and p v, which hold no parameters (forward + backward)

Recomputation, masking and the optimizer are not counted: MFU measures useful work. The peak
is taken from a table of vendor figures (dense, no sparsity) for the GPU found, or measured on
the CPU with a large matrix product; the output states which. On the CPU the same run also
times npgpt's step (NumPy forward + backward + AdamW) at the same shapes, side by side.

Decode: tokens/s of greedy generation with the KV cache and with full recomputation.

    python bench/bench_torch.py                                # CPU: small batch, vs npgpt
    python bench/bench_torch.py --device cuda --amp bf16 --attn sdpa --compile
    python bench/bench_torch.py --device cuda --batch-size 32 --steps 30
"""

import argparse
import contextlib
import time

import numpy as np
import torch

import npgpt
from npgpt.config import GPTConfig
from npgpt.optim import AdamWSettings, adamw_step, clip_grad_norm, init_state
from npgpt.sampling import SamplingSettings
from torchgpt.device import resolve_device
from torchgpt.generate import generate
from torchgpt.model import ATTN_CHOICES, GPT
from torchgpt.training import AMP_DTYPES, enable_tf32, make_optimizer

# Dense tensor-core peaks in TFLOP/s, from the vendors' datasheets: (bf16/fp16, tf32).
# Matched against torch.cuda.get_device_name in this order (the first substring found wins).
GPU_PEAKS = (
    ("H200", (989.0, 494.7)),
    ("H100 PCIe", (756.0, 378.0)),
    ("H100 NVL", (835.0, 417.5)),
    ("H100", (989.0, 494.7)),  # SXM
    ("GH200", (989.0, 494.7)),
    ("B200", (2250.0, 1100.0)),
    ("A100", (312.0, 156.0)),
    ("A10G", (70.0, 35.0)),
    ("A10", (125.0, 62.5)),
    ("L40S", (362.0, 183.0)),
    ("L4", (121.0, 60.0)),
    ("RTX 4090", (165.2, 82.6)),
    ("RTX 3090", (71.0, 35.6)),
    ("V100", (125.0, 15.7)),  # no bf16 nor tf32: fp16 tensor cores / fp32
    ("T4", (65.0, 8.1)),
)


def model_flops_per_token(config, seq_len):
    """6 N + 12 L T C: see the module docstring."""
    n = npgpt.names.num_params(config) - config.context_length * config.emb_dim  # minus wpe
    return 6 * n + 12 * config.n_layers * seq_len * config.emb_dim


def synchronize(device):
    """Wait for the device's queued kernels: a GPU returns from a call before it has computed."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measured_cpu_peak(dtype, size=2048, repeats=5):
    """The CPU's practical peak: the best FLOP/s of a large matrix product in `dtype`."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: thread pool, caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def device_peak(device, amp, param_dtype, override):
    """(peak FLOP/s, a sentence saying where it comes from)."""
    if override:
        return override * 1e12, f"{override:g} TFLOP/s (given by --peak-tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (half, tf32) in GPU_PEAKS:
            if key in name:
                if amp != "off":
                    return half * 1e12, f"{half:g} TFLOP/s, {name} dense {amp} tensor cores"
                return tf32 * 1e12, f"{tf32:g} TFLOP/s, {name} dense tf32 tensor cores"
        return None, f"unknown for {name}: pass --peak-tflops"
    if device.type == "cpu":
        dtype = torch.float64 if param_dtype == torch.float64 else torch.float32
        peak = measured_cpu_peak(dtype)
        what = "dgemm" if dtype == torch.float64 else "sgemm"
        return peak, f"{peak / 1e12:.3f} TFLOP/s, measured: 2048^3 {what} on this CPU"
    return None, f"unknown for {device.type}: pass --peak-tflops"


def random_batches(config, batch_size, seq_len, count, seed=0):
    rng = np.random.default_rng(seed)
    shape = (count, batch_size, seq_len)
    return rng.integers(0, config.vocab_size, size=shape), rng.integers(
        0, config.vocab_size, size=shape
    )


def time_torch_training(args, config, device, param_dtype):
    """Seconds per optimizer step, averaged over `args.steps` after `args.warmup` steps."""
    torch.manual_seed(0)
    model = GPT(config, attn=args.attn, seed=0).to(device=device, dtype=param_dtype).train()
    optimizer = make_optimizer(model, lr=6e-4)
    amp_dtype = AMP_DTYPES[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    )
    step_model = torch.compile(model) if args.compile else model
    idx_np, tgt_np = random_batches(config, args.batch_size, args.seq_len, 4)
    idx = torch.from_numpy(idx_np).to(device)
    targets = torch.from_numpy(tgt_np).to(device)

    def step(i):
        with autocast:
            _, loss = step_model(idx[i % 4], targets[i % 4])
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for i in range(args.warmup):
        step(i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(args.steps):
        loss = step(i)
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    if not torch.isfinite(loss):
        raise SystemExit(
            f"the training loss is {loss.item()}: the benchmark is not measuring sense"
        )
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, model, memory


def time_npgpt_training(args, config, np_dtype):
    """Seconds per npgpt step (forward, backward, clipping, AdamW) at the same shapes."""
    params = npgpt.init_params(config, seed=0, dtype=np_dtype)
    state, settings = init_state(params), AdamWSettings()
    idx, targets = random_batches(config, args.batch_size, args.seq_len, 4)

    def step(i):
        _, loss, cache = npgpt.forward(params, config, idx[i % 4], targets[i % 4], train=True)
        grads = npgpt.backward(cache)
        clip_grad_norm(grads, 1.0)
        adamw_step(params, grads, state, i + 1, 6e-4, settings)
        return loss

    for i in range(args.warmup):
        step(i)
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    return (time.perf_counter() - start) / args.steps


def time_decode(model, args, amp_dtype, use_kv_cache):
    prompt = np.random.default_rng(1).integers(0, model.config.vocab_size, args.prompt_len)
    settings = SamplingSettings(temperature=0, max_new_tokens=args.new_tokens)
    warm = SamplingSettings(temperature=0, max_new_tokens=2)
    list(generate(model, prompt.tolist(), warm, use_kv_cache, amp_dtype=amp_dtype))
    start = time.perf_counter()
    tokens = list(generate(model, prompt.tolist(), settings, use_kv_cache, amp_dtype=amp_dtype))
    return tokens, time.perf_counter() - start


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    parser.add_argument("--preset", default="gpt2", help="model shapes (default: GPT-2 124M)")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default=None, help="GPU default bf16")
    parser.add_argument("--attn", choices=ATTN_CHOICES, default="sdpa")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--batch-size", type=int, default=None, help="GPU 16, CPU 2")
    parser.add_argument("--seq-len", type=int, default=None, help="GPU 1024, CPU 128")
    parser.add_argument("--steps", type=int, default=None, help="timed steps: GPU 20, CPU 3")
    parser.add_argument("--warmup", type=int, default=None, help="untimed: GPU 5, CPU 1")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak")
    parser.add_argument("--no-npgpt", action="store_true", help="CPU: skip npgpt's side")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=None, help="GPU 256, CPU 32")
    args = parser.parse_args()
    args.device = resolve_device(args.device)
    gpu = args.device.type != "cpu"
    defaults = dict(
        amp="bf16" if gpu else "off",
        batch_size=16 if gpu else 2,
        seq_len=1024 if gpu else 128,
        steps=20 if gpu else 3,
        warmup=5 if gpu else 1,
        new_tokens=256 if gpu else 32,
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main():
    args = parse_args()
    device = args.device
    if args.seq_len > GPTConfig.preset(args.preset).context_length:
        raise SystemExit(f"--seq-len {args.seq_len} is longer than {args.preset}'s context")
    config = GPTConfig.preset(args.preset)
    param_dtype = torch.float64 if args.dtype == "float64" else torch.float32
    if device.type == "cuda":
        enable_tf32()
    peak, peak_source = device_peak(device, args.amp, param_dtype, args.peak_tflops)

    seconds, model, memory = time_torch_training(args, config, device, param_dtype)
    tokens = args.batch_size * args.seq_len
    flops = model_flops_per_token(config, args.seq_len) * tokens
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(
        f"torchgpt training, preset {args.preset} ({model.num_params() / 1e6:.1f}M parameters), "
        f"{where}, torch {torch.__version__}"
    )
    print(
        f"B={args.batch_size} T={args.seq_len} params {args.dtype} amp {args.amp} "
        f"attn {args.attn} compile {'on' if args.compile else 'off'}; "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    print(f"peak: {peak_source}")
    print(f"{'step':<22}{'ms/step':>10}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}")

    def row(label, step_seconds):
        achieved = flops / step_seconds
        mfu = f"{100 * achieved / peak:.1f}%" if peak else "n/a"
        print(
            f"{label:<22}{1e3 * step_seconds:>10.1f}{tokens / step_seconds:>12.0f}"
            f"{achieved / 1e12:>10.2f}{mfu:>8}"
        )

    row("torchgpt", seconds)
    if memory is not None:
        print(f"peak GPU memory {memory:.1f} GiB")
    if device.type == "cpu" and not args.no_npgpt:
        np_seconds = time_npgpt_training(args, config, np.dtype(args.dtype))
        row("npgpt (NumPy)", np_seconds)
        print(f"torchgpt is {np_seconds / seconds:.1f}x npgpt's speed on this CPU")

    amp_dtype = AMP_DTYPES[args.amp]
    cached, t_cached = time_decode(model, args, amp_dtype, use_kv_cache=True)
    full, t_full = time_decode(model, args, amp_dtype, use_kv_cache=False)
    print(
        f"\ndecode, batch 1, prompt {args.prompt_len}, greedy, amp {args.amp} (eager, not compiled)"
    )
    print(f"{'mode':<22}{'tokens':>10}{'tokens/s':>12}")
    print(f"{'KV cache':<22}{len(cached):>10}{len(cached) / t_cached:>12.1f}")
    print(f"{'full recompute':<22}{len(full):>10}{len(full) / t_full:>12.1f}")
    print(f"KV-cache speed-up {len(cached) / t_cached / (len(full) / t_full):.1f}x")


if __name__ == "__main__":
    main()
