"""The model's forward: KV-cache semantics and input checking."""

import numpy as np
import pytest

from npgpt.config import GPTConfig
from npgpt.model import backward, forward, init_params

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
    logits, _, cache = forward(params, CFG, idx[:, :prompt_len])
    steps = [logits]
    for t in range(prompt_len, CFG.context_length):
        logits, _, cache = forward(params, CFG, idx[:, t : t + 1], past_kv=cache["present_kv"])
        steps.append(logits)
        assert cache["present_kv"][0][0].shape == (2, CFG.n_heads, t + 1, CFG.head_dim)
    assert relative(np.concatenate(steps, axis=1), full) < 1e-12


def test_kv_cache_uses_the_cached_positions(params):
    """Without the cache, the last token alone at position 0 gives different logits."""
    idx = np.array([[3, 1, 4, 1, 5]])
    _, _, cache = forward(params, CFG, idx[:, :-1])
    cached, _, _ = forward(params, CFG, idx[:, -1:], past_kv=cache["present_kv"])
    alone, _, _ = forward(params, CFG, idx[:, -1:])
    full, _, _ = forward(params, CFG, idx)
    assert relative(cached[:, -1], full[:, -1]) < 1e-12
    assert relative(alone[:, -1], full[:, -1]) > 1e-3


def test_backward_refuses_a_kv_cache_forward(params):
    _, _, cache = forward(params, CFG, np.array([[1, 2]]))
    _, _, step = forward(
        params, CFG, np.array([[3]]), targets=np.array([[4]]), past_kv=cache["present_kv"]
    )
    with pytest.raises(ValueError, match="not with a KV cache"):
        backward(step)


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
    _, _, cache = forward(params, CFG, np.zeros((1, 9), dtype=int))
    with pytest.raises(ValueError, match="sequence of 11 tokens"):
        forward(params, CFG, np.zeros((1, 2), dtype=int), past_kv=cache["present_kv"])


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
