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
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from npgpt import optim
from npgpt.training import metrics, snapshot
from npgpt.training.backend import BackendState
from npgpt.training.settings import TrainError
from npgpt.training.windows import Position
from npgpt.weights import checkpoint
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


def read_trainer_state(directory):
    path = Path(directory) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TrainError(f"{path}: unreadable trainer state ({err})") from None


def resumed_settings(path):
    """The settings the run at `path` was saved with, its `out` set to where it now lives (so a
    moved run directory resumes in place)."""
    directory = find_checkpoint(path)
    return read_trainer_state(directory)["settings"] | {"out": str(directory.parent)}


def saved_config(directory):
    """The model config of the checkpoint in `directory`."""
    try:
        return read_config(Path(directory) / CONFIG_FILE)
    except checkpoint.CheckpointError as err:
        raise TrainError(f"--resume: {err}") from None


def load(directory, config, dtype):
    """(RunState, BackendState) of a checkpoint, checked against the run's model config."""
    trainer_state = read_trainer_state(directory)
    try:
        saved_config, params = checkpoint.load(directory, dtype=dtype)
        moments = checkpoint.read_safetensors(directory / OPTIMIZER_FILE)
    except checkpoint.CheckpointError as err:
        raise TrainError(f"--resume: {err}") from None
    if saved_config != config:
        raise TrainError(f"--resume {directory}: its model {saved_config} is not {config}")
    expected = optim.init_state(params)
    if sorted(moments) != sorted(expected) or any(
        moments[k].shape != v.shape for k, v in expected.items()
    ):
        raise TrainError(f"{directory / OPTIMIZER_FILE}: moments do not match the model's params")
    moments = {k: v.astype(dtype, copy=False) for k, v in moments.items()}
    run = RunState(
        trainer_state["step"],
        trainer_state["tokens"],
        Position(*trainer_state["position"]),
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
