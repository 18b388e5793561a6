"""Training text: files (or the built-in corpus) -> documents -> one array of token ids, cached.

Corpus. Text files given by path or glob, or by default the built-in corpus: the help topics of
Python's own documentation (`pydoc_data.topics`, shipped with every CPython), assembled at run time
so no text is copied into this repository. Each document is encoded on its own and documents are
joined with `<|endoftext|>`, so the model learns where one ends.

Token cache. Encoding ~0.5 MB of text takes seconds; the ids are cached as a `.npy` file
(`allow_pickle=False`) named by the sha256 of the documents, so a changed file gets new ids and an
unchanged one is never re-encoded. What comes out is a plain uint16 array; `windows.py` cuts it
into training examples.
"""

import glob
import hashlib
import os
import warnings
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


def read_token_cache(path):
    """The ids in a cache file, or None when it is not exactly what `token_ids` writes: a whole
    1-D uint16 array of GPT-2 ids (a damaged file is re-made, never used). Memory-mapped
    first, so a header claiming 2**40 ids costs nothing before the file's size refutes it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # NumPy warns of a header np.save never writes
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
    # Truncated, not .npy, or objects; NumPy's header parser also lets out EOFError, SyntaxError
    # and tokenize.TokenError. Whatever it raises, a cache that cannot be read is re-made.
    except Exception:
        return None
    whole = ids.offset + ids.nbytes == path.stat().st_size
    if not whole or ids.dtype != np.uint16 or ids.ndim != 1 or (ids.size and ids.max() > EOT_ID):
        return None
    return np.array(ids)


def token_ids(documents, cache_dir=None):
    """The documents' token ids (uint16), read from or written to the `.npy` cache."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"tokens-{corpus_hash(documents)}.npy"
    if path.exists():
        cached = read_token_cache(path)
        if cached is not None:
            return cached
    ids = encode_documents(documents)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_npy(tmp, ids))
    except OSError:
        pass  # an unwritable cache costs time, not correctness
    return ids
