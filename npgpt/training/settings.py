"""Training settings: each one declared once, as a field of `TrainSettings`.

A field's declaration carries everything said about the setting anywhere:

    batch_size: int = setting(16, "Windows per micro-batch.", rule=POSITIVE, fixed_on_resume=True)

      default           the value when neither a --config file nor the command line gives one
      help              the `train --help` line (cli.py adds the default)
      rule / choices    what a valid value is (checked for every source alike)
      fixed_on_resume   a resumed run must keep it: the model, the data stream, the numbers' type
      torch_only        meaningful to `--backend torch` alone; the numpy backend refuses a value
                        other than the default. They say how this machine computes, not what is
                        computed, so a resumed run does not inherit them: it takes them, as the
                        interrupted run did, from its own command line or --config file

From these, `SETTINGS` (one `Setting` per field) gives cli.py its `train` flags (`--batch-size`
for `batch_size`), the keys a `--config` file may hold (`batch-size` or `batch_size`), the
resume checks and the error messages. Where a value comes from, later wins:

    the defaults < the resumed run's settings < a --config file < flags typed on the command line

>>> SETTINGS["batch_size"].flag, SETTINGS["batch_size"].default
('--batch-size', 16)
>>> resolve_settings({"max_steps": 10}).max_steps
10
>>> resolve_settings({"batch_size": 0})
Traceback (most recent call last):
...
npgpt.training.settings.TrainError: --batch-size must be > 0, got 0
"""

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np

from npgpt import optim
from npgpt.config import ConfigError, GPTConfig
from npgpt.sampling import SamplingSettings

DTYPES = {"float32": np.float32, "float64": np.float64}
BACKENDS = ("numpy", "torch")


class TrainError(ValueError):
    """A user error in the settings, the data or the run directory; nothing was written."""


class Rule(typing.NamedTuple):
    """What a valid value of a setting is: `holds(value)`; an error message states `requirement`."""

    holds: Callable[[typing.Any], bool]
    requirement: str


POSITIVE = Rule(lambda value: value > 0, "must be > 0")
NOT_NEGATIVE = Rule(lambda value: value >= 0, "must be >= 0")


