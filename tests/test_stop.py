"""A run told to stop: SIGTERM or Ctrl-C saves the checkpoint of the last finished step (a step
in flight between its micro-batches is abandoned) and exits 0 or 130; a second signal during
the save is reported and ignored; torchrun's processes agree to stop at the same step and one
checkpoint is written; a full disk stops the run with one line, the previous checkpoint intact
and nothing half-written left. After each, --resume continues bit for bit (float64, CPU).

The signals are real, sent by this process to a training subprocess (the CLI) held at a chosen
point (trainrun.HELD_CLI), so each lands exactly there. Every run compared bit for bit runs in a
subprocess on one thread (ONE_THREAD): the float64 sums then add up in one order, and the tiny
products run 3x faster than on two threads of a busy machine."""

import errno
import importlib
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from trainrun import (
    ONE_THREAD,
    assert_same_run,
    cli_run,
    held_cli,
    signal_while_held,
    stop_settings,
    train_args,
    train_on_one_thread,
)

import cli
import npgpt
from npgpt.training import metrics, stopping
from npgpt.training.backend import NumpyBackend
from npgpt.training.loop import train
from npgpt.training.settings import resolve_settings

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


def short_settings(corpus, out):
    """2 steps of 1 micro-batch, a checkpoint after each: the disk-full tests' run (in float32,
    half the bytes to write)."""
    return stop_settings(corpus, out, max_steps=2, grad_accum=1, save_every=1, dtype="float32")


@pytest.fixture(scope="module")
def short_straight(corpus, tmp_path_factory):
    """The disk-full tests' run, uninterrupted, in this process as theirs are."""
    out = tmp_path_factory.mktemp("straight") / "short"
    train(short_settings(corpus, out), NumpyBackend, progress=False)
    return out


def test_a_signal_is_noted_never_raised_and_the_handlers_come_back():
    """In this process: Ctrl-C inside the block raises no KeyboardInterrupt; the request keeps
    the strongest signal (SIGTERM over SIGINT), `now()` keeps what the processes agreed on."""
    before = signal.getsignal(signal.SIGINT)
    with stopping.on_signals(agree=lambda signum: signum, show=False) as stop:
        assert not stop.now() and stop.agreed == 0
        signal.raise_signal(signal.SIGINT)  # raised in this thread: handled before the next line
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        assert stop.received == signal.SIGTERM
        assert stop.now() and stop.agreed == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is before
    assert stopping.Stopped("", signal.SIGINT).exit_status == 130
    assert stopping.Stopped("", signal.SIGTERM).exit_status == 0


