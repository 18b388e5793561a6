"""What the kill-and-resume tests of both trainers share: a run killed inside a chosen step,
and the files a finished run leaves to compare."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.numpy import load_file

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


def deterministic(records):
    """Metrics records without the wall-clock field."""
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]
