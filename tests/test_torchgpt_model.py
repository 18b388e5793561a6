"""torchgpt.model against npgpt: one small float64 smoke test of the contract (the exhaustive
comparison is the parity suite's). Tolerance: both sides compute the same float64 formulas in a
different order, so they differ by rounding, ~1e-15 relative; 1e-10 leaves room for the
accumulation over a few hundred terms while still catching any real difference (>= 1e-6)."""

import numpy as np
import pytest
import torch

import npgpt
import torchgpt
from npgpt.config import GPTConfig
from npgpt.model import decode, draw_dropout_masks
from npgpt.names import activation_names, param_shapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-10
CFG = GPTConfig.preset("tiny", vocab_size=101, context_length=16, drop_rate=0.2)
B, T = 2, 9


def batch(seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, CFG.vocab_size, size=(B, T))
    targets = rng.integers(0, CFG.vocab_size, size=(B, T))
    targets[0, :3] = -100  # ignored positions (a prompt) must not count in the mean
    return idx, targets


def close(a, b):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    assert a.shape == b.shape
    return np.max(np.abs(a - b)) <= TOL * max(1.0, np.max(np.abs(b)))


@pytest.mark.parametrize("train", [False, True])
def test_activations_and_grads_match_npgpt_float64(train):
    params = npgpt.init_params(CFG, seed=3, dtype=np.float64)
    idx, targets = batch()
    masks = draw_dropout_masks(CFG, B, T, np.random.default_rng(7)) if train else None
    np_logits, np_loss, cache = npgpt.forward(
        params, CFG, idx, targets, train=train, dropout_masks=masks
    )
    np_acts = dict(cache.activations)  # backward uses the cache up
    np_grads, np_act_grads = npgpt.backward(cache, return_activation_grads=True)

    model = torchgpt.GPT.from_params(CFG, params, attn="math")
    assert model.wte.weight.dtype == torch.float64
    model.train(train)
    capture = {}
    tmasks = None if masks is None else {k: torch.from_numpy(m) for k, m in masks.items()}
    logits, loss = model(
        torch.from_numpy(idx), torch.from_numpy(targets), dropout_masks=tmasks, capture=capture
    )
    loss.backward()

    assert close(logits, np_logits)
    assert abs(loss.item() - float(np_loss)) <= TOL
    assert sorted(capture) == sorted(activation_names(CFG))
    for name in activation_names(CFG):
        assert close(capture[name], np_acts[name]), name
        assert close(capture[name].grad, np_act_grads[name]), name
    named = dict(model.named_parameters())
    assert sorted(named) == sorted(param_shapes(CFG))
    for name, grad in np_grads.items():
        assert close(named[name].grad, grad), name


def test_math_and_sdpa_agree():
    params = npgpt.init_params(CFG, seed=1, dtype=np.float64)
    idx, targets = (torch.from_numpy(a) for a in batch(1))
    results = {}
    for attn in ("math", "sdpa"):
        model = torchgpt.GPT.from_params(CFG, params, attn=attn).eval()
        logits, loss = model(idx, targets)
        loss.backward()
        results[attn] = (logits, loss, model.h[0].attn.c_attn.weight.grad)
    for a, b in zip(results["math"], results["sdpa"], strict=True):
        assert close(a, b)


def test_kv_cache_equals_full_recompute():
    params = npgpt.init_params(CFG, seed=2, dtype=np.float64)
    idx = torch.from_numpy(batch(2)[0])
    for attn in ("math", "sdpa"):
        model = torchgpt.GPT.from_params(CFG, params, attn=attn).eval()
        full, _ = model(idx)
        first, kv = model.decode(idx[:, :5])  # a prompt of 5, then 2 tokens, then 1, then 1
        second, kv = model.decode(idx[:, 5:7], kv)
        third, kv = model.decode(idx[:, 7:8], kv)
        fourth, kv = model.decode(idx[:, 8:9], kv)
        assert kv[0][0].shape == (B, CFG.n_heads, T, CFG.head_dim)
        assert close(torch.cat([first, second, third, fourth], dim=1), full)
    _, np_kv = decode(params, CFG, idx.numpy())
    assert close(kv[1][1], np_kv[1][1])


def test_round_trip_is_bit_exact(tmp_path):
    for dtype in (np.float32, np.float64):
        params = npgpt.init_params(CFG, seed=4, dtype=dtype)
        back = torchgpt.GPT.from_params(CFG, params).to_params()
        assert sorted(back) == sorted(params)
        for name, value in params.items():
            assert back[name].dtype == value.dtype
            assert np.array_equal(back[name], value), name
    model = torchgpt.GPT(CFG, seed=5)
    torchgpt.save(tmp_path / "ckpt", model)
    again = torchgpt.load(tmp_path / "ckpt", attn="math")
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    config, params = npgpt.load(tmp_path / "ckpt")
    assert config == CFG and np.array_equal(
        params["wte.weight"], model.wte.weight.numpy(force=True)
    )


def test_bf16_autocast_runs_close_to_float32():
    model = torchgpt.GPT(CFG, attn="sdpa", seed=6).eval()
    idx, targets = (torch.from_numpy(a) for a in batch(3))
    _, loss32 = model(idx, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss16 = model(idx, targets)
    loss16.backward()
    assert logits.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    # bf16 keeps 8 mantissa bits: ~0.4% relative per rounding; the loss (~log V = 4.6) moves
    # by far less than 5% unless something is computed wrongly.
    assert abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_sdpa_refuses_an_attention_dropout_mask():
    model = torchgpt.GPT(CFG, attn="sdpa").train()
    idx = torch.from_numpy(batch()[0])
    masks = {"h.0.attn.drop": torch.ones(B, CFG.n_heads, T, T, dtype=torch.bool)}
    with pytest.raises(ValueError, match="attn='math'"):
        model(idx, dropout_masks=masks)


def test_resolve_device_rejects_unknown_names():
    assert torchgpt.resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device"):
        torchgpt.resolve_device("tpu")


@pytest.mark.parametrize("attn", ["sdpa", "math"])
def test_training_forward_compiles_as_one_graph(attn):
    """`--compile`: with no capture, masks or cache, dynamo traces the whole forward and loss
    as one graph (a graph break would split it and cost speed)."""
    model = torchgpt.GPT(CFG, attn=attn, seed=0).train()
    idx, targets = (torch.from_numpy(a) for a in batch())
    explained = torch._dynamo.explain(model)(idx, torch.clamp(targets, min=0))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
