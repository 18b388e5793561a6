"""Training data: text -> token ids -> overlapping windows -> shuffled batches.

Corpus. Text files given by path or glob, or by default the built-in corpus: the help topics of
Python's own documentation (`pydoc_data.topics`, shipped with every CPython), assembled at run time
so no text is copied into this repository. Each document is encoded on its own and documents are
joined with `<|endoftext|>`, so the model learns where one ends.

Token cache. Encoding ~0.5 MB of text takes seconds; the ids are cached as a `.npy` file
(`allow_pickle=False`) named by the sha256 of the documents, so a changed file gets new ids and an
unchanged one is never re-encoded.

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
continues into the next epoch's permutation. A global batch is a list of window indices;
`shard` gives each of `world_size` data-parallel ranks its own contiguous slice.

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
import glob
import hashlib
import os
from pathlib import Path

import numpy as np

from npgpt.tokenizer import EOT_ID, get_tokenizer
from npgpt.weights.atomic import atomic_write

BUILTIN = "built-in corpus (pydoc_data.topics)"


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and the fix."""


def builtin_documents():
    """The built-in corpus: Python's help topics, one document per topic, in sorted order."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def expand(patterns):
    """Paths and globs -> sorted, de-duplicated file paths; every pattern must match a file."""
    files = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"--data {pattern!r} matches no files; check the pattern")
            files += matches
        elif Path(pattern).is_dir():
            raise DataError(
                f"{pattern} is a directory; pass its files or a glob like {pattern}/*.txt"
            )
        elif not Path(pattern).is_file():
            raise DataError(f"{pattern}: no such file; pass an existing text file or a glob")
        else:
            files.append(pattern)
    return list(dict.fromkeys(files))


def read_text(path):
    """A file's text, or a DataError saying where the first byte that is not UTF-8 sits."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text: byte 0x{data[err.start]:02x} at byte offset {err.start} "
            f"cannot be decoded; convert it (e.g. iconv -t UTF-8) or leave the file out"
        ) from None


def load_documents(patterns=()):
    """(documents, description): the given files' texts, or the built-in corpus if none."""
    if not patterns:
        return builtin_documents(), BUILTIN
    files = expand(patterns)
    return [read_text(f) for f in files], ", ".join(files)


def default_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "npgpt"


def corpus_hash(documents):
    h = hashlib.sha256(b"gpt2-bpe, documents joined by <|endoftext|>\n")
    for doc in documents:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def encode_documents(documents):
    """One id array: each document's GPT-2 tokens, documents separated by `<|endoftext|>`."""
    tok = get_tokenizer()
    ids = []
    for i, doc in enumerate(documents):
        if i:
            ids.append(EOT_ID)
        ids += tok.encode_ordinary(doc)
    return np.array(ids, dtype=np.uint16)  # GPT-2's 50257 ids fit in 16 bits


def save_npy(path, array):
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a bare name
        np.save(f, array, allow_pickle=False)


def token_ids(documents, cache_dir=None):
    """The documents' token ids (uint16), read from or written to the `.npy` cache."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"tokens-{corpus_hash(documents)}.npy"
    if path.exists():
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError):
            pass  # a damaged cache file is re-made below
    ids = encode_documents(documents)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_npy(tmp, ids))
    except OSError:
        pass  # an unwritable cache costs time, not correctness
    return ids


@dataclasses.dataclass(frozen=True)
class Windows:
    """Sliding windows of T + 1 tokens over `ids`, `stride` apart (see the module docstring)."""

    ids: np.ndarray  # (n,)
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


def split(ids, context_length, stride, val_fraction, source):
    """(train Windows, validation Windows); the validation split is the last val_fraction."""
    need = context_length + 1
    if len(ids) < need:
        raise DataError(
            f"{source}: the corpus has {len(ids)} tokens but needs at least context_length + 1 = "
            f"{need}; give more text or lower --context-length"
        )
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


def epoch_order(num_windows, seed, epoch):
    return np.random.default_rng([seed, epoch]).permutation(num_windows)


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


def shard(indices, rank, world_size):
    """Rank `rank`'s contiguous slice of a global batch (its length must divide evenly)."""
    if len(indices) % world_size:
        raise ValueError(
            f"a global batch of {len(indices)} windows does not split over {world_size} ranks"
        )
    per_rank = len(indices) // world_size
    return indices[rank * per_rank : (rank + 1) * per_rank]


def fixed_indices(num_windows, count):
    """`count` windows spread evenly over the split: the same evaluation batches at every step."""
    count = min(count, num_windows)
    return np.linspace(0, num_windows - 1, count).round().astype(np.int64).tolist()
