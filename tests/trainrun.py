"""What the kill-and-resume tests of both trainers share: a run killed inside a chosen step,
and the files a finished run leaves to compare."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from npgpt.training import metrics

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

    def train_step(self, micro_batches, lr):
        self.begun += 1
        if self.begun == kill_step:  # after the previous checkpoint, inside this step
            open(marker, "w").close()
            time.sleep(600)
        return super().train_step(micro_batches, lr)

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
