"""Choosing the next token from the model's logits: the one sampler both backends use.

Given logits z over the V tokens of the vocabulary:
  temperature 0   greedy: the arg-max (ties go to the lowest token id)
  temperature t   p = softmax(z / t): t < 1 sharpens the distribution, t > 1 flattens it
  top-k           keep the k most probable tokens (exactly k: ties broken by lower token id)
  top-p           keep the smallest set of most probable tokens whose mass reaches p (nucleus)
then renormalise what is kept and draw one token with `numpy.random.Generator`, by inverting
the cumulative distribution with one uniform number, so a seed fixes the whole sequence.

>>> import numpy as np
>>> settings = SamplingSettings(temperature=1.0, top_k=2)
>>> np.round(candidate_probs(np.log(np.array([0.1, 0.6, 0.3])), settings), 4)
array([0.    , 0.6667, 0.3333])
>>> greedy = SamplingSettings(temperature=0)
>>> sample_next(np.array([1.0, 3.0, 2.0]), np.random.default_rng(0), greedy)
1
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = 50
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if not (isinstance(self.temperature, int | float) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")


def candidate_probs(logits, settings):
    """The distribution the next token is drawn from: zeros outside the top-k / top-p set.
    Computed in float64 whatever the logits' dtype, so both backends sample identically."""
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


def sample_next(logits, rng, settings):
    """One token id from the last position's logits `(V,)`."""
    if settings.temperature == 0:
        return int(np.argmax(logits))
    probs = candidate_probs(logits, settings)
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))
