"""OpenAI's GPT-2 release: a TensorFlow checkpoint directory, read into npgpt's parameter names.

    models/124M/
      hparams.json                     {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768,
                                        "n_head": 12, "n_layer": 12}
      checkpoint                       names the prefix: model_checkpoint_path: "model.ckpt"
      model.ckpt.index, model.ckpt.data-00000-of-00001   the tensors (see tf_bundle.py)
      model.ckpt.meta                  the TF1 graph; not needed to read the weights
      encoder.json, vocab.bpe          the BPE tokenizer (npgpt uses tiktoken's identical copy)

OpenAI's variable names map one to one onto Hugging Face's (npgpt's) names. Their linear
weights are 1x1 convolutions, shaped (1, in, out); dropping the leading 1 gives the same Conv1D
(in, out) layout npgpt uses, so no transpose is needed:

    model/wte, model/wpe                       wte.weight (V, C), wpe.weight (T, C)
    model/h{i}/ln_1/g, .../ln_1/b              h.{i}.ln_1.weight, h.{i}.ln_1.bias
    model/h{i}/attn/c_attn/w (1, C, 3C), /b    h.{i}.attn.c_attn.weight (C, 3C), .bias
    model/h{i}/attn/c_proj, ln_2, mlp/c_fc, mlp/c_proj   likewise
    model/ln_f/g, model/ln_f/b                 ln_f.weight, ln_f.bias

Two readers give bit-identical arrays: TensorFlow's own (`tf.train.load_checkpoint`), used when
TensorFlow is installed, and npgpt's pure-NumPy `tf_bundle.read_bundle`, used otherwise.

>>> openai_name("h.3.attn.c_attn.weight"), openai_name("wte.weight")
('model/h3/attn/c_attn/w', 'model/wte')
"""

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np

from npgpt.config import ConfigError, GPTConfig
from npgpt.names import param_shapes
from npgpt.weights import tf_bundle
from npgpt.weights.atomic import atomic_write_text
from npgpt.weights.check import CheckpointError, check_params, check_size, read_json_object

HPARAMS_FILE = "hparams.json"
CHECKPOINT_FILE = "checkpoint"
DEFAULT_PREFIX = "model.ckpt"
READERS = ("auto", "tensorflow", "numpy")
TF_INSTALL_HINT = 'pip install -e ".[tf]"'
SUFFIXES = {"weight": "w", "bias": "b"}
LAYERNORM_SUFFIXES = {"weight": "g", "bias": "b"}
CONV_WEIGHTS = ("c_attn.weight", "c_proj.weight", "c_fc.weight")  # stored (1, in, out)


def openai_name(name):
    """npgpt / Hugging Face name -> OpenAI TensorFlow variable name."""
    if name in ("wte.weight", "wpe.weight"):
        return "model/" + name.split(".")[0]
    *path, leaf = name.split(".")
    suffixes = LAYERNORM_SUFFIXES if path[-1].startswith("ln_") else SUFFIXES
    if path[0] == "h":
        path = [f"h{path[1]}"] + path[2:]
    return "model/" + "/".join(path) + "/" + suffixes[leaf]


def openai_shape(name, shape):
    return (1, *shape) if name.endswith(CONV_WEIGHTS) else shape


HPARAMS_KEYS = {  # hparams.json's names for what Hugging Face's config.json calls
    "n_vocab": "vocab_size",
    "n_ctx": "n_positions",
    "n_embd": "n_embd",
    "n_head": "n_head",
    "n_layer": "n_layer",
}


def config_from_hparams(path):
    hparams = read_json_object(path, missing="missing; an OpenAI checkpoint directory has one")
    absent = [key for key in HPARAMS_KEYS if key not in hparams]
    if absent:
        raise CheckpointError(f"{path}: missing the key {absent[0]!r}")
    try:
        return GPTConfig.from_hf({HPARAMS_KEYS[key]: hparams[key] for key in HPARAMS_KEYS})
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def hparams_from_config(config):
    hf = config.to_hf()
    return {key: hf[hf_key] for key, hf_key in HPARAMS_KEYS.items()}


def checkpoint_prefix(directory):
    """The prefix the `checkpoint` file names (model.ckpt in every OpenAI release)."""
    directory = Path(directory)
    state = directory / CHECKPOINT_FILE
    if state.exists():
        try:
            text = state.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{state}: cannot be read as text ({err})") from None
        match = re.search(r'^model_checkpoint_path:\s*"(.+)"', text, re.MULTILINE)
        if match:
            return directory / match.group(1)
    return directory / DEFAULT_PREFIX


