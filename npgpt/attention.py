"""Causal multi-head self-attention, from the fused projection `qkv` to the merged heads.

Forward   q, k, v = split(qkv) into H heads                 qkv: (B, T, 3C); q, k, v: (B, H, T, D)
          s = q @ k^T / sqrt(D), with s[i, j] = -inf where key j comes after query i   (B, H, T, T)
          p = softmax(s) along j,  p' = dropout(p)  (`p_drop` in the code)
          y = p' @ v, heads merged back                     (B, H, T, D) -> (B, T, C), C = H * D
Backward  dp' = dy @ v^T,  dv = p'^T @ dy,  dp = dropout backward of dp'
          softmax: dp_ij/ds_ik = p_ij (delta_jk - p_ik), so ds = p * (dp - sum_j(dp * p))
          s = q k^T / sqrt(D): dq = ds @ k / sqrt(D),  dk = ds^T @ q / sqrt(D)
          masked entries have p = 0, so they pass no gradient.
With a KV cache (`past_kv`, the (k, v) of T_past earlier positions), the T new queries attend
to the cached keys as well: key j is visible to query i when j <= i + T_past, so one formula
serves training and generation; the cache's k and v, over all T_past + T positions, are then
the next `past_kv`. Backward is defined for the training case (no KV cache).
Speed     q, k and v are copied once into head-major order, and each result is written straight
          into its final layout (y into the merged heads, dq, dk, dv into dqkv's slots), so no
          product reads a strided view; `threads.rows` hands blocks of heads to the cores.

>>> qkv = np.random.default_rng(0).standard_normal((1, 4, 6))       # B=1, T=4, C=2, 2 heads
>>> y, _ = forward(qkv, n_heads=2)
>>> future_changed = np.concatenate([qkv[:, :2], -qkv[:, 2:]], axis=1)
>>> bool(np.allclose(forward(future_changed, n_heads=2)[0][:, :2], y[:, :2]))  # causal
True
"""

from typing import NamedTuple

import numpy as np

from npgpt import dropout, threads


class AttentionCache(NamedTuple):
    q: np.ndarray  # (B, H, T, D)
    k: np.ndarray  # (B, H, T_key, D), T_key = T_past + T
    v: np.ndarray  # (B, H, T_key, D)
    scale: np.ndarray  # () 1 / sqrt(D), in q's dtype
    p: np.ndarray  # (B, H, T, T_key) the probabilities, softmax(s)
    p_drop: np.ndarray  # (B, H, T, T_key) dropout(p); p itself when there is no dropout
    drop: dropout.DropoutCache | None  # p's dropout, None without


def split_heads(x, n_heads):
    B, T, C = x.shape
    return x.reshape(B, T, n_heads, C // n_heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def causal_mask(t_query, t_key):
    """True where query i may not see key j: j > i + (t_key - t_query)."""
    return np.triu(np.ones((t_query, t_key), dtype=bool), k=t_key - t_query + 1)


def softmax(s):
    """Softmax along the last axis, computed in place in `s` (a fresh array of scores)."""
    # p = exp(s - max s) / sum_j exp(s - max s): shifting by the max never overflows
    s -= s.max(axis=-1, keepdims=True)
    e = np.exp(s, out=s)
    e /= e.sum(axis=-1, keepdims=True)
    return e


def heads_first(*arrays):
    """(B, H, ...) views as (H, B, ...): `threads.rows` then hands out blocks of heads."""
    return tuple(a.swapaxes(0, 1) for a in arrays)


def forward(qkv, n_heads, drop_rate=0.0, keep=None, past_kv=None):
    B, T, _ = qkv.shape
    # q, k, v (B, H, T, D): one copy into head-major order, so every product reads plain arrays
    q, k, v = np.ascontiguousarray(qkv.reshape(B, T, 3, n_heads, -1).transpose(2, 0, 3, 1, 4))
    if past_kv is not None:
        k = np.concatenate([past_kv[0], k], axis=2)
        v = np.concatenate([past_kv[1], v], axis=2)
    scale = np.asarray(1.0 / np.sqrt(q.shape[-1]), dtype=qkv.dtype)
    p = np.empty((B, n_heads, T, k.shape[2]), dtype=qkv.dtype)  # (B, H, T, T_key)
    threads.rows(probabilities, heads_first(q, k, p), scale, causal_mask(T, k.shape[2]))
    p_drop, drop = dropout.forward(p, drop_rate, keep)
    y = np.empty((B, T, n_heads, q.shape[-1]), dtype=qkv.dtype)  # the heads merged: (B, T, C)
    # y = p' @ v, each head written straight into its place in y
    threads.rows(matmul_into, heads_first(p_drop, v, y.swapaxes(1, 2)))
    return y.reshape(B, T, -1), AttentionCache(q, k, v, scale, p, p_drop, drop)


def probabilities(q, k, p, scale, mask):
    """p = softmax(masked (q * scale) @ k^T) for a block of heads, written into p."""
    np.matmul(q * scale, k.swapaxes(-1, -2), out=p)  # scaling q is T/D x cheaper than s
    np.copyto(p, -np.inf, where=mask)  # the (T, T_key) mask broadcast over heads and batch
    softmax(p)


def matmul_into(a, b, out):
    np.matmul(a, b, out=out)


def backward(dy, cache):
    q, k, v, scale, p, p_drop, drop = cache
    B, H, T, D = q.shape
    if k.shape[2] != T:
        raise ValueError("attention backward is defined for training, not with a KV cache")
    dy = np.ascontiguousarray(split_heads(dy, H))  # (B, H, T, D), one copy
    dp_drop = np.empty_like(p)  # (B, H, T, T)
    dqkv = np.empty((B, T, 3, H, D), dtype=dy.dtype)  # (B, T, 3C) once reshaped
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)  # (B, H, T, D) views: each gradient in its place
    # dp' = dy @ v^T,  dv = p'^T @ dy
    threads.rows(values_backward, heads_first(dy, v, p_drop, dp_drop, dv))
    dp = dropout.backward(dp_drop, drop)
    threads.rows(scores_backward, heads_first(dp, p, q, k, dq, dk), scale)
    return dqkv.reshape(B, T, 3 * H * D), dp


def values_backward(dy, v, p_drop, dp_drop, dv):
    """dp' and dv for a block of heads."""
    np.matmul(dy, v.swapaxes(-1, -2), out=dp_drop)
    np.matmul(p_drop.swapaxes(-1, -2), dy, out=dv)


def scores_backward(dp, p, q, k, dq, dk, scale):
    """dq and dk for a block of heads, through the softmax and s = q k^T / sqrt(D)."""
    # ds = p * (dp - sum_j(dp * p))
    ds = dp - np.einsum("...ij,...ij->...i", dp, p)[..., None]
    ds *= p
    # dq = ds @ k / sqrt(D),  dk = ds^T @ q / sqrt(D): the scale applied to (T, D), not (T, T)
    np.matmul(ds, k, out=dq)
    dq *= scale
    np.matmul(ds.swapaxes(-1, -2), q, out=dk)
    dk *= scale
