"""LayerNorm: normalise each position's C channels to zero mean and unit variance, then scale
and shift them with learned g (weight) and b (bias).

Forward   mu = mean(x),  var = mean((x - mu)^2),  rstd = 1 / sqrt(var + eps)
          xhat = (x - mu) * rstd,  y = g * xhat + b       x, xhat, y: (B, T, C); g, b: (C,)
Backward  dg = sum over (B, T) of dy * xhat,  db = sum over (B, T) of dy
          With dxhat = dy * g, and xhat depending on x directly and through mu and var:
          d mu / dx_i = 1/C,  d var / dx_i = 2 (x_i - mu) / C, which gives
          dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
The variance is the biased one (divide by C), as GPT-2 and torch.nn.LayerNorm use.
`threads.rows` runs each pass one block of rows at a time, small enough to stay in the core's
cache (naive form: forward_rows(x, xhat, rstd, y, g, b, eps) on the whole arrays).

>>> import numpy as np
>>> y, _ = forward(np.array([[1.0, 2.0, 3.0]]), np.ones(3), np.zeros(3))
>>> np.round(y, 4)
array([[-1.2247,  0.    ,  1.2247]])
"""

from typing import NamedTuple

import numpy as np

from npgpt import threads


class LayerNormCache(NamedTuple):
    xhat: np.ndarray  # (B, T, C) the normalised input
    rstd: np.ndarray  # (B, T, 1) 1 / sqrt(var + eps), per position
    g: np.ndarray  # (C,) the gain


def forward(x, g, b, eps=1e-5):
    x_2d = x.reshape(-1, x.shape[-1])  # (N, C)
    y, xhat = np.empty_like(x_2d), np.empty_like(x_2d)
    rstd = np.empty((len(x_2d), 1), dtype=x.dtype)
    threads.rows(forward_rows, (x_2d, xhat, rstd, y), g, b, eps)
    rstd = rstd.reshape(*x.shape[:-1], 1)
    return y.reshape(x.shape), LayerNormCache(xhat.reshape(x.shape), rstd, g)


def forward_rows(x, xhat, rstd, y, g, b, eps):
    """The forward on a block of rows, into xhat, rstd and y."""
    # xhat = (x - mu) * rstd,  rstd = 1 / sqrt(mean((x - mu)^2) + eps)
    np.subtract(x, x.mean(axis=-1, keepdims=True), out=xhat)
    var = (xhat * xhat).mean(axis=-1, keepdims=True)
    np.divide(1.0, np.sqrt(var + eps), out=rstd)
    xhat *= rstd
    # y = g * xhat + b
    np.multiply(xhat, g, out=y)
    y += b


def backward(dy, cache):
    xhat, rstd, g = cache
    C = dy.shape[-1]
    dy_2d, xhat_2d = dy.reshape(-1, C), xhat.reshape(-1, C)  # (N, C)
    dg = np.einsum("nc,nc->c", dy_2d, xhat_2d)  # sum over rows of dy * xhat, no (N, C) temporary
    db = dy_2d.sum(axis=0)
    dx = np.empty_like(dy_2d)
    threads.rows(backward_rows, (dy_2d, xhat_2d, rstd.reshape(-1, 1), dx), g)
    return dx.reshape(dy.shape), dg, db


def backward_rows(dy, xhat, rstd, dx, g):
    """dx on a block of rows."""
    dxhat = dy * g
    mean_dxhat_xhat = (dxhat * xhat).mean(axis=-1, keepdims=True)
    dxhat -= dxhat.mean(axis=-1, keepdims=True)
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), the first two in dxhat
    np.multiply(xhat, mean_dxhat_xhat, out=dx)
    np.subtract(dxhat, dx, out=dx)
    dx *= rstd
