"""bench/bench_torch.py runs end to end on a tiny model on the CPU (`--device cpu`, on any
machine), prints its tables, and says that the GPU targets were not measured, with exit status 2
rather than a pretended success."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_torch.py"


def test_cpu_smoke_run_prints_the_tables_and_refuses_to_pass():
    args = "--device cpu --preset tiny --batch-size 1 --seq-len 8 --steps 1 --warmup 1"
    args += " --new-tokens 4 --prompt-len 2 --no-npgpt --peak-tflops 1"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(BENCH), *args.split()], capture_output=True, text=True, env=env
    )
    assert run.returncode == 2, run.stderr
    out = run.stdout
    assert "torchgpt training, preset tiny" in out and "MFU" in out
    for row in ("static", "concat", "none (recompute)"):
        assert f"\n{row}" in out, row
    assert "no CUDA: skipped" in out and "NOT measured" in out
    assert "PASS" not in out
