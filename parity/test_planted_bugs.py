"""The oracle can fail: plant a bug in npgpt, and the parity check must catch it and name the
first tensor where the backends part ways.

    bug                                           first diverging tensor (report order)
    LayerNorm backward without its variance term  h.{L-1}.out.grad: ln_f's backward is the first
      dx = rstd (dxhat - mean(dxhat))             LayerNorm the gradient meets
    attention backward with ds transposed         h.{L-1}.attn.qkv.grad: the last block's
      dk = ds @ q  instead of  ds^T @ q           attention is the first one met going back
    GELU forward in the exact erf form            h.0.mlp.gelu: the first GELU's output, in the
      y = x Phi(x)  instead of the tanh form      forward pass (everything after inherits it)

Each bug is planted with monkeypatch (npgpt's modules call `layernorm.backward`,
`attention.backward`, `gelu.forward` through the module, so the patch reaches every use; torch's
side is untouched). Each is checked twice: on a fixed case, asserting the failure message, and
under Hypothesis, asserting that the property fails and that Hypothesis' `find` shrinks the bug to
its minimal case.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import find, given, settings

from npgpt import attention, gelu, layernorm
from npgpt.config import GPTConfig
from parity import oracle
from parity.strategies import cases, random_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = GPTConfig(vocab_size=97, context_length=12, emb_dim=24, n_heads=3, n_layers=2)
LAST = CFG.n_layers - 1


def layernorm_backward_without_variance_term(dy, cache):
    xhat, rstd, g = cache.xhat, cache.rstd, cache.g
    lead = tuple(range(dy.ndim - 1))
    dxhat = dy * g
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True))  # "- xhat * mean(dxhat * xhat)" lost
    return dx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)


def attention_backward_transposed(dy, cache):
    q, k, v, scale, p, p_drop = cache.q, cache.k, cache.v, cache.scale, cache.p, cache.p_drop
    dy = attention.split_heads(dy, q.shape[1])
    dv = p_drop.transpose(0, 1, 3, 2) @ dy
    dp = attention.dropout.backward(dy @ v.transpose(0, 1, 3, 2), cache.drop)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True)) * scale
    dq = ds @ k
    dk = ds @ q  # should be ds^T @ q
    merged = [attention.merge_heads(grad) for grad in (dq, dk, dv)]
    return np.concatenate(merged, axis=-1), dp


def erf(x):
    return torch.special.erf(torch.from_numpy(x)).numpy()  # NumPy has no vectorised erf


def gelu_forward_erf(x):
    y = 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))  # the exact GELU, not GPT-2's tanh form
    _, cache = TANH_GELU_FORWARD(x)  # backward is left as it is
    return y.astype(x.dtype), cache


TANH_GELU_FORWARD = gelu.forward

BUGS = {  # name: (module, function name, replacement, first diverging tensor, in forward?)
    "layernorm-backward-term-dropped": (
        layernorm,
        "backward",
        layernorm_backward_without_variance_term,
        f"h.{LAST}.out.grad",
        False,
    ),
    "attention-backward-transposed": (
        attention,
        "backward",
        attention_backward_transposed,
        f"h.{LAST}.attn.qkv.grad",
        False,
    ),
    "gelu-forward-erf": (gelu, "forward", gelu_forward_erf, "h.0.mlp.gelu", True),
}
MINIMAL_T = {
    "layernorm-backward-term-dropped": 1,
    "attention-backward-transposed": 2,
    "gelu-forward-erf": 1,
}


def fixed_case():
    rng = np.random.default_rng(0)
    idx = rng.integers(0, CFG.vocab_size, size=(2, 10))
    targets = rng.integers(0, CFG.vocab_size, size=(2, 10))
    targets[0, :3] = -100
    return random_params(CFG, seed=1, dtype=np.float64), idx, targets


@pytest.mark.parametrize("attn", ["math", "sdpa"])
def test_fixed_case_passes_without_a_bug(attn):
    """The control: the same case, unpatched, is within tolerance."""
    params, idx, targets = fixed_case()
    oracle.assert_parity(oracle.check(params, CFG, idx, targets, attn=attn))


@pytest.mark.parametrize("bug", BUGS)
def test_planted_bug_is_caught_and_named(bug, monkeypatch):
    module, function, replacement, first, in_forward = BUGS[bug]
    monkeypatch.setattr(module, function, replacement)
    params, idx, targets = fixed_case()
    comparison = oracle.check(params, CFG, idx, targets, attn="math")

    assert not comparison.ok
    assert comparison.first_divergence == first
    assert comparison.first_diverging_activation == (first if in_forward else None)
    with pytest.raises(AssertionError) as failure:
        oracle.assert_parity(comparison)
    message = str(failure.value)
    assert f"first diverging tensor: {first}" in message
    assert "| tensor | shape | max abs err | max rel err | tolerance |" in message
    worst = comparison.worst(1)[0]
    assert worst.max_rel > 1e3 * worst.tol  # a real slip is far past rounding, not marginal


def fails_parity(case):
    return not oracle.check(
        case.params(), case.config, case.idx, case.targets, case.masks, case.train
    ).ok


@pytest.mark.parametrize("bug", BUGS)
def test_hypothesis_finds_the_bug_and_shrinks_it(bug, monkeypatch):
    """Through what Hypothesis promises, on any release: a property that meets the bug raises
    its AssertionError, and `find` returns the minimal failing `Case` itself. Every bug here
    shows in one layer, one sequence, one head and the narrowest model drawn (C = 3), without
    dropout; attention's needs two positions (at T = 1, ds is 1 x 1 and equals its transpose)."""
    module, function, replacement, _, _ = BUGS[bug]
    monkeypatch.setattr(module, function, replacement)
    draws = cases(dropout=True, dtypes=("float64",))
    search = settings(max_examples=200, database=None, derandomize=True)

    @settings(search, max_examples=30, report_multiple_bugs=False)
    @given(case=draws)
    def prop(case):
        oracle.assert_parity(
            oracle.check(case.params(), case.config, case.idx, case.targets, case.masks, case.train)
        )

    with pytest.raises(AssertionError) as failure:
        prop()
    assert "first diverging tensor: " in str(failure.value)

    minimal = find(draws, fails_parity, settings=search)
    config = minimal.config
    assert (config.n_layers, config.n_heads, config.emb_dim, config.drop_rate) == (1, 1, 3, 0.0)
    assert minimal.idx.shape == (1, MINIMAL_T[bug])
    assert minimal.scale == 1.0
    _, _, _, first, _ = BUGS[bug]
    check = oracle.check(minimal.params(), config, minimal.idx, minimal.targets)
    assert check.first_divergence == first.replace(f"h.{LAST}.", "h.0.")
