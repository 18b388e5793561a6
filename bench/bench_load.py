"""Time to load GPT-2 124M-shaped weights with `npgpt.load`, against reading the same file raw.

Writes random weights of the chosen size once as an npgpt checkpoint (model.safetensors +
config.json) and as an OpenAI TensorFlow checkpoint, then times, best of --repeats runs each:

    safetensors raw   safetensors.numpy.load_file alone: the floor for reading that file
    npgpt.load        the same file through npgpt: names, shape checks, float32 (target <= 2 s)
    openai, numpy     the OpenAI checkpoint through `npgpt.load(tf_reader="numpy")`, CRC-32C
                      checked

Usage: python bench/bench_load.py [--preset gpt2] [--repeats 3]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import npgpt
from npgpt.config import GPTConfig
from npgpt.model import init_params
from npgpt.names import num_params
from npgpt.weights.openai import save_openai

TARGET_SECONDS = 2.0


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = GPTConfig.preset(args.preset)
    params = init_params(config, seed=0, dtype=np.float32)
    with tempfile.TemporaryDirectory() as root:
        npgpt.save(Path(root) / "npgpt", config, params)
        save_openai(Path(root) / "openai", config, params)
        weights = Path(root) / "npgpt" / "model.safetensors"
        loaded = npgpt.load(Path(root) / "npgpt")[1]
        if any(loaded[name].tobytes() != value.tobytes() for name, value in params.items()):
            raise SystemExit("npgpt.load did not give back the weights written")
        timings = {
            "safetensors raw": best_of(args.repeats, lambda: load_file(weights)),
            "npgpt.load": best_of(args.repeats, lambda: npgpt.load(Path(root) / "npgpt")),
            "openai, numpy": best_of(
                args.repeats, lambda: npgpt.load(Path(root) / "openai", tf_reader="numpy")
            ),
        }
        size = weights.stat().st_size
    print(
        f"loading {args.preset} ({num_params(config):,} parameters, float32, {size / 1e6:.0f} MB), "
        f"best of {args.repeats}"
    )
    print(f"{'reader':<18}{'seconds':>9}{'MB/s':>9}{'vs raw':>8}")
    for name, seconds in timings.items():
        ratio = seconds / timings["safetensors raw"]
        print(f"{name:<18}{seconds:>9.2f}{size / 1e6 / seconds:>9.0f}{ratio:>7.2f}x")
    seconds = timings["npgpt.load"]
    verdict = "meets" if seconds <= TARGET_SECONDS else "misses"
    print(f"npgpt.load {seconds:.2f} s ({verdict} the {TARGET_SECONDS:.0f} s target)")


if __name__ == "__main__":
    main()
