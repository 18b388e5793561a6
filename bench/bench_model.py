"""npgpt against PyTorch on this CPU, every target of issue 13 in one table, measured in one run.

Rows (select with --rows; all by default):

  step    training step (forward + backward), GPT-2 124M, B=4, T=256, float32: npgpt against
          torch eager (torchgpt, sdpa) in wall and CPU time, and npgpt's GFLOP/s as a share of
          this machine's sgemm (NumPy's BLAS, 4096^3, timed in the same rounds)
  tiny    the same for the `tiny` preset (B=4, T=64), where Python's overhead dominates
  large   the same for GPT-2 124M at B=8, T=512
  memory  peak resident memory of the step, each backend in a fresh process (peak_memory.py)
  load    the step with a competing process spinning on one of the cores
  peer    torchgpt's step against a nanoGPT-style model (peer_nanogpt.py), same shapes, sdpa
  decode  steady-state tokens/s of greedy generation with the KV cache, npgpt.generate against
          transformers' GPT2LMHeadModel.generate on the same weights

Timings are the minimum over rounds run in turns (npgpt, torch, ...), after a warm-up: other
work on the machine then hits both alike, and the minimum is the least disturbed figure; the
load row takes the median, as a loaded machine's slowdowns come and go. Usage:

    python bench/bench_model.py [--rows step,peer] [--threads 2] [--rounds 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from harness import (
    BusyCore,
    Check,
    default_threads,
    ensure_threads,
    interleaved_times,
    machine_lines,
    print_checks,
)
from peer_nanogpt import from_params as peer_from_params

import npgpt
from npgpt.config import GPTConfig
from npgpt.generate import generate
from npgpt.sampling import SamplingSettings
from npgpt.tokenizer import EOT_ID
from torchgpt.model import GPT

TARGET_STEP_RATIO = 1.1  # npgpt step / torch step, wall and CPU, at most
TARGET_SGEMM_PERCENT = 60.0  # npgpt's GFLOP/s as % of sgemm's, at least
TARGET_MEMORY_RATIO = 1.0  # npgpt's peak RSS / torch's, at most
TARGET_LOAD_RATIO = 1.5  # npgpt step / torch step with one core busy, at most
TARGET_PEER_RATIO = 1.0  # torchgpt step / nanoGPT-style step, at most
TARGET_DECODE_RATIO = 1.0  # npgpt tokens/s / transformers tokens/s, at least

SHAPES = {"step": ("gpt2", 4, 256), "tiny": ("tiny", 4, 64), "large": ("gpt2", 8, 512)}
ROWS = ("step", "tiny", "large", "memory", "load", "peer", "decode")
SGEMM_SIZE = 4096


class Setup:
    """One model's shapes, npgpt parameters and a batch of random tokens."""

    def __init__(self, preset, batch, seq):
        self.name = f"{preset} B={batch} T={seq}"
        self.config = GPTConfig.preset(preset)
        self.params = npgpt.init_params(self.config, seed=0, dtype=np.float32)
        tokens = np.random.default_rng(0).integers(0, self.config.vocab_size, (batch, seq + 1))
        self.idx, self.targets = tokens[:, :-1], tokens[:, 1:]
        self.losses = {}

    def flops(self):
        """Matmul FLOPs of one step: forward (2 per multiply-add) and a backward twice as large.
        Per layer: qkv 3C^2, attn proj C^2, MLP 8C^2 multiply-adds per token, and q k^T plus
        p v over all T keys (the causal half is computed and masked, so it is counted)."""
        (B, T), config = self.idx.shape, self.config
        C, L, V, N = config.emb_dim, config.n_layers, config.vocab_size, B * T
        per_layer = 2 * N * 12 * C * C + 2 * 2 * N * T * C
        return 3 * (L * per_layer + 2 * N * C * V)

    def npgpt_step(self):
        def step():
            _, loss, cache = npgpt.forward(self.params, self.config, self.idx, self.targets)
            npgpt.backward(cache)
            self.losses["npgpt"] = float(loss)

        return step

    def torch_step(self, model, key):
        idx, targets = torch.from_numpy(self.idx), torch.from_numpy(self.targets)

        def step():
            model.zero_grad(set_to_none=True)
            _, loss = model(idx, targets)
            loss.backward()
            self.losses[key] = loss.item()

        return step

    def torchgpt(self):
        return GPT.from_params(self.config, self.params, attn="sdpa").train()

    def check_losses(self, a, b):
        if abs(self.losses[a] - self.losses[b]) > 1e-4 * abs(self.losses[b]):
            raise SystemExit(
                f"{self.name}: the losses differ, {a} {self.losses[a]}, {b} {self.losses[b]}"
            )


