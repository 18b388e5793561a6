"""Training examples: token ids -> train/validation split -> overlapping windows -> seeded order.

Split. The last `val_fraction` of the tokens is the validation split; contiguous, so no
validation window overlaps a training window.

Windows. Window i starts at token s = i * stride and spans T + 1 tokens (T = context_length):

    ids      t0 t1 t2 t3 t4 t5 t6 ...          T = 4, stride = 2
    window 0 [x: t0 t1 t2 t3]  y: t1 t2 t3 t4  (targets are the inputs shifted by one)
    window 1       [x: t2 t3 t4 t5]  y: t3 t4 t5 t6

    count = (n - T - 1) // stride + 1          (n = tokens in the split, n >= T + 1)

Order. Each epoch visits every window once, in `np.random.default_rng([seed, epoch])`'s
permutation. The position in that stream is two integers, (epoch, cursor), so a resumed run
draws exactly the batches the uninterrupted run would have; a batch that crosses an epoch's end
continues into the next epoch's permutation.

>>> ids = np.arange(10)
>>> w = Windows(ids, context_length=4, stride=2)
>>> len(w)
3
>>> x, y = w.batch([1])
>>> x.tolist(), y.tolist()
([[2, 3, 4, 5]], [[3, 4, 5, 6]])
>>> indices, pos = next_indices(len(w), 2, seed=0, position=Position())
>>> sorted(indices + next_indices(len(w), 1, 0, pos)[0])
[0, 1, 2]
"""

import dataclasses
import functools

import numpy as np

from npgpt.training.corpus import DataError


@dataclasses.dataclass(frozen=True)
class Windows:
    """Sliding windows of T + 1 tokens over `ids`, `stride` apart (see the module docstring)."""

    ids: np.ndarray  # (n,), or a memory-mapped shards.TokenStore, indexed alike
    context_length: int
    stride: int

    def __len__(self):
        return (len(self.ids) - self.context_length - 1) // self.stride + 1

    def batch(self, indices):
        """Inputs and targets (B, T) int64 for the windows `indices`."""
        starts = np.asarray(indices, dtype=np.int64) * self.stride
        rows = self.ids[starts[:, None] + np.arange(self.context_length + 1)]  # (B, T + 1)
        rows = rows.astype(np.int64)
        return rows[:, :-1], rows[:, 1:]


def check_length(ids, context_length, source):
    """A DataError if `ids` are too few for one window."""
    need = context_length + 1
    if len(ids) < need:
        raise DataError(
            f"{source}: the corpus has {len(ids)} tokens but needs at least context_length + 1 = "
            f"{need}; give more text or lower --context-length"
        )


def split(ids, context_length, stride, val_fraction, source):
    """(train Windows, validation Windows); the validation split is the last val_fraction."""
    check_length(ids, context_length, source)
    need = context_length + 1
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = int(round(len(ids) * val_fraction))
    if n_val < need or len(ids) - n_val < need:
        which = "validation" if n_val < need else "training"
        raise DataError(
            f"{source}: the {which} split is empty: {len(ids)} tokens x val_fraction "
            f"{val_fraction} leaves {n_val} for validation and {len(ids) - n_val} for training, "
            f"and each needs at least context_length + 1 = {need}; give more text, lower "
            f"--context-length or change the validation fraction"
        )
    train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    return Windows(train_ids, context_length, stride), Windows(val_ids, context_length, stride)


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run is in its stream of windows: the epoch, and the index into its permutation."""

    epoch: int = 0
    cursor: int = 0


@functools.lru_cache(maxsize=1)
def epoch_order(num_windows, seed, epoch):
    """The epoch's permutation of the windows, made once per epoch (every step draws from it);
    4 bytes a window, the one thing in memory that grows with the corpus."""
    order = np.random.default_rng([seed, epoch]).permutation(num_windows)
    order = order.astype(np.int32) if num_windows < 2**31 else order
    order.flags.writeable = False
    return order


def next_indices(num_windows, count, seed, position):
    """The next `count` window indices and the position after them."""
    epoch, cursor, indices = position.epoch, position.cursor, []
    while len(indices) < count:
        order = epoch_order(num_windows, seed, epoch)
        take = order[cursor : cursor + count - len(indices)]
        indices += take.tolist()
        cursor += len(take)
        if cursor == num_windows:
            epoch, cursor = epoch + 1, 0
    return indices, Position(epoch, cursor)


def fixed_indices(num_windows, count):
    """`count` windows spread evenly over the split: the same evaluation batches at every step."""
    count = min(count, num_windows)
    return np.linspace(0, num_windows - 1, count).round().astype(np.int64).tolist()
