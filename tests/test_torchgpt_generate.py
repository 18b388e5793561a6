"""torchgpt generation: the KV cache equals recomputation, and on a float64 checkpoint both
backends pick the very same tokens, greedy and seeded top-k/top-p, across the sliding window,
with each of torchgpt's KV caches (concatenated, static, and on CUDA the graph-replayed one)."""

import numpy as np
import pytest
import torch

import npgpt
import torchgpt
from npgpt.config import GPTConfig
from npgpt.generate import generate as np_generate
from npgpt.sampling import SamplingSettings
from parity.oracle import errors
from parity.tolerances import tolerance
from torchgpt.generate import generate as torch_generate
from torchgpt.static_kv import StaticKV

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = GPTConfig(vocab_size=50257, context_length=12, emb_dim=16, n_heads=2, n_layers=2)
SETTINGS = [
    SamplingSettings(temperature=0, max_new_tokens=16),
    SamplingSettings(top_k=50, top_p=0.9, seed=4, max_new_tokens=16),
    SamplingSettings(temperature=1.3, top_p=0.95, seed=11, max_new_tokens=16),
]
NUMPY_TOKENS = {}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "ckpt"
    npgpt.save(path, CFG, npgpt.init_params(CFG, seed=5, dtype=np.float64))
    return path


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("attn", ["math", "sdpa"])
def test_both_backends_give_identical_tokens(checkpoint, settings, attn):
    model = torchgpt.load(checkpoint, attn=attn, dtype="float64")
    prompt = [464, 2068, 7586]  # 3 tokens + 16 new > context 12: the window slides
    if settings not in NUMPY_TOKENS:  # npgpt's answer, computed once per setting
        config, params = npgpt.load(checkpoint, dtype=np.float64)
        NUMPY_TOKENS[settings] = list(np_generate(params, config, prompt, settings))
    expected = NUMPY_TOKENS[settings]
    got = list(torch_generate(model, prompt, settings))
    assert len(expected) > 0
    assert got == expected
    assert list(torch_generate(model, prompt, settings, use_kv_cache=False)) == expected


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("kv_mode", ["static", "concat"])
def test_every_kv_cache_gives_the_same_tokens(checkpoint, settings, kv_mode):
    model = torchgpt.load(checkpoint, attn="sdpa", dtype="float64")
    prompt = [464, 2068, 7586]
    expected = list(torch_generate(model, prompt, settings, use_kv_cache=False))
    assert len(expected) > 0
    assert list(torch_generate(model, prompt, settings, kv_mode=kv_mode)) == expected


def close(candidate, reference, name):
    return errors(reference.numpy(), candidate.numpy())[1] <= tolerance("float64", name)


@pytest.mark.parametrize("attn", ["math", "sdpa"])
def test_static_kv_with_fixed_shapes_equals_the_concatenated_cache(attn):
    """What the CUDA graph records, run eagerly on the CPU: every step attends to all max_len
    slots, the position read from a tensor (`kv.pos`), later slots masked."""
    model = torchgpt.GPT(CFG, attn=attn, seed=3).to(torch.float64).eval()
    ids = torch.tensor([[464, 2068, 7586, 11, 290, 262, 13]])
    fixed = StaticKV(CFG.n_layers, CFG.context_length, fixed_shapes=True)
    logits, kv = model.decode(ids[:, :3])
    fixed_logits, _ = model.decode(ids[:, :3], fixed)
    assert close(fixed_logits, logits, "logits")
    for t in range(3, ids.shape[1]):
        logits, kv = model.decode(ids[:, t : t + 1], kv)
        fixed.pos = torch.tensor([fixed.length])
        fixed_logits, _ = model.decode(ids[:, t : t + 1], fixed)
        assert close(fixed_logits, logits, "logits"), t
    assert fixed.length == ids.shape[1]
    # layer 1's keys carry layer 0's attention, rounded differently over masked slots by sdpa
    assert close(fixed.keys[1][:, :, : fixed.length], kv[1][0], "h.1.attn.k")
    assert not fixed.values[0][:, :, fixed.length :].any()  # the slots not yet written


def test_a_full_static_kv_and_a_graph_off_cuda_are_refused():
    model = torchgpt.GPT(CFG, seed=1).eval()
    kv = StaticKV(CFG.n_layers, max_len=4)
    model.decode(torch.tensor([[1, 2, 3]]), kv)
    with pytest.raises(ValueError, match="3 cached \\+ 2 new tokens do not fit"):
        model.decode(torch.tensor([[4, 5]]), kv)
    with pytest.raises(ValueError, match="longer than the model's context_length 12"):
        model.decode(torch.tensor([[1]]), StaticKV(CFG.n_layers, max_len=13))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        next(torch_generate(model, [1], SETTINGS[0], kv_mode="graph"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: CUDA graphs untested")
@pytest.mark.parametrize("settings", SETTINGS)
def test_cuda_graph_decode_gives_the_same_tokens(checkpoint, settings):
    model = torchgpt.load(checkpoint, attn="sdpa", dtype="float64", device="cuda")
    prompt = [464, 2068, 7586]
    expected = list(torch_generate(model, prompt, settings, kv_mode="static"))
    assert len(expected) > 0
    assert list(torch_generate(model, prompt, settings, kv_mode="graph")) == expected
