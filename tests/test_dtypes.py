"""Precision is the caller's choice: a float32 model computes in float32 throughout, a float64
model in float64. NumPy 2 (NEP 50) keeps Python float scalars weak, but a np.float64 scalar or
array anywhere in an op would silently upcast every result after it; these tests catch that."""

import numpy as np
import pytest

from npgpt.config import GPTConfig
from npgpt.model import backward, decode, forward, init_params
from npgpt.names import activation_names

CFG = GPTConfig(vocab_size=29, context_length=8, emb_dim=8, n_heads=2, n_layers=2, drop_rate=0.2)


def wrong_dtypes(arrays, dtype):
    return {name: a.dtype for name, a in arrays.items() if np.asarray(a).dtype != dtype}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("train", [True, False])
def test_every_activation_and_gradient_keeps_the_dtype(dtype, train):
    params = init_params(CFG, seed=0, dtype=dtype)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, CFG.vocab_size, (2, 6))
    targets = rng.integers(0, CFG.vocab_size, (2, 6))
    targets[0, 0] = -100
    logits, loss, cache = forward(params, CFG, idx, targets, train=train, rng=rng)
    acts = dict(cache.activations)  # backward uses the cache up
    grads, act_grads = backward(cache, return_activation_grads=True)

    assert sorted(acts) == sorted(activation_names(CFG))
    assert sorted(act_grads) == sorted(activation_names(CFG))
    assert wrong_dtypes(acts, dtype) == {}
    assert wrong_dtypes(act_grads, dtype) == {}
    assert sorted(grads) == sorted(params) and wrong_dtypes(grads, dtype) == {}
    assert logits.dtype == dtype and np.asarray(loss).dtype == dtype
    if train:
        assert len(cache.masks) == 1 + 3 * CFG.n_layers  # dropout really ran


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_generation_step_keeps_the_dtype(dtype):
    params = init_params(CFG, seed=0, dtype=dtype)
    _, past_kv = decode(params, CFG, np.array([[1, 2, 3]]))
    logits, kv = decode(params, CFG, np.array([[4]]), past_kv=past_kv)
    assert logits.dtype == dtype
    for cache in (past_kv, kv):
        named = {f"{i}.{j}": a for i, pair in enumerate(cache) for j, a in enumerate(pair)}
        assert wrong_dtypes(named, dtype) == {}
