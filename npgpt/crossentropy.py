"""Softmax cross-entropy: the mean negative log-probability of each target token.

Forward   logp = logits - logsumexp(logits)                 logits: (B, T, V), targets: (B, T)
          loss = -(1/N) * sum over positions with target != -100 of logp[b, t, target[b, t]]
          N = number of such positions; -100 marks a position to ignore (padding, prompts).
Backward  d(-logp_y)/dlogit_j = softmax_j - [j == y], so, fused with the softmax,
          dlogits = dloss * (softmax(logits) - onehot(targets)) / N, and 0 at ignored positions.
Stability logsumexp(z) = max(z) + log(sum(exp(z - max(z)))) never overflows.

>>> import numpy as np
>>> loss, _ = forward(np.zeros((1, 2, 4)), np.array([[3, -100]]))
>>> float(np.round(loss, 6))                # uniform over 4 tokens: log(4)
1.386294
"""

from typing import NamedTuple

import numpy as np

IGNORE_INDEX = -100


class CrossEntropyCache(NamedTuple):
    e: np.ndarray  # (N_all, V) exp(z - max z), N_all = B * T: softmax(z) = e / sum_exp
    sum_exp: np.ndarray  # (N_all,) the row sums of e
    valid: np.ndarray  # (N_all,) bool: the rows whose target is not ignored
    rows: np.ndarray  # (N,) the indices of those rows
    target_ids: np.ndarray  # (N,) their target ids
    n_valid: int  # N, the mean's denominator
    shape: tuple  # (B, T, V) the logits' shape


def forward(logits, targets):
    if targets.shape != logits.shape[:-1] or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(
            f"targets must be integers of shape logits.shape[:-1] = {logits.shape[:-1]}, "
            f"got {targets.dtype} {targets.shape}"
        )
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N_all, V)
    y = targets.reshape(-1)
    valid = y != IGNORE_INDEX
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("every target is -100 (ignored): the mean loss has no terms")
    if (y[valid] < 0).any() or (y[valid] >= V).any():
        raise ValueError(f"targets must be in [0, {V}) or {IGNORE_INDEX}")
    rows = np.nonzero(valid)[0]
    e = z - z.max(axis=-1, keepdims=True)  # shifted logits, (N_all, V)
    target_shifted = e[rows, y[rows]]
    # e = exp(z - max z), in the same buffer: the largest array of the model
    np.exp(e, out=e)
    sum_exp = e.sum(axis=-1)  # (N_all,)
    loss = -(target_shifted - np.log(sum_exp[rows])).sum() / n_valid
    cache = CrossEntropyCache(e, sum_exp, valid, rows, y[rows], n_valid, logits.shape)
    return loss.astype(logits.dtype), cache


def backward(dloss, cache):
    e, sum_exp, valid, rows, target_ids, n_valid, shape = cache
    scale = np.asarray(dloss / n_valid, dtype=e.dtype)
    # dz = (dloss / N) * (e / sum_exp - onehot(target)) on valid rows, 0 on ignored ones.
    # One factor per row folds in the normalisation, dloss / N and the ignored rows (factor 0),
    # so the (N_all, V) gradient is written in a single pass; then the onehot is subtracted.
    row_factor = np.where(valid, scale / sum_exp, 0).astype(e.dtype)
    dz = e * row_factor[:, None]
    dz[rows, target_ids] -= scale
    return dz.reshape(shape)