def choose_reader(reader):
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    if reader == "auto":
        return "tensorflow" if importlib.util.find_spec("tensorflow") else "numpy"
    return reader


def import_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up chatter off stderr
    try:
        import tensorflow as tf
    except ImportError:
        raise CheckpointError(
            f"reading with TensorFlow needs it installed: {TF_INSTALL_HINT} "
            f'(or use npgpt\'s own reader: reader="numpy")'
        ) from None
    return tf


def read_with_tensorflow(prefix):
    tf = import_tensorflow()
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    # TensorFlow's checkpoint reader turns C++ errors into OpError, ValueError (bad argument)
    # or IndexError ("Read less bytes than requested": a truncated shard)
    except (tf.errors.OpError, ValueError, IndexError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{prefix}: TensorFlow cannot read this checkpoint: {message}; the files may be "
            f"truncated or corrupt (download them again)"
        ) from None


def read_tensors(prefix, reader="auto"):
    """{TF variable name: array} with the chosen reader."""
    if choose_reader(reader) == "tensorflow":
        return read_with_tensorflow(prefix)
    return tf_bundle.read_bundle(prefix)


def openai_tensors_to_params(tensors, config):
    """Rename OpenAI's variables to npgpt's and drop the conv weights' leading 1; anything not
    recognised keeps its TF name, so `check_params` reports it as unexpected."""
    to_npgpt = {openai_name(name): name for name in param_shapes(config)}
    params = {}
    for tf_name, value in tensors.items():
        name = to_npgpt.get(tf_name, tf_name)
        if name.endswith(CONV_WEIGHTS) and value.ndim == 3 and value.shape[0] == 1:
            value = value[0]
        params[name] = value
    return params


def read_openai(directory, reader="auto"):
    """(config, params under npgpt's names, the checkpoint prefix) of an OpenAI GPT-2 checkpoint
    directory, in the stored dtype. Unchecked: `npgpt.load` checks every format the same way."""
    directory = Path(directory)
    config = config_from_hparams(directory / HPARAMS_FILE)
    prefix = checkpoint_prefix(directory)
    if not Path(f"{prefix}.index").exists():
        raise CheckpointError(f"{prefix}.index: missing; the checkpoint's index file is needed")
    tensors = read_tensors(prefix, reader)
    check_size(config, directory / HPARAMS_FILE, tf_bundle.data_bytes(prefix), f"{prefix}.data-*")
    return config, openai_tensors_to_params(tensors, config), prefix


def save_openai(directory, config, params, writer="numpy"):
    """Write params as an OpenAI-format checkpoint directory (hparams.json, checkpoint,
    model.ckpt.index, model.ckpt.data-00000-of-00001), with OpenAI's names and (1, in, out)
    conv shapes, in the params' own dtype. `writer="tensorflow"` uses TF's SaveV2 op; "numpy"
    writes the same format with `tf_bundle.write_bundle`. (No model.ckpt.meta: readers of the
    weights never need the TF1 graph.)"""
    if not config.qkv_bias or config.ln_eps != GPTConfig().ln_eps:
        raise CheckpointError(
            f"hparams.json cannot record qkv_bias={config.qkv_bias}, ln_eps={config.ln_eps}; "
            f"OpenAI's format only describes GPT-2 itself (qkv bias, ln_eps 1e-5)"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    check_params(params, config, source="params")
    tensors = {
        openai_name(name): np.ascontiguousarray(params[name]).reshape(openai_shape(name, shape))
        for name, shape in param_shapes(config).items()
    }
    prefix = directory / DEFAULT_PREFIX
    if writer == "tensorflow":
        tf = import_tensorflow()
        names = list(tensors)
        tf.raw_ops.SaveV2(
            prefix=str(prefix),
            tensor_names=names,
            shape_and_slices=[""] * len(names),
            tensors=[tensors[name] for name in names],
        )
    elif writer == "numpy":
        tf_bundle.write_bundle(prefix, tensors)
    else:
        raise ValueError(f"writer must be 'tensorflow' or 'numpy', got {writer!r}")
    atomic_write_text(directory / HPARAMS_FILE, json.dumps(hparams_from_config(config)) + "\n")
    atomic_write_text(
        directory / CHECKPOINT_FILE,
        f'model_checkpoint_path: "{DEFAULT_PREFIX}"\n'
        f'all_model_checkpoint_paths: "{DEFAULT_PREFIX}"\n',
    )
