"""The page's sampling settings: what the settings panel shows and how its form becomes a sampler.

The panel's fields are the CLI's `generate` options. Number fields arrive as text typed by the
user (or as the numbers we sent as defaults), so every value is parsed here and checked twice:
first as a number of the right kind, then by `npgpt.sampling.SamplingSettings` itself, the one
place the rules live. A bad value is a `SettingsError` whose message names the field and says
what it accepts; the page shows it in the chat.

Empty optional fields mean "off": no top-k, no top-p, a fresh random seed for every answer.

>>> parse({"temperature": "0.8", "top_k": "40", "top_p": "", "max_new_tokens": 20, "seed": "7"})
SamplingSettings(temperature=0.8, top_k=40, top_p=None, max_new_tokens=20, seed=7, stop=())
>>> parse(DEFAULTS | {"top_p": "1.5"})
Traceback (most recent call last):
...
webapp.settings.SettingsError: top-p must be in (0, 1], got 1.5
"""

import math

from npgpt.sampling import SamplingSettings

# field id -> (label, kind, required, what it accepts)
FIELDS = {
    "temperature": ("Temperature", float, True, "a number >= 0; 0 = greedy"),
    "top_k": ("Top-k", int, False, "a whole number >= 1; empty = off"),
    "top_p": ("Top-p", float, False, "a number in (0, 1]; empty = off"),
    "max_new_tokens": ("Max new tokens", int, True, "a whole number >= 0"),
    "seed": ("Seed", int, False, "a whole number >= 0; empty = random"),
}
DEFAULTS = {"temperature": 1.0, "top_k": "", "top_p": "", "max_new_tokens": 50, "seed": ""}


class SettingsError(ValueError):
    """A value in the settings panel that the sampler cannot use."""


def parse_field(values, key):
    """The number in field `key`, or None when an optional field is empty."""
    label, kind, required, accepts = FIELDS[key]
    raw = values.get(key)
    text = "" if raw is None else str(raw).strip()
    if not text:
        if required:
            raise SettingsError(f"{label} is empty; it needs {accepts}")
        return None
    try:
        number = int(text) if kind is int and text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise SettingsError(f"{label} must be {accepts}, got {text!r}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise SettingsError(f"{label} must be {accepts}, got {text!r}")
    if kind is int:
        if not float(number).is_integer():
            raise SettingsError(f"{label} must be {accepts}, got {text!r}")
        return int(number)
    return number


def parse(values):
    """The form's values (field id -> text or number) as `SamplingSettings`."""
    fields = {key: parse_field(values, key) for key in FIELDS}
    if fields["seed"] is not None and fields["seed"] < 0:
        raise SettingsError(f"Seed must be {FIELDS['seed'][3]}, got {fields['seed']}")
    try:
        return SamplingSettings(**fields)
    except ValueError as err:
        # SamplingSettings names fields as Python does ("top_p"); the page calls them "top-p"
        message = str(err).replace("top_k", "top-k").replace("top_p", "top-p")
        raise SettingsError(message.replace("max_new_tokens", "max new tokens")) from None
