"""Training settings: each one declared once, as a field of `TrainSettings`.

As `npgpt.sampling` declares the sampler's settings, a field's declaration carries everything
said about the setting anywhere:

    batch_size: int = declare(16, int, lambda n: n > 0, "> 0", help="Windows per micro-batch.",
                              fixed_on_resume=True)

      default, kind     the value when nothing else gives one (None: unset, the preset's or
                        off; a tuple: any number of values), and what each value is
      allowed, rule     what a valid value is, as a test and in words ("--batch-size must be > 0,
      (or choices)      got 0"), checked whatever gave the value
      help              the `train --help` line (cli.py adds the default)
      fine_tuning       the default when `--init-from` starts from trained weights, where it
                        differs (fine_tune.py says why); `...`: the same default
      fixed_on_resume   a resumed run must keep it: the model, the data stream, the numbers' type
      torch_only        meaningful to `--backend torch` alone; the numpy backend refuses a value
                        other than the default. They say how this machine computes, not what is
                        computed, so a resumed run does not inherit them: it takes them, as the
                        interrupted run did, from its own command line or --config file

From these, `SETTINGS` (one `Setting` per field) gives cli.py its `train` flags (`--batch-size`
for `batch_size`), the keys a `--config` file may hold (`batch-size` or `batch_size`), the
resume checks and the error messages. Where a value comes from, later wins:

    the defaults (the fine-tuning ones with --init-from) < the resumed run's settings
        < a --config file < flags typed on the command line

>>> BY_NAME["batch_size"].flag, BY_NAME["batch_size"].default
('--batch-size', 16)
>>> resolve_settings({"max_steps": 10}).max_steps
10
>>> resolve_settings({"init_from": "models/gpt2"}).lr  # a fine-tuning default
6e-05
>>> resolve_settings({"batch_size": 0})
Traceback (most recent call last):
...
npgpt.training.settings.TrainError: --batch-size must be > 0, got 0
"""

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from npgpt import optim
from npgpt.config import ConfigError, GPTConfig
from npgpt.sampling import SamplingSettings

DTYPES = {"float32": np.float32, "float64": np.float64}
BACKENDS = ("numpy", "torch")


class TrainError(ValueError):
    """A user error in the settings, the data or the run directory; nothing was written."""


class Setting(NamedTuple):
    """One training setting as declared (see the module docstring): `train` makes a flag of it
    (batch_size -> --batch-size), a --config file may name it, and every value is checked
    against it."""

    name: str
    default: object  # None: unset unless given; a tuple: any number of values (--data)
    kind: type  # what each value is: int, float, str or bool
    allowed: Callable | None  # the rule, for a value of the right kind; None: any value
    rule: str | None  # the rule in words: "--lr must be > 0, got -1.0"
    help: str
    choices: tuple[str, ...] | None  # the only values there are (--dtype float32|float64)
    fine_tuning: object  # the default with --init-from (equal to `default` where it is the same)
    fixed_on_resume: bool
    torch_only: bool

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    @property
    def repeatable(self):
        return isinstance(self.default, tuple)


