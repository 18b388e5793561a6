"""What the kill-and-resume tests of both trainers share: a run killed inside a chosen step, a
run told to stop (a real signal) at a chosen point, a run that SIGKILLs itself at its n-th
event, and the files a finished run leaves to compare."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from npgpt.training import metrics
from npgpt.training.loop import train
from npgpt.training.settings import resolve_settings

ROOT = Path(__file__).resolve().parents[1]

KILLED_RUN = """
import json, sys, time
from npgpt.training.backend import NumpyBackend
from npgpt.training.loop import train
from npgpt.training.settings import resolve_settings

settings = resolve_settings(json.loads(sys.argv[1]))
marker, kill_step = sys.argv[2], int(sys.argv[3])
if settings.backend == "torch":
    from torchgpt.training import TorchBackend as Backend
else:
    Backend = NumpyBackend

class HangingBackend(Backend):
    def __init__(self, config, settings, state, step):
        super().__init__(config, settings, state, step)
        self.begun = step

    def train_step(self, micro_batches, lr, stop_now):
        self.begun += 1
        if self.begun == kill_step:  # after the previous checkpoint, inside this step
            open(marker, "w").close()
            time.sleep(600)
        return super().train_step(micro_batches, lr, stop_now)

train(settings, HangingBackend, progress=False)
"""


def kill_inside_step(settings, step, env=None):
    """Train `settings` (on its backend) in a subprocess and SIGKILL it while it is inside update
    `step`."""
    marker = Path(settings.out).parent / f"{Path(settings.out).name}-in-step-{step}"
    args = [json.dumps(settings.to_dict()), str(marker), str(step)]
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, *args],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)} | (env or {}),
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, f"the run ended before reaching step {step}"
            assert time.monotonic() < deadline, f"the run never reached step {step}"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


HELD_CLI = """
import os, sys, time
from pathlib import Path
import cli
import npgpt.weights.checkpoint

markers, where, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rank = os.environ.get("RANK", "0")
calls = 0

def hold():
    # say where this process is (its pid, under its rank), and wait for the test's signals
    global calls
    calls += 1
    if calls == count:
        (markers / f".{rank}").write_text(str(os.getpid()))
        os.rename(markers / f".{rank}", markers / rank)
        while not (markers / "go").exists():
            time.sleep(0.01)

make_backend = cli.training_backend

def held_backend(name):
    class Held(make_backend(name)):
        def train_step(self, micro_batches, lr, stop_now):
            if where == "step":  # before the step's first micro-batch
                hold()
            return super().train_step(micro_batches, lr, stop_now)
    return Held

save_model = npgpt.weights.checkpoint.save

def held_save(*args):
    if where == "save":  # inside a checkpoint's write: the temporary directory is half full
        hold()
    return save_model(*args)

cli.training_backend = held_backend
npgpt.weights.checkpoint.save = held_save
cli.main(sys.argv[4:], prog_name="cli.py")
"""


def signal_while_held(command, markers, signals, ranks=1, env=None, timeout=120):
    """Run `command` (a HELD_CLI, maybe under torchrun) until each of its `ranks` processes is
    held, send `signals` [(rank, signal)] in order, let them go on, and wait for the end.
    A signal to rank 0 (the one that reports) is sent once the previous one was reported: two
    of a kind sent at once would reach Python's handler once. Returns the CompletedProcess."""
    markers.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(c) for c in command],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)} | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = [], []
    readers = [threading.Thread(target=collect, args=pair) for pair in
               ((proc.stdout, out), (proc.stderr, err))]  # fmt: skip
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not all((markers / str(rank)).exists() for rank in range(ranks)):
            assert proc.poll() is None, "ended before it was held"
            assert time.monotonic() < deadline, "never held"
            time.sleep(0.02)
        for rank, signum in signals:
            reports = sum(line.startswith(signum.name) for line in err)
            os.kill(int((markers / str(rank)).read_text()), signum)
            while rank == 0 and sum(line.startswith(signum.name) for line in err) == reports:
                assert time.monotonic() < deadline, f"{signum.name} never reported: {err}"
                time.sleep(0.02)
        (markers / "go").touch()
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:  # a failed test: none of its processes may outlive it
            for marker in markers.glob("[0-9]*"):  # torchrun's own are in sessions of their own
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(marker.read_text()), signal.SIGKILL)
            proc.kill()
            proc.wait()
        for reader in readers:
            reader.join(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out), "".join(err))


def collect(stream, lines):
    """Append each line of `stream` to `lines` as it comes (read by a thread)."""
    for line in stream:
        lines.append(line)


def held_cli(tmp_path, where, count):
    """The start of a command that runs `cli.py` held at its `count`-th `where` ("step":
    a training step's start, "save": a checkpoint's write). Returns (command, markers)."""
    script = tmp_path / "held_cli.py"
    script.write_text(HELD_CLI)
    markers = tmp_path / f"held-{where}-{count}"
    return [script, markers, where, count], markers


