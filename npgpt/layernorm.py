"""LayerNorm: normalise each position's C channels to zero mean and unit variance, then scale
and shift them with learned g (weight) and b (bias).

Forward   mu = mean(x),  var = mean((x - mu)^2),  rstd = 1 / sqrt(var + eps)
          xhat = (x - mu) * rstd,  y = g * xhat + b       x, xhat, y: (B, T, C); g, b: (C,)
Backward  dg = sum over (B, T) of dy * xhat,  db = sum over (B, T) of dy
          With dxhat = dy * g, and xhat depending on x directly and through mu and var:
          d mu / dx_i = 1/C,  d var / dx_i = 2 (x_i - mu) / C, which gives
          dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
The variance is the biased one (divide by C), as GPT-2 and torch.nn.LayerNorm use.

>>> import numpy as np
>>> y, _ = forward(np.array([[1.0, 2.0, 3.0]]), np.ones(3), np.zeros(3))
>>> np.round(y, 4)
array([[-1.2247,  0.    ,  1.2247]])
"""

from typing import NamedTuple

import numpy as np


class LayerNormCache(NamedTuple):
    xhat: np.ndarray  # (B, T, C) the normalised input
    rstd: np.ndarray  # (B, T, 1) 1 / sqrt(var + eps), per position
    g: np.ndarray  # (C,) the gain


def forward(x, g, b, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = xc * rstd
    y = xhat * g + b
    return y, LayerNormCache(xhat, rstd, g)


def backward(dy, cache):
    xhat, rstd, g = cache
    lead = tuple(range(dy.ndim - 1))
    dg = (dy * xhat).sum(axis=lead)
    db = dy.sum(axis=lead)
    dxhat = dy * g
    dx = rstd * (
        dxhat
        - dxhat.mean(axis=-1, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    )
    return dx, dg, db
