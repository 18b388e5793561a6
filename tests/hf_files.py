"""Weights as Hugging Face's `GPT2LMHeadModel.save_pretrained` writes them: every key under the
`transformer.` prefix, optionally the tied `lm_head.weight` and (older versions) the causal-mask
buffers, with `config.json` beside `model.safetensors`. The readers' tests write these."""

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from npgpt.weights.formats import write_config


def hf_tensors(params, *, prefixed=True, lm_head=False, mask_buffers_for=None):
    """`params` under Hugging Face's keys: `prefixed` as GPT2LMHeadModel writes them, bare as
    GPT2Model does (the form of the hub's openai-community/gpt2 files); `mask_buffers_for` (a
    config) adds each layer's `attn.bias` / `attn.masked_bias` buffers."""
    prefix = "transformer." if prefixed else ""
    tensors = {prefix + name: value for name, value in params.items()}
    if lm_head:
        tensors["lm_head.weight"] = params["wte.weight"].copy()
    if mask_buffers_for is not None:
        T = mask_buffers_for.context_length
        for i in range(mask_buffers_for.n_layers):
            tensors[f"{prefix}h.{i}.attn.bias"] = np.tril(np.ones((1, 1, T, T), np.float32))
            tensors[f"{prefix}h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    return tensors


def write_hf_directory(directory, config, params, *, lm_head=False):
    """A directory holding `model.safetensors` (prefixed keys) and `config.json`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(hf_tensors(params, lm_head=lm_head), str(directory / "model.safetensors"))
    write_config(directory / "config.json", config)
    return directory
