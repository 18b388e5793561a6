"""The sampler on hand-made distributions: what each filter keeps, and seeded draws."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npgpt.sampling import SamplingSettings, candidate_probs, sample_next


def logits_of(probs):
    return np.log(np.asarray(probs, dtype=np.float64))


def test_greedy_picks_argmax_and_lowest_id_on_ties():
    greedy = SamplingSettings(temperature=0)
    assert sample_next(np.array([0.1, 2.0, -1.0]), None, greedy) == 1
    assert sample_next(np.array([3.0, 1.0, 3.0]), None, greedy) == 0


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_keeps_exactly_k(k):
    probs = candidate_probs(logits_of([0.05, 0.4, 0.1, 0.3, 0.15]), SamplingSettings(top_k=k))
    assert np.count_nonzero(probs) == k
    kept = set(np.nonzero(probs)[0])
    assert kept == set([1, 3, 4, 2, 0][:k])
    np.testing.assert_allclose(probs.sum(), 1.0)


def test_top_k_ties_keep_exactly_k_lowest_ids_first():
    probs = candidate_probs(np.zeros(6), SamplingSettings(top_k=4))
    np.testing.assert_array_equal(np.nonzero(probs)[0], [0, 1, 2, 3])
    np.testing.assert_allclose(probs[:4], 0.25)


@pytest.mark.parametrize(
    "p,expected",
    [
        (0.3, {1}),
        (0.4, {1}),
        (0.41, {1, 3}),
        (0.7, {1, 3}),
        (0.71, {1, 3, 4}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(p, expected):
    probs = candidate_probs(logits_of([0.05, 0.4, 0.1, 0.3, 0.15]), SamplingSettings(top_p=p))
    assert set(np.nonzero(probs)[0]) == expected
    np.testing.assert_allclose(probs.sum(), 1.0)


def test_top_k_and_top_p_combine_as_the_smaller_set():
    settings = SamplingSettings(top_k=2, top_p=0.9)
    probs = candidate_probs(logits_of([0.05, 0.4, 0.1, 0.3, 0.15]), settings)
    assert set(np.nonzero(probs)[0]) == {1, 3}


def test_temperature_sharpens_and_flattens():
    z = logits_of([0.2, 0.8])
    cold = candidate_probs(z, SamplingSettings(temperature=0.5))
    hot = candidate_probs(z, SamplingSettings(temperature=2.0))
    np.testing.assert_allclose(cold, np.array([0.04, 0.64]) / 0.68)
    np.testing.assert_allclose(hot, np.sqrt([0.2, 0.8]) / np.sqrt([0.2, 0.8]).sum())


def sorted_candidate_probs(logits, settings):
    """The straightforward form, sorting all V tokens: what candidate_probs must equal exactly."""
    z = np.asarray(logits, dtype=np.float64) / settings.temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if settings.top_k is None and settings.top_p is None:
        return probs
    order = np.argsort(-probs, kind="stable")  # most probable first; ties: lower id first
    keep = len(order)
    if settings.top_k is not None:
        keep = min(keep, settings.top_k)
    if settings.top_p is not None:
        mass = np.cumsum(probs[order])
        keep = min(keep, int(np.searchsorted(mass, settings.top_p)) + 1)
    kept = np.zeros_like(probs)
    kept[order[:keep]] = probs[order[:keep]]
    return kept / kept.sum()


# logits with many ties: a few repeated values among arbitrary ones, and masked (-inf) tokens
TIED_LOGITS = st.lists(
    st.one_of(st.sampled_from([0.0, 0.0, 1.0, -2.0, -np.inf]), st.floats(-20, 20)),
    min_size=1,
    max_size=1500,
).filter(lambda z: max(z) > -np.inf)


@given(
    logits=TIED_LOGITS,
    temperature=st.floats(0.05, 4.0),
    top_k=st.one_of(st.none(), st.integers(1, 1600)),
    top_p=st.one_of(st.none(), st.floats(0.01, 1.0), st.just(1.0)),
)
def test_candidates_equal_the_full_sort_exactly(logits, temperature, top_k, top_p):
    settings = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p)
    expected = sorted_candidate_probs(logits, settings)
    assert np.array_equal(candidate_probs(logits, settings), expected)


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("top_k", [None, 1, 40, 50257])
@pytest.mark.parametrize("spread", [0.0, 0.05, 3.0])
def test_candidates_equal_the_full_sort_over_gpt2s_vocabulary(top_p, top_k, spread):
    """At V = 50257, from a flat distribution (every token tied: the nucleus grows to cover
    half the vocabulary and more) to a peaked one (a few dozen tokens hold the mass)."""
    logits = np.round(np.random.default_rng(0).standard_normal(50257) * spread, 1)
    settings = SamplingSettings(top_k=top_k, top_p=top_p)
    expected = sorted_candidate_probs(logits, settings)
    assert np.array_equal(candidate_probs(logits, settings), expected)
    assert np.count_nonzero(expected) >= 1


def test_seeded_draws_repeat_and_follow_the_distribution():
    z = logits_of([0.1, 0.2, 0.7])
    settings = SamplingSettings(seed=3)
    draws = [sample_next(z, np.random.default_rng(7), settings) for _ in range(3)]
    assert len(set(draws)) == 1
    rng = np.random.default_rng(0)
    counts = np.bincount([sample_next(z, rng, settings) for _ in range(20000)], minlength=3)
    np.testing.assert_allclose(counts / 20000, [0.1, 0.2, 0.7], atol=0.015)


def test_filtered_tokens_are_never_drawn():
    z = logits_of([0.3, 0.3, 0.2, 0.2])
    rng = np.random.default_rng(1)
    draws = {sample_next(z, rng, SamplingSettings(top_k=2)) for _ in range(500)}
    assert draws == {0, 1}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0}, "top_p"),
        ({"max_new_tokens": -2}, "max_new_tokens"),
        ({"stop": ("",)}, "stop"),
        ({"seed": -1}, "seed must be a whole number >= 0"),
        ({"top_k": 2.5}, "top_k must be a positive integer"),
        ({"temperature": True}, "temperature must be >= 0"),
        ({"max_new_tokens": "5"}, "max_new_tokens must be >= 0, got '5'"),
    ],
)
def test_invalid_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**kwargs)


def test_stop_takes_one_string_or_several():
    assert SamplingSettings(stop="\n\n").stop == ("\n\n",)
    assert SamplingSettings(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingSettings(top_k=np.int64(3), seed=np.uint32(7)).top_k == 3
