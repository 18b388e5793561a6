"""Training: settings, the loop, checkpoints and resume, shared by the NumPy and PyTorch backends.

The loop, step by step (one step = one optimizer update):

    lr        = learning_rate(step)                          warm-up, then cosine (schedule.py)
    windows   = next batch_size * grad_accum window indices  seeded order (data.py)
    loss      = backend.train_step(micro_batches, lr)        forward + backward per micro-batch,
                                                             mean gradient, clip, AdamW
    every eval_every steps:    train and validation loss on FIXED batches (the same windows each
                               time, so the curve shows the model, not batch noise)
    every sample_every steps:  a sample from a fixed prompt, with a fixed seed
    every save_every steps and at the end: a checkpoint, the metrics file and the loss plot

A run directory (`--out`):

    runs/tiny/
      metrics.jsonl            one JSON line per step (metrics.py)
      loss.png                 loss against steps and tokens seen (plot.py)
      checkpoint/              replaced atomically as a whole (snapshot.py)
        model.safetensors      } the core checkpoint format (checkpoint.py): `generate`,
        config.json            } `eval` and `transformers` read this directory as it is
        optimizer.safetensors  AdamW moments `exp_avg.<name>`, `exp_avg_sq.<name>` (optim.py)
        trainer_state.json     step, tokens seen, data position, dropout RNG state, resolved
                               settings and every metrics record so far
        train_config.json      the resolved settings alone; `--config` accepts it

Resume (`--resume DIR`) restores all of it, so a resumed run takes exactly the steps the
uninterrupted run would have: same batches, same dropout masks, same learning rates; in float64
the NumPy backend's parameters, moments and losses match bit for bit (tests/test_train.py).

The backend interface. The loop never touches a tensor; it calls the plain functions of a
`Backend`, made by a factory

    make_backend(config, settings, params, optimizer, step, rng_state) -> Backend

      config     GPTConfig of the run
      settings   TrainSettings
      params     {name: np.ndarray} start weights (npgpt.names; fresh: `model.init_params`)
      optimizer  {"exp_avg.<name>" / "exp_avg_sq.<name>": np.ndarray} AdamW moments (zeros when
                 fresh); AdamW's hyper-parameters come from `adamw_settings(settings)` and the
                 decaying parameters from `optim.decaying`
      step       updates already done (0 when fresh): the next update is number step + 1
      rng_state  what `Backend.state()` returned as its third item, or None when fresh

    Backend(
      train_step(micro_batches, lr) -> (loss, grad_norm)
          micro_batches: list of (x, y), int64 arrays (B, T); does forward and backward on each
          (dropout on), averages the gradients, clips their global norm to settings.clip, and
          applies one AdamW update with learning rate lr. Returns the mean loss over the
          micro-batches and the gradient norm before clipping, as Python floats.
      eval_loss(x, y) -> float      mean loss of one batch, dropout off, no gradient
      sample(prompt_ids, sampling) -> list of new token ids   (sampling: SamplingSettings)
      state() -> (params, optimizer, rng_state)   NumPy arrays under the names above, and a
          JSON-serialisable RNG state that the factory can restore
      description: str              e.g. "numpy float32", shown at the start of the run
      is_main: bool = True          data parallel (torchgpt): every process runs this loop in
                                    lock-step, and only the main one logs, samples and writes
      barrier: () -> None           returns when every process has reached it
    )

`numpy_backend` below is npgpt's; the PyTorch twin supplies its own factory to the same `train`
(`cli.py train --backend torch` takes it from `torchgpt.training.backend_factory`). Everything else,
the data, schedule, metrics, plot, checkpoint files and resume, is this file's, for both.
"""

import dataclasses
import json
import math
import sys
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm

from npgpt import model, optim
from npgpt.config import PRESETS, ConfigError, GPTConfig
from npgpt.generate import generate
from npgpt.sampling import SamplingSettings
from npgpt.schedule import learning_rate
from npgpt.tokenizer import get_tokenizer
from npgpt.training import corpus as data
from npgpt.training import metrics, snapshot
from npgpt.training.plot import plot_losses
from npgpt.weights import checkpoint

