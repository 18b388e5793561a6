"""Reading a prepared corpus: its token shards, memory-mapped, as one sequence of ids.

A directory written by `npgpt.training.prepare` (its docstring describes the shard files and
the manifest) is opened with `open_prepared`, which checks the manifest against this npgpt's
tokenizer and the shards against the manifest, and returns the ids as a `TokenStore`: a
read-only sequence over the shards, memory-mapped, so a corpus larger than memory costs only
the pages that are read. The training windows use it as they use an id array:

    len(tokens)            the number of ids
    tokens[a:b]            a TokenStore over ids a..b-1 (no copy): the train / validation split
    tokens[positions]      an array of the ids at an integer array of positions, of its shape:
                           the (B, T + 1) rows of a batch of windows

A window may cross from one shard into the next: the shards are one stream cut at fixed
lengths, and documents inside it are already separated by `<|endoftext|>`.

Checks. Opening always compares each shard's size with the manifest, so a missing or
truncated shard is found at once. The sha256 of every shard (an altered shard) is checked once:
prepare hashes what it writes and then records, in `verified.json`, each shard's size, mtime,
ctime and inode as it left them; opening hashes again only the shards whose record no longer
matches (the file was written to, touched, copied or replaced) and then renews the record. So a
run on an untouched corpus costs no hashing, and a changed shard is hashed before any id of it
is used. Hashing runs at about 1 GB/s from the page cache; a 10 GB corpus has about 5 GB of
shards. `verified.json` is a cache of that check, not part of the corpus: deleting it makes the
next open hash every shard, and an unwritable directory just hashes again next time.

>>> import tempfile
>>> from npgpt.training.prepare import prepare
>>> tmp = tempfile.TemporaryDirectory()
>>> folder = Path(tmp.name)
>>> _ = (folder / "a.txt").write_text("Hello world")
>>> _ = prepare([str(folder / "a.txt")], folder / "prepared", progress=False)
>>> corpus = open_prepared(folder / "prepared")
>>> len(corpus.tokens), corpus.tokens[np.array([[0, 1]])].tolist()
(2, [[15496, 995]])
>>> tmp.cleanup()
"""

import dataclasses
import hashlib
import itertools
import json
import reprlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from npgpt.config import is_count, is_number
from npgpt.tokenizer import EOT_ID, EXPECTED_SHA256
from npgpt.training.corpus import DataError
from npgpt.weights.atomic import atomic_write_text
from npgpt.weights.digest import sha256_of

MANIFEST_FILE = "manifest.json"
VERIFIED_FILE = "verified.json"
FORMAT = "npgpt-token-shards"
FORMAT_VERSION = 1
TOKEN_DTYPE = np.dtype("<u2")  # GPT-2's 50257 ids fit in 16 bits; little-endian on every host


def shard_name(index):
    return f"shard-{index:05d}.bin"


def tokenizer_identity():
    """What the manifest records of the tokenizer: ids from another tokenizer are meaningless."""
    return {"name": "gpt2", "eot_id": EOT_ID, "bpe_sha256": dict(EXPECTED_SHA256)}


def shard_problem(directory, entry, verify):
    """Why the shard of manifest entry `entry` is not the one prepare wrote, or None."""
    path = Path(directory) / entry["file"]
    if not path.is_file():
        return f"{path} is missing"
    size, expected = path.stat().st_size, entry["tokens"] * TOKEN_DTYPE.itemsize
    if size != expected:
        return f"{path} has {size} bytes, but the manifest lists {expected}"
    if verify and sha256_of(path) != entry["sha256"]:
        return f"{path} has changed since it was written (its sha256 is not the manifest's)"
    return None


