"""The sampler on hand-made distributions: what each filter keeps, and seeded draws."""

import numpy as np
import pytest

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
