"""GELU, GPT-2's tanh approximation ("gelu_new"), not the exact erf form.

Forward   u = s * (x + a x^3),  y = 0.5 x (1 + tanh(u)),   s = sqrt(2/pi), a = 0.044715
Backward  dy/dx = 0.5 (1 + tanh u) + 0.5 x * (1 - tanh(u)^2) * du/dx,
          du/dx = s * (1 + 3 a x^2),  so dx = dy * dy/dx              x, y: (B, T, 4C)
The two forms differ by up to ~1e-3; a model trained with one is measurably off with the other.

>>> import numpy as np
>>> y, _ = forward(np.array([-1.0, 0.0, 1.0]))
>>> np.round(y, 6)
array([-0.158808,  0.      ,  0.841192])
"""

import math
from typing import NamedTuple

import numpy as np

S = math.sqrt(2.0 / math.pi)
A = 0.044715


class GeluCache(NamedTuple):
    x: np.ndarray  # (B, T, 4C) the input
    tanh_u: np.ndarray  # (B, T, 4C) tanh(u), shared by both terms of the derivative


def forward(x):
    # Each result is built in place in one buffer: at (B, T, 4C) these are the MLP's largest
    # arrays, and every temporary would be one more pass over memory.
    # u = s * x * (1 + a x^2), then tanh(u) in the same buffer
    u = x * x
    u *= A
    u += 1.0
    u *= x
    u *= S
    tanh_u = np.tanh(u, out=u)
    # y = 0.5 * x * (1 + tanh u)
    y = 1.0 + tanh_u
    y *= x
    y *= 0.5
    return y, GeluCache(x, tanh_u)


def backward(dy, cache):
    x, tanh_u = cache
    # dx = dy * 0.5 * ((1 + tanh u) + x * (1 - tanh^2 u) * s (1 + 3 a x^2))
    dx = x * x
    dx *= 3.0 * A
    dx += 1.0
    dx *= S
    dx *= x
    dx *= 1.0 - tanh_u * tanh_u
    dx += 1.0 + tanh_u
    dx *= 0.5
    dx *= dy
    return dx