def read_manifest(directory):
    """The manifest of a prepared directory, or a DataError saying why there is none."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise DataError(
            f"{directory} holds no {MANIFEST_FILE}, so it is not a prepared corpus; make one "
            f"with `python cli.py prepare FILES... --out {directory}`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(
            f"{path} is not a JSON manifest ({err}); prepare the corpus again"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not an npgpt prepared-corpus manifest; prepare it again")
    if manifest.get("version") != FORMAT_VERSION:
        raise DataError(
            f"{path} has format version {manifest.get('version')}, this npgpt reads "
            f"{FORMAT_VERSION}; prepare the corpus again with this npgpt"
        )
    problem = next(
        filter(None, map(field_problem, MANIFEST_FIELDS, itertools.repeat(manifest))), None
    )
    if problem:
        raise DataError(f"{path}: {problem}; the manifest is damaged: prepare the corpus again")
    return manifest


def is_shard_entry(entry, index):
    """A shard as prepare lists it: its file's name (shard-00000.bin for the first, and so on:
    never a path that leads elsewhere), its count of ids, and its sha256 in hex."""
    return (
        isinstance(entry, dict)
        and entry.get("file") == shard_name(index)
        and is_count(entry.get("tokens"))
        and isinstance(entry.get("sha256"), str)
    )


def are_shards(entries):
    return isinstance(entries, list) and all(map(is_shard_entry, entries, itertools.count()))


def is_fraction(split):
    fraction = split.get("val_fraction") if isinstance(split, dict) else None
    return is_number(fraction) and 0 < fraction < 1


MANIFEST_FIELDS = (  # what opening a prepared corpus reads of its manifest, and what it must be
    ("complete", lambda value: isinstance(value, bool), "true or false"),
    ("shards", are_shards, "a list of shards, each its file's name (in order), ids and sha256"),
    ("sources", lambda value: isinstance(value, list), "a list of the source files"),
)
SPLIT_FIELD = ("split", is_fraction, "an object whose val_fraction lies in (0, 1)")  # when complete


def field_problem(field, manifest):
    """What is wrong with one of MANIFEST_FIELDS in `manifest`, or None."""
    name, valid, what = field
    if name not in manifest:
        return f"no {name!r} field"
    if not valid(manifest[name]):
        return f"{name} = {reprlib.repr(manifest[name])} should be {what}"
    return None


def check_manifest(directory, manifest):
    """A DataError if the manifest is not of a finished corpus in this tokenizer's ids."""
    path = Path(directory) / MANIFEST_FILE
    if manifest.get("tokenizer") != tokenizer_identity():
        raise DataError(
            f"{path}: the corpus was prepared with another tokenizer "
            f"({reprlib.repr(manifest.get('tokenizer'))}); "
            f"its ids mean nothing to GPT-2's: prepare it again with this npgpt"
        )
    if not manifest["complete"]:
        raise DataError(
            f"{path}: prepare did not finish ({len(manifest['shards'])} shard(s) written); run "
            f"the same prepare command again to resume it"
        )
    problem = field_problem(SPLIT_FIELD, manifest)
    listed = sum(entry["tokens"] for entry in manifest["shards"])
    if not problem and manifest.get("tokens") != listed:  # a shard's entry lost, say
        problem = f"tokens = {reprlib.repr(manifest.get('tokens'))}, but its shards hold {listed}"
    if problem:
        raise DataError(f"{path}: {problem}; the manifest is damaged: prepare the corpus again")


def is_prepared(path):
    """Whether `path` is a directory that prepare wrote into (it holds a manifest)."""
    return (Path(path) / MANIFEST_FILE).is_file()


class Prepared(NamedTuple):
    """An opened prepared corpus."""

    tokens: "TokenStore"  # all ids: the documents, separated by <|endoftext|>
    val_fraction: float  # validation = the last round(len(tokens) * val_fraction) ids
    source: str  # how messages name it
    manifest: dict


