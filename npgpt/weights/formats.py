"""The ways GPT-2 weights arrive on disk, and how `npgpt.load` tells them apart.

    format        what is on disk                                   read with
    safetensors   a directory with model.safetensors (npgpt's own   safetensors (memory-mapped)
                  checkpoints, Hugging Face downloads), or a bare
                  .safetensors file
    pytorch       a directory with pytorch_model.bin, or a .bin     torch.load(weights_only=True):
                  file (older Hugging Face uploads)                 tensors only, never pickle code
    openai-tf     a directory with hparams.json + model.ckpt.index  npgpt.weights.openai
                  (OpenAI's own release, what the book downloads)

The config comes from `config.json` beside the weights (Hugging Face's form), or `hparams.json`
for OpenAI's checkpoints. A safetensors or .bin file with no config.json is accepted when its
shapes are exactly those of one of the four GPT-2 sizes. Every loader ends in
`checkpoint.check_params`, which lists every missing, unexpected and mis-shaped tensor.

>>> import tempfile
>>> from npgpt.weights.checkpoint import save
>>> from npgpt.config import GPTConfig
>>> from npgpt.model import init_params
>>> cfg = GPTConfig.preset("tiny")
>>> run = tempfile.mkdtemp()
>>> save(run, cfg, init_params(cfg))
>>> detect_format(run)[0]
'safetensors'
>>> load(run)[0] == cfg
True
"""

from pathlib import Path

import numpy as np

from npgpt.config import PRESETS, ConfigError, GPTConfig
from npgpt.names import param_shapes
from npgpt.weights import openai as openai_checkpoint
from npgpt.weights.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    check_params,
    hf_tensors_to_params,
    read_safetensors,
)

PYTORCH_FILE = "pytorch_model.bin"
RUN_CHECKPOINT_DIR = "checkpoint"  # a training run directory keeps its checkpoint here
GPT2_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
TORCH_INSTALL_HINT = 'pip install -e ".[torch]"'


def checkpoint_path(path):
    """The checkpoint a path names: itself, or for a training run directory (what `train
    --out` makes) the `checkpoint/` directory inside it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    run_checkpoint = path / RUN_CHECKPOINT_DIR
    if path.is_dir() and run_checkpoint.is_dir():  # OpenAI's release has a *file* of that name
        return run_checkpoint
    return path


def detect_format(path):
    """(format, path of the weights) for a checkpoint directory, a weights file, or a run
    directory holding a checkpoint."""
    path = checkpoint_path(path)
    if path.is_dir():
        if (path / openai_checkpoint.HPARAMS_FILE).exists():  # only OpenAI's release has one
            return "openai-tf", path
        if (path / WEIGHTS_FILE).exists():
            return "safetensors", path / WEIGHTS_FILE
        if (path / PYTORCH_FILE).exists():
            return "pytorch", path / PYTORCH_FILE
        raise CheckpointError(
            f"{path}: neither a GPT-2 checkpoint directory ({WEIGHTS_FILE}, {PYTORCH_FILE}, or "
            f"OpenAI's hparams.json + model.ckpt.index) nor a training run directory (a "
            f"{RUN_CHECKPOINT_DIR}/ directory written by `train`)"
        )
    if path.suffix == ".safetensors":
        return "safetensors", path
    if path.suffix == ".bin":
        return "pytorch", path
    if path.name.endswith(".index") and (path.parent / openai_checkpoint.HPARAMS_FILE).exists():
        return "openai-tf", path.parent
    raise CheckpointError(
        f"{path}: unknown weights file; expected a .safetensors or .bin file, or a directory"
    )


def config_for(weights, params):
    """config.json beside the weights; else the GPT-2 size whose shapes these are exactly."""
    config_path = weights.parent / CONFIG_FILE
    if config_path.exists():
        try:
            return GPTConfig.load_json(config_path)
        except ConfigError as err:
            raise CheckpointError(str(err)) from None
    shapes = {name: tuple(value.shape) for name, value in params.items()}
    for name in GPT2_SIZES:
        if param_shapes(PRESETS[name]) == shapes:
            return PRESETS[name]
    raise CheckpointError(
        f"{weights}: no {CONFIG_FILE} beside it, and its shapes are not those of any GPT-2 size; "
        f"put the model's {CONFIG_FILE} in {weights.parent}"
    )


def read_pytorch_bin(path):
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading a .bin checkpoint needs PyTorch ({TORCH_INSTALL_HINT}); or convert "
            f"it to model.safetensors elsewhere"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch reports bad files as RuntimeError, EOFError, pickle errors...
        raise CheckpointError(
            f"{path}: not a readable PyTorch weights file ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no detail'}); it may be "
            f"truncated or corrupt, or hold more than tensors"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a dict of tensors")
    return {
        key: value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }


def load(path, dtype=np.float32, *, tf_reader="auto"):
    """Read GPT-2 weights in any supported format. Returns (config, params), params under
    npgpt's names, cast to `dtype` (None keeps the stored dtype). `tf_reader` picks the reader
    for OpenAI checkpoints: "tensorflow", "numpy", or "auto" (TensorFlow when installed)."""
    kind, weights = detect_format(path)
    if kind == "openai-tf":
        return openai_checkpoint.load_openai(weights, dtype=dtype, reader=tf_reader)
    raw = read_safetensors(weights) if kind == "safetensors" else read_pytorch_bin(weights)
    params = hf_tensors_to_params(raw, source=str(weights))
    config = config_for(weights, params)
    check_params(params, config, source=str(weights))
    names = param_shapes(config)
    if dtype is None:
        return config, {name: params[name] for name in names}
    return config, {name: params[name].astype(dtype, copy=False) for name in names}