CHECKPOINT_DIR = "checkpoint"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
SETTINGS_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
DTYPES = {"float32": np.float32, "float64": np.float64}
BACKENDS = ("numpy", "torch")


class TrainError(ValueError):
    """A user error in the settings, the data or the run directory; nothing was written."""


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Every `train` flag, under its name with '_' for '-', with its default."""

    preset: str = "tiny"
    data: tuple[str, ...] = ()  # text files or globs; () = the built-in corpus
    context_length: int | None = None  # None: the preset's
    stride: int | None = None  # None: context_length (windows do not overlap)
    val_fraction: float = 0.1
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 20
    max_steps: int = 300
    epochs: float | None = None  # if set, replaces max_steps
    weight_decay: float = 0.1
    clip: float = 1.0
    drop_rate: float | None = None  # None: the preset's
    eval_every: int = 50
    eval_batches: int = 4
    sample_every: int = 100
    sample_prompt: str = "The"
    sample_tokens: int = 40
    save_every: int = 100
    out: str | None = None  # None: runs/<preset>
    seed: int = 0
    dtype: str = "float32"
    backend: str = "numpy"
    cache_dir: str | None = None  # token-id cache; None: ~/.cache/npgpt

    def to_dict(self):
        return {k: list(v) if k == "data" else v for k, v in dataclasses.asdict(self).items()}


FIELDS = {f.name: f.type for f in dataclasses.fields(TrainSettings)}
# What a resumed run cannot change: the model, the data stream and the numbers' type.
FIXED_ON_RESUME = (
    "preset", "data", "context_length", "stride", "val_fraction", "batch_size", "grad_accum",
    "drop_rate", "seed", "dtype",
)  # fmt: skip


def coerce(key, value, source):
    """Check one setting's type against its annotation; ints are accepted for floats."""
    allowed = typing.get_args(FIELDS[key]) if isinstance(FIELDS[key], types.UnionType) else ()
    allowed = allowed or (FIELDS[key],)
    if value is None and type(None) in allowed:
        return None
    if key == "data":
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif isinstance(value, bool):
        pass  # a bool is an int to Python, never a valid setting here
    elif int in allowed and isinstance(value, int):
        return value
    elif float in allowed and isinstance(value, int | float):
        return float(value)
    elif str in allowed and isinstance(value, str):
        return value
    kind = FIELDS[key] if isinstance(FIELDS[key], types.UnionType) else FIELDS[key].__name__
    raise TrainError(f"{source}: {key} = {value!r} should be of type {kind}")


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


def resolve_settings(cli=None, config_file=None, resumed=None):
    """Defaults < the resumed run's settings < `--config` file < flags given on the command line.

    `cli` holds only the flags the user typed. A resumed run keeps its model, data and seed
    (FIXED_ON_RESUME); asking to change one is an error rather than a silent new experiment."""
    merged = {}
    sources = [("resumed checkpoint", resumed or {})]
    if config_file is not None:
        sources.append((f"--config {config_file}", read_config_file(config_file)))
    sources.append(("command line", cli or {}))
    for source, values in sources:
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise TrainError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}"
            )
        for key, value in values.items():
            value = coerce(key, value, source)
            if source != "resumed checkpoint" and resumed is not None and key in FIXED_ON_RESUME:
                if value != coerce(key, resumed.get(key), "resumed checkpoint"):
                    raise TrainError(
                        f"{source}: {key} = {value!r} differs from the resumed run's "
                        f"{resumed.get(key)!r}; a resumed run keeps it (start a new --out instead)"
                    )
            merged[key] = value
    given = {key for _, values in sources[1:] for key, value in values.items() if value is not None}
    if {"max_steps", "epochs"} <= given:
        raise TrainError("give --max-steps or --epochs, not both: each sets the run's length")
    settings = TrainSettings(**merged)
    check_settings(settings)
    return settings