KILLED_AT_EVENT = """
import json, os, shutil, signal, sys
from npgpt.training import metrics, run_directory
from npgpt.training.backend import NumpyBackend
from npgpt.training.loop import train
from npgpt.training.settings import TrainError, resolve_settings

settings = resolve_settings(json.loads(sys.argv[1]))
kill_at = int(sys.argv[2])
if settings.backend == "torch":
    from torchgpt.training import TorchBackend as Backend
else:
    Backend = NumpyBackend
events = 0

def event():
    global events
    events += 1
    if events == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

def counted(function):
    def counted_function(*args, **kwargs):
        event()
        return function(*args, **kwargs)
    return counted_function

class Counted(Backend):
    def train_step(self, micro_batches, lr, stop_now):
        event()  # a step's start, then each boundary between its micro-batches
        return super().train_step(micro_batches, lr, counted(stop_now))

Counted.eval_loss = counted(Backend.eval_loss)
metrics.append = counted(metrics.append)
# every file write's commit, every fsync, both renames and the delete of a checkpoint swap
for module, name in ((os, "replace"), (os, "rename"), (os, "fsync"), (shutil, "rmtree")):
    setattr(module, name, counted(getattr(module, name)))
try:
    resume = run_directory.find_checkpoint(settings.out)
except TrainError:
    resume = None  # killed before its first checkpoint: it starts again
train(settings, Counted, resume=resume, progress=False)
"""


def run_killed_at_event(settings, kill_at, env=None):
    """Train `settings` in a subprocess (resuming the checkpoint in settings.out, if any) that
    SIGKILLs itself at its `kill_at`-th event (see KILLED_AT_EVENT; 0: at none). Returns whether
    it was killed (False: the run ended first)."""
    done = subprocess.run(
        [sys.executable, "-c", KILLED_AT_EVENT, json.dumps(settings.to_dict()), str(kill_at)],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)} | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, -signal.SIGKILL), done.stderr[-3000:]
    return done.returncode == -signal.SIGKILL


ONE_THREAD = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def stop_settings(corpus, out, backend="numpy", **changes):
    """The run the stop and kill tests interrupt and compare: 3 steps of 2 micro-batches of 1
    window of 8 tokens (small: the head's 50257 columns cost the time), dropout on (an abandoned
    step must undo its draws), float64, one checkpoint at the end unless a test asks for more."""
    values = dict(
        preset="tiny", data=[str(corpus)], context_length=8, batch_size=1, grad_accum=2,
        max_steps=3, warmup_steps=1, lr=3e-3, drop_rate=0.1, eval_every=2, eval_batches=1,
        sample_every=100, sample_tokens=0, save_every=100, dtype="float64", out=str(out),
        cache_dir=str(Path(corpus).parent / "cache"), backend=backend,
    )  # fmt: skip
    if backend == "torch":
        values["device"] = "cpu"
    return resolve_settings(values | changes)


def train_args(settings, directory):
    """`train` of `settings`, through a --config file written in `directory`."""
    config = Path(directory) / f"{Path(settings.out).name}.json"
    config.write_text(json.dumps(settings.to_dict()))
    return ["train", "--config", config, "--no-progress"]


def cli_run(*args):
    """`python cli.py ARGS` in a subprocess on one thread (ONE_THREAD: float64 sums then add up
    in one order in every such process, and tiny products run ~3x faster than on two threads of
    a busy machine); it must succeed."""
    done = subprocess.run(
        [sys.executable, "cli.py", *[str(a) for a in args]],
        cwd=ROOT,
        env=os.environ | ONE_THREAD,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def torchrun_cli(*args, timeout=180):
    """`python cli.py ARGS` under torchrun, 2 gloo processes on one thread each (ONE_THREAD);
    it must succeed, and as 2 DDP processes. Returns the finished process."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    done = subprocess.run(
        [str(a) for a in [*torchrun, "2", "cli.py", *args]],
        cwd=ROOT,
        env=os.environ | ONE_THREAD,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes (DDP)" in done.stderr
    return done


def train_on_one_thread(settings, resume=None):
    """A torch run in this process, on one thread as in the tests' subprocesses (ONE_THREAD)."""
    import torch

    from torchgpt.training import TorchBackend

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(settings, TorchBackend, resume=resume, progress=False)
    finally:
        torch.set_num_threads(threads)


def checkpoint_files(run):
    """(parameters, optimizer moments, trainer state) of the run directory `run`."""
    directory = Path(run) / "checkpoint"
    return (
        load_file(str(directory / "model.safetensors")),
        load_file(str(directory / "optimizer.safetensors")),
        json.loads((directory / "trainer_state.json").read_text()),
    )


def assert_same_run(straight, resumed, steps):
    """The run directory `resumed` ended exactly where `straight` did, after `steps` steps:
    every parameter and AdamW moment bit for bit, and every logged number but the wall clock
    (losses, learning rates, validation losses, dropout draws included). Returns both trainer
    states and the resumed run's records, for further checks."""
    params_a, moments_a, state_a = checkpoint_files(straight)
    params_b, moments_b, state_b = checkpoint_files(resumed)
    assert state_a["step"] == state_b["step"] == steps
    assert params_a.keys() == params_b.keys() and moments_a.keys() == moments_b.keys()
    for name in params_a:
        np.testing.assert_array_equal(params_a[name], params_b[name], err_msg=name)
    for name in moments_a:
        np.testing.assert_array_equal(moments_a[name], moments_b[name], err_msg=name)
    logged_a = deterministic(metrics.read(Path(straight) / "metrics.jsonl"))
    logged_b = deterministic(metrics.read(Path(resumed) / "metrics.jsonl"))
    assert [r["step"] for r in logged_b] == list(range(steps + 1))
    assert logged_a == logged_b
    return state_a, state_b, logged_b


def deterministic(records):
    """Metrics records without the wall-clock field."""
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]
