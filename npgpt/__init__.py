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
"""

from npgpt.config import PRESETS, GPTConfig
from npgpt.model import backward, forward, init_params
from npgpt.tokenizer import get_tokenizer
from npgpt.weights.checkpoint import save
from npgpt.weights.formats import load

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
