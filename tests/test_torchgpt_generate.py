"""torchgpt generation: the KV cache equals recomputation, and on a float64 checkpoint both
backends pick the very same tokens, greedy and seeded top-k/top-p, across the sliding window."""

import numpy as np
import pytest

import npgpt
import torchgpt
from npgpt.config import GPTConfig
from npgpt.generate import generate as np_generate
from npgpt.sampling import SamplingSettings
from torchgpt.generate import generate as torch_generate

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
