"""GELU, GPT-2's tanh approximation ("gelu_new"), not the exact erf form.

Forward   u = s * (x + a x^3),  y = 0.5 x (1 + tanh(u)),   s = sqrt(2/pi), a = 0.044715
Backward  dy/dx = 0.5 (1 + tanh u) + 0.5 x * (1 - tanh(u)^2) * du/dx,
          du/dx = s * (1 + 3 a x^2),  so dx = dy * dy/dx              x, y: (B, T, 4C)
The two forms differ by up to ~1e-3; a model trained with one is measurably off with the other.
x * x * x, not x**3: NumPy's power has no fast path for the exponent 3 and is ~10x slower.

>>> import numpy as np
>>> y, _ = forward(np.array([-1.0, 0.0, 1.0]))
>>> np.round(y, 6)
array([-0.158808,  0.      ,  0.841192])
"""

import math

import numpy as np

S = math.sqrt(2.0 / math.pi)
A = 0.044715


def forward(x):
    tanh_u = np.tanh(S * (x + A * x * x * x))
    y = 0.5 * x * (1.0 + tanh_u)
    return y, (x, tanh_u)


def backward(dy, cache):
    x, tanh_u = cache
    du_dx = S * (1.0 + 3.0 * A * x * x)
    dy_dx = 0.5 * (1.0 + tanh_u) + 0.5 * x * (1.0 - tanh_u * tanh_u) * du_dx
    return dy * dy_dx