def declare(
    default, kind, allowed=None, rule=None, *, help, choices=None, fine_tuning=...,
    fixed_on_resume=False, torch_only=False,
):  # fmt: skip
    """A field of `TrainSettings`, carrying its `Setting` (named after the field)."""
    fine_tuning = default if fine_tuning is ... else fine_tuning
    words = dict(kind=kind, allowed=allowed, rule=rule, help=help, choices=choices)
    words |= dict(fine_tuning=fine_tuning)
    words |= dict(fixed_on_resume=fixed_on_resume, torch_only=torch_only)
    return dataclasses.field(default=default, metadata=words)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Every training setting: `train`'s flag `--batch-size` is the field `batch_size`."""

    # fmt: off
    # the model and the stream of batches: a resumed run keeps these
    preset: str | None = declare(
        "tiny", str,
        help="Model size: tiny, small, gpt2, gpt2-xl, ... (npgpt.config); not with --init-from.",
        fine_tuning=None, fixed_on_resume=True,  # the --init-from checkpoint gives the shape
    )
    init_from: str | None = declare(
        None, str,
        help="Fine-tune: start from this checkpoint (any format npgpt.load reads); the model's "
        "shape is its own.",
        fixed_on_resume=True,
    )
    data: tuple[str, ...] = declare(
        (), str, help="Text file or glob, repeatable, or one directory made by `prepare` "
        "(default: the built-in corpus).",
        fixed_on_resume=True,
    )
    context_length: int | None = declare(
        None, int, lambda n: n > 0, "> 0",
        help="Tokens per window (default: the preset's or the --init-from checkpoint's; below the "
        "checkpoint's, its position table is cropped).",
        fixed_on_resume=True,
    )
    stride: int | None = declare(
        None, int, lambda n: n > 0, "> 0",
        help="Tokens between window starts (default: context length).", fixed_on_resume=True,
    )
    val_fraction: float = declare(
        0.1, float, lambda share: 0 < share < 1, "in (0, 1)",
        help="Share of the tokens held out for validation.", fixed_on_resume=True,
    )
    batch_size: int = declare(
        16, int, lambda n: n > 0, "> 0", help="Windows per micro-batch.", fixed_on_resume=True,
    )
    grad_accum: int = declare(
        1, int, lambda n: n > 0, "> 0", help="Micro-batches per optimizer step.",
        fixed_on_resume=True,
    )
    # the optimization
    lr: float = declare(
        2e-3, float, lambda lr: lr > 0, "> 0", help="Peak learning rate.", fine_tuning=6e-5,
    )
    min_lr: float = declare(  # in [0, --lr]: checked with lr, in check_together
        2e-4, float, help="Learning rate at the end of the cosine decay (<= --lr).",
        fine_tuning=6e-6,
    )
    warmup_steps: int = declare(
        20, int, lambda n: n >= 0, ">= 0", help="Steps of linear warm-up.", fine_tuning=10,
    )
    max_steps: int = declare(300, int, lambda n: n > 0, "> 0", help="Optimizer steps.")
    epochs: float | None = declare(
        None, float, lambda n: n > 0, "> 0",
        help="Passes over the training windows (replaces --max-steps).",
    )
    weight_decay: float = declare(
        0.1, float, lambda wd: wd >= 0, ">= 0",
        help="AdamW's decoupled weight decay (>= 2-D weights only).",
    )
    clip: float = declare(
        1.0, float, lambda c: c >= 0, ">= 0 (0 = no clipping)",
        help="Global gradient-norm clip (0 = off).",
    )
    drop_rate: float | None = declare(  # in [0, 1): checked by GPTConfig, in check_together
        None, float, help="Dropout (default: the preset's or the --init-from checkpoint's).",
        fixed_on_resume=True,
    )
    # what the run shows and writes
    eval_every: int = declare(
        50, int, lambda n: n > 0, "> 0", help="Steps between train/validation loss evaluations.",
    )
    eval_batches: int = declare(
        4, int, lambda n: n > 0, "> 0", help="Fixed batches per evaluation.",
    )
    sample_every: int = declare(100, int, lambda n: n > 0, "> 0", help="Steps between samples.")
    sample_prompt: str = declare("The", str, help="Prompt of the periodic samples.")
    sample_tokens: int = declare(
        40, int, lambda n: n >= 0, ">= 0", help="Tokens per sample (0 = no samples).",
    )
    save_every: int = declare(
        100, int, lambda n: n > 0, "> 0",
        help="Steps between checkpoints (one is also written at the end).",
    )
    out: str | None = declare(
        None, str, help="Run directory (default: runs/<preset>, or runs/<name>-finetune for "
        "--init-from DIR/<name>).",
    )
    # how it computes
    seed: int = declare(  # NumPy's global seed takes 32 bits; a torch rank seeds seed + rank
        0, int, lambda n: 0 <= n < 2**31, "in [0, 2**31)",
        help="Seed of initialisation, data order and dropout.", fixed_on_resume=True,
    )
    dtype: str = declare(
        "float32", str, help="Parameter dtype.", choices=tuple(DTYPES), fixed_on_resume=True,
    )
    backend: str = declare(
        "numpy", str, help="numpy (npgpt) or torch (torchgpt).", choices=BACKENDS,
    )
    cache_dir: str | None = declare(
        None, str, help="Token-id cache directory (default: ~/.cache/npgpt).",
    )
    # how it computes, with --backend torch
    device: str = declare("auto", str, help="torch: auto|cpu|cuda|mps.", torch_only=True)
    amp: str = declare(
        "off", str,
        help="torch: autocast matmuls to bf16/fp16 (float32 master weights; fp16 adds loss "
        "scaling).",
        choices=("off", "bf16", "fp16"), torch_only=True,
    )
    attn: str = declare(
        "sdpa", str, help="torch: sdpa (fused kernels) or math (the explicit formula).",
        choices=("sdpa", "math"), torch_only=True,
    )
    compile: bool = declare(False, bool, help="torch: torch.compile the model.", torch_only=True)
    # fmt: on

    def to_dict(self):
        """JSON-ready: what train_config.json holds and `--config` reads back."""
        values = dataclasses.asdict(self)
        return {k: list(v) if BY_NAME[k].repeatable else v for k, v in values.items()}


