"""The page's sampling settings: what the settings panel shows and how its form becomes a sampler.

The panel's fields are `npgpt.sampling`'s settings that have a label (all but the stop strings),
each with the label, default and description declared there. Number fields arrive as text typed
by the user (or as the numbers we sent as defaults), so every value is parsed here, as a number
of the setting's kind, then checked by the setting's own rule. A bad value is a `SettingsError`
whose message names the field as the panel does and says what it accepts; the page shows it in
the chat.

Empty optional fields mean "off": no top-k, no top-p, a fresh random seed for every answer.

>>> parse({"temperature": "0.8", "top_k": "40", "top_p": "", "max_new_tokens": 20, "seed": "7"})
SamplingSettings(temperature=0.8, top_k=40, top_p=None, max_new_tokens=20, seed=7, stop=())
>>> parse(DEFAULTS | {"top_p": "1.5"})
Traceback (most recent call last):
...
webapp.settings.SettingsError: top-p must be in (0, 1], got 1.5
"""

import math

from npgpt.sampling import SETTINGS, SamplingSettings, check

PANEL_SETTINGS = tuple(setting for setting in SETTINGS if setting.label)
DEFAULTS = {s.name: "" if s.default is None else s.default for s in PANEL_SETTINGS}


class SettingsError(ValueError):
    """A value in the settings panel that the sampler cannot use."""


def is_optional(setting):
    return setting.default is None


def when_empty(setting):
    """What an empty optional field means, as its description says: "off" or "random"."""
    return setting.accepts.rsplit("empty = ", 1)[1]


def parse_field(values, setting):
    """The number in `setting`'s field, or None when an optional field is empty."""
    raw = values.get(setting.name)
    text = "" if raw is None else str(raw).strip()
    if not text:
        if not is_optional(setting):
            raise SettingsError(f"{setting.label} is empty; it needs {setting.accepts}")
        return None
    try:
        number = int(text) if setting.kind is int and text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise SettingsError(f"{setting.label} must be {setting.accepts}, got {text!r}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise SettingsError(f"{setting.label} must be {setting.accepts}, got {text!r}")
    if setting.kind is int:
        if not float(number).is_integer():
            raise SettingsError(f"{setting.label} must be {setting.accepts}, got {text!r}")
        return int(number)
    return number


def parse(values):
    """The form's values (field id -> text or number) as `SamplingSettings`."""
    chosen = {setting.name: parse_field(values, setting) for setting in PANEL_SETTINGS}
    for setting in PANEL_SETTINGS:
        try:
            check(setting, chosen[setting.name], called=setting.label.lower())
        except ValueError as err:
            raise SettingsError(str(err)) from None
    return SamplingSettings(**chosen)
