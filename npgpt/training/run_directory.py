"""The run directory: a run's files, its checkpoint written and read back, the run a --resume names.

    runs/tiny/                 --out (default: runs/<preset>, runs/<name>-finetune)
      metrics.jsonl            one JSON line per step (metrics.py)
      loss.png                 loss against steps and tokens seen (plot.py)
      checkpoint/              replaced atomically as a whole (snapshot.py)
        model.safetensors      } the core checkpoint format (weights/checkpoint.py): `generate`,
        config.json            } `eval` and `transformers` read this directory as it is
        optimizer.safetensors  AdamW moments `exp_avg.<name>`, `exp_avg_sq.<name>` (optim.py)
        trainer_state.json     the RunState (step, tokens seen, data position, every metrics
                               record so far), the run's length and backend, the resolved
                               settings and the backend's RNG state
        train_config.json      the resolved settings alone; `--config` accepts it

Either backend writes and reads the same files. A run directory holds one run: starting another
in it is refused, continuing it is `--resume`, which takes the run directory or its checkpoint/.
A write that fails (a full disk) raises WriteError, which says what could not be written, why,
which checkpoint is intact and what to do; a checkpoint that could not be written whole leaves
the previous one in place and no temporary directory behind (snapshot.py).
"""

import contextlib
import dataclasses
import errno
import json
import reprlib
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from npgpt import optim
from npgpt.config import is_count, is_number
from npgpt.training import metrics, snapshot
from npgpt.training.backend import BackendState
from npgpt.training.settings import TrainError, resolve_settings
from npgpt.training.windows import Position
from npgpt.weights import checkpoint
from npgpt.weights.check import CheckpointError, listing, read_json_object
from npgpt.weights.formats import CONFIG_FILE, read_config

CHECKPOINT_DIR = "checkpoint"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
SETTINGS_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class WriteError(TrainError):
    """A file of the run directory could not be written; the last checkpoint is intact."""


@dataclasses.dataclass
class RunState:
    """Where a run is: what the loop advances at every step and a checkpoint saves."""

    step: int = 0  # optimizer updates done
    tokens: int = 0  # training tokens consumed
    position: Position = Position()  # where the next batch starts in the stream of windows
    records: list = dataclasses.field(default_factory=list)  # every metrics record so far


def out_dir(settings):
    """--out, else runs/<preset>, or runs/<name>-finetune for --init-from .../<name>."""
    if settings.out is not None:
        return Path(settings.out)
    if settings.init_from is not None:
        return Path("runs") / f"{Path(settings.init_from).stem}-finetune"
    return Path("runs") / settings.preset


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


def refuse_another_run(out, resume_dir):
    """A run directory holds one run: only a --resume of that run may write into it."""
    ckpt_dir = out / CHECKPOINT_DIR
    snapshot.recover(ckpt_dir)
    resuming_it = resume_dir is not None and ckpt_dir.resolve() == resume_dir.resolve()
    if (ckpt_dir / STATE_FILE).exists() and not resuming_it:
        raise TrainError(
            f"{out} already holds a training run; continue it with --resume {out}, or "
            f"choose another --out"
        )


def is_record(record):
    """A metrics record as the loop logs it: step and tokens counted, its other fields numbers
    or null, and an evaluation's two losses together (the loss plot reads them so)."""
    return (
        isinstance(record, dict)
        and is_count(record.get("step"))
        and is_count(record.get("tokens"))
        and all(record.get(key) is None or is_number(record[key]) for key in metrics.FIELDS)
        and (record.get("val_loss") is None) == (record.get("train_loss") is None)
    )


STATE_FIELDS = (  # what --resume reads of trainer_state.json, and what each field must be
    ("step", is_count, "an integer >= 0"),
    ("tokens", is_count, "an integer >= 0"),
    (
        "position",
        lambda p: isinstance(p, list) and len(p) == 2 and all(map(is_count, p)),
        "[epoch, cursor]: two integers >= 0",
    ),
    ("settings", lambda s: isinstance(s, dict), "an object of training settings"),
    (
        "metrics",
        lambda r: isinstance(r, list) and len(r) > 0 and all(map(is_record, r)),
        "a non-empty list of metrics records",
    ),
    ("rng", lambda r: r is None or isinstance(r, dict), "an object (the RNG state) or null"),
)


def read_trainer_state(directory):
    """trainer_state.json, every field --resume reads checked: the file may be damaged, or
    edited by hand, and a bad value found mid-run would cost the steps taken until then."""
    path = Path(directory) / STATE_FILE
    try:
        fields = read_json_object(path, missing="no such file")
    except CheckpointError as err:
        raise TrainError(f"unreadable trainer state: {err}") from None
    for name, valid, what in STATE_FIELDS:
        if name not in fields:
            raise TrainError(f"{path}: no {name!r} field; the trainer state is damaged")
        if not valid(fields[name]):
            raise TrainError(f"{path}: {name} = {reprlib.repr(fields[name])} should be {what}")
    return fields


