"""Token + position embedding: look up one row per token and one row per position, add them.

Forward   x[b, t] = wte[idx[b, t]] + wpe[t0 + t]          idx: (B, T) ints, x: (B, T, C)
                                                          wte: (V, C), wpe: (T_max, C)
Backward  x is a sum of two gathered rows, so each row's gradient is the sum of dx over every
          place it was gathered from (a scatter-add, the transpose of a gather):
          dwte[v]      = sum of dx[b, t] over all (b, t) with idx[b, t] = v
          dwpe[t0 + t] = sum over b of dx[b, t]
`t0` is the position of the first token: 0 in training, the cached length when generating.
GPT-2's LM head reuses wte, so wte has a second gradient; pass it as `dwte` and the rows are
added into it in place, instead of into a fresh (V, C) array that then has to be added.

>>> import numpy as np
>>> wte, wpe = np.eye(3), 10 * np.eye(3)
>>> x, cache = forward(np.array([[2, 2]]), wte, wpe)
>>> x
array([[[10.,  0.,  1.],
        [ 0., 10.,  1.]]])
>>> dwte, dwpe = backward(np.ones_like(x), cache)
>>> dwte[2]                                 # token 2 was used twice
array([2., 2., 2.])
"""

from typing import NamedTuple

import numpy as np


class EmbeddingCache(NamedTuple):
    idx: np.ndarray  # (B, T) the token ids: where each row of dx goes
    wte_shape: tuple  # (V, C)
    wpe_shape: tuple  # (T_max, C)
    t0: int  # the position of the first token


def forward(idx, wte, wpe, t0=0):
    T = idx.shape[1]
    x = wte[idx] + wpe[t0 : t0 + T]
    return x, EmbeddingCache(idx, wte.shape, wpe.shape, t0)


def backward(dx, cache, dwte=None):
    idx, wte_shape, wpe_shape, t0 = cache
    C = dx.shape[-1]
    if dwte is None:
        dwte = np.zeros(wte_shape, dtype=dx.dtype)
    np.add.at(dwte, idx.reshape(-1), dx.reshape(-1, C))  # repeated ids add up, unlike dwte[idx] +=
    dwpe = np.zeros(wpe_shape, dtype=dx.dtype)
    dwpe[t0 : t0 + idx.shape[1]] = dx.sum(axis=0)
    return dwte, dwpe
