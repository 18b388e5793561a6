"""GELU, GPT-2's tanh approximation ("gelu_new"), not the exact erf form.

Forward   u = s * (x + a x^3),  y = 0.5 x (1 + tanh(u)),   s = sqrt(2/pi), a = 0.044715
Backward  dy/dx = 0.5 (1 + tanh u) + 0.5 x * (1 - tanh(u)^2) * du/dx,
          du/dx = s * (1 + 3 a x^2),  so dx = dy * dy/dx              x, y: (B, T, 4C)
          With t = tanh u and 1 - t^2 = (1 - t)(1 + t) this is one product,
          dx = dy * 0.5 (1 + t) * (1 + x (1 - t) s (1 + 3 a x^2)), built in place in dx.
tanh and erf GELU differ by up to ~1e-3: a model trained with one is measurably off with the other.
Speed     These are the MLP's largest arrays, and the work is a dozen cheap passes over them;
          `threads.rows` makes the passes one block of rows at a time, small enough to stay in
          the core's cache (naive form: forward_rows(x, y, tanh_u) on the whole arrays).

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
    x: np.ndarray  # (B, T, 4C) the input
    tanh_u: np.ndarray  # (B, T, 4C) tanh(u), shared by both terms of the derivative


def forward(x):
    x_2d = x.reshape(-1, x.shape[-1])  # (N, 4C)
    y, tanh_u = np.empty_like(x_2d), np.empty_like(x_2d)
    threads.rows(forward_rows, (x_2d, y, tanh_u))
    return y.reshape(x.shape), GeluCache(x, tanh_u.reshape(x.shape))


def forward_rows(x, y, tanh_u):
    """The forward on a block of rows, into y and tanh_u."""
    # u = s * x * (1 + a x^2), then tanh(u) in the same buffer
    np.multiply(x, x, out=tanh_u)
    tanh_u *= A
    tanh_u += 1.0
    tanh_u *= x
    tanh_u *= S
    np.tanh(tanh_u, out=tanh_u)
    # y = 0.5 * x * (1 + tanh u)
    np.add(tanh_u, 1.0, out=y)
    y *= x
    y *= 0.5


def backward(dy, cache):
    x, tanh_u = cache
    C = x.shape[-1]
    dx = np.empty((x.size // C, C), dtype=x.dtype)  # (N, 4C)
    threads.rows(backward_rows, (x.reshape(-1, C), tanh_u.reshape(-1, C), dy.reshape(-1, C), dx))
    return dx.reshape(x.shape)


def backward_rows(x, tanh_u, dy, dx):
    """The backward on a block of rows, into dx."""
    # dx = dy * 0.5 (1 + t) * (1 + x (1 - t) s (1 + 3 a x^2)),  t = tanh u: 1 - t^2 = (1 - t)(1 + t)
    tmp = np.empty_like(dx)
    np.multiply(x, x, out=dx)
    dx *= 3.0 * A * S
    dx += S
    dx *= x
    np.subtract(1.0, tanh_u, out=tmp)
    dx *= tmp
    dx += 1.0
    np.multiply(tanh_u, 0.5, out=tmp)
    tmp += 0.5
    dx *= tmp
    dx *= dy
