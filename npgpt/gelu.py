"""GELU, GPT-2's tanh approximation ("gelu_new"), not the exact erf form.

Forward   u = s * (x + a x^3),  y = 0.5 x (1 + tanh(u)),   s = sqrt(2/pi), a = 0.044715
Backward  dy/dx = 0.5 (1 + tanh u) + 0.5 x * (1 - tanh(u)^2) * du/dx,
          du/dx = s * (1 + 3 a x^2),  so dx = dy * dy/dx              x, y: (B, T, 4C)
          With t = tanh u and 1 - t^2 = (1 - t)(1 + t) this is one product,
          dx = dy * 0.5 (1 + t) * (1 + x (1 - t) s (1 + 3 a x^2)), built in place in dx.
tanh and erf GELU differ by up to ~1e-3: a model trained with one is measurably off with the other.
Speed     These are the MLP's largest arrays, and the work is a dozen cheap passes over them;
          `threads.rows` makes the passes one block of rows at a time, small enough to stay in
          the core's cache (naive form: forward_rows(x, y) on the whole arrays).
Memory    The cache is x alone: the backward recomputes tanh(u) block by block, which costs a
          few passes in cache and saves one (B, T, 4C) array per layer until the backward.

>>> import numpy as np
>>> y, _ = forward(np.array([-1.0, 0.0, 1.0]))
>>> np.round(y, 6)
array([-0.158808,  0.      ,  0.841192])
"""

import math
from typing import NamedTuple

import numpy as np

from npgpt import threads

S = math.sqrt(2.0 / math.pi)
A = 0.044715


class GeluCache(NamedTuple):
    x: np.ndarray  # (B, T, 4C) the input; tanh(u) is recomputed from it


def tanh_of_u(x, out):
    """t = tanh(u), u = s * x * (1 + a x^2), written into `out`."""
    np.multiply(x, x, out=out)
    out *= A
    out += 1.0
    out *= x
    out *= S
    np.tanh(out, out=out)


def forward(x):
    x_2d = x.reshape(-1, x.shape[-1])  # (N, 4C)
    y = np.empty_like(x_2d)
    threads.rows(forward_rows, (x_2d, y))
    return y.reshape(x.shape), GeluCache(x)


def forward_rows(x, y):
    """The forward on a block of rows, into y."""
    # y = 0.5 * x * (1 + tanh u), tanh u first written into y
    tanh_of_u(x, out=y)
    y += 1.0
    y *= x
    y *= 0.5


def backward(dy, cache):
    C = cache.x.shape[-1]
    dx = np.empty((cache.x.size // C, C), dtype=cache.x.dtype)  # (N, 4C)
    threads.rows(backward_rows, (cache.x.reshape(-1, C), dy.reshape(-1, C), dx))
    return dx.reshape(cache.x.shape)


def backward_rows(x, dy, dx):
    """The backward on a block of rows, into dx."""
    t, tmp = np.empty_like(dx), np.empty_like(dx)
    tanh_of_u(x, out=t)
    # dx = dy * 0.5 (1 + t) * (1 + x (1 - t) s (1 + 3 a x^2)),  t = tanh u: 1 - t^2 = (1 - t)(1 + t)
    np.multiply(x, x, out=dx)
    dx *= 3.0 * A * S
    dx += S
    dx *= x
    np.subtract(1.0, t, out=tmp)
    dx *= tmp
    dx += 1.0
    t *= 0.5
    t += 0.5
    dx *= t
    dx *= dy