def setting(default, help, *, rule=None, choices=None, fixed_on_resume=False, torch_only=False):
    """A `TrainSettings` field, declared with all that is said about it (see the docstring)."""
    about = dict(help=help, rule=rule, choices=choices)
    about |= dict(fixed_on_resume=fixed_on_resume, torch_only=torch_only)
    return dataclasses.field(default=default, metadata=about)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Every training setting: `train`'s flag `--batch-size` is the field `batch_size`."""

    # the model and the stream of batches
    preset: str = setting(
        "tiny",
        "Model size: tiny, small, gpt2, gpt2-medium, ... (npgpt.config).",
        fixed_on_resume=True,
    )
    data: tuple[str, ...] = setting(
        (), "Text file or glob, repeatable (default: the built-in corpus).", fixed_on_resume=True
    )
    context_length: int | None = setting(
        None, "Tokens per window (default: the preset's).", rule=POSITIVE, fixed_on_resume=True
    )
    stride: int | None = setting(
        None,
        "Tokens between window starts (default: context length).",
        rule=POSITIVE,
        fixed_on_resume=True,
    )
    val_fraction: float = setting(
        0.1,
        "Share of the tokens held out for validation.",
        rule=Rule(lambda value: 0 < value < 1, "must be in (0, 1)"),
        fixed_on_resume=True,
    )
    batch_size: int = setting(16, "Windows per micro-batch.", rule=POSITIVE, fixed_on_resume=True)
    grad_accum: int = setting(
        1, "Micro-batches per optimizer step.", rule=POSITIVE, fixed_on_resume=True
    )
    # the optimization
    lr: float = setting(2e-3, "Peak learning rate.", rule=POSITIVE)
    min_lr: float = setting(2e-4, "Learning rate at the end of the cosine decay (<= --lr).")
    warmup_steps: int = setting(20, "Steps of linear warm-up.", rule=NOT_NEGATIVE)
    max_steps: int = setting(300, "Optimizer steps.", rule=POSITIVE)
    epochs: float | None = setting(
        None, "Passes over the training windows (replaces --max-steps).", rule=POSITIVE
    )
    weight_decay: float = setting(
        0.1, "AdamW's decoupled weight decay (>= 2-D weights only).", rule=NOT_NEGATIVE
    )
    clip: float = setting(
        1.0,
        "Global gradient-norm clip (0 = off).",
        rule=Rule(lambda value: value >= 0, "must be >= 0 (0 = no clipping)"),
    )
    drop_rate: float | None = setting(
        None, "Dropout (default: the preset's).", fixed_on_resume=True
    )
    # what the run shows and writes
    eval_every: int = setting(50, "Steps between train/validation loss evaluations.", rule=POSITIVE)
    eval_batches: int = setting(4, "Fixed batches per evaluation.", rule=POSITIVE)
    sample_every: int = setting(100, "Steps between samples.", rule=POSITIVE)
    sample_prompt: str = setting("The", "Prompt of the periodic samples.")
    sample_tokens: int = setting(40, "Tokens per sample (0 = no samples).", rule=NOT_NEGATIVE)
    save_every: int = setting(
        100, "Steps between checkpoints (one is also written at the end).", rule=POSITIVE
    )
    out: str | None = setting(None, "Run directory (default: runs/<preset>).")
    # how it computes
    seed: int = setting(0, "Seed of initialisation, data order and dropout.", fixed_on_resume=True)
    dtype: str = setting("float32", "Parameter dtype.", choices=tuple(DTYPES), fixed_on_resume=True)
    backend: str = setting("numpy", "numpy (npgpt) or torch (torchgpt).", choices=BACKENDS)
    cache_dir: str | None = setting(None, "Token-id cache directory (default: ~/.cache/npgpt).")
    # how it computes, with --backend torch
    device: str = setting("auto", "torch: auto|cpu|cuda|mps.", torch_only=True)
    amp: str = setting(
        "off",
        "torch: autocast matmuls to bf16/fp16 (float32 master weights; fp16 adds loss scaling).",
        choices=("off", "bf16", "fp16"),
        torch_only=True,
    )
    attn: str = setting(
        "sdpa",
        "torch: sdpa (fused kernels) or math (the explicit formula).",
        choices=("sdpa", "math"),
        torch_only=True,
    )
    compile: bool = setting(False, "torch: torch.compile the model.", torch_only=True)

    def to_dict(self):
        """JSON-ready: what train_config.json holds and `--config` reads back."""
        values = dataclasses.asdict(self)
        return {k: list(v) if SETTINGS[k].repeatable else v for k, v in values.items()}


class Setting(typing.NamedTuple):
    """One field of TrainSettings with its declaration, as cli.py and the checks read it."""

    name: str
    annotation: typing.Any  # int, float | None, tuple[str, ...], ...
    default: typing.Any
    help: str
    rule: Rule | None
    choices: tuple[str, ...] | None
    fixed_on_resume: bool
    torch_only: bool

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    @property
    def repeatable(self):
        """Given any number of times (`--data a.txt --data b.txt`): a tuple of str."""
        return typing.get_origin(self.annotation) is tuple

    @property
    def optional(self):
        return isinstance(self.annotation, types.UnionType)

    @property
    def value_type(self):
        """The type of one value: int, float, str or bool."""
        if self.repeatable or self.optional:
            return next(t for t in typing.get_args(self.annotation) if t is not type(None))
        return self.annotation


SETTINGS = {
    field.name: Setting(field.name, field.type, field.default, **field.metadata)
    for field in dataclasses.fields(TrainSettings)
}


def coerce(name, value, source):
    """One setting's value from a file or the command line, checked against its type; an int
    is accepted for a float, a single str for a repeatable setting."""
    setting = SETTINGS[name]
    if value is None and setting.optional:
        return None
    if setting.repeatable:
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif isinstance(value, bool):
        if setting.value_type is bool:  # a bool is an int to Python, valid only for a bool setting
            return value
    elif setting.value_type is int and isinstance(value, int):
        return value
    elif setting.value_type is float and isinstance(value, int | float):
        return float(value)
    elif setting.value_type is str and isinstance(value, str):
        return value
    kind = setting.annotation if setting.optional else setting.annotation.__name__
    raise TrainError(f"{source}: {name} = {value!r} should be of type {kind}")


def parse_toml(text):
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:
        raise TrainError("a TOML --config needs Python >= 3.11; use a JSON file") from None
    return tomllib.loads(text)


