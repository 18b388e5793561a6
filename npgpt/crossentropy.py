"""Softmax cross-entropy: the mean negative log-probability of each target token.

Forward   logp = logits - logsumexp(logits)                 logits: (B, T, V), targets: (B, T)
          loss = -(1/N) * sum over positions with target != -100 of logp[b, t, target[b, t]]
          N = number of such positions; -100 marks a position to ignore (padding, prompts).
Backward  d(-logp_y)/dlogit_j = softmax_j - [j == y], so, fused with the softmax,
          dlogits = dloss * (softmax(logits) - onehot(targets)) / N, and 0 at ignored positions.
Stability logsumexp(z) = max(z) + log(sum(exp(z - max(z)))) never overflows.
Memory    logits are the model's largest array. The forward keeps one max and one sum per row,
          not exp(z - max); the backward rebuilds dlogits from the logits, and
          `backward_columns` gives one block of its vocabulary columns at a time.

>>> import numpy as np
>>> loss, _ = forward(np.zeros((1, 2, 4)), np.array([[3, -100]]))
>>> float(np.round(loss, 6))                # uniform over 4 tokens: log(4)
1.386294
"""

from typing import NamedTuple

import numpy as np

from npgpt import threads

IGNORE_INDEX = -100


class CrossEntropyCache(NamedTuple):
    logits: np.ndarray  # (B, T, V) the input: softmax(z) is rebuilt from it, one block at a time
    z_max: np.ndarray  # (N_all,) each row's max, N_all = B * T
    sum_exp: np.ndarray  # (N_all,) each row's sum of exp(z - z_max): softmax = that / sum_exp
    valid: np.ndarray  # (N_all,) bool: the rows whose target is not ignored
    rows: np.ndarray  # (N,) the indices of those rows
    target_ids: np.ndarray  # (N,) their target ids
    n_valid: int  # N, the mean's denominator


def check_targets(logits, targets):
    if targets.shape != logits.shape[:-1] or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(
            f"targets must be integers of shape logits.shape[:-1] = {logits.shape[:-1]}, "
            f"got {targets.dtype} {targets.shape}"
        )
    V = logits.shape[-1]
    y = targets.reshape(-1)
    valid = y != IGNORE_INDEX
    if not valid.any():
        raise ValueError("every target is -100 (ignored): the mean loss has no terms")
    if (y[valid] < 0).any() or (y[valid] >= V).any():
        raise ValueError(f"targets must be in [0, {V}) or {IGNORE_INDEX}")
    return y, valid


def forward(logits, targets):
    y, valid = check_targets(logits, targets)
    z = logits.reshape(-1, logits.shape[-1])  # (N_all, V)
    z_max, sum_exp = np.empty(len(z), dtype=z.dtype), np.empty(len(z), dtype=z.dtype)
    threads.rows(logsumexp_rows, (z, z_max, sum_exp))
    rows = np.nonzero(valid)[0]
    target_shifted = z[rows, y[rows]] - z_max[rows]
    loss = -(target_shifted - np.log(sum_exp[rows])).sum() / len(rows)
    cache = CrossEntropyCache(logits, z_max, sum_exp, valid, rows, y[rows], len(rows))
    return loss.astype(logits.dtype), cache


def logsumexp_rows(z, z_max, sum_exp):
    """A block of rows' max and sum of exp(z - max), with no (N_all, V) temporary."""
    np.max(z, axis=-1, out=z_max)
    e = z - z_max[:, None]
    np.exp(e, out=e)
    np.sum(e, axis=-1, out=sum_exp)


def backward(dloss, cache):
    V = cache.logits.shape[-1]
    return backward_columns(dloss, cache, slice(0, V)).reshape(cache.logits.shape)


def backward_columns(dloss, cache, columns):
    """The columns `columns` (a slice of the vocabulary) of dlogits, as (N_all, n_columns): the
    model's tied head takes dlogits one block of columns at a time, never whole."""
    logits, z_max, sum_exp, valid, rows, target_ids, n_valid = cache
    z = logits.reshape(-1, logits.shape[-1])
    scale = np.asarray(dloss / n_valid, dtype=z.dtype)
    # dz = (dloss / N) * (exp(z - max z) / sum_exp - onehot(target)) on valid rows, 0 on ignored
    # ones: one factor per row folds in the normalisation, dloss / N and the ignored rows (0)
    row_factor = np.where(valid, scale / sum_exp, 0).astype(z.dtype)
    dz = z[:, columns] - z_max[:, None]
    np.exp(dz, out=dz)
    dz *= row_factor[:, None]
    hit = (target_ids >= columns.start) & (target_ids < columns.stop)
    dz[rows[hit], target_ids[hit] - columns.start] -= scale
    return dz
