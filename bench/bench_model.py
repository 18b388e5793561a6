"""One training step (forward + backward) of npgpt against PyTorch CPU eager, in the same run.

Both run the same model (same weights, same tokens, float32) on the same number of threads, and
their losses are checked to agree. The step's FLOPs are counted from the matmuls, and the
achieved rate is compared with this machine's sgemm rate, measured here on a large NumPy float32
matmul. Targets (issue 3): npgpt's step <= 1.3x torch's, and >= 50% of sgemm. Usage:

    OMP_NUM_THREADS=2 taskset -c 0,1 python bench/bench_model.py [--preset gpt2] [--batch 4]
        [--seq 256] [--steps 3] [--drop-rate 0.0] [--torch-attn sdpa|math]

Threads: OMP_NUM_THREADS (default: every core this process may run on) sets NumPy's BLAS and
torch alike; it has to be in the environment before NumPy starts its thread pool.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import argparse
import statistics
import time

import numpy as np
import torch

from npgpt.config import GPTConfig
from npgpt.model import backward, forward, init_params
from torchgpt.model import GPT

TARGET_RATIO = 1.3  # npgpt step time / torch step time, at most
TARGET_SGEMM_FRACTION = 0.5  # npgpt's achieved GFLOP/s / sgemm GFLOP/s, at least


def step_flops(config, B, T):
    """Matmul FLOPs of one step: forward (2 per multiply-add) and a backward twice as large.
    Per layer: qkv 3C^2, attn proj C^2, MLP 8C^2 multiply-adds per token, and q k^T plus p v
    over all T keys (the causal half is computed and masked, so it is counted)."""
    C, L, V, N = config.emb_dim, config.n_layers, config.vocab_size, B * T
    per_layer = 2 * N * 12 * C * C + 2 * 2 * N * T * C
    head = 2 * N * C * V
    return 3 * (L * per_layer + head)


def timed(fn):
    """(wall seconds, CPU seconds of this process, all its threads together)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_times(fns, rounds):
    """Median (wall, CPU) seconds of each function, run in turns (a, b, c, a, b, c, ...) after
    one warm-up turn, so that a change in the machine's load hits every one alike."""
    for fn in fns.values():
        fn()  # warm-up: first-touch allocations, thread pools
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {
        name: tuple(statistics.median(column) for column in zip(*t, strict=True))
        for name, t in times.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed rounds, after a warm-up")
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--torch-attn", choices=("sdpa", "math"), default="sdpa")
    args = parser.parse_args()

    threads = int(os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(threads)
    config = GPTConfig.preset(args.preset, drop_rate=args.drop_rate)
    B, T = args.batch, args.seq
    params = init_params(config, seed=0, dtype=np.float32)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, (B, T + 1))
    idx, targets = tokens[:, :-1], tokens[:, 1:]

    losses = {}

    def numpy_step():
        _, loss, cache = forward(params, config, idx, targets, train=True, rng=rng)
        backward(cache)
        losses["npgpt"] = float(loss)

    model = GPT.from_params(config, params, attn=args.torch_attn).train()
    idx_t, targets_t = torch.from_numpy(idx), torch.from_numpy(targets)

    def torch_step():
        model.zero_grad(set_to_none=True)
        _, loss = model(idx_t, targets_t)
        loss.backward()
        losses["torch"] = loss.item()

    n = 4096
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))

    def sgemm_matmul():
        a @ b

    times = interleaved_times(
        {"npgpt": numpy_step, "torch": torch_step, "sgemm": sgemm_matmul}, args.steps
    )
    gflop = step_flops(config, B, T) / 1e9
    sgemm = {clock: 2 * n**3 / times["sgemm"][clock] / 1e9 for clock in (0, 1)}  # GFLOP/s
    if args.drop_rate == 0 and abs(losses["npgpt"] - losses["torch"]) > 1e-3 * losses["torch"]:
        raise SystemExit(f"losses differ: npgpt {losses['npgpt']}, torch {losses['torch']}")

    print(
        f"training step (forward + backward), preset {args.preset}, B={B}, T={T}, "
        f"float32, {threads} threads, drop_rate {args.drop_rate}, torch {torch.__version__} "
        f"attn={args.torch_attn}; {gflop:.1f} GFLOP per step"
    )
    print(
        f"{'':<14}{'wall s':>8}{'GFLOP/s':>9}{'% sgemm':>9}"
        f"{'CPU s':>10}{'GFLOP/CPU-s':>13}{'% sgemm':>9}"
    )
    for name in ("npgpt", "torch", "sgemm"):
        label = {"torch": "torch eager", "sgemm": f"sgemm {n}^3"}.get(name, name)
        row = f"{label:<14}"
        for clock, widths in ((0, (8, 9, 9)), (1, (10, 13, 9))):
            seconds = times[name][clock]
            rate = sgemm[clock] if name == "sgemm" else gflop / seconds
            cells = ("" if name == "sgemm" else f"{seconds:.2f}", f"{rate:.1f}")
            cells += (f"{100 * rate / sgemm[clock]:.0f}%",)
            row += "".join(f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=True))
        print(row)
    load = os.getloadavg()[0]
    print(
        f"machine load average {load:.1f} on {os.cpu_count()} CPUs; where it exceeds the "
        f"threads used, wall time includes waiting for a core and CPU time is the fairer measure"
    )
    verdict = {True: "meets", False: "misses"}
    for clock, clock_name in ((0, "wall"), (1, "CPU")):
        ratio = times["npgpt"][clock] / times["torch"][clock]
        fraction = gflop / times["npgpt"][clock] / sgemm[clock]
        print(
            f"{clock_name:>4}: npgpt / torch = {ratio:.2f}x "
            f"({verdict[ratio <= TARGET_RATIO]} <= {TARGET_RATIO}x); "
            f"npgpt at {100 * fraction:.0f}% of sgemm "
            f"({verdict[fraction >= TARGET_SGEMM_FRACTION]} >= {100 * TARGET_SGEMM_FRACTION:.0f}%)"
        )


if __name__ == "__main__":
    main()
