"""Generation parity, float64: the same tokens from both backends, and a KV cache that changes
nothing.

  * greedy and seeded sampled generation (temperature, top-k, top-p) give identical token ids in
    npgpt and torchgpt, with and without the KV cache, also past the context length, where the
    window slides and the cache is rebuilt;
  * in each backend, logits computed incrementally (a prefill, then one token at a time on the
    cached keys/values) equal those of one full forward over the whole sequence, and the two
    backends' caches hold the same keys and values.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npgpt.generate
import torchgpt
import torchgpt.generate
from npgpt import model as npmodel
from npgpt.sampling import SamplingSettings
from parity import oracle
from parity.strategies import SCALES, configs, random_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def settings_strategy(vocab_size, context_length):
    return st.builds(
        SamplingSettings,
        temperature=st.sampled_from([0.0, 0.7, 1.0, 1.5]),
        top_k=st.one_of(st.none(), st.integers(1, vocab_size)),
        top_p=st.one_of(st.none(), st.floats(0.05, 1.0)),
        max_new_tokens=st.integers(1, context_length + 4),  # past the window: it slides
        seed=st.integers(0, 2**32 - 1),
    )


@st.composite
def generation_cases(draw):
    config = draw(configs(dropout=False))
    params = random_params(
        config, draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from(SCALES)), np.float64
    )
    n_prompt = draw(st.integers(1, config.context_length))
    prompt = draw(
        st.lists(st.integers(0, config.vocab_size - 1), min_size=n_prompt, max_size=n_prompt)
    )
    return config, params, prompt, draw(settings_strategy(config.vocab_size, config.context_length))


@given(case=generation_cases())
def test_same_tokens_in_both_backends(case):
    config, params, prompt, settings = case
    gpt = torchgpt.GPT.from_params(config, params, attn="sdpa")
    runs = {
        (backend, cached): list(
            npgpt.generate.generate(params, config, prompt, settings, cached)
            if backend == "npgpt"
            else torchgpt.generate.generate(gpt, prompt, settings, cached)
        )
        for backend in ("npgpt", "torchgpt")
        for cached in (True, False)
    }
    reference = runs["npgpt", False]
    for key, tokens in runs.items():
        assert tokens == reference, f"{key} generated {tokens}, npgpt without cache {reference}"


@given(
    config=configs(dropout=False),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_kv_cache_equals_full_recompute(config, seed, data):
    T = data.draw(st.integers(1, config.context_length), label="T")
    n_prefill = data.draw(st.integers(1, T), label="prefill")
    B = data.draw(st.integers(1, 2), label="B")
    params = random_params(config, seed, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, config.vocab_size, size=(B, T))
    gpt = torchgpt.GPT.from_params(config, params, attn="math").eval()
    chunks = [(0, n_prefill)] + [(t, t + 1) for t in range(n_prefill, T)]

    full = {"npgpt": npmodel.forward(params, config, idx)[0]}
    with torch.no_grad():
        full["torchgpt"] = oracle.to_numpy(gpt(torch.from_numpy(idx))[0])
    steps = {"npgpt": [], "torchgpt": []}
    np_kv = torch_kv = None
    for start, stop in chunks:
        logits, np_kv = npmodel.decode(params, config, idx[:, start:stop], np_kv)
        steps["npgpt"].append(logits)
        logits, torch_kv = gpt.decode(torch.from_numpy(idx[:, start:stop]), torch_kv)
        steps["torchgpt"].append(oracle.to_numpy(logits))

    for backend in steps:
        cached = np.concatenate(steps[backend], axis=1)
        comparison = oracle.compare(
            {"logits": full[backend]}, {"logits": cached}, "float64", label=f"{backend} KV cache"
        )
        oracle.assert_parity(comparison)
    kv_names = [f"h.{i}.{part}" for i in range(config.n_layers) for part in ("k", "v")]
    np_named = dict(zip(kv_names, (a for pair in np_kv for a in pair), strict=True))
    torch_named = dict(
        zip(kv_names, (oracle.to_numpy(a) for pair in torch_kv for a in pair), strict=True)
    )
    oracle.assert_parity(oracle.compare(np_named, torch_named, "float64", label="KV caches"))
