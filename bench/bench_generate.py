"""Decode speed of npgpt at GPT-2 124M shapes: KV cache against full recomputation, one run.

Both runs generate the same greedy tokens from the same random weights (checked); the cached run
should be at least 8x faster (the issue's target). A cached step reads every weight once to
compute one position, so it is bound by memory bandwidth; recomputation is bound by arithmetic.
On a machine shared with other work, waiting for a core and for memory inflates the wall time of
the cached run more, so CPU time (this process's own) is reported beside it. Usage:

    python bench/bench_generate.py [--preset gpt2] [--prompt-len 64] [--new-tokens 128]
"""

import argparse
import os

import numpy as np
from harness import timed

from npgpt.config import GPTConfig
from npgpt.generate import generate
from npgpt.model import init_params
from npgpt.sampling import SamplingSettings

TARGET_SPEEDUP = 8.0


def timed_generate(params, config, prompt, settings, use_kv_cache):
    """The tokens, and the (wall, CPU) seconds it took to generate them."""
    tokens = []
    seconds = timed(
        lambda: tokens.extend(generate(params, config, prompt, settings, use_kv_cache=use_kv_cache))
    )
    return tokens, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    config = GPTConfig.preset(args.preset)
    params = init_params(config, seed=0, dtype=np.float32)
    prompt = np.random.default_rng(0).integers(0, 50000, args.prompt_len).tolist()
    # greedy never stops early on random weights unless it draws end-of-text; count what we got
    settings = SamplingSettings(temperature=0, max_new_tokens=args.new_tokens)

    cached, t_cached = timed_generate(params, config, prompt, settings, use_kv_cache=True)
    full, t_full = timed_generate(params, config, prompt, settings, use_kv_cache=False)
    if cached != full:
        raise SystemExit("KV-cache tokens differ from full recomputation: the cache is wrong")

    n = len(cached)
    print(f"npgpt decode, preset {args.preset}, prompt {args.prompt_len}, {n} new tokens, float32")
    print(f"{'mode':<16}{'wall s':>10}{'tokens/s':>10}{'CPU s':>10}{'tokens/CPU-s':>14}")
    for mode, (wall, cpu) in (("KV cache", t_cached), ("full recompute", t_full)):
        print(f"{mode:<16}{wall:>10.2f}{n / wall:>10.1f}{cpu:>10.2f}{n / cpu:>14.1f}")
    print(f"machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for clock, name in ((0, "wall"), (1, "CPU")):
        speedup = t_full[clock] / t_cached[clock]
        verdict = "meets" if speedup >= TARGET_SPEEDUP else "misses"
        print(f"{name:>4} speed-up {speedup:.1f}x ({verdict} the {TARGET_SPEEDUP:.0f}x target)")


if __name__ == "__main__":
    main()
