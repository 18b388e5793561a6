"""Training and decode speed of torchgpt at GPT-2 124M shapes: tokens/s and MFU, against the
GPU targets of issue 13.

Training: full optimizer steps (forward, backward, gradient clipping, AdamW) on random tokens,
warm-up steps (which include torch.compile's compilation and cuDNN/cuBLAS autotuning) excluded
from the timing, the device synchronised before the clock is read. On CUDA the loss is the
chunked one (torchgpt/head_loss.py, vocabulary padded to 50,304 inside it); `--plain-loss`
measures `F.cross_entropy` over the whole batch's logits instead.

MFU (model FLOPs utilisation) = achieved model FLOP/s / the device's peak FLOP/s, with the
model's FLOPs per trained token counted as in the PaLM paper (appendix B):

    6 N           each weight takes part in one multiply-add forward and two backward
                  (N: every parameter but wpe, which is a lookup; wte counts: it is the LM head)
  + 12 L T C      attention's q k^T and p v, which hold no parameters (forward + backward)

Recomputation, masking, the padded vocabulary's 47 extra rows and the optimizer are not counted:
MFU measures useful work. The peak is taken from a table of vendor figures (dense, no sparsity)
for the GPU found, or measured on the CPU with a large matrix product; the output states which.
On the CPU the same run also times npgpt's step (NumPy forward + backward + AdamW) side by side.

Decode: steady-state tokens/s of greedy generation at batch 1 (from the second new token to the
last, so the prompt and the one-off CUDA graph recording are not counted), with each KV cache
of torchgpt/generate.py: "concat" (the cache before issue 13, grown by torch.cat), "static"
(preallocated, written in place) and on CUDA "graph" (one-token steps replayed from a CUDA
graph), and with full recomputation.

Targets (judged on a CUDA device only; issue 13):
  MFU of the training step                               >= 50%  (GPT-2 124M, T = 1024, bf16)
  decode tokens/s, the "graph" cache / "concat", same run >= 3x
  decode tokens/s                                         >= 393  (3x the README's 131, H100)
Exit status: 0 every target PASS, 1 a target MISS, 2 the targets were not measured (no CUDA
device: the CPU rows are printed, the GPU rows are not, and the run says so).

    python bench/bench_torch.py                                # CUDA: compiled, bf16, B=16
    python bench/bench_torch.py --device cuda --batch-size 32 --steps 30
    python bench/bench_torch.py --device cpu                   # CPU: small batch, vs npgpt
"""

import argparse
import contextlib
import time

import numpy as np
import torch
from harness import Check, print_checks

import npgpt
from npgpt.config import GPTConfig
from npgpt.optim import AdamWSettings, adamw_step, clip_grad_norm, init_state
from npgpt.sampling import SamplingSettings
from torchgpt.device import resolve_device
from torchgpt.generate import KV_MODES, generate
from torchgpt.model import ATTN_CHOICES, GPT
from torchgpt.training import AMP_DTYPES, enable_tf32, make_optimizer

TARGET_MFU = 50.0  # %, GPT-2 124M, T = 1024, bf16 (issue 13)
README_DECODE = 131.0  # tokens/s: the README's H100 figure (batch 1, bf16, eager, concat cache)
TARGET_DECODE_SPEEDUP = 3.0  # the default cache's tokens/s over the concat cache's, same run

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
    chunked = False if args.plain_loss else None  # None: chunked on CUDA (torchgpt/model.py)
    model = GPT(config, attn=args.attn, seed=0, chunked_loss=chunked)
    model = model.to(device=device, dtype=param_dtype).train()
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


