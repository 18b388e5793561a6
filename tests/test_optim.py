"""Schedule, AdamW and clipping; AdamW against torch.optim.AdamW when torch is installed."""

import math

import numpy as np
import pytest

from npgpt import optim
from npgpt.config import GPTConfig
from npgpt.model import init_params
from npgpt.schedule import learning_rate


def test_schedule_warms_up_linearly_then_cosine_to_floor():
    lrs = [learning_rate(s, 1e-3, 1e-4, 10, 110) for s in range(120)]
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert lrs[10] == 1e-3
    assert lrs[60] == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway: cos(pi/2) = 0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[110:] == [1e-4] * 10


def test_decay_goes_to_matrices_and_embeddings_only():
    cfg = GPTConfig.preset("tiny")
    names = set(optim.decaying(init_params(cfg)))
    assert "wte.weight" in names and "wpe.weight" in names and "h.0.mlp.c_fc.weight" in names
    assert not any(n.endswith("bias") or "ln_" in n for n in names)
    assert set(optim.decaying({"a": (3, 4), "b": (4,)})) == {"a"}


def test_clip_scales_to_max_norm_and_leaves_small_gradients():
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5)}
    norm = math.sqrt(sum((g**2).sum() for g in grads.values()))
    before = {k: g.copy() for k, g in grads.items()}
    assert optim.clip_grad_norm(grads, 0.5) == pytest.approx(norm)
    assert optim.global_norm(grads) == pytest.approx(0.5, rel=1e-5)
    np.testing.assert_allclose(grads["a"] / before["a"], 0.5 / (norm + 1e-6))
    assert optim.clip_grad_norm(grads, 10.0) == pytest.approx(0.5, rel=1e-5)
    np.testing.assert_allclose(grads["a"], before["a"] * 0.5 / (norm + 1e-6))


def reference_adamw(p, g_list, lrs, s, decay):
    """The textbook formula, written independently with the bias corrections applied to m, v."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(g_list, lrs, strict=True), start=1):
        if decay:
            p = p - lr * s.weight_decay * p
        m = s.beta1 * m + (1 - s.beta1) * g
        v = s.beta2 * v + (1 - s.beta2) * g**2
        m_hat, v_hat = m / (1 - s.beta1**t), v / (1 - s.beta2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + s.eps)
    return p, m, v


def run_npgpt(params, grads_seq, lrs, settings):
    params = {k: v.copy() for k, v in params.items()}
    state = optim.init_state(params)
    for t, (grads, lr) in enumerate(zip(grads_seq, lrs, strict=True), start=1):
        optim.adamw_step(params, grads, state, t, lr, settings)
    return params, state


def problem(dtype=np.float64):
    rng = np.random.default_rng(1)
    params = {"w": rng.normal(size=(4, 3)).astype(dtype), "b": rng.normal(size=3).astype(dtype)}
    grads_seq = [
        {k: rng.normal(size=v.shape).astype(dtype) for k, v in params.items()} for _ in range(5)
    ]
    return params, grads_seq, [1e-2, 5e-3, 2e-2, 1e-3, 1e-2]


def test_adamw_matches_the_textbook_formula():
    settings = optim.AdamWSettings(weight_decay=0.3)
    params, grads_seq, lrs = problem()
    got, state = run_npgpt(params, grads_seq, lrs, settings)
    for name in params:
        p, m, v = reference_adamw(
            params[name], [g[name] for g in grads_seq], lrs, settings, decay=name == "w"
        )
        np.testing.assert_allclose(got[name], p, rtol=1e-12)
        np.testing.assert_allclose(state[f"exp_avg.{name}"], m, rtol=1e-12)
        np.testing.assert_allclose(state[f"exp_avg_sq.{name}"], v, rtol=1e-12)


def test_adamw_keeps_float32():
    params, grads_seq, lrs = problem(np.float32)
    got, state = run_npgpt(params, grads_seq, lrs, optim.AdamWSettings())
    assert {a.dtype for a in [*got.values(), *state.values()]} == {np.dtype(np.float32)}


def test_adamw_matches_torch():
    torch = pytest.importorskip(
        "torch", reason="torch not installed: the torch comparison needs it"
    )
    settings = optim.AdamWSettings(beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.2)
    params, grads_seq, lrs = problem()
    got, state = run_npgpt(params, grads_seq, lrs, settings)
    tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    decay = set(optim.decaying(params))
    opt = torch.optim.AdamW(
        [
            {"params": [tparams[n] for n in params if n in decay], "weight_decay": 0.2},
            {"params": [tparams[n] for n in params if n not in decay], "weight_decay": 0.0},
        ],
        lr=1.0,
        betas=(0.8, 0.9),
        eps=1e-6,
    )
    for grads, lr in zip(grads_seq, lrs, strict=True):
        for group in opt.param_groups:
            group["lr"] = lr
        for name, p in tparams.items():
            p.grad = torch.tensor(grads[name])
        opt.step()
    for name, p in tparams.items():
        np.testing.assert_allclose(got[name], p.detach().numpy(), rtol=1e-13, atol=1e-15)
        torch_state = opt.state[p]
        np.testing.assert_allclose(
            state[f"exp_avg.{name}"], torch_state["exp_avg"].numpy(), rtol=1e-13
        )
        np.testing.assert_allclose(
            state[f"exp_avg_sq.{name}"], torch_state["exp_avg_sq"].numpy(), rtol=1e-13
        )
