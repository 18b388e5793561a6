"""The model's forward, backward and decode: KV-cache semantics, what backward returns and
leaves alone, and input checking."""

import numpy as np
import pytest

from npgpt import attention
from npgpt.config import GPTConfig
from npgpt.model import backward, decode, forward, init_params
from npgpt.names import activation_names

CFG = GPTConfig(vocab_size=31, context_length=10, emb_dim=12, n_heads=3, n_layers=2)


@pytest.fixture
def params():
    rng = np.random.default_rng(0)
    params = init_params(CFG, seed=0, dtype=np.float64)
    # Larger than the init so that attention is far from uniform and a cache bug would show.
    return {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}


def relative(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("prompt_len", [1, 4])
def test_kv_cache_matches_full_forward(params, prompt_len):
    """Prompt in one call, then one token per call with past_kv: the same logits as one call on
    the whole sequence. Both paths do the same float64 arithmetic in a different grouping, so
    they agree to rounding (~1e-15); 1e-12 leaves room without hiding a wrong key position."""
    idx = np.random.default_rng(1).integers(0, CFG.vocab_size, (2, CFG.context_length))
    full, _, _ = forward(params, CFG, idx)
    logits, kv = decode(params, CFG, idx[:, :prompt_len])
    steps = [logits]
    for t in range(prompt_len, CFG.context_length):
        logits, kv = decode(params, CFG, idx[:, t : t + 1], past_kv=kv)
        steps.append(logits)
        assert kv[0][0].shape == (2, CFG.n_heads, t + 1, CFG.head_dim)
    assert relative(np.concatenate(steps, axis=1), full) < 1e-12


def test_kv_cache_uses_the_cached_positions(params):
    """Without the cache, the last token alone at position 0 gives different logits."""
    idx = np.array([[3, 1, 4, 1, 5]])
    _, kv = decode(params, CFG, idx[:, :-1])
    cached, _ = decode(params, CFG, idx[:, -1:], past_kv=kv)
    alone, _ = decode(params, CFG, idx[:, -1:])
    full, _, _ = forward(params, CFG, idx)
    assert relative(cached[:, -1], full[:, -1]) < 1e-12
    assert relative(alone[:, -1], full[:, -1]) > 1e-3


def test_backward_refuses_a_kv_cache_forward():
    """Only `decode` takes a KV cache, and it keeps nothing for backward; attention's backward,
    given the cache of a forward that had one, says so rather than return wrong gradients."""
    rng = np.random.default_rng(0)
    past_kv = (rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 2, 3, 4)))
    y, cache = attention.forward(rng.standard_normal((1, 1, 24)), 2, past_kv=past_kv)
    assert cache.k.shape == cache.v.shape == (1, 2, 4, 4)  # the 3 cached positions and the new one
    with pytest.raises(ValueError, match="not with a KV cache"):
        attention.backward(np.ones_like(y), cache)


def test_decode_checks_its_kv_cache(params):
    _, kv = decode(params, CFG, np.array([[1, 2]]))
    with pytest.raises(ValueError, match="past_kv holds 1 layers' .*, but the model has 2"):
        decode(params, CFG, np.array([[3]]), past_kv=kv[:1])


def test_backward_returns_activation_grads_only_when_asked(params):
    idx, targets = np.array([[1, 2, 3]]), np.array([[2, 3, 4]])
    _, _, cache = forward(params, CFG, idx, targets)
    grads = backward(cache)
    assert sorted(grads) == sorted(params)
    _, _, cache = forward(params, CFG, idx, targets)  # backward used the first cache up
    activations = dict(cache.activations)
    again, activation_grads = backward(cache, return_activation_grads=True)
    assert list(activation_grads) == activation_names(CFG) == list(activations)
    for name, grad in activation_grads.items():
        assert grad.shape == activations[name].shape, name
    assert all(np.array_equal(grads[name], again[name]) for name in params)


