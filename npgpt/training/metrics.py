"""The metrics file: one JSON object per line, appended as training goes.

Each line records one optimizer step:

    {"step": 200, "tokens": 204800, "loss": 3.91, "lr": 0.00093, "tokens_per_s": 1480.2,
     "train_loss": 3.85, "val_loss": 4.02}

`step` counts finished updates, `tokens` the training tokens consumed so far, `loss` that step's
mean loss over its micro-batches, `lr` the rate it used, `tokens_per_s` the throughput since the
previous line. `train_loss` and `val_loss` (fixed evaluation batches) are present only on
evaluation steps. JSON lines survive a crash mid-write (the torn last line is dropped when read)
and stream into any tool. A resumed run first cuts the file back to its checkpoint's step, so
the file always describes one unbroken run.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
>>> for step in (1, 2, 3):
...     append(path, {"step": step, "loss": 5.0 - step})
>>> truncate(path, 2)
>>> [r["step"] for r in read(path)]
[1, 2]
"""

import json
from pathlib import Path

from npgpt.weights.atomic import atomic_write_text

FIELDS = ("step", "tokens", "loss", "lr", "tokens_per_s", "train_loss", "val_loss")


def append(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read(path):
    """Every complete record in the file ([] if there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line torn by a crash: nothing after it was written whole
    return records


def write(path, records):
    """Replace the file's contents with `records`, atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def truncate(path, step):
    """Keep only the records of steps <= `step` (what a run resumed at `step` has done)."""
    write(path, [r for r in read(path) if r["step"] <= step])
