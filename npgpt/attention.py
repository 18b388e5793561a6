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

>>> qkv = np.random.default_rng(0).standard_normal((1, 4, 6))       # B=1, T=4, C=2, 2 heads
>>> y, _ = forward(qkv, n_heads=2)
>>> future_changed = np.concatenate([qkv[:, :2], -qkv[:, 2:]], axis=1)
>>> bool(np.allclose(forward(future_changed, n_heads=2)[0][:, :2], y[:, :2]))  # causal
True
"""

from typing import NamedTuple

import numpy as np

from npgpt import dropout


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


def forward(qkv, n_heads, drop_rate=0.0, keep=None, past_kv=None):
    q, k, v = (split_heads(part, n_heads) for part in np.split(qkv, 3, axis=-1))
    if past_kv is not None:
        k = np.concatenate([past_kv[0], k], axis=2)
        v = np.concatenate([past_kv[1], v], axis=2)
    scale = np.asarray(1.0 / np.sqrt(q.shape[-1]), dtype=qkv.dtype)
    s = (q * scale) @ k.transpose(0, 1, 3, 2)  # (B, H, T, T_key); scaling q is T/D x cheaper
    np.copyto(s, -np.inf, where=causal_mask(q.shape[2], k.shape[2]))  # mask broadcast over B, H
    p = softmax(s)
    p_drop, drop = dropout.forward(p, drop_rate, keep)
    y = merge_heads(p_drop @ v)
    return y, AttentionCache(q, k, v, scale, p, p_drop, drop)


def backward(dy, cache):
    q, k, v, scale, p, p_drop, drop = cache
    if k.shape[2] != q.shape[2]:
        raise ValueError("attention backward is defined for training, not with a KV cache")
    dy = split_heads(dy, q.shape[1])  # (B, H, T, D)
    dp_drop = dy @ v.transpose(0, 1, 3, 2)  # (B, H, T, T)
    dv = p_drop.transpose(0, 1, 3, 2) @ dy
    dp = dropout.backward(dp_drop, drop)
    # ds = p * (dp - sum_j(dp * p)), in one buffer
    ds = dp * p
    ds -= p * ds.sum(axis=-1, keepdims=True)
    dq = (ds @ k) * scale  # the scale applied to (T, D) results, not to the (T, T) ds
    dk = (ds.transpose(0, 1, 3, 2) @ q) * scale
    dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
    return dqkv, dp