def time_decode(model, args, amp_dtype, kv_mode):
    """(tokens, steady-state tokens/s) of greedy generation; kv_mode None: no KV cache."""
    prompt = np.random.default_rng(1).integers(0, model.config.vocab_size, args.prompt_len)
    use_kv_cache = kv_mode is not None

    def run(new_tokens):
        settings = SamplingSettings(temperature=0, max_new_tokens=new_tokens)
        tokens, arrivals = [], []
        for token in generate(model, prompt.tolist(), settings, use_kv_cache, amp_dtype, kv_mode):
            tokens.append(token)
            arrivals.append(time.perf_counter())
        return tokens, arrivals

    run(3)  # warm-up: kernels chosen, allocator primed
    tokens, arrivals = run(args.new_tokens)
    if len(tokens) < 3:
        raise SystemExit(f"decode ({kv_mode}) stopped after {len(tokens)} tokens: nothing to time")
    # from the second token on: the first comes from the prompt, the second records the graph
    return tokens, (len(tokens) - 2) / (arrivals[-1] - arrivals[1])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    parser.add_argument("--preset", default="gpt2", help="model shapes (default: GPT-2 124M)")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default=None, help="GPU default bf16")
    parser.add_argument("--attn", choices=ATTN_CHOICES, default="sdpa")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="GPU default on"
    )
    parser.add_argument("--plain-loss", action="store_true", help="F.cross_entropy, no chunks")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--batch-size", type=int, default=None, help="GPU 16, CPU 2")
    parser.add_argument("--seq-len", type=int, default=None, help="GPU 1024, CPU 128")
    parser.add_argument("--steps", type=int, default=None, help="timed steps: GPU 20, CPU 3")
    parser.add_argument("--warmup", type=int, default=None, help="untimed: GPU 5, CPU 1")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak")
    parser.add_argument("--no-npgpt", action="store_true", help="CPU: skip npgpt's side")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=None, help="GPU 256, CPU 32")
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    gpu = args.device.type != "cpu"
    defaults = dict(
        amp="bf16" if gpu else "off",
        compile=args.device.type == "cuda",
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


def training_table(args, config, device, param_dtype):
    """Print the training rows; return the MFU in % (None without a known peak)."""
    peak, peak_source = device_peak(device, args.amp, param_dtype, args.peak_tflops)
    seconds, model, memory = time_torch_training(args, config, device, param_dtype)
    tokens = args.batch_size * args.seq_len
    flops = model_flops_per_token(config, args.seq_len) * tokens
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(
        f"torchgpt training, preset {args.preset} ({model.num_params() / 1e6:.1f}M parameters), "
        f"{where}, torch {torch.__version__}"
    )
    loss = "plain" if args.plain_loss or device.type != "cuda" else "chunked, vocabulary 50,304"
    print(
        f"B={args.batch_size} T={args.seq_len} params {args.dtype} amp {args.amp} "
        f"attn {args.attn} compile {'on' if args.compile else 'off'} loss {loss}; "
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
    return model, (100 * flops / seconds / peak if peak else None)


def decode_table(model, args, device):
    """Print the decode rows; return {kv_mode: steady-state tokens/s}."""
    amp_dtype = AMP_DTYPES[args.amp]
    modes = [m for m in KV_MODES if m != "graph" or device.type == "cuda"]
    print(f"\ndecode, batch 1, prompt {args.prompt_len}, greedy, amp {args.amp}, steady state")
    print(f"{'KV cache':<22}{'tokens':>10}{'tokens/s':>12}")
    rates = {}
    for kv_mode in [*modes, None]:
        tokens, rates[kv_mode] = time_decode(model, args, amp_dtype, kv_mode)
        label = kv_mode or "none (recompute)"
        print(f"{label:<22}{len(tokens):>10}{rates[kv_mode]:>12.1f}")
    return rates


def gpu_checks(args, mfu, rates):
    """The issue's targets, measured on this CUDA device."""
    best = rates["graph"]
    checks = [
        Check("decode graph / concat cache", best / rates["concat"], TARGET_DECODE_SPEEDUP, False),
        Check(f"decode tokens/s vs 3x {README_DECODE:g}", best, 3 * README_DECODE, False, ""),
    ]
    if mfu is not None:
        label = f"MFU {args.preset} T={args.seq_len} {args.amp}"
        checks.insert(0, Check(label, mfu, TARGET_MFU, False, "%"))
    return checks


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    config = GPTConfig.preset(args.preset)
    if args.seq_len > config.context_length:
        raise SystemExit(f"--seq-len {args.seq_len} is longer than {args.preset}'s context")
    param_dtype = torch.float64 if args.dtype == "float64" else torch.float32
    if device.type == "cuda":
        enable_tf32()
    model, mfu = training_table(args, config, device, param_dtype)
    rates = decode_table(model, args, device)
    if device.type != "cuda":
        print(
            f"\nno CUDA: skipped. The GPU targets were NOT measured on {device} (MFU >= "
            f"{TARGET_MFU:g}% at GPT-2 124M T=1024 bf16; decode >= {TARGET_DECODE_SPEEDUP:g}x the "
            f"concat cache and >= {3 * README_DECODE:g} tokens/s). Exit status 2."
        )
        return 2
    checks = gpu_checks(args, mfu, rates)
    print_checks(checks)
    if mfu is None:
        print(f"MFU NOT MEASURED: no known peak for {torch.cuda.get_device_name(device)}")
        return 2
    return 0 if all(check.passed for check in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
