"""The checkpoint format: a directory with `model.safetensors` and a Hugging Face `config.json`.

    run/ckpt/
      model.safetensors   every parameter under its HF GPT-2 name (`wte.weight`, `h.0.ln_1.weight`,
                          ...), Conv1D layout (weights stored (in, out)); no pickle anywhere
      config.json         HF GPT-2 fields (n_embd, n_head, n_layer, n_positions, vocab_size, ...)

`transformers.GPT2LMHeadModel.from_pretrained(dir)` reads this directory as it is. Writes are
atomic: each file goes to a temporary name, is fsync'ed, then renamed over the old one, so a
process killed mid-write leaves the previous file whole.
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from npgpt.config import ConfigError, GPTConfig
from npgpt.names import param_shapes

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HF_PREFIX = "transformer."
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # HF's causal-mask buffers, not weights


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as a GPT-2 of the stated config."""


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Call `write(tmp_path)`, fsync the result, then rename it to `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path, text):
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save(directory, config, params):
    """Write `model.safetensors` + `config.json` into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    check_params(params, config, source=str(directory))
    tensors = {name: np.ascontiguousarray(params[name]) for name in param_shapes(config)}
    atomic_write(
        directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config.to_hf(), indent=2) + "\n")


def check_params(params, config, source):
    """Fail with every missing, unexpected and mis-shaped tensor listed at once."""
    expected = param_shapes(config)
    missing = [name for name in expected if name not in params]
    unexpected = sorted(set(params) - set(expected))
    wrong = [
        f"{name}: {tuple(params[name].shape)} in file, {shape} expected"
        for name, shape in expected.items()
        if name in params and tuple(params[name].shape) != shape
    ]
    if missing or unexpected or wrong:
        lines = [f"{source} does not match the config {config}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if wrong:
            lines.append(f"  mismatched shapes ({len(wrong)}): " + "; ".join(wrong[:20]))
        raise CheckpointError("\n".join(lines))


def hf_tensors_to_params(tensors, source):
    """HF GPT-2 keys -> npgpt names: drop the `transformer.` prefix and the mask buffers, and
    accept `lm_head.weight` only when it is the tied `wte`."""
    params = {}
    for key, value in tensors.items():
        name = key.removeprefix(HF_PREFIX)
        if name.endswith(IGNORED_SUFFIXES) or name == "lm_head.weight":
            continue
        params[name] = value
    lm_head = tensors.get("lm_head.weight")
    if (
        lm_head is not None
        and "wte.weight" in params
        and not np.array_equal(lm_head, params["wte.weight"])
    ):
        raise CheckpointError(
            f"{source}: lm_head.weight differs from wte.weight; npgpt's head is tied to wte"
        )
    return params


def read_safetensors(path):
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({err}); it may be truncated or corrupt"
        ) from None
    except TypeError as err:  # numpy has no bfloat16, for one
        raise CheckpointError(
            f"{path}: holds a tensor whose dtype NumPy cannot represent ({err}); "
            f"re-save the weights as float32 or float16"
        ) from None
    # once TensorFlow or JAX has imported ml_dtypes, safetensors hands out bfloat16 arrays
    # instead of failing; refuse them the same way, so the outcome never depends on imports
    odd = [f"{name}: {value.dtype}" for name, value in tensors.items() if value.dtype.kind == "V"]
    if odd:
        raise CheckpointError(
            f"{path}: holds a tensor whose dtype NumPy cannot represent ({'; '.join(odd[:5])}); "
            f"re-save the weights as float32 or float16"
        )
    return tensors


def check_floating(params, source):
    not_float = [f"{n}: {v.dtype}" for n, v in params.items() if v.dtype.kind != "f"]
    if not_float:
        raise CheckpointError(
            f"{source}: weights must be floating point, found {'; '.join(not_float[:20])}"
        )


def load(path, dtype=np.float32):
    """Read a checkpoint directory (or a bare `model.safetensors` with `config.json` beside it).
    Returns (config, params) with params cast to `dtype`."""
    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    config_path = weights.parent / CONFIG_FILE
    if not weights.exists():
        raise CheckpointError(
            f"{weights}: no such file; expected a checkpoint directory with {WEIGHTS_FILE}"
        )
    if not config_path.exists():
        raise CheckpointError(
            f"{config_path}: missing; a checkpoint needs its config.json beside the weights"
        )
    try:
        config = GPTConfig.load_json(config_path)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    params = hf_tensors_to_params(read_safetensors(weights), source=str(weights))
    check_params(params, config, source=str(weights))
    check_floating(params, source=str(weights))
    return config, {name: params[name].astype(dtype, copy=False) for name in param_shapes(config)}