def assert_stopped(done, run, name, step, of):
    """The run stopped by `name` left the checkpoint of `step`, the metrics cut to it, nothing
    half-written, and said so on its last line."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"stopped by {name} after step {step} of {of}: checkpoint {run / 'checkpoint'}; "
        f"continue with --resume {run}"
    )
    state = json.loads((run / "checkpoint/trainer_state.json").read_text())
    assert state["step"] == step
    assert [r["step"] for r in metrics.read(run / "metrics.jsonl")] == list(range(step + 1))
    assert {p.name for p in run.iterdir()} <= {"checkpoint", "metrics.jsonl", "loss.png"}


def resume(run, *more):
    cli_run("train", "--resume", run, "--no-progress", *more)


def test_sigterm_inside_a_step_abandons_it_and_resumes_bit_for_bit(corpus, tmp_path, straight_runs):
    settings = stop_settings(corpus, tmp_path / "run")
    held, markers = held_cli(tmp_path, "step", 3)  # step 3 begins; its 2nd micro-batch won't
    command = [sys.executable, *held, *train_args(settings, tmp_path)]
    done = signal_while_held(command, markers, [(0, signal.SIGTERM)], env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    assert "SIGTERM: stopping at the next micro-batch boundary" in done.stderr
    assert_stopped(done, tmp_path / "run", "SIGTERM", step=2, of=3)
    resume(tmp_path / "run")
    assert_same_run(straight_runs("numpy"), tmp_path / "run", steps=3)


def test_ctrl_c_twice_during_a_save_leaves_it_whole_and_exits_130(corpus, tmp_path, straight_runs):
    """Without the handler the first Ctrl-C would raise KeyboardInterrupt inside the write."""
    settings = stop_settings(corpus, tmp_path / "run", save_every=2)
    held, markers = held_cli(tmp_path, "save", 1)  # writing step 2's checkpoint
    command = [sys.executable, *held, *train_args(settings, tmp_path)]
    signals = [(0, signal.SIGINT), (0, signal.SIGINT)]
    done = signal_while_held(command, markers, signals, env=ONE_THREAD)
    assert done.returncode == 130, done.stderr
    assert "SIGINT again: still stopping" in done.stderr
    assert_stopped(done, tmp_path / "run", "SIGINT", step=2, of=3)
    assert npgpt.load(tmp_path / "run")[0] == npgpt.load(straight_runs("numpy"))[0]
    resume(tmp_path / "run")
    assert_same_run(straight_runs("numpy"), tmp_path / "run", steps=3)


def test_torch_ctrl_c_inside_a_step_abandons_it_and_resumes_bit_for_bit(
    corpus, tmp_path, straight_runs
):
    settings = stop_settings(corpus, tmp_path / "run", "torch")
    held, markers = held_cli(tmp_path, "step", 2)
    command = [sys.executable, *held, *train_args(settings, tmp_path)]
    done = signal_while_held(command, markers, [(0, signal.SIGINT)], env=ONE_THREAD)
    assert done.returncode == 130, done.stderr
    assert_stopped(done, tmp_path / "run", "SIGINT", step=1, of=3)
    # in this process: a torch process takes seconds to start; torch-only flags are not carried
    resumed = resolve_settings({"device": "cpu"}, resumed=settings.to_dict())
    train_on_one_thread(resumed, resume=tmp_path / "run")
    state_a, state_b, _ = assert_same_run(straight_runs("torch"), tmp_path / "run", steps=3)
    assert state_a["rng"] == state_b["rng"]  # the abandoned step's dropout draws were undone


def test_torchrun_processes_agree_to_stop_at_one_step(corpus, tmp_path):
    """A SIGTERM to rank 1 alone, held at the start of step 2: between the step's two
    micro-batches (DDP has not exchanged gradients yet) both processes abandon it, rank 0 for
    rank 1's reason (status 0, its report says SIGTERM), and one checkpoint, of step 1, holds
    both ranks' RNG states."""
    settings = stop_settings(corpus, tmp_path / "ddp", "torch", batch_size=2)
    held, markers = held_cli(tmp_path, "step", 2)
    command = [*TORCHRUN, 2, *held, *train_args(settings, tmp_path)]
    done = signal_while_held(command, markers, [(1, signal.SIGTERM)], ranks=2, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_stopped_ddp(done, tmp_path / "ddp")


def assert_stopped_ddp(done, run):
    stopped = [line for line in done.stderr.splitlines() if line.startswith("stopped by")]
    assert stopped == [
        f"stopped by SIGTERM after step 1 of 3: checkpoint {run / 'checkpoint'}; "
        f"continue with --resume {run}"
    ]  # the main process alone reports
    state = json.loads((run / "checkpoint/trainer_state.json").read_text())
    assert state["step"] == 1 and len(state["rng"]["torch"]) == 2
    assert [r["step"] for r in metrics.read(run / "metrics.jsonl")] == [0, 1]
    assert {p.name for p in run.iterdir()} <= {"checkpoint", "metrics.jsonl", "loss.png"}


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def half_written(function, path_of):
    """`function`, made to leave half a file at its destination and fail as a full disk does."""

    def write_half_then_fail(*args, **kwargs):
        if path_of is not None:
            Path(path_of(*args)).write_bytes(b"half")
        raise ENOSPC

    return write_half_then_fail


# Where each file of a checkpoint is written, and the two steps of the swap that follow.
WRITES = {
    "model.safetensors": ("npgpt.weights.checkpoint.save_file", lambda tensors, path, **_: path),
    "config.json": ("npgpt.weights.checkpoint.write_config", lambda path, config: path),
    "optimizer.safetensors": (
        "npgpt.training.run_directory.save_file",
        lambda tensors, path, **_: path,
    ),
    "trainer_state.json": ("pathlib.Path.write_text", lambda path, text: path),
    "train_config.json": ("pathlib.Path.write_text", lambda path, text: path),
    "fsync of the files": ("npgpt.training.snapshot.fsync_tree", None),
    "rename into place": ("os.rename", None),  # the previous one was renamed .old just before
}


def fail_at(monkeypatch, target, path_of, when, nth):
    """Make the `nth` call of `target` for which `when(*args)` holds fail with ENOSPC; returns
    the list of the failures raised (so a test knows its fault was met)."""
    module, name = target.rsplit(".", 1)
    owner = Path if module == "pathlib.Path" else importlib.import_module(module)
    real, calls, raised = getattr(owner, name), [], []
    failing = half_written(real, path_of)

    def maybe_fail(*args, **kwargs):
        if when(*args):
            calls.append(args)
            if len(calls) == nth:
                raised.append(args)
                return failing(*args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, maybe_fail)
    return raised


def matches(what):
    """Which calls write the file `what` (all do, for a writer of one file only)."""
    if what.endswith(".json") and what != "config.json":
        return lambda path, *rest: Path(path).name == what
    if what == "rename into place":
        return lambda src, dst: Path(src).name.startswith(".checkpoint.tmp-")
    return lambda *args: True


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def assert_one_line_error(result, *phrases):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.stdout.count("Error") == 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("Error: "), result.stderr  # 0: the headline
    for phrase in phrases:
        assert phrase in lines[1], lines[1]


def assert_nothing_half_written(run):
    assert {p.name for p in run.iterdir()} <= {"checkpoint", "metrics.jsonl", "loss.png"}
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == sorted(
        ["model.safetensors", "config.json", "optimizer.safetensors", "trainer_state.json",
         "train_config.json"]
    )  # fmt: skip


def start_short_run(corpus, run, tmp_path):
    """`train --config` of the disk-full tests' run."""
    return invoke("train", *train_args(short_settings(corpus, run), tmp_path)[1:])


@pytest.mark.parametrize("what", list(WRITES))
def test_a_full_disk_at_any_file_keeps_the_previous_checkpoint(
    corpus, tmp_path, short_straight, monkeypatch, what
):
    """Step 1's checkpoint is written; step 2's fails at `what`."""
    run = tmp_path / "run"
    target, path_of = WRITES[what]
    raised = fail_at(monkeypatch, target, path_of, matches(what), nth=2)
    result = start_short_run(corpus, run, tmp_path)
    assert raised, f"the fault at {what} was never met: is the file written elsewhere now?"
    assert_one_line_error(
        result,
        f"{run / 'checkpoint'}: cannot write the checkpoint of step 2: the disk is full",
        f"the checkpoint of step 1 in {run / 'checkpoint'} is intact: free some space, then "
        f"continue with --resume {run}",
    )
    monkeypatch.undo()
    assert_nothing_half_written(run)
    assert json.loads((run / "checkpoint/trainer_state.json").read_text())["step"] == 1
    loaded_config, params = npgpt.load(run)
    assert loaded_config.context_length == 8 and params["wte.weight"].dtype == np.float32
    result = invoke("train", "--resume", run, "--no-progress")
    assert result.exit_code == 0, result.output
    assert_same_run(short_straight, run, steps=2)


def test_a_full_disk_at_the_first_checkpoint_leaves_none_and_says_start_again(
    corpus, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    target, path_of = WRITES["optimizer.safetensors"]
    raised = fail_at(monkeypatch, target, path_of, matches("optimizer.safetensors"), nth=1)
    result = start_short_run(corpus, run, tmp_path)
    assert raised
    assert_one_line_error(
        result,
        "cannot write the checkpoint of step 1: the disk is full",
        "no checkpoint had been written yet: free some space, then start the run again",
    )
    assert {p.name for p in run.iterdir()} == {"metrics.jsonl"}


def test_a_full_disk_at_the_metrics_file_says_which_checkpoint_to_resume(
    corpus, tmp_path, short_straight, monkeypatch
):
    run = tmp_path / "run"
    raised = fail_at(monkeypatch, "npgpt.training.metrics.append", None, matches("-"), nth=3)
    result = start_short_run(corpus, run, tmp_path)
    assert raised
    assert_one_line_error(
        result,
        f"{run / 'metrics.jsonl'}: cannot write the metrics of step 2: the disk is full",
        f"the checkpoint of step 1 in {run / 'checkpoint'} is intact",
    )
    monkeypatch.undo()
    assert invoke("train", "--resume", run, "--no-progress").exit_code == 0
    assert_same_run(short_straight, run, steps=2)