def open_prepared(directory, verify=True):
    """The prepared corpus in `directory`, checked (see the module docstring); a DataError
    naming the file for a missing manifest or shard, a truncated or altered shard, another
    tokenizer's ids, or a prepare that did not finish. `verify=False` checks the sizes only."""
    manifest = read_manifest(directory)
    check_manifest(directory, manifest)
    for entry in manifest["shards"]:
        problem = shard_problem(directory, entry, verify=False)
        if problem:
            raise DataError(f"{problem}; prepare the corpus again (the same command resumes)")
    if verify:
        verify_shards(directory, manifest)
    shards = tuple(
        np.memmap(Path(directory) / e["file"], dtype=TOKEN_DTYPE, mode="r", shape=(e["tokens"],))
        for e in manifest["shards"]
    )
    tokens = TokenStore.over(shards)
    files = len(manifest["sources"])
    source = f"{directory} ({len(tokens):,} tokens from {files} file{'s' * (files != 1)})"
    return Prepared(tokens, manifest["split"]["val_fraction"], source, manifest)


def file_state(path):
    """What changes when a file is written to, touched, copied or replaced (None: no file)."""
    try:
        stat = Path(path).stat()
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def manifest_sha256(directory):
    return hashlib.sha256((Path(directory) / MANIFEST_FILE).read_bytes()).hexdigest()


def read_verified(directory):
    """The record of the last sha256 check: {shard file: its file_state then}, or {}."""
    try:
        record = json.loads((Path(directory) / VERIFIED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("manifest") != manifest_sha256(directory):
        return {}
    shards = record.get("shards")
    return shards if isinstance(shards, dict) else {}


def record_verified(directory, manifest):
    """Record that every shard, as it is now, has the manifest's sha256 (see the docstring)."""
    shards = {e["file"]: file_state(Path(directory) / e["file"]) for e in manifest["shards"]}
    record = {"manifest": manifest_sha256(directory), "shards": shards}
    try:
        atomic_write_text(Path(directory) / VERIFIED_FILE, json.dumps(record, indent=1) + "\n")
    except OSError:
        pass  # a read-only corpus: the shards are hashed again next time


def unverified(directory, entries):
    """The manifest entries whose shard is not as the last sha256 check left it."""
    verified, directory = read_verified(directory), Path(directory)
    return [e for e in entries if verified.get(e["file"]) != file_state(directory / e["file"])]


def verify_shards(directory, manifest):
    """Hash the shards that changed since the last check; a DataError for one that differs."""
    changed = unverified(directory, manifest["shards"])
    for entry in changed:
        problem = shard_problem(directory, entry, verify=True)
        if problem:
            raise DataError(f"{problem}; prepare the corpus again (the same command resumes)")
    if changed:
        record_verified(directory, manifest)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenStore:
    """Ids start..stop-1 of the concatenated `shards`; shard k holds ids bounds[k]..bounds[k+1]-1.
    Only the pages of the ids that are indexed are read (see the module docstring)."""

    shards: tuple  # 1-D arrays of ids, memory-mapped
    bounds: np.ndarray  # (K + 1,) int64: where each shard starts, then the total
    start: int
    stop: int

    @classmethod
    def over(cls, shards):
        bounds = np.concatenate([[0], np.cumsum([len(s) for s in shards], dtype=np.int64)])
        return cls(tuple(shards), bounds, 0, int(bounds[-1]))

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("a TokenStore slices with step 1 only")
            return dataclasses.replace(
                self, start=self.start + start, stop=self.start + max(start, stop)
            )
        return self.gather(np.asarray(key))

    def gather(self, positions):
        """The ids at `positions` (an integer array, any shape), as a uint16 array."""
        if positions.dtype.kind not in "iu":
            raise TypeError(f"token positions must be integers, not {positions.dtype}")
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"token positions must lie in [0, {len(self)})")
        flat = positions.ravel().astype(np.int64) + self.start
        shard_of = np.searchsorted(self.bounds, flat, side="right") - 1
        ids = np.empty(flat.shape, dtype=np.uint16)
        for k in np.unique(shard_of):
            in_k = shard_of == k
            ids[in_k] = self.shards[k][flat[in_k] - self.bounds[k]]
        return ids.reshape(positions.shape)
