"""What `--data` names, as token ids and the windows cut from them.

    --data (none)      the built-in corpus      encoded in memory, cached by content (corpus.py)
    --data FILE/GLOB   text files (repeatable)  the same
    --data DIR         a prepared corpus        its shards, memory-mapped (prepare.py, shards.py)

The ids are the same either way (a prepared corpus of some files holds the ids that encoding
those files in memory gives), and `windows.split` cuts them the same way: an id array and a
memory-mapped `TokenStore` index alike. So `train --data DIR` and `train --data FILES...` on
the same files draw identical batches. A prepared corpus records its validation fraction (the
split), and `--val-fraction` must agree with it: a different split is a different prepare.

Nothing is tokenized per process for a prepared corpus: every DDP process maps the same
shards, and the page cache holds one copy for all of them.
"""

from pathlib import Path
from typing import NamedTuple

from npgpt.training import corpus, shards, windows
from npgpt.training.corpus import DataError


class Tokens(NamedTuple):
    """The ids `--data` names."""

    ids: object  # an np.ndarray, or a memory-mapped shards.TokenStore
    source: str  # how messages name them
    val_fraction: float | None  # a prepared corpus's split; None: the caller chooses


def load_tokens(data, cache_dir=None):
    """The ids of `data` (a tuple of `--data` values, see the module docstring)."""
    prepared = [path for path in data if shards.is_prepared(path)]
    if prepared and len(data) > 1:
        raise DataError(
            f"--data {prepared[0]} is a prepared corpus, to be given alone; prepare all the "
            f"files together (python cli.py prepare FILES... --out DIR) and pass that DIR"
        )
    if prepared:
        opened = shards.open_prepared(prepared[0])
        return Tokens(opened.tokens, opened.source, opened.val_fraction)
    folders = [path for path in data if Path(path).is_dir()]
    if folders:
        raise DataError(
            f"--data {folders[0]} is a directory but not a prepared corpus (it holds no "
            f"{shards.MANIFEST_FILE}); pass its files or a glob like {folders[0]}/*.txt, or "
            f"prepare them (python cli.py prepare '{folders[0]}/*.txt' --out DIR) and pass DIR"
        )
    documents, source = corpus.load_documents(data)
    return Tokens(corpus.token_ids(documents, cache_dir), source, None)


def check_split(tokens, val_fraction):
    if tokens.val_fraction is not None and tokens.val_fraction != val_fraction:
        raise DataError(
            f"--val-fraction {val_fraction:g} differs from the split of the prepared corpus "
            f"{tokens.source} ({tokens.val_fraction:g}); pass --val-fraction "
            f"{tokens.val_fraction:g}, or prepare it again with --val-fraction {val_fraction:g}"
        )


def training_windows(data, context_length, stride, val_fraction, cache_dir=None):
    """(train Windows, validation Windows, where the ids come from) for a training run."""
    tokens = load_tokens(data, cache_dir)
    check_split(tokens, val_fraction)
    train, validation = windows.split(
        tokens.ids, context_length, stride, val_fraction, tokens.source
    )
    return train, validation, tokens.source


def evaluation_windows(data, context_length, stride, val_fraction, cache_dir=None):
    """(Windows, what they are) for `eval`: the validation split of the built-in corpus (with
    `val_fraction`) or of a prepared corpus (its own), or the text files given, whole."""
    tokens = load_tokens(data, cache_dir)
    if tokens.val_fraction is not None or not data:
        split = tokens.val_fraction or val_fraction
        _, validation = windows.split(tokens.ids, context_length, stride, split, tokens.source)
        return validation, f"{tokens.source} validation split"
    windows.check_length(tokens.ids, context_length, tokens.source)
    return windows.Windows(tokens.ids, context_length, stride), tokens.source
