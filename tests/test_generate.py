"""Generation: the KV cache equals recomputation, the window slides, text streams correctly."""

import numpy as np
import pytest

from npgpt import model
from npgpt.config import GPTConfig
from npgpt.generate import generate, generate_tokens, numpy_step, stream_text
from npgpt.sampling import SamplingSettings
from npgpt.tokenizer import EOT_ID, get_tokenizer

CFG = GPTConfig(vocab_size=50257, context_length=12, emb_dim=16, n_heads=2, n_layers=2)


@pytest.fixture(scope="module")
def params64():
    return model.init_params(CFG, seed=3, dtype=np.float64)


def test_cached_step_logits_equal_full_recompute(params64):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, CFG.vocab_size, 10).tolist()
    full, _, _ = model.forward(params64, CFG, np.array([ids]))
    step = numpy_step(params64, CFG)
    logits, past_kv = step(ids[:4], None)
    got = [logits]
    for i in range(4, len(ids)):
        logits, past_kv = step([ids[i]], past_kv)
        got.append(logits)
    expected = full[0, 3:]
    rel = np.abs(np.array(got) - expected).max() / np.abs(expected).max()
    assert rel <= 1e-12


@pytest.mark.parametrize("prompt_len", [0, 3, 11, 12, 20])
@pytest.mark.parametrize(
    "settings",
    [
        SamplingSettings(temperature=0, max_new_tokens=15),
        SamplingSettings(top_k=50, top_p=0.9, seed=4, max_new_tokens=15),
    ],
)
def test_cache_and_no_cache_give_the_same_tokens_past_the_window(params64, prompt_len, settings):
    prompt = np.random.default_rng(prompt_len).integers(0, EOT_ID, prompt_len).tolist()
    with_cache = list(generate(params64, CFG, prompt, settings))
    without = list(generate(params64, CFG, prompt, settings, use_kv_cache=False))
    assert with_cache == without
    assert len(with_cache) == 15  # random weights never pick EOT among 50257 here


def test_each_cached_token_costs_one_position(params64):
    fed = []
    step = numpy_step(params64, CFG)

    def counting_step(new_ids, past_kv):
        fed.append(len(new_ids))
        return step(new_ids, past_kv)

    settings = SamplingSettings(temperature=0, max_new_tokens=12)
    list(generate_tokens(counting_step, [1, 2, 3], CFG.context_length, settings))
    # prefill 3, then one position per token until the 12-position window is full, then slide
    assert fed == [3] + [1] * 9 + [12, 12]


def test_stops_at_end_of_text_without_yielding_it():
    script = iter([7, 8, EOT_ID, 9])  # the model "says" 7, 8, then end-of-text

    def step(new_ids, past_kv):
        logits = np.zeros(EOT_ID + 1)
        logits[next(script)] = 1.0
        return logits, None

    settings = SamplingSettings(temperature=0, max_new_tokens=10)
    assert list(generate_tokens(step, [1], 8, settings)) == [7, 8]


def test_stream_text_reassembles_split_characters():
    tok = get_tokenizer()
    text = "naïve 🦙 café — 東京"
    assert "".join(stream_text(iter(tok.encode(text)))) == text


def test_stream_text_stops_at_stop_string_and_closes_the_stream():
    tok = get_tokenizer()
    consumed = []

    def tokens():
        for t in tok.encode("alpha beta\n\ngamma delta"):
            consumed.append(t)
            yield t

    out = "".join(stream_text(tokens(), stop=("\n\n",)))
    assert out == "alpha beta"
    assert len(consumed) < len(tok.encode("alpha beta\n\ngamma delta"))


def test_stream_text_holds_back_a_possible_stop_prefix():
    tok = get_tokenizer()
    pieces = list(stream_text(iter(tok.encode("one END two")), stop=("ENDING",)))
    assert "".join(pieces) == "one END two"