def resumed_settings(path):
    """The settings the run at `path` was saved with, its `out` set to where it now lives (so a
    moved run directory resumes in place)."""
    directory = find_checkpoint(path)
    saved = read_trainer_state(directory)["settings"]
    try:  # valid when saved, so valid alone: an error here is damage, to be named as such
        resolve_settings(resumed=saved)
    except TrainError as err:
        raise TrainError(f"{directory / STATE_FILE}: its settings are not valid: {err}") from None
    return saved | {"out": str(directory.parent)}


def saved_config(directory):
    """The model config of the checkpoint in `directory`."""
    try:
        return read_config(Path(directory) / CONFIG_FILE)
    except checkpoint.CheckpointError as err:
        raise TrainError(f"--resume: {err}") from None


def check_moments(moments, params, path):
    """One floating-point array per parameter and moment, of the parameter's shape."""
    expected = optim.init_state(params)
    problems = {
        "missing": [name for name in expected if name not in moments],
        "unexpected": sorted(set(moments) - set(expected)),
        "of the wrong shape or dtype": [
            f"{name}: {moments[name].shape} {moments[name].dtype}"
            for name, zeros in expected.items()
            if name in moments
            and (moments[name].shape != zeros.shape or moments[name].dtype.kind != "f")
        ],
    }
    found = [f"{kind}: {listing(names, '; ')}" for kind, names in problems.items() if names]
    if found:
        raise TrainError(f"{path}: moments do not match the model's params ({'; '.join(found)})")


def load(directory, config, dtype, num_windows):
    """(RunState, BackendState) of a checkpoint, checked against the run's model config and
    its number of training windows."""
    trainer_state = read_trainer_state(directory)
    try:
        saved_config, params = checkpoint.load(directory, dtype=dtype)
        moments = checkpoint.read_safetensors(directory / OPTIMIZER_FILE)
    except checkpoint.CheckpointError as err:
        raise TrainError(f"--resume: {err}") from None
    if saved_config != config:
        raise TrainError(f"--resume {directory}: its model {saved_config} is not {config}")
    check_moments(moments, params, directory / OPTIMIZER_FILE)
    epoch, cursor = trainer_state["position"]
    if cursor >= num_windows:  # the stream of batches would never reach it: a hang, not a run
        raise TrainError(
            f"{directory / STATE_FILE}: position [{epoch}, {cursor}] lies past this run's "
            f"{num_windows} training windows; the training text has changed since the checkpoint"
        )
    moments = {k: v.astype(dtype, copy=False) for k, v in moments.items()}
    run = RunState(
        trainer_state["step"],
        trainer_state["tokens"],
        Position(epoch, cursor),
        trainer_state["metrics"],
    )
    return run, BackendState(params, moments, trainer_state["rng"])


def start(out, records):
    """Make the run directory; its metrics file holds `records` (so a resumed run forgets the
    steps after its checkpoint)."""
    out.mkdir(parents=True, exist_ok=True)
    metrics.write(out / METRICS_FILE, records)


def save(out, config, settings, max_steps, run, state):
    """Write the checkpoint directory (of `run` and the backend's `state`), atomically."""
    trainer_state = {
        "step": run.step,
        "tokens": run.tokens,
        "max_steps": max_steps,
        "position": [run.position.epoch, run.position.cursor],
        "backend": settings.backend,
        "settings": settings.to_dict(),
        "metrics": run.records,
        "rng": state.rng,
    }

    def write_files(tmp):
        checkpoint.save(tmp, config, state.params)
        tensors = {name: np.ascontiguousarray(a) for name, a in state.moments.items()}
        save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata={"step": str(run.step)})
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1) + "\n")
        (tmp / SETTINGS_FILE).write_text(json.dumps(trainer_state["settings"], indent=2) + "\n")

    with writing(out / CHECKPOINT_DIR, f"the checkpoint of step {run.step}"):
        snapshot.write_directory(out / CHECKPOINT_DIR, write_files)


@contextlib.contextmanager
def writing(path, what):
    """Turn an OSError raised while writing `what` to `path` (in a run directory) into a
    WriteError that says what to do."""
    try:
        yield
    except OSError as err:
        raise WriteError(write_failure(path, what, err)) from None


def write_failure(path, what, err):
    """e.g. "runs/tiny/checkpoint: cannot write the checkpoint of step 6: the disk is full (No
    space left on device); the checkpoint of step 4 in runs/tiny/checkpoint is intact: free
    some space, then continue with --resume runs/tiny"."""
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}
    reason = f"{why[err.errno]} ({err.strerror})" if err.errno in why else err.strerror or err
    out = path.parent
    step = saved_step(out / CHECKPOINT_DIR)
    fix = "free some space" if err.errno in why else "fix this"
    if step is None:
        advice = f"no checkpoint had been written yet: {fix}, then start the run again"
    else:
        advice = (
            f"the checkpoint of step {step} in {out / CHECKPOINT_DIR} is intact: {fix}, then "
            f"continue with --resume {out}"
        )
    return f"{path}: cannot write {what}: {reason}; {advice}"


def saved_step(directory):
    """The step of the checkpoint in `directory`, or None if there is none."""
    try:
        snapshot.recover(directory)
        return json.loads((directory / STATE_FILE).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
