"""A run told to stop: SIGTERM or Ctrl-C saves the checkpoint of the last finished step (a step
in flight between its micro-batches is abandoned) and exits 0 or 130; a second signal during
the save is reported and ignored; torchrun's processes agree to stop at the same step and one
checkpoint is written; a full disk stops the run with one line, the previous checkpoint intact
and nothing half-written left. After each, --resume continues bit for bit (float64, CPU).

The signals are real, sent by this process to a training subprocess (the CLI) held at a chosen
point (trainrun.HELD_CLI), so each lands exactly there."""

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
from trainrun import assert_same_run, held_cli, signal_while_held

import cli
import npgpt
from npgpt.training import metrics
from npgpt.training.backend import NumpyBackend
from npgpt.training.loop import train
from npgpt.training.settings import resolve_settings
from torchgpt.training import TorchBackend

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


def run_settings(corpus, out, **changes):
    """4 steps of 2 micro-batches of 1 window of 8 tokens (small: the head's 50257 columns
    cost the time), dropout on (an abandoned step must undo its draws), one checkpoint at the
    end unless a test asks for more."""
    values = dict(
        preset="tiny", data=[str(corpus)], context_length=8, batch_size=1, grad_accum=2,
        max_steps=4, warmup_steps=1, lr=3e-3, drop_rate=0.1, eval_every=2, eval_batches=1,
        sample_every=100, sample_tokens=0, save_every=100, dtype="float64", out=str(out),
        cache_dir=str(Path(corpus).parent / "cache"),
    )  # fmt: skip
    return resolve_settings(values | changes)


def torch_settings(corpus, out, **changes):
    return run_settings(corpus, out, backend="torch", device="cpu", **changes)


def short_settings(corpus, out):
    """2 steps of 1 micro-batch, a checkpoint after each: the disk-full tests' run."""
    return run_settings(corpus, out, max_steps=2, grad_accum=1, save_every=1)


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory, one_torch_thread):
    """The uninterrupted runs: what every stopped run must end up as. torch on one thread, as
    in its subprocesses (ONE_THREAD), so that float64 sums add up in the same order."""
    root = tmp_path_factory.mktemp("straight")
    train(run_settings(corpus, root / "numpy"), NumpyBackend, progress=False)
    train(short_settings(corpus, root / "short"), NumpyBackend, progress=False)
    train(torch_settings(corpus, root / "torch"), TorchBackend, progress=False)
    return root


def train_args(settings, tmp_path):
    config = tmp_path / f"{Path(settings.out).name}.json"
    config.write_text(json.dumps(settings.to_dict()))
    return ["train", "--config", config, "--no-progress"]


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


def resume(settings, backend, run):
    train(resolve_settings({}, resumed=settings.to_dict()), backend, resume=run, progress=False)


def test_sigterm_inside_a_step_abandons_it_and_resumes_bit_for_bit(corpus, tmp_path, straight):
    settings = run_settings(corpus, tmp_path / "run")
    held, markers = held_cli(tmp_path, "step", 3)  # step 3 begins; its 2nd micro-batch won't
    command = [sys.executable, *held, *train_args(settings, tmp_path)]
    done = signal_while_held(command, markers, [(0, signal.SIGTERM)])
    assert done.returncode == 0, done.stderr
    assert "SIGTERM: stopping at the next micro-batch boundary" in done.stderr
    assert_stopped(done, tmp_path / "run", "SIGTERM", step=2, of=4)
    resume(settings, NumpyBackend, tmp_path / "run")
    assert_same_run(straight / "numpy", tmp_path / "run", steps=4)


def test_ctrl_c_twice_during_a_save_leaves_it_whole_and_exits_130(corpus, tmp_path, straight):
    """Without the handler the first Ctrl-C would raise KeyboardInterrupt inside the write."""
    settings = run_settings(corpus, tmp_path / "run", save_every=2)
    held, markers = held_cli(tmp_path, "save", 1)  # writing step 2's checkpoint
    command = [sys.executable, *held, *train_args(settings, tmp_path)]
    done = signal_while_held(command, markers, [(0, signal.SIGINT), (0, signal.SIGINT)])
    assert done.returncode == 130, done.stderr
    assert "SIGINT again: still stopping" in done.stderr
    assert_stopped(done, tmp_path / "run", "SIGINT", step=2, of=4)
    assert npgpt.load(tmp_path / "run")[0] == npgpt.load(straight / "numpy")[0]
    resume(settings, NumpyBackend, tmp_path / "run")
    assert_same_run(straight / "numpy", tmp_path / "run", steps=4)


def test_torch_ctrl_c_inside_a_step_abandons_it_and_resumes_bit_for_bit(corpus, tmp_path, straight):
    settings = torch_settings(corpus, tmp_path / "run")
    held, markers = held_cli(tmp_path, "step", 2)
    command = [sys.executable, *held, *train_args(settings, tmp_path)]
    done = signal_while_held(command, markers, [(0, signal.SIGINT)], env=ONE_THREAD)
    assert done.returncode == 130, done.stderr
    assert_stopped(done, tmp_path / "run", "SIGINT", step=1, of=4)
    resume(torch_settings(corpus, tmp_path / "run"), TorchBackend, tmp_path / "run")
    state_a, state_b, _ = assert_same_run(straight / "torch", tmp_path / "run", steps=4)
    assert state_a["rng"] == state_b["rng"]  # the abandoned step's dropout draws were undone


def test_torchrun_processes_agree_to_stop_at_one_step(corpus, tmp_path):
    """A SIGTERM to rank 1 and a Ctrl-C to rank 0, held at the start of step 2 (one micro-batch
    per step here: the step in flight is finished): both processes stop after step 2, for the
    same reason (SIGTERM outranks SIGINT: status 0), and one checkpoint holds both ranks'."""
    settings = torch_settings(corpus, tmp_path / "ddp", grad_accum=1, batch_size=2)
    held, markers = held_cli(tmp_path, "step", 2)
    command = [*TORCHRUN, 2, *held, *train_args(settings, tmp_path)]
    signals = [(1, signal.SIGTERM), (0, signal.SIGINT)]
    done = signal_while_held(command, markers, signals, ranks=2, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_stopped_ddp(done, tmp_path / "ddp")


def assert_stopped_ddp(done, run):
    stopped = [line for line in done.stderr.splitlines() if line.startswith("stopped by")]
    assert stopped == [
        f"stopped by SIGTERM after step 2 of 4: checkpoint {run / 'checkpoint'}; "
        f"continue with --resume {run}"
    ]  # the main process alone reports
    state = json.loads((run / "checkpoint/trainer_state.json").read_text())
    assert state["step"] == 2 and len(state["rng"]["torch"]) == 2
    assert [r["step"] for r in metrics.read(run / "metrics.jsonl")] == [0, 1, 2]
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
    corpus, tmp_path, straight, monkeypatch, what
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
    assert_same_run(straight / "short", run, steps=2)


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
    corpus, tmp_path, straight, monkeypatch
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
    assert_same_run(straight / "short", run, steps=2)
