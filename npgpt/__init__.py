"""npgpt: GPT-2 in pure NumPy, every forward and backward pass written by hand.

Reading order: npgpt/README.md. The public API:

>>> import numpy as np
>>> from npgpt import GPTConfig, init_params, forward, backward, get_tokenizer
>>> cfg = GPTConfig.preset("tiny")
>>> tok = get_tokenizer()
>>> idx = np.array([tok.encode("Hello, world")])
>>> logits, loss, cache = forward(init_params(cfg), cfg, idx[:, :-1], targets=idx[:, 1:])
>>> sorted(backward(cache))[:2]
['h.0.attn.c_attn.bias', 'h.0.attn.c_attn.weight']

`load`, `save` (npgpt.weights.checkpoint) and `get_tokenizer` (npgpt.tokenizer) are imported
on first use, so that `import npgpt.layernorm` reads one op and NumPy, not safetensors or
tiktoken.
"""

import importlib

from npgpt.config import PRESETS, GPTConfig
from npgpt.model import backward, forward, init_params

ON_FIRST_USE = {  # name -> the module that defines it
    "get_tokenizer": "npgpt.tokenizer",
    "load": "npgpt.weights.checkpoint",
    "save": "npgpt.weights.checkpoint",
}

__all__ = [
    "GPTConfig",
    "PRESETS",
    "backward",
    "forward",
    "get_tokenizer",
    "init_params",
    "load",
    "save",
]


def __getattr__(name):  # PEP 562: called only for names not already in this module
    if name not in ON_FIRST_USE:
        raise AttributeError(f"module 'npgpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(ON_FIRST_USE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(ON_FIRST_USE))