def read_config_file(path):
    """A TOML or JSON file whose keys are `train`'s flags (dashes or underscores)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TrainError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TrainError(f"--config {path}: cannot read it ({err})") from None
    try:
        values = parse_toml(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, json.JSONDecodeError) as err:  # TOMLDecodeError is a ValueError
        kind = "TOML" if path.suffix == ".toml" else "JSON (use a .toml name for TOML)"
        raise TrainError(f"--config {path}: not valid {kind}: {err}") from None
    if not isinstance(values, dict):
        raise TrainError(f"--config {path}: expected a table of settings, got {type(values)}")
    return {key.replace("-", "_"): value for key, value in values.items()}


def inherited(resumed):
    """What a resumed run takes from the run it continues: all but the torch-only settings."""
    return {k: v for k, v in resumed.items() if not (k in SETTINGS and SETTINGS[k].torch_only)}


def resolve_settings(cli=None, config_file=None, resumed=None):
    """Defaults < the resumed run's settings < `--config` file < flags given on the command line.

    `cli` holds only the flags the user typed. Asking a resumed run to change a setting it
    must keep (`fixed_on_resume`) is an error rather than a silent new experiment."""
    merged = {}
    sources = [("resumed checkpoint", inherited(resumed or {}))]
    if config_file is not None:
        sources.append((f"--config {config_file}", read_config_file(config_file)))
    sources.append(("command line", cli or {}))
    for source, values in sources:
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise TrainError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}"
            )
        for name, value in values.items():
            merged[name] = coerce(name, value, source)
            if source != "resumed checkpoint" and resumed is not None:
                check_kept(name, merged[name], resumed, source)
    given = {key for _, values in sources[1:] for key, value in values.items() if value is not None}
    if {"max_steps", "epochs"} <= given:
        raise TrainError("give --max-steps or --epochs, not both: each sets the run's length")
    settings = TrainSettings(**merged)
    check_settings(settings)
    return settings


def check_kept(name, value, resumed, source):
    """Refuse a change, by `source`, of a setting the resumed run must keep."""
    if not SETTINGS[name].fixed_on_resume:
        return
    if value != coerce(name, resumed.get(name), "resumed checkpoint"):
        raise TrainError(
            f"{source}: {name} = {value!r} differs from the resumed run's "
            f"{resumed.get(name)!r}; a resumed run keeps it (start a new --out instead)"
        )


def check_settings(settings):
    """Raise TrainError for the first value its declaration rules out, then for values that do
    not fit together."""
    for setting in SETTINGS.values():
        value = getattr(settings, setting.name)
        if value is None:
            continue
        if setting.choices and value not in setting.choices:
            choices = ", ".join(setting.choices)
            raise TrainError(f"{setting.flag} must be one of {choices}, got {value!r}")
        if setting.rule and not setting.rule.holds(value):
            raise TrainError(f"{setting.flag} {setting.rule.requirement}, got {value}")
    check_together(settings)


def check_together(s):
    if not 0 <= s.min_lr <= s.lr:
        raise TrainError(f"--min-lr must be in [0, --lr = {s.lr}], got {s.min_lr}")
    if s.amp != "off" and s.dtype != "float32":
        raise TrainError(f"--amp {s.amp} keeps float32 master weights: use --dtype float32")
    if s.backend != "torch":
        torch_only = [x for x in SETTINGS.values() if x.torch_only]
        given = [x.flag for x in torch_only if getattr(s, x.name) != x.default]
        if given:
            raise TrainError(f"{', '.join(given)}: only for --backend torch (add --backend torch)")
    try:
        model_config(s)
    except ConfigError as err:  # an unknown preset, a dropout rate out of [0, 1)
        raise TrainError(str(err)) from None


def model_config(settings):
    overrides = {}
    if settings.context_length is not None:
        overrides["context_length"] = settings.context_length
    if settings.drop_rate is not None:
        overrides["drop_rate"] = settings.drop_rate
    return GPTConfig.preset(settings.preset, **overrides)


def total_steps(settings, num_windows):
    """The run's length in optimizer steps: --max-steps, or --epochs over `num_windows`."""
    if settings.epochs is None:
        return settings.max_steps
    return math.ceil(settings.epochs * num_windows / (settings.batch_size * settings.grad_accum))


def adamw_settings(settings):
    return optim.AdamWSettings(weight_decay=settings.weight_decay)


def sampling_settings(settings):
    """The periodic samples': fixed prompt and seed, so samples differ only by the model."""
    return SamplingSettings(
        temperature=0.8, top_k=40, max_new_tokens=settings.sample_tokens, seed=settings.seed
    )