def sgemm():
    a, b = (np.random.default_rng(i).standard_normal((SGEMM_SIZE,) * 2, np.float32) for i in (1, 2))
    return lambda: a @ b


def ratio_checks(label, times, a, b, target):
    """`a`'s time over `b`'s, wall and CPU, each against `target` (at most)."""
    return [
        Check(f"{label}: {a} / {b}, {clock}", times[a][i] / times[b][i], target, at_most=True)
        for i, clock in enumerate(("wall", "CPU"))
    ]


def bench_step(row, args):
    setup = Setup(*SHAPES[row])
    fns = {"npgpt": setup.npgpt_step(), "torch": setup.torch_step(setup.torchgpt(), "torch")}
    fns["sgemm"] = sgemm()
    times = interleaved_times(fns, args.rounds)
    setup.check_losses("npgpt", "torch")
    gflop = setup.flops() / 1e9
    sgemm_rate = 2 * SGEMM_SIZE**3 / 1e9 / times["sgemm"][0]
    print(
        f"\n[{row}] training step, {setup.name}, float32, {gflop:.1f} GFLOP, best of", args.rounds
    )
    print(f"{'':<16}{'wall s':>9}{'CPU s':>9}{'GFLOP/s':>9}{'% sgemm':>9}")
    for name in ("npgpt", "torch"):
        rate = gflop / times[name][0]
        print(
            f"{name:<16}{times[name][0]:>9.3f}{times[name][1]:>9.3f}{rate:>9.1f}"
            f"{100 * rate / sgemm_rate:>8.0f}%"
        )
    print(f"{f'sgemm {SGEMM_SIZE}^3':<16}{'':>18}{sgemm_rate:>9.1f}{100:>8.0f}%")
    percent = 100 * gflop / times["npgpt"][0] / sgemm_rate
    label = f"step {setup.name}"
    return ratio_checks(label, times, "npgpt", "torch", TARGET_STEP_RATIO) + [
        Check(f"{label}: npgpt % of sgemm, wall", percent, TARGET_SGEMM_PERCENT, False, "%")
    ]


def peak_memory(backend, preset, batch, seq):
    script = Path(__file__).with_name("peak_memory.py")
    command = [sys.executable, str(script), backend, "--preset", preset]
    command += ["--batch", str(batch), "--seq", str(seq)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{script.name} {backend} failed:\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


def bench_memory(args):
    preset, batch, seq = SHAPES["step"]
    reports = {backend: peak_memory(backend, preset, batch, seq) for backend in ("npgpt", "torch")}
    whole = any(report["peak_is_whole_process"] for report in reports.values())
    print(f"\n[memory] peak resident set of the step, {preset} B={batch} T={seq}, fresh processes")
    if whole:
        print("(the peak could not be reset: it includes start-up, not only the step)")
    print(f"{'':<16}{'model GB':>10}{'peak GB':>10}{'step GB':>10}")
    for backend, report in reports.items():
        model, peak = report["model_bytes"] / 1e9, report["peak_bytes"] / 1e9
        print(f"{backend:<16}{model:>10.2f}{peak:>10.2f}{peak - model:>10.2f}")
    ratio = reports["npgpt"]["peak_bytes"] / reports["torch"]["peak_bytes"]
    return [Check("memory: npgpt / torch peak RSS", ratio, TARGET_MEMORY_RATIO, at_most=True)]


def bench_load(args):
    setup = Setup(*SHAPES["step"])
    fns = {"npgpt": setup.npgpt_step(), "torch": setup.torch_step(setup.torchgpt(), "torch")}
    core = max(os.sched_getaffinity(0))
    with BusyCore(core, seconds=3600):
        times = interleaved_times(fns, args.load_rounds, statistic=statistics.median)
    print(
        f"\n[load] training step, {setup.name}, with a process spinning on core {core}, "
        f"median of {args.load_rounds} (the slowdown comes and goes: the best would hide it)"
    )
    print(f"{'':<16}{'wall s':>9}{'CPU s':>9}")
    for name in fns:
        print(f"{name:<16}{times[name][0]:>9.3f}{times[name][1]:>9.3f}")
    return ratio_checks(f"loaded step {setup.name}", times, "npgpt", "torch", TARGET_LOAD_RATIO)


def bench_peer(args):
    setup = Setup(*SHAPES["step"])
    peer = peer_from_params(setup.config, setup.params).train()
    fns = {
        "torchgpt": setup.torch_step(setup.torchgpt(), "torchgpt"),
        "nanoGPT-style": setup.torch_step(peer, "peer"),
    }
    times = interleaved_times(fns, args.peer_rounds)
    setup.check_losses("torchgpt", "peer")
    print(f"\n[peer] torch training step, {setup.name}, sdpa, best of {args.peer_rounds}")
    print(f"{'':<16}{'wall s':>9}{'CPU s':>9}")
    for name in fns:
        print(f"{name:<16}{times[name][0]:>9.3f}{times[name][1]:>9.3f}")
    return ratio_checks(f"peer {setup.name}", times, "torchgpt", "nanoGPT-style", TARGET_PEER_RATIO)


class ArrivalTimes:
    """A transformers streamer noting when each generated token arrives (its first `put` is the
    prompt, which it skips)."""

    def __init__(self):
        self.tokens, self.times, self.prompt_seen = [], [], False

    def put(self, value):
        if self.prompt_seen:
            self.tokens += value.reshape(-1).tolist()
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self):
        pass