def arrays_in(value, path="cache"):
    """Every array reachable from `value` through named tuples, tuples, lists and dicts."""
    if isinstance(value, np.ndarray):
        return {path: value}
    found = {}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        for field in value._fields:
            found |= arrays_in(getattr(value, field), f"{path}.{field}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found |= arrays_in(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found |= arrays_in(item, f"{path}[{key!r}]")
    return found


@pytest.mark.parametrize("return_activation_grads", [True, False])
def test_backward_writes_into_no_array_of_the_cache(params, return_activation_grads):
    """Backward lets go of the cache's arrays as it goes, but never writes into one: whoever
    still holds an activation (a copy of `cache.activations`) keeps it as forward made it."""
    cfg = CFG.replace(drop_rate=0.2)
    rng = np.random.default_rng(2)
    idx = rng.integers(0, CFG.vocab_size, (2, 5))
    _, _, cache = forward(params, cfg, idx, idx, train=True, rng=rng)
    held = arrays_in(cache)  # the arrays themselves, alive here whatever backward releases
    before = {path: a.copy() for path, a in held.items()}
    assert len(before) > 20 * cfg.n_layers  # the walk really reached the op caches
    backward(cache, return_activation_grads=return_activation_grads)
    assert [path for path in before if not np.array_equal(before[path], held[path])] == []


def test_backward_uses_the_cache_up(params):
    """Like torch's graph after `loss.backward()`: the layers' caches and the activations are
    let go, and a second backward says what to do instead of returning wrong gradients."""
    idx = np.array([[1, 2, 3]])
    _, _, cache = forward(params, CFG, idx, idx)
    backward(cache)
    assert cache.activations == {} and cache.blocks == [None] * CFG.n_layers
    with pytest.raises(ValueError, match="used up by an earlier backward.*run forward again"):
        backward(cache)


@pytest.mark.parametrize(
    "idx, message",
    [
        (np.array([[1, 31]]), r"token ids must be in \[0, 31\); got 1..31"),
        (np.array([[-1, 2]]), r"token ids must be in \[0, 31\); got -1..2"),
        (np.zeros((1, 11), dtype=int), "sequence of 11 tokens is longer than .* context_length 10"),
        (np.array([1, 2, 3]), r"idx must be a \(B, T\) array of token ids, got int64 \(3,\)"),
        (np.zeros((1, 2, 3), dtype=int), r"idx must be a \(B, T\) array.*\(1, 2, 3\)"),
        (np.array([[1.0, 2.0]]), r"idx must be a \(B, T\) array of token ids, got float64"),
    ],
)
def test_bad_token_input(params, idx, message):
    with pytest.raises(ValueError, match=message):
        forward(params, CFG, idx)


def test_too_long_with_the_cache(params):
    _, kv = decode(params, CFG, np.zeros((1, 9), dtype=int))
    with pytest.raises(ValueError, match="sequence of 11 tokens"):
        decode(params, CFG, np.zeros((1, 2), dtype=int), past_kv=kv)


def test_targets_must_match_idx(params):
    with pytest.raises(ValueError, match=r"targets have shape \(1, 3\), but idx has \(1, 2\)"):
        forward(params, CFG, np.array([[1, 2]]), targets=np.array([[1, 2, 3]]))


def test_backward_needs_a_loss(params):
    _, _, cache = forward(params, CFG, np.array([[1, 2]]))
    with pytest.raises(ValueError, match="backward needs a loss"):
        backward(cache)


def test_dropout_in_training_needs_masks_or_rng(params):
    cfg = CFG.replace(drop_rate=0.1)
    with pytest.raises(ValueError, match="dropout mask 'emb.drop' was not given and no rng"):
        forward(params, cfg, np.array([[1, 2]]), train=True)


def test_init_is_gpt2s_and_seeded():
    """N(0, 0.02) weights, 0.02 / sqrt(2 L) for the two residual projections, zero biases,
    LayerNorm scale 1 and shift 0; the seed alone decides the numbers."""
    cfg = GPTConfig(vocab_size=500, context_length=64, emb_dim=64, n_heads=4, n_layers=4)
    params = init_params(cfg, seed=3)
    residual_std = 0.02 / np.sqrt(2 * cfg.n_layers)
    for name, value in params.items():
        assert value.dtype == np.float32, name
        if "ln_" in name:
            assert np.all(value == (1.0 if name.endswith("weight") else 0.0)), name
        elif name.endswith("bias"):
            assert np.all(value == 0.0), name
        else:
            expected = (
                residual_std if name.endswith(("attn.c_proj.weight", "mlp.c_proj.weight")) else 0.02
            )
            assert abs(value.mean()) < 0.1 * expected, name
            assert abs(value.std() / expected - 1) < 0.05, name
    again, other = init_params(cfg, seed=3), init_params(cfg, seed=4)
    assert all(np.array_equal(params[k], again[k]) for k in params)
    assert not np.array_equal(params["wte.weight"], other["wte.weight"])
