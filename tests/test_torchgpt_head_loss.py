"""The chunked LM head + cross-entropy (torchgpt/head_loss.py) against the plain path: the same
loss and the same gradients, with the vocabulary padded to 50,304 inside the loss while the
model, its state_dict and its checkpoints keep 50,257 rows. Tolerances: parity/tolerances.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import npgpt
import torchgpt
from npgpt.config import GPTConfig
from parity.oracle import errors, matmul_precision
from parity.tolerances import tolerance
from torchgpt.head_loss import VOCAB_MULTIPLE, head_loss, padded_weight

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = GPTConfig(vocab_size=50257, context_length=16, emb_dim=16, n_heads=2, n_layers=2)
B, T = 3, 11  # 33 rows: chunks of 8 leave a short last one


def batch(seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, CFG.vocab_size, (B, T))
    targets = rng.integers(0, CFG.vocab_size, (B, T))
    targets[0, :4] = targets[2, -1] = -100  # ignored positions take no part
    return torch.from_numpy(idx), torch.from_numpy(targets)


def assert_close(candidate, reference, mode, name):
    _, rel = errors(reference.detach().numpy(), candidate.detach().numpy())
    assert rel <= tolerance(mode, name), f"{name}: relative error {rel:.3g} in {mode}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("vocab_multiple", [1, VOCAB_MULTIPLE])
def test_head_loss_equals_the_plain_cross_entropy(dtype, vocab_multiple):
    mode = "float64" if dtype == torch.float64 else "float32"
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, CFG.emb_dim, dtype=dtype, generator=generator)
    weight = torch.randn(CFG.vocab_size, CFG.emb_dim, dtype=dtype, generator=generator)
    targets = batch(2)[1]
    results = []
    for chunked in (True, False):
        x_, w_ = x.clone().requires_grad_(), weight.clone().requires_grad_()
        if chunked:
            loss = head_loss(x_, w_, targets, rows_per_chunk=8, vocab_multiple=vocab_multiple)
        else:
            flat = (x_ @ w_.T).reshape(-1, CFG.vocab_size)
            loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100)
        (3.0 * loss).backward()  # backward scales by what it receives
        results.append((loss, x_.grad, w_.grad))
    (loss, dx, dw), (plain_loss, plain_dx, plain_dw) = results
    assert loss.dtype == dtype and dw.shape == (CFG.vocab_size, CFG.emb_dim)
    assert_close(loss, plain_loss, mode, "loss")
    assert_close(dx, plain_dx, mode, "ln_f.grad")
    assert_close(dw, plain_dw, mode, "wte.weight.grad")
    with torch.no_grad():  # evaluation: the loss alone
        assert_close(head_loss(x, weight, targets, 8, vocab_multiple), plain_loss, mode, "loss")


def test_padding_is_zero_rows_up_to_a_multiple_of_64():
    weight = torch.randn(CFG.vocab_size, 4)
    padded = padded_weight(weight, VOCAB_MULTIPLE, torch.bfloat16)
    assert padded.shape == (50304, 4) and padded.dtype == torch.bfloat16
    assert torch.equal(padded[: CFG.vocab_size], weight.to(torch.bfloat16))
    assert not padded[CFG.vocab_size :].any()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_padded_chunked_model_matches_the_plain_model(dtype):
    """Same loss and gradients as `chunked_loss=False` (which parity checks against npgpt),
    and as npgpt itself; the model's embedding keeps its 50,257 rows throughout."""
    mode = np.dtype(dtype).name
    params = npgpt.init_params(CFG, seed=3, dtype=dtype)
    idx, targets = batch(4)
    runs = {}
    for chunked in (True, False):
        model = torchgpt.GPT.from_params(CFG, params, attn="math", chunked_loss=chunked)
        model.loss_chunk_rows, model.loss_vocab_multiple = 8, VOCAB_MULTIPLE
        logits, loss = model(idx, targets)
        loss.backward()
        runs[chunked] = (logits, loss, {n: p.grad for n, p in model.named_parameters()})
    (logits, loss, grads), (plain_logits, plain_loss, plain_grads) = runs[True], runs[False]
    assert logits is None and plain_logits.shape == (B, T, CFG.vocab_size)
    assert grads["wte.weight"].shape == (CFG.vocab_size, CFG.emb_dim)
    assert_close(loss, plain_loss, mode, "loss")
    for name, grad in plain_grads.items():
        assert_close(grads[name], grad, mode, name + ".grad")
    _, np_loss, cache = npgpt.forward(params, CFG, idx.numpy(), targets.numpy())
    assert_close(loss, torch.tensor(np_loss), mode, "loss")
    for name, grad in npgpt.backward(cache).items():
        assert_close(grads[name], torch.from_numpy(grad), mode, name + ".grad")


