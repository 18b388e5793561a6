"""Every op's hand-written backward, and the whole model's, against central finite differences."""

import numpy as np
import pytest

from npgpt import attention, crossentropy, dropout, embedding, gelu, layernorm, linear
from npgpt.config import GPTConfig
from npgpt.gradcheck import numerical_grad, relative_error
from npgpt.model import backward, forward, init_params
from npgpt.names import dropout_mask_shapes

TOL = 1e-6  # float64 central differences with h = 1e-6 agree with exact gradients to ~1e-8


def check_op(forward_fn, backward_fn, inputs, rng):
    """Contract the op's output with a random dout; compare backward with finite differences."""
    out, cache = forward_fn(*inputs)
    dout = rng.standard_normal(out.shape)
    analytic = backward_fn(dout, cache)
    analytic = analytic if isinstance(analytic, tuple) else (analytic,)
    for x, grad in zip(inputs, analytic, strict=True):
        numeric = numerical_grad(lambda: float((forward_fn(*inputs)[0] * dout).sum()), x)
        assert relative_error(grad, numeric) < TOL


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 5, 4), (3, 2, 7)])
def test_layernorm(shape):
    rng = np.random.default_rng(0)
    x, g, b = (
        rng.standard_normal(shape),
        rng.standard_normal(shape[-1]),
        rng.standard_normal(shape[-1]),
    )
    check_op(layernorm.forward, layernorm.backward, (x, g, b), rng)


@pytest.mark.parametrize("shape", [(2, 3, 8), (1, 4, 5)])
def test_gelu(shape):
    rng = np.random.default_rng(1)
    check_op(gelu.forward, gelu.backward, (3 * rng.standard_normal(shape),), rng)


@pytest.mark.parametrize("shapes", [((2, 3, 4), (4, 5)), ((1, 1, 2), (2, 3))])
def test_linear(shapes):
    rng = np.random.default_rng(2)
    x, w, b = (
        rng.standard_normal(shapes[0]),
        rng.standard_normal(shapes[1]),
        rng.standard_normal(shapes[1][1]),
    )
    check_op(linear.forward, lambda d, c: linear.backward(d, c), (x, w, b), rng)


def test_dropout():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4))
    keep = dropout.make_mask(rng, x.shape, 0.3)
    check_op(lambda x: dropout.forward(x, 0.3, keep), dropout.backward, (x,), rng)


def test_embedding():
    rng = np.random.default_rng(4)
    idx = np.array([[1, 1, 4], [0, 4, 2]])
    wte, wpe = rng.standard_normal((5, 3)), rng.standard_normal((6, 3))
    check_op(
        lambda wte, wpe: embedding.forward(idx, wte, wpe, 2), embedding.backward, (wte, wpe), rng
    )


@pytest.mark.parametrize("B,T,H,D,p", [(1, 1, 1, 2, 0.0), (2, 4, 2, 3, 0.0), (2, 5, 3, 2, 0.4)])
def test_attention(B, T, H, D, p):
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((B, T, 3 * H * D))
    keep = dropout.make_mask(rng, (B, H, T, T), p) if p else None
    check_op(
        lambda qkv: attention.forward(qkv, H, p, keep),
        lambda d, c: attention.backward(d, c)[0],
        (qkv,),
        rng,
    )


def test_crossentropy():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((2, 3, 7))
    targets = np.array([[1, -100, 6], [0, 3, -100]])
    loss, cache = crossentropy.forward(logits, targets)
    numeric = numerical_grad(lambda: float(crossentropy.forward(logits, targets)[0]), logits)
    assert relative_error(crossentropy.backward(1.0, cache), numeric) < TOL


