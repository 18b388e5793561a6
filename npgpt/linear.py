"""Linear layer in GPT-2's Conv1D layout: the weight is stored (in, out), so y = x @ w + b.

Forward   y = x @ w + b        x: (..., C_in), w: (C_in, C_out), b: (C_out,), y: (..., C_out)
Backward  y_j = sum_i x_i w_ij + b_j, so dy_j/dx_i = w_ij, dy_j/dw_ij = x_i, dy_j/db_j = 1:
          dx = dy @ w.T                  (..., C_in)
          dw = x.T @ dy                  summed over every leading (batch, time) position
          db = sum of dy over leading positions
OpenAI's checkpoints store w as (C_in, C_out); `torch.nn.Linear` stores its transpose.
Every leading position is one row of a single (N, C_in) matrix, N = B * T, so each product is
one large matrix product (a 3-D @ 2-D matmul would be B separate, smaller ones), which
`threads.matmul` hands to the cores in blocks: its naive form is `x_2d @ w + b`.

>>> import numpy as np
>>> y, cache = forward(np.ones((2, 3)), np.ones((3, 4)), np.zeros(4))
>>> y.shape
(2, 4)
>>> dx, dw, db = backward(np.ones((2, 4)), cache)
>>> dx.shape, dw.shape, db.shape
((2, 3), (3, 4), (4,))
"""

from typing import NamedTuple

import numpy as np

from npgpt import threads


class LinearCache(NamedTuple):
    x: np.ndarray  # (..., C_in) the input, for dw
    w: np.ndarray  # (C_in, C_out) the weight, for dx
    has_bias: bool  # whether there is a db to return


def forward(x, w, b=None):
    x_2d = x.reshape(-1, x.shape[-1])  # (N, C_in)
    y = threads.matmul(x_2d, w, bias=b)  # x_2d @ w + b, (N, C_out)
    return y.reshape(*x.shape[:-1], w.shape[1]), LinearCache(x, w, b is not None)


def backward(dy, cache):
    x, w, has_bias = cache
    dy_2d = dy.reshape(-1, dy.shape[-1])  # (N, C_out)
    x_2d = x.reshape(-1, x.shape[-1])  # (N, C_in)
    dx = threads.matmul(dy_2d, w.T).reshape(x.shape)  # dy @ w.T
    dw = threads.matmul(x_2d.T, dy_2d)  # x.T @ dy, (C_in, C_out)
    db = dy_2d.sum(axis=0) if has_bias else None
    return dx, dw, db