def test_checkpoints_and_logits_keep_50257_rows(tmp_path):
    model = torchgpt.GPT(CFG, attn="math", seed=5, chunked_loss=True)
    model.loss_vocab_multiple = VOCAB_MULTIPLE
    idx, targets = batch(6)
    model(idx, targets)[1].backward()
    assert model.wte.weight.shape == (CFG.vocab_size, CFG.emb_dim)
    assert model.state_dict()["wte.weight"].shape == (CFG.vocab_size, CFG.emb_dim)
    torchgpt.save(tmp_path / "ckpt", model)
    _, params = npgpt.load(tmp_path / "ckpt")
    assert params["wte.weight"].shape == (CFG.vocab_size, CFG.emb_dim)
    again = torchgpt.load(tmp_path / "ckpt", attn="math")
    with torch.no_grad():
        logits, _ = again(idx)
        assert logits.shape == (B, T, CFG.vocab_size)
        assert torch.equal(logits, model(idx)[0])


def test_bf16_autocast_chunks_agree_with_the_plain_path():
    model = torchgpt.GPT(CFG, attn="sdpa", seed=7, chunked_loss=True)
    model.loss_vocab_multiple = VOCAB_MULTIPLE
    idx, targets = batch(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, targets)
        model.chunked_loss = False
        _, plain = model(idx, targets)
    loss.backward()
    assert logits is None and loss.dtype == torch.float32
    # both paths round the same logits to bfloat16 (8 bits, 0.4%); the log-sum-exp and the mean
    # are float32 in both, so they differ by far less than one bf16 rounding of the loss
    assert abs(loss.item() - plain.item()) < 4e-3 * plain.item()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_fp16_autocast_and_capture_take_the_plain_path():
    model = torchgpt.GPT(CFG, attn="math", seed=9, chunked_loss=True)
    idx, targets = batch(10)
    logits, _ = model(idx, targets, capture={})
    assert logits is not None
    with torch.autocast("cpu", dtype=torch.float16):
        assert not model.chunks_pay(None, idx.device)
    assert model.chunks_pay(None, idx.device)


def test_targets_of_the_wrong_shape_are_refused():
    x, weight = torch.randn(2, 3, 4), torch.randn(10, 4)
    with pytest.raises(ValueError, match=r"targets have shape \(2, 4\)"):
        head_loss(x, weight, torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the CUDA default untested")
def test_on_cuda_the_padded_chunks_are_the_default_and_agree():
    params = npgpt.init_params(CFG, seed=11, dtype=np.float32)
    idx, targets = (t.cuda() for t in batch(12))
    runs = []
    for chunked in (None, False):  # None: chunked on CUDA, vocabulary padded to 50,304
        model = torchgpt.GPT.from_params(CFG, params, attn="sdpa", device="cuda")
        model.chunked_loss = chunked
        with matmul_precision("cuda"):  # plain float32 matmuls, no TF32
            logits, loss = model(idx, targets)
            loss.backward()
        runs.append((logits, loss, {n: p.grad.cpu() for n, p in model.named_parameters()}))
    (logits, loss, grads), (_, plain_loss, plain_grads) = runs
    assert logits is None
    assert_close(loss.cpu(), plain_loss.cpu(), "cuda-float32", "loss")
    for name, grad in plain_grads.items():
        assert_close(grads[name], grad, "cuda-float32", name + ".grad")
