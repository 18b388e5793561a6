"""Dropout ("inverted"): zero each element with probability p, scale the survivors by 1/(1-p)
so that the expected output equals the input and nothing changes at inference.

Forward   y = x * keep / (1 - p)          keep: boolean, True with probability 1 - p
Backward  y is linear in x with the same fixed factor, so dx = dy * keep / (1 - p)
Shapes    x, keep, y, dx all alike: (B, T, C) on the residual stream, (B, H, T, T) on attention
The mask is an input, not hidden state: draw it with `make_mask(rng, ...)` or pass your own, so
another implementation (the PyTorch twin, the parity suite) can be fed the very same mask.
`keep=None` means no dropout (evaluation, or p = 0).

>>> import numpy as np
>>> y, _ = forward(np.ones(4), 0.5, np.array([True, False, True, False]))
>>> y
array([2., 0., 2., 0.])
"""

import numpy as np


def make_mask(rng, shape, p):
    return rng.random(shape) >= p


def forward(x, p, keep):
    if keep is None:
        return x, None
    if keep.shape != x.shape:
        raise ValueError(f"dropout mask has shape {keep.shape}, but its input has {x.shape}")
    scale = np.asarray(1.0 / (1.0 - p), dtype=x.dtype)
    return x * keep * scale, (keep, scale)


def backward(dy, cache):
    if cache is None:
        return dy
    keep, scale = cache
    return dy * keep * scale
