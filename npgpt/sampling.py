"""Choosing the next token from the model's logits: the one sampler both backends use.

Given logits z over the V tokens of the vocabulary:
  temperature 0   greedy: the arg-max (ties go to the lowest token id)
  temperature t   p = softmax(z / t): t < 1 sharpens the distribution, t > 1 flattens it
  top-k           keep the k most probable tokens (exactly k: ties broken by lower token id)
  top-p           keep the smallest set of most probable tokens whose mass reaches p (nucleus)
then renormalise what is kept and draw one token with `numpy.random.Generator`, by inverting
the cumulative distribution with one uniform number, so a seed fixes the whole sequence.

`SamplingSettings` holds these choices, and `max_new_tokens`, `seed` and `stop` strings. Each
setting is declared once, as a field: its default, its rule (checked on construction) and the
words people see, from which `cli.py generate` makes its flags and the web page its fields.

>>> import numpy as np
>>> settings = SamplingSettings(temperature=1.0, top_k=2)
>>> np.round(candidate_probs(np.log(np.array([0.1, 0.6, 0.3])), settings), 4)
array([0.    , 0.6667, 0.3333])
>>> greedy = SamplingSettings(temperature=0)
>>> sample_next(np.array([1.0, 3.0, 2.0]), np.random.default_rng(0), greedy)
1
"""

import dataclasses
import numbers
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

TOP_P_FIRST = 64  # the candidates top-p alone looks at first; a trained model's nucleus is often
# that small, and a larger one is found by growing it


def candidate_probs(logits, settings):
    """The distribution the next token is drawn from: zeros outside the top-k / top-p set.
    Computed in float64 whatever the logits' dtype, so both backends sample identically."""
    z = np.asarray(logits, dtype=np.float64) / settings.temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if settings.top_k is None and settings.top_p is None:
        return probs
    if settings.top_k is not None:
        order = most_probable(probs, settings.top_k)
    else:  # top-p alone: a few candidates first, more only while the nucleus needs them
        order = most_probable(probs, TOP_P_FIRST)
    if settings.top_p is not None:
        order = nucleus(probs, order, settings.top_p, may_grow=settings.top_k is None)
    kept = np.zeros_like(probs)
    kept[order] = probs[order]
    return kept / kept.sum()


def most_probable(probs, k):
    """The ids of the k most probable tokens, most probable first, ties broken by lower id:
    `np.argsort(-probs, kind="stable")[:k]`, without sorting all V: the k-th largest value by
    partition, every token above it, the lowest ids of those equal to it; then only they are
    sorted."""
    k = min(k, len(probs))
    if k == len(probs):
        return np.argsort(-probs, kind="stable")
    threshold = np.partition(probs, len(probs) - k)[len(probs) - k]  # the k-th largest
    above = np.flatnonzero(probs > threshold)
    tied = np.flatnonzero(probs == threshold)[: k - len(above)]  # ascending ids
    candidates = np.sort(np.concatenate([above, tied]))
    return candidates[np.argsort(-probs[candidates], kind="stable")]


def nucleus(probs, order, top_p, may_grow):
    """The shortest prefix of `order` whose mass reaches top_p (all of it if none does). The
    mass is a running sum in order, so a prefix's sums do not depend on what follows it: while
    the candidates found so far do not reach top_p and `may_grow`, four times as many are found."""
    mass = np.cumsum(probs[order])
    while may_grow and mass[-1] < top_p and len(order) < len(probs):
        order = most_probable(probs, 4 * len(order))
        mass = np.cumsum(probs[order])
    return order[: int(np.searchsorted(mass, top_p)) + 1]


def sample_next(logits, rng, settings):
    """One token id from the last position's logits `(V,)`."""
    if settings.temperature == 0:
        return int(np.argmax(logits))
    probs = candidate_probs(logits, settings)
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))


# ---- the settings, each declared once ------------------------------------------------------


class Setting(NamedTuple):
    """One sampling setting as people set it. `SamplingSettings` enforces its rule; `cli.py
    generate` makes a flag of it (top_k -> --top-k) and the web page a field (when it has a
    label), each with this default and these words."""

    name: str
    default: object  # None: off unless given; a tuple: any number of values (--stop, repeatable)
    kind: type  # what each value is: float, int or str
    allowed: Callable  # the rule, for a value of the right kind
    rule: str  # the rule in words: "top_p must be in (0, 1], got 1.5"
    help: str  # the flag's help
    label: str | None = None  # the page's field; None: not on the page
    accepts: str = ""  # what the page's field accepts, in words


def declare(default, kind, allowed, rule, help, label=None, accepts=""):
    """A field of `SamplingSettings`, carrying its `Setting` (named after the field)."""
    words = dict(kind=kind, allowed=allowed, rule=rule, help=help, label=label, accepts=accepts)
    return dataclasses.field(default=default, metadata=words)


def is_kind(setting, value):
    if isinstance(setting.default, tuple):
        return all(isinstance(item, setting.kind) for item in value)
    if isinstance(value, bool):  # a bool is an int to Python, never a number to a person
        return False
    return isinstance(value, numbers.Integral if setting.kind is int else numbers.Real)


def check(setting, value, called=None):
    """Raise ValueError unless `value` obeys `setting`; the message calls the setting `called`
    (its name unless a front end names it otherwise)."""
    if value is None and setting.default is None:
        return
    if not (is_kind(setting, value) and setting.allowed(value)):
        raise ValueError(f"{called or setting.name} must be {setting.rule}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen, and when generation stops."""

    # fmt: off
    temperature: float = declare(
        1.0, float, lambda t: t >= 0, rule=">= 0 (0 = greedy)", help="0 = greedy.",
        label="Temperature", accepts="a number >= 0; 0 = greedy",
    )
    top_k: int | None = declare(
        None, int, lambda k: k >= 1, rule="a positive integer or None",
        help="Keep the k most probable tokens.",
        label="Top-k", accepts="a whole number >= 1; empty = off",
    )
    top_p: float | None = declare(
        None, float, lambda mass: 0 < mass <= 1, rule="in (0, 1]",
        help="Nucleus sampling mass in (0, 1].",
        label="Top-p", accepts="a number in (0, 1]; empty = off",
    )
    max_new_tokens: int = declare(
        50, int, lambda n: n >= 0, rule=">= 0", help="Tokens to generate at most.",
        label="Max new tokens", accepts="a whole number >= 0",
    )
    seed: int | None = declare(
        None, int, lambda seed: seed >= 0, rule="a whole number >= 0 or None",
        help="Seed of the sampler (default: a fresh one each run).",
        label="Seed", accepts="a whole number >= 0; empty = random",
    )
    stop: tuple[str, ...] = declare(
        (), str, lambda stops: all(stops), rule="strings that are not empty",
        help="Stop before this string (repeatable).",
    )
    # fmt: on

    def __post_init__(self):
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        for setting in SETTINGS:
            check(setting, getattr(self, setting.name))


SETTINGS = tuple(
    Setting(field.name, field.default, **field.metadata)
    for field in dataclasses.fields(SamplingSettings)
)