def npgpt_decode(params, config, prompt, new_tokens):
    settings = SamplingSettings(temperature=0, max_new_tokens=new_tokens)
    arrivals = ArrivalTimes()
    arrivals.prompt_seen = True
    for token in generate(params, config, prompt, settings):
        arrivals.put(np.array([token]))
    return arrivals


def transformers_decode(model, prompt, new_tokens):
    ids = torch.tensor([prompt])
    arrivals = ArrivalTimes()
    with torch.no_grad():
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=EOT_ID,
            streamer=arrivals,
        )
    return arrivals


def steady_rate(arrivals):
    """Tokens per second after the first token (which pays for the prompt)."""
    return (len(arrivals.times) - 1) / (arrivals.times[-1] - arrivals.times[0])


def first_difference(a, b):
    """Index of the first token where two sequences differ, None where they are equal."""
    if a == b:
        return None
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def bench_decode(args):
    import transformers

    transformers.utils.logging.disable_progress_bar()

    config = GPTConfig.preset("gpt2")
    prompt = np.random.default_rng(1).integers(0, config.vocab_size, args.prompt_len).tolist()
    with tempfile.TemporaryDirectory() as directory:
        npgpt.save(directory, config, npgpt.init_params(config, seed=0, dtype=np.float32))
        config, params = npgpt.load(directory)
        hf = transformers.GPT2LMHeadModel.from_pretrained(
            directory, local_files_only=True, dtype=torch.float32
        ).eval()
    runs = {
        "npgpt": lambda n: npgpt_decode(params, config, prompt, n),
        "transformers": lambda n: transformers_decode(hf, prompt, n),
    }
    for run in runs.values():
        run(4)  # warm-up
    rates, tokens = {name: [] for name in runs}, {}
    for _ in range(args.rounds):
        for name, run in runs.items():
            arrivals = run(args.new_tokens)
            rates[name].append(steady_rate(arrivals))
            tokens[name] = arrivals.tokens
    agree = first_difference(tokens["npgpt"], tokens["transformers"])
    print(
        f"\n[decode] gpt2 random weights, prompt {args.prompt_len}, {args.new_tokens} greedy "
        f"tokens, KV cache, best of {args.rounds}; tokens "
        + ("agree" if agree is None else f"first differ at {agree}")
    )
    print(f"{'':<16}{'tokens':>9}{'tokens/s':>10}")
    for name in runs:
        print(f"{name:<16}{len(tokens[name]):>9}{max(rates[name]):>10.1f}")
    ratio = max(rates["npgpt"]) / max(rates["transformers"])
    return [Check("decode: npgpt / transformers tokens/s", ratio, TARGET_DECODE_RATIO, False)]


SECTIONS = {
    "step": lambda args: bench_step("step", args),
    "tiny": lambda args: bench_step("tiny", args),
    "large": lambda args: bench_step("large", args),
    "memory": bench_memory,
    "load": bench_load,
    "peer": bench_peer,
    "decode": bench_decode,
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated: {','.join(ROWS)}")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of step rows, decode")
    parser.add_argument("--peer-rounds", type=int, default=5)
    parser.add_argument("--load-rounds", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    args.rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = sorted(set(args.rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    return args


def main():
    args = parse_args()
    ensure_threads(args.threads)
    torch.set_num_threads(args.threads)
    print("\n".join(machine_lines(args.threads)))
    checks = []
    for row in args.rows:
        checks += SECTIONS[row](args)
    print_checks(checks)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
