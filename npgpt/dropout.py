"""Dropout ("inverted"): zero each element with probability drop_rate, and scale the survivors
by 1 / (1 - drop_rate) so that the expected output equals the input and nothing changes at
inference.

Forward   y = x * keep / (1 - drop_rate)      keep: boolean, True with probability 1 - drop_rate
Backward  y is linear in x with the same fixed factor, so dx = dy * keep / (1 - drop_rate)
Shapes    x, keep, y, dx all alike: (B, T, C) on the residual stream, (B, H, T, T) on attention
The mask is an input, not hidden state: draw it with `make_mask(rng, ...)` or pass your own, so
another implementation (the PyTorch twin, the parity suite) can be fed the very same mask.
`keep=None` means no dropout (evaluation, or drop_rate = 0); the cache is then None too.

>>> import numpy as np
>>> y, _ = forward(np.ones(4), 0.5, np.array([True, False, True, False]))
>>> y
array([2., 0., 2., 0.])
"""

from typing import NamedTuple

import numpy as np


class DropoutCache(NamedTuple):
    keep: np.ndarray  # like x, boolean: which elements survive
    scale: np.ndarray  # () 1 / (1 - drop_rate), in x's dtype


def make_mask(rng, shape, drop_rate):
    return rng.random(shape) >= drop_rate


def forward(x, drop_rate, keep):
    if keep is None:
        return x, None
    if keep.shape != x.shape:
        raise ValueError(f"dropout mask has shape {keep.shape}, but its input has {x.shape}")
    scale = np.asarray(1.0 / (1.0 - drop_rate), dtype=x.dtype)
    return x * keep * scale, DropoutCache(keep, scale)


def backward(dy, cache):
    if cache is None:
        return dy
    keep, scale = cache
    return dy * keep * scale