@pytest.mark.parametrize("seed", range(4))
def test_every_op_on_random_shapes(seed):
    """Each op again, on shapes drawn from a seeded rng: B 1..3, T 1..6, H 1..3, D 1..4, V 2..9,
    with dropout masks, an embedding offset t0 and ignored targets drawn the same way."""
    rng = np.random.default_rng(100 + seed)
    B, T, H, D, V = (
        int(rng.integers(low, high + 1)) for low, high in [(1, 3), (1, 6), (1, 3), (1, 4), (2, 9)]
    )
    C = H * D
    x = rng.standard_normal((B, T, C))
    g, b = rng.standard_normal(C), rng.standard_normal(C)
    check_op(layernorm.forward, layernorm.backward, (x.copy(), g, b), rng)
    check_op(gelu.forward, gelu.backward, (3 * rng.standard_normal((B, T, 4 * C)),), rng)
    w, bias = rng.standard_normal((C, 4 * C)), rng.standard_normal(4 * C)
    check_op(linear.forward, linear.backward, (x.copy(), w, bias), rng)
    keep = dropout.make_mask(rng, x.shape, 0.3)
    check_op(lambda x: dropout.forward(x, 0.3, keep), dropout.backward, (x.copy(),), rng)

    idx, t0 = rng.integers(0, V, (B, T)), int(rng.integers(0, 3))
    wte, wpe = rng.standard_normal((V, C)), rng.standard_normal((T + 2, C))
    check_op(
        lambda wte, wpe: embedding.forward(idx, wte, wpe, t0), embedding.backward, (wte, wpe), rng
    )

    attn_keep = dropout.make_mask(rng, (B, H, T, T), 0.3)
    check_op(
        lambda qkv: attention.forward(qkv, H, 0.3, attn_keep),
        lambda d, c: attention.backward(d, c)[0],
        (rng.standard_normal((B, T, 3 * C)),),
        rng,
    )

    logits = rng.standard_normal((B, T, V))
    targets = rng.integers(0, V, (B, T))
    targets[rng.random((B, T)) < 0.3] = -100
    targets[0, 0] = 1  # at least one position counts
    _, cache = crossentropy.forward(logits, targets)
    numeric = numerical_grad(lambda: float(crossentropy.forward(logits, targets)[0]), logits)
    assert relative_error(crossentropy.backward(1.0, cache), numeric) < TOL


def test_embedding_backward_adds_into_a_given_gradient():
    """The tied head passes its share of wte's gradient; the embedding's rows are added to it."""
    rng = np.random.default_rng(8)
    idx = np.array([[2, 0, 2]])
    x, cache = embedding.forward(idx, rng.standard_normal((4, 3)), rng.standard_normal((5, 3)))
    dx, head = rng.standard_normal(x.shape), rng.standard_normal((4, 3))
    fresh, _ = embedding.backward(dx, cache)
    into, _ = embedding.backward(dx, cache, dwte=head.copy())
    np.testing.assert_allclose(into, head + fresh, rtol=1e-12)


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_whole_model_every_parameter(qkv_bias):
    cfg = GPTConfig(
        vocab_size=11,
        context_length=6,
        emb_dim=8,
        n_heads=2,
        n_layers=2,
        drop_rate=0.25,
        qkv_bias=qkv_bias,
    )
    rng = np.random.default_rng(7)
    params = init_params(cfg, seed=1, dtype=np.float64)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}
    idx = rng.integers(0, cfg.vocab_size, (2, 5))
    targets = rng.integers(0, cfg.vocab_size, (2, 5))
    targets[0, 1] = targets[1, 4] = -100
    masks = {n: rng.random(s) >= cfg.drop_rate for n, s in dropout_mask_shapes(cfg, 2, 5).items()}

    def loss():
        return float(forward(params, cfg, idx, targets, train=True, dropout_masks=masks)[1])

    _, _, cache = forward(params, cfg, idx, targets, train=True, dropout_masks=masks)
    grads = backward(cache)
    assert sorted(grads) == sorted(params)
    for name, value in params.items():
        assert relative_error(grads[name], numerical_grad(loss, value)) < TOL, name
