"""GPT-2 weights in and out: `save` writes npgpt's checkpoint, `load` reads it and every other
format (these two are `npgpt.save` and `npgpt.load`).

npgpt's checkpoint is a directory with `model.safetensors` and a Hugging Face `config.json`:

    run/ckpt/
      model.safetensors   every parameter under its HF GPT-2 name (`wte.weight`, `h.0.ln_1.weight`,
                          ...), Conv1D layout (weights stored (in, out)); no pickle anywhere
      config.json         HF GPT-2 fields (n_embd, n_head, n_layer, n_positions, vocab_size, ...)

`transformers.GPT2LMHeadModel.from_pretrained(dir)` reads this directory as it is. Both files are
written atomically (`npgpt.weights.atomic`), so a process killed mid-write leaves the previous
file whole.

`load` takes any path `formats.detect_format` recognises: this directory, a Hugging Face
download (safetensors or pytorch_model.bin), a bare weights file, OpenAI's TensorFlow release,
or a training run directory. Whatever the format, what was read passes the same check
(`check.check_params`: names, shapes, floating point) before it is cast to `dtype`.

>>> import tempfile
>>> from npgpt.config import GPTConfig
>>> from npgpt.model import init_params
>>> cfg = GPTConfig.preset("tiny")
>>> run = tempfile.mkdtemp()
>>> save(run, cfg, init_params(cfg))
>>> detect_format(run)[0]
'safetensors'
>>> config, params = load(run)
>>> config == cfg, params["wte.weight"].dtype
(True, dtype('float32'))
"""

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from npgpt.config import PRESETS
from npgpt.names import param_shapes
from npgpt.weights import openai
from npgpt.weights.atomic import atomic_write
from npgpt.weights.check import CheckpointError, check_params, check_size
from npgpt.weights.formats import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    detect_format,
    hf_tensors_to_params,
    read_config,
    read_pytorch_bin,
    read_safetensors,
    write_config,
)

GPT2_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def save(directory, config, params):
    """Write `model.safetensors` + `config.json` into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    check_params(params, config, source=str(directory))
    tensors = {name: np.ascontiguousarray(params[name]) for name in param_shapes(config)}
    atomic_write(
        directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    write_config(directory / CONFIG_FILE, config)


def config_for(weights, params):
    """config.json beside the weights; else the GPT-2 size whose shapes these are exactly."""
    config_path = weights.parent / CONFIG_FILE
    if config_path.exists():
        return read_config(config_path)
    shapes = {name: tuple(value.shape) for name, value in params.items()}
    for name in GPT2_SIZES:
        if param_shapes(PRESETS[name]) == shapes:
            return PRESETS[name]
    raise CheckpointError(
        f"{weights}: no {CONFIG_FILE} beside it, and its shapes are not those of any GPT-2 size; "
        f"put the model's {CONFIG_FILE} in {weights.parent}"
    )


def read_unchecked(path, tf_reader):
    """(config, params under npgpt's names, the file errors name), in the stored dtype; a config
    too large for the weights' file is refused before anything of its size is built."""
    kind, weights = detect_format(path)
    if kind == "openai-tf":
        return openai.read_openai(weights, tf_reader)
    raw = read_safetensors(weights) if kind == "safetensors" else read_pytorch_bin(weights)
    params = hf_tensors_to_params(raw, source=str(weights))
    config = config_for(weights, params)
    check_size(config, weights.parent / CONFIG_FILE, weights.stat().st_size, weights)
    return config, params, weights


def load(path, dtype=np.float32, *, tf_reader="auto"):
    """Read GPT-2 weights in any supported format. Returns (config, params), params under
    npgpt's names in `param_shapes` order, cast to `dtype` (None keeps the stored dtype).
    `tf_reader` picks the reader of OpenAI checkpoints: "tensorflow", "numpy", or "auto"
    (TensorFlow when installed)."""
    config, params, source = read_unchecked(path, tf_reader)
    check_params(params, config, source=str(source))
    names = param_shapes(config)
    if dtype is None:
        return config, {name: params[name] for name in names}
    return config, {name: params[name].astype(dtype, copy=False) for name in names}
