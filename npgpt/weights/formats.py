"""The ways GPT-2 weights arrive on disk: which format a path holds, and the readers of the
Hugging Face files (which npgpt's own checkpoints are).

    format        what is on disk                                   read with
    safetensors   a directory with model.safetensors (npgpt's own   safetensors (memory-mapped)
                  checkpoints, Hugging Face downloads), or a bare
                  .safetensors file
    pytorch       a directory with pytorch_model.bin, or a .bin     torch.load(weights_only=True):
                  file (older Hugging Face uploads)                 tensors only, never pickle code
    openai-tf     a directory with hparams.json + model.ckpt.index  npgpt.weights.openai
                  (OpenAI's own release, what the book downloads)

A training run directory (what `train --out` makes) stands for the `checkpoint/` inside it.

The config of the first two is Hugging Face's `config.json` beside the weights: `write_config`
is the one writer of that file, `read_config` its reader (which also takes npgpt's own dict
form, `GPTConfig.to_dict`). Hugging Face's tensor names are npgpt's, give or take a
`transformer.` prefix, two causal-mask buffers and the tied `lm_head.weight`.

>>> import tempfile
>>> from pathlib import Path
>>> from npgpt.config import GPTConfig
>>> path = Path(tempfile.mkdtemp()) / CONFIG_FILE
>>> write_config(path, GPTConfig.preset("tiny"))
>>> read_config(path) == GPTConfig.preset("tiny")
True
>>> detect_format(path.parent)
Traceback (most recent call last):
...
npgpt.weights.check.CheckpointError: ...: neither a GPT-2 checkpoint directory ...
"""

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from npgpt.config import ConfigError, GPTConfig
from npgpt.weights.atomic import atomic_write_text
from npgpt.weights.check import CheckpointError, read_json_object
from npgpt.weights.openai import HPARAMS_FILE

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PYTORCH_FILE = "pytorch_model.bin"
RUN_CHECKPOINT_DIR = "checkpoint"  # a training run directory keeps its checkpoint here
HF_PREFIX = "transformer."
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # HF's causal-mask buffers, not weights
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
        if (path / HPARAMS_FILE).exists():  # only OpenAI's release has one
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
    if path.name.endswith(".index") and (path.parent / HPARAMS_FILE).exists():
        return "openai-tf", path.parent
    raise CheckpointError(
        f"{path}: unknown weights file; expected a .safetensors or .bin file, or a directory"
    )


def write_config(path, config):
    """`config.json` in Hugging Face's form, which `transformers` reads as it is."""
    atomic_write_text(path, json.dumps(config.to_hf(), indent=2) + "\n")


def read_config(path):
    """A `config.json` in Hugging Face's form (what `write_config` writes) or npgpt's own."""
    fields = read_json_object(path, missing="no such config file")
    try:
        return GPTConfig.from_hf(fields) if "n_embd" in fields else GPTConfig.from_dict(fields)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{path}: {err}") from None


def read_safetensors(path):
    """{name: array} of a safetensors file; a damaged file or a dtype NumPy lacks is refused."""
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
            f"{path}: holds a tensor whose dtype NumPy cannot represent ({'; '.join(odd)}); "
            f"re-save the weights as float32 or float16"
        )
    return tensors


def read_pytorch_bin(path):
    """{name: array} of a `torch.save`d dict of tensors, unpickled with weights_only=True."""
    try:
        import torch  # only for .bin files: PyTorch is an optional dependency
    except ImportError:
        raise CheckpointError(
            f"{path}: reading a .bin checkpoint needs PyTorch ({TORCH_INSTALL_HINT}); or convert "
            f"it to model.safetensors elsewhere"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch reports bad files as RuntimeError, EOFError, pickle errors...
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        raise CheckpointError(
            f"{path}: not a readable PyTorch weights file ({type(err).__name__}: {detail}); it "
            f"may be truncated or corrupt, or hold more than tensors"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a dict of tensors")
    return {
        key: value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }


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