def check_settings(s):
    def need(ok, message):
        if not ok:
            raise TrainError(message)

    need(s.preset in PRESETS, f"unknown preset {s.preset!r}; choose one of {', '.join(PRESETS)}")
    need(s.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {s.dtype!r}")
    need(s.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}, got {s.backend!r}")
    for key in ("batch_size", "grad_accum", "max_steps", "eval_every", "eval_batches",
                "sample_every", "save_every", "context_length", "stride"):  # fmt: skip
        value = getattr(s, key)
        need(value is None or value > 0, f"--{key.replace('_', '-')} must be > 0, got {value}")
    need(s.lr > 0, f"--lr must be > 0, got {s.lr}")
    need(0 <= s.min_lr <= s.lr, f"--min-lr must be in [0, --lr = {s.lr}], got {s.min_lr}")
    need(s.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {s.warmup_steps}")
    need(s.weight_decay >= 0, f"--weight-decay must be >= 0, got {s.weight_decay}")
    need(s.clip >= 0, f"--clip must be >= 0 (0 = no clipping), got {s.clip}")
    need(s.epochs is None or s.epochs > 0, f"--epochs must be > 0, got {s.epochs}")
    need(s.sample_tokens >= 0, f"--sample-tokens must be >= 0, got {s.sample_tokens}")
    need(0 < s.val_fraction < 1, f"--val-fraction must be in (0, 1), got {s.val_fraction}")
    try:
        model_config(s)
    except ConfigError as err:
        raise TrainError(str(err)) from None


def model_config(settings):
    overrides = {}
    if settings.context_length is not None:
        overrides["context_length"] = settings.context_length
    if settings.drop_rate is not None:
        overrides["drop_rate"] = settings.drop_rate
    return GPTConfig.preset(settings.preset, **overrides)


def run_dir(settings):
    return Path(settings.out if settings.out is not None else f"runs/{settings.preset}")


def adamw_settings(settings):
    return optim.AdamWSettings(weight_decay=settings.weight_decay)


def sampling_settings(settings):
    return SamplingSettings(
        temperature=0.8, top_k=40, max_new_tokens=settings.sample_tokens, seed=settings.seed
    )


# ---- the NumPy backend ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backend:
    """A backend's training functions; see the module docstring for each one's contract."""

    train_step: Callable
    eval_loss: Callable
    sample: Callable
    state: Callable
    description: str
    is_main: bool = True
    barrier: Callable = lambda: None


def numpy_backend(config, settings, params, optimizer, step, rng_state):
    """npgpt's backend: model.forward/backward, optim.clip_grad_norm and optim.adamw_step."""
    rng = np.random.default_rng(settings.seed)  # dropout masks
    if rng_state is not None:
        rng.bit_generator.state = rng_state
    updates = step
    hyper = adamw_settings(settings)

    def train_step(micro_batches, lr):
        nonlocal updates
        total, loss_sum = None, 0.0
        for x, y in micro_batches:
            _, loss, cache = model.forward(params, config, x, y, train=True, rng=rng)
            grads = model.backward(cache)
            loss_sum += float(loss)
            if total is None:
                total = grads
            else:
                for name, g in grads.items():
                    total[name] += g
        for g in total.values():
            g /= len(micro_batches)  # the gradient of the mean loss over micro-batches
        norm = optim.clip_grad_norm(total, settings.clip)
        updates += 1
        optim.adamw_step(params, total, optimizer, updates, lr, hyper)
        return loss_sum / len(micro_batches), norm

    def eval_loss(x, y):
        return float(model.forward(params, config, x, y)[1])

    def sample(prompt_ids, sampling):
        return list(generate(params, config, prompt_ids, sampling))

    def state():
        return params, optimizer, rng.bit_generator.state

    return Backend(train_step, eval_loss, sample, state, f"numpy {settings.dtype}")


# ---- checkpoints ---------------------------------------------------------------------------


def save_training_checkpoint(directory, config, backend, trainer_state):
    """Write the whole checkpoint directory atomically (snapshot.py). Every process calls
    `backend.state()` (it may gather each one's RNG state); the main one alone writes."""
    params, optimizer, rng_state = backend.state()
    if not backend.is_main:
        return
    state = trainer_state | {"rng": rng_state}

    def write_files(tmp):
        checkpoint.save(tmp, config, params)
        tensors = {name: np.ascontiguousarray(a) for name, a in optimizer.items()}
        save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata={"step": str(state["step"])})
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
        (tmp / SETTINGS_FILE).write_text(json.dumps(state["settings"], indent=2) + "\n")

    snapshot.write_directory(directory, write_files)


def find_checkpoint(path):
    """A checkpoint directory, given it or the run directory above it."""
    path = Path(path)
    for candidate in (path / CHECKPOINT_DIR, path):
        snapshot.recover(candidate)
        if (candidate / STATE_FILE).exists():
            return candidate
    raise TrainError(
        f"--resume {path}: no training checkpoint there (expected {STATE_FILE} in it or in "
        f"{path / CHECKPOINT_DIR}); only directories written by `train` can be resumed"
    )


def read_trainer_state(directory):
    path = Path(directory) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TrainError(f"{path}: unreadable trainer state ({err})") from None


def resumed_settings(path):
    """The settings a run at `path` was saved with, its `out` set to where it now lives (so a
    moved run directory resumes in place)."""
    directory = find_checkpoint(path)
    return read_trainer_state(directory)["settings"] | {"out": str(directory.parent)}


def load_training_checkpoint(directory, config, dtype):
    """(params, optimizer moments) of a checkpoint, checked against the run's config."""
    try:
        saved_config, params = checkpoint.load(directory, dtype=dtype)
        optimizer = checkpoint.read_safetensors(directory / OPTIMIZER_FILE)
    except checkpoint.CheckpointError as err:
        raise TrainError(f"--resume: {err}") from None
    if saved_config != config:
        raise TrainError(f"--resume {directory}: its model {saved_config} is not {config}")
    expected = optim.init_state(params)
    if sorted(optimizer) != sorted(expected) or any(
        optimizer[k].shape != v.shape for k, v in expected.items()
    ):
        raise TrainError(f"{directory / OPTIMIZER_FILE}: moments do not match the model's params")
    return params, {k: v.astype(dtype, copy=False) for k, v in optimizer.items()}


# ---- the loop ------------------------------------------------------------------------------


def prepare_data(settings, config):
    docs, source = data.load_documents(settings.data)
    ids = data.token_ids(docs, settings.cache_dir)
    stride = settings.stride or config.context_length
    train_windows, val_windows = data.split(
        ids, config.context_length, stride, settings.val_fraction, source
    )
    return train_windows, val_windows, source


def total_steps(settings, num_windows):
    if settings.epochs is None:
        return settings.max_steps
    return math.ceil(settings.epochs * num_windows / (settings.batch_size * settings.grad_accum))


def fixed_batches(windows, settings):
    """The evaluation batches: the same windows, spread over the split, at every evaluation."""
    indices = data.fixed_indices(len(windows), settings.eval_batches * settings.batch_size)
    B = settings.batch_size
    return [windows.batch(indices[i : i + B]) for i in range(0, len(indices), B)]


def train(settings, make_backend, resume=None, progress=True):
    """Run (or continue, from checkpoint directory `resume`) a training run; returns the last
    metrics record. `settings` should come from `resolve_settings` (with the resumed run's
    settings when resuming). Every user error is raised as TrainError before anything is
    written."""
    check_settings(settings)
    config = model_config(settings)
    dtype = DTYPES[settings.dtype]
    try:
        train_windows, val_windows, source = prepare_data(settings, config)
    except data.DataError as err:
        raise TrainError(str(err)) from None
    max_steps = total_steps(settings, len(train_windows))
    out = run_dir(settings)
    ckpt_dir = out / CHECKPOINT_DIR

    resume_dir = None if resume is None else find_checkpoint(resume)
    snapshot.recover(ckpt_dir)
    if (ckpt_dir / STATE_FILE).exists() and not (
        resume_dir is not None and ckpt_dir.resolve() == resume_dir.resolve()
    ):
        raise TrainError(
            f"{out} already holds a training run; continue it with --resume {out}, or "
            f"choose another --out"
        )
    if resume_dir is not None:
        state = read_trainer_state(resume_dir)
        params, optimizer = load_training_checkpoint(resume_dir, config, dtype)
        step, tokens = state["step"], state["tokens"]
        position = data.Position(*state["position"])
        records, rng_state = state["metrics"], state["rng"]
    else:
        params = model.init_params(config, seed=settings.seed, dtype=dtype)
        optimizer = optim.init_state(params)
        step, tokens, position, records, rng_state = 0, 0, data.Position(), [], None

    backend = make_backend(config, settings, params, optimizer, step, rng_state)
    main = backend.is_main
    metrics_path = out / METRICS_FILE
    if main:
        out.mkdir(parents=True, exist_ok=True)
        metrics.write(metrics_path, records)  # a resumed run forgets steps after its checkpoint
    train_eval = fixed_batches(train_windows, settings)
    val_eval = fixed_batches(val_windows, settings)
    tokenizer = get_tokenizer()
    prompt_ids = tokenizer.encode(settings.sample_prompt, allowed_special={"<|endoftext|>"})
    tokens_per_step = settings.batch_size * settings.grad_accum * config.context_length

    def mean_loss(batches):
        return float(np.mean([backend.eval_loss(x, y) for x, y in batches]))

    def evaluate():
        return {"train_loss": mean_loss(train_eval), "val_loss": mean_loss(val_eval)}

    def show(message):
        if main:
            tqdm.write(message, file=sys.stdout)

    def log(record):
        records.append(record)
        if main:
            metrics.append(metrics_path, record)

    def save():
        settings_dict = settings.to_dict()
        trainer_state = {
            "step": step,
            "tokens": tokens,
            "max_steps": max_steps,
            "position": [position.epoch, position.cursor],
            "backend": settings.backend,
            "settings": settings_dict,
            "metrics": records,
        }
        save_training_checkpoint(ckpt_dir, config, backend, trainer_state)
        if main:
            plot_losses(records, out / PLOT_FILE, title=f"{settings.preset} on {source}")
        backend.barrier()  # no process runs ahead of a checkpoint being written

    if main:
        print(
            f"training {settings.preset} ({backend.description}) on {source}: "
            f"{len(train_windows)} train / {len(val_windows)} validation windows of "
            f"{config.context_length} tokens, {max_steps} steps of {tokens_per_step} tokens "
            f"-> {out}",
            file=sys.stderr,
        )
    if step == 0:
        record = {"step": 0, "tokens": 0, "loss": None, "lr": None, "tokens_per_s": None}
        record |= evaluate()
        log(record)
        show(f"step 0: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}")

    shown = progress and main
    bar = tqdm(total=max_steps, initial=step, disable=not shown, file=sys.stderr, unit="step")
    while step < max_steps:
        lr = learning_rate(step, settings.lr, settings.min_lr, settings.warmup_steps, max_steps)
        indices, position = data.next_indices(
            len(train_windows), settings.batch_size * settings.grad_accum, settings.seed, position
        )
        B = settings.batch_size
        micro_batches = [train_windows.batch(indices[i : i + B]) for i in range(0, len(indices), B)]
        start = time.perf_counter()
        loss, _ = backend.train_step(micro_batches, lr)
        seconds = time.perf_counter() - start
        step += 1
        tokens += tokens_per_step
        record = {
            "step": step,
            "tokens": tokens,
            "loss": loss,
            "lr": lr,
            "tokens_per_s": tokens_per_step / seconds,
        }
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
        last = step == max_steps
        if step % settings.eval_every == 0 or last:
            record |= evaluate()
            show(
                f"step {step}: train loss {record['train_loss']:.4f}, "
                f"val loss {record['val_loss']:.4f}"
            )
        log(record)
        if (step % settings.sample_every == 0 or last) and settings.sample_tokens and main:
            text = tokenizer.decode(backend.sample(prompt_ids, sampling_settings(settings)))
            show(f"sample at step {step}: {settings.sample_prompt}{text}")
        if step % settings.save_every == 0 or last:
            save()
    bar.close()
    if main:
        print(f"checkpoint: {ckpt_dir}", file=sys.stderr)
    return records[-1]
