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

import io
import json
import warnings
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from npgpt.config import ConfigError, GPTConfig
from npgpt.weights.atomic import atomic_write_text
from npgpt.weights.check import CheckpointError, listing, read_json_object
from npgpt.weights.openai import HPARAMS_FILE

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PYTORCH_FILE = "pytorch_model.bin"
RUN_CHECKPOINT_DIR = "checkpoint"  # a training run directory keeps its checkpoint here
HF_PREFIX = "transformer."
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # HF's causal-mask buffers, not weights
TORCH_INSTALL_HINT = 'pip install -e ".[torch]"'
ZIP_MAGIC = b"PK\x03\x04"  # how torch tells its zip format from a bare pickle
# safetensors' dtypes that NumPy has; for the others safetensors fails in ways that depend on
# what else is imported (ml_dtypes), so they are refused by name, said as NumPy would say them
NUMPY_DTYPES = set("BOOL U8 I8 U16 I16 U32 I32 U64 I64 F16 F32 F64 C64".split())
NUMPY_LACKS = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


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
        with safe_open(path, framework="np") as f:
            dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
            odd = [
                f"{name}: {NUMPY_LACKS.get(dtype, dtype)}"
                for name, dtype in dtypes.items()
                if dtype not in NUMPY_DTYPES
            ]
            if odd:
                raise CheckpointError(
                    f"{path}: holds a tensor whose dtype NumPy cannot represent "
                    f"({listing(odd, '; ')}); re-save the weights as float32 or float16"
                )
            return {name: f.get_tensor(name) for name in dtypes}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({err}); it may be truncated or corrupt"
        ) from None


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
        state = unpickled(path, torch)
    except Exception as err:  # torch reports bad files as RuntimeError, EOFError, pickle errors...
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        raise CheckpointError(
            f"{path}: not a readable PyTorch weights file ({type(err).__name__}: {detail}); it "
            f"may be truncated or corrupt, or hold more than tensors"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a dict of tensors")
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    not_names = [repr(key) for key in tensors if not isinstance(key, str)]
    if not_names:
        raise CheckpointError(
            f"{path}: tensors under keys that are not names: {listing(not_names, ', ')}"
        )
    # a pickle can make a tensor of 2**40 elements out of one stored number (stride 0), or
    # show one storage under many names; whatever converting them would allocate is refused.
    # Each tensor's numbers are in the file, only a tied lm_head.weight repeats wte: at most 2x.
    claimed = sum(value.numel() * value.element_size() for value in tensors.values())
    if claimed > 2 * Path(path).stat().st_size:
        raise CheckpointError(
            f"{path}: its tensors claim {claimed:,} bytes, more than twice the file's "
            f"{Path(path).stat().st_size:,}; a weights file stores each tensor's numbers once"
        )
    return {key: tensor_to_numpy(value, key, path) for key, value in tensors.items()}


def unpickled(path, torch):
    """torch.load of `path`, weights only. A zip archive (what torch has saved since 1.6) is
    opened in place: torch reads its pickle into memory. An older, bare pickle would be read
    straight from the file, where a damaged string length (4 bytes) makes `read(n)` allocate
    up to 4 GiB whatever the file's size; from a buffer of the file's bytes it gets what is
    there."""
    with open(path, "rb") as f:
        zipped = f.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    source = path if zipped else io.BytesIO(Path(path).read_bytes())
    with warnings.catch_warnings():
        # torch warns of what looks odd in a pickle (an unusual protocol, say): a file it
        # cannot read is refused in one line, and one it can read needs no warning
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(source, map_location="cpu", weights_only=True)


def tensor_to_numpy(tensor, key, path):
    """A torch tensor's numbers as a NumPy array; bfloat16, which NumPy lacks, widened exactly."""
    import torch

    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    try:  # force: detached (a saved nn.Parameter requires grad), conjugate and negative resolved
        return tensor.numpy(force=True)
    except (TypeError, RuntimeError, NotImplementedError) as err:  # float8, sparse, meta, ...
        raise CheckpointError(
            f"{path}: tensor {key!r} cannot be read into NumPy ({err}); re-save the weights as "
            f"dense float32 or float16 tensors"
        ) from None


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
