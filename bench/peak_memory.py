"""Peak resident memory of one backend's training step, in this fresh process (bench_model.py
starts one per backend, so neither sees the other's memory or libraries). Prints one JSON line:

    {"backend": ..., "model_bytes": RSS once the model is built, "peak_bytes": peak RSS over a
     warm-up step and `--steps` timed ones, "peak_is_whole_process": bool}

The peak is reset after the model is built (Linux's /proc/self/clear_refs), so start-up
temporaries (npgpt.init_params draws in float64) do not count; the libraries, the weights and
everything the step holds do. Usage:

    python bench/peak_memory.py npgpt|torch [--preset gpt2] [--batch 4] [--seq 256] [--steps 1]
"""

import argparse
import gc
import json

import numpy as np
from harness import peak_resident_bytes, reset_peak_resident, resident_bytes

from npgpt.config import GPTConfig
from npgpt.model import backward, forward, init_params


def npgpt_step(config, idx, targets):
    params = init_params(config, seed=0, dtype=np.float32)

    def run():
        _, _, cache = forward(params, config, idx, targets, train=True)
        backward(cache)

    return run


def torch_step(config, idx, targets):
    import torch

    from torchgpt.model import GPT

    model = GPT(config, attn="sdpa", seed=0).train()
    idx_t, targets_t = torch.from_numpy(idx), torch.from_numpy(targets)

    def run():
        model.zero_grad(set_to_none=True)
        _, loss = model(idx_t, targets_t)
        loss.backward()

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", choices=("npgpt", "torch"))
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    config = GPTConfig.preset(args.preset)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq + 1))
    make_step = npgpt_step if args.backend == "npgpt" else torch_step
    step = make_step(config, tokens[:, :-1], tokens[:, 1:])
    gc.collect()
    model_bytes = resident_bytes("VmRSS")
    whole_process = not reset_peak_resident()
    for _ in range(1 + args.steps):
        step()
    report = dict(
        backend=args.backend,
        model_bytes=model_bytes,
        peak_bytes=peak_resident_bytes(),
        peak_is_whole_process=whole_process,
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