SETTINGS = tuple(
    Setting(field.name, field.default, **field.metadata)
    for field in dataclasses.fields(TrainSettings)
)
BY_NAME = {setting.name: setting for setting in SETTINGS}


def coerce(name, value, source):
    """One setting's value from a file or the command line, checked against its kind; an int
    is accepted for a float, a single str for a repeatable setting."""
    setting = BY_NAME[name]
    nullable = None in (setting.default, setting.fine_tuning)
    if value is None and nullable:
        return None
    if setting.repeatable:
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif isinstance(value, bool):
        if setting.kind is bool:  # a bool is an int to Python, valid only for a bool setting
            return value
    elif setting.kind is int and isinstance(value, int):
        return value
    elif setting.kind is float and isinstance(value, int | float):
        return float(value)
    elif setting.kind is str and isinstance(value, str):
        return value
    kind = "list of str" if setting.repeatable else setting.kind.__name__
    kind += " or null" if nullable else ""
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
    return {k: v for k, v in resumed.items() if not (k in BY_NAME and BY_NAME[k].torch_only)}


def resolve_settings(cli=None, config_file=None, resumed=None):
    """Defaults < the resumed run's settings < `--config` file < flags given on the command line;
    with `init_from` set by any of them, the fine-tuning defaults stand in for the defaults.

    `cli` holds only the flags the user typed. Asking a resumed run to change a setting it
    must keep (`fixed_on_resume`) is an error rather than a silent new experiment."""
    merged = {}
    sources = [("resumed checkpoint", inherited(resumed or {}))]
    if config_file is not None:
        sources.append((f"--config {config_file}", read_config_file(config_file)))
    sources.append(("command line", cli or {}))
    for source, values in sources:
        unknown = sorted(set(values) - set(BY_NAME))
        if unknown:
            raise TrainError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}"
            )
        for name, value in values.items():
            merged[name] = coerce(name, value, source)
            if source != "resumed checkpoint" and resumed is not None:
                check_kept(name, merged[name], resumed, source)
    if merged.get("init_from") is not None:  # fine-tuning: its defaults, where none was given
        merged = {setting.name: setting.fine_tuning for setting in SETTINGS} | merged
    given = {key for _, values in sources[1:] for key, value in values.items() if value is not None}
    if {"max_steps", "epochs"} <= given:
        raise TrainError("give --max-steps or --epochs, not both: each sets the run's length")
    settings = TrainSettings(**merged)
    check_settings(settings)
    return settings


def check_kept(name, value, resumed, source):
    """Refuse a change, by `source`, of a setting the resumed run must keep."""
    if not BY_NAME[name].fixed_on_resume:
        return
    if value != coerce(name, resumed.get(name), "resumed checkpoint"):
        raise TrainError(
            f"{source}: {name} = {value!r} differs from the resumed run's "
            f"{resumed.get(name)!r}; a resumed run keeps it (start a new --out instead)"
        )


def check_settings(settings):
    """Raise TrainError for the first value its declaration rules out, then for values that do
    not fit together."""
    for setting in SETTINGS:
        value = getattr(settings, setting.name)
        if value is None:
            continue
        if setting.choices and value not in setting.choices:
            choices = ", ".join(setting.choices)
            raise TrainError(f"{setting.flag} must be one of {choices}, got {value!r}")
        if setting.allowed and not setting.allowed(value):
            raise TrainError(f"{setting.flag} must be {setting.rule}, got {value!r}")
    check_together(settings)


def check_together(s):
    if not 0 <= s.min_lr <= s.lr:
        raise TrainError(f"--min-lr must be in [0, --lr = {s.lr}], got {s.min_lr}")
    if s.amp != "off" and s.dtype != "float32":
        raise TrainError(f"--amp {s.amp} keeps float32 master weights: use --dtype float32")
    if s.backend != "torch":
        torch_only = [x for x in SETTINGS if x.torch_only]
        given = [x.flag for x in torch_only if getattr(s, x.name) != x.default]
        if given:
            raise TrainError(f"{', '.join(given)}: only for --backend torch (add --backend torch)")
    if s.init_from is not None and s.preset is not None:
        raise TrainError(
            f"--preset {s.preset} beside --init-from {s.init_from}: a fine-tuned model has the "
            "shape of the checkpoint it starts from; leave --preset out"
        )
    try:
        if s.init_from is None:
            model_config(s)
        elif s.drop_rate is not None:  # the shape is read later, from the checkpoint
            GPTConfig().replace(drop_rate=s.drop_rate)
    except ConfigError as err:  # an unknown preset, a dropout rate out of [0, 1)
        raise TrainError(str(err)) from None


def model_config(settings):
    """The model of a run from scratch: the preset, with --context-length and --drop-rate
    (a fine-tuning run's is its checkpoint's: fine_tune.py)."""
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
