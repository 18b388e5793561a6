"""Preparing a corpus: text and JSON Lines files -> GPT-2 token shards and a manifest.

    python cli.py prepare DATA... --out DIR [--text-field NAME]   (the command calls `prepare`)

The ids. Each text file (UTF-8) is one document; each non-blank line of a `.jsonl` file is one
document, the string in the field `text_field` of the line's object. Files come in the order
`npgpt.training.corpus.expand` gives (the patterns' order, each glob's matches sorted). Each
document is encoded with GPT-2's tokenizer as plain text (`encode_ordinary`: an
"<|endoftext|>" written inside a document is text, not the special id) and one `<|endoftext|>`
(50256) goes between each two documents: for text files, the ids `npgpt.training.corpus` makes.

The shards. The ids are written in order as raw little-endian uint16 (no header), S =
`shard_tokens` ids per file, the last file holding the rest:

    DIR/shard-00000.bin    ids 0 .. S-1             S = 2**25 by default (64 MiB a shard)
    DIR/shard-00001.bin    ids S .. 2S-1
    ...
    DIR/manifest.json
    DIR/verified.json      when each shard's sha256 was last checked (`npgpt.training.shards`)

A shard ends where the count says, inside a document if need be: readers see one stream
(`npgpt.training.shards`). `np.fromfile(path, dtype="<u2")` reads one shard.

The manifest, JSON, with nothing in it that depends on the time, the machine or the workers:

    format, version     "npgpt-token-shards", 1
    tokenizer           {"name": "gpt2", "eot_id": 50256, "bpe_sha256": {file name: sha256}}
    shard_tokens        S
    text_field          the JSON Lines field, or null when no source is a .jsonl file
    sources             [{path, kind ("text" | "jsonl"), bytes, sha256, documents, characters}]
    complete            false while prepare runs, true once every shard is written
    shards              [{file, tokens, sha256, end}]; `end` = {source, offset, eot_before,
                        skip} says where the stream goes on after this shard: at the piece
                        starting at byte `offset` of source number `source` (preceded by an
                        <|endoftext|> if `eot_before`), of whose ids this shard has `skip`
    tokens, documents   the totals (complete manifests only)
    split               {val_fraction, train_tokens, val_tokens}: validation is the last
                        val_tokens = round(tokens * val_fraction) ids, contiguous, as
                        `npgpt.training.windows.split` cuts an id array; train is all before

Resuming. Each shard is written under a temporary name, fsynced and renamed, then the manifest
is rewritten atomically, so a killed prepare leaves finished shards that the manifest lists and
nothing else that looks finished. Run again with the same inputs, prepare keeps the listed
shards whose sha256 still matches and goes on from the last one's `end`; if the sources, the
tokenizer or the settings differ, an unfinished run starts over and a finished one is refused
(deleting a prepared corpus is the user's call). The same inputs give byte-identical shards and
manifest, however many workers encode them and however often the run was stopped.

Speed and memory. The main thread reads the sources in pieces of about a MiB
(`npgpt.training.sources`: a document is cut only where the ids cannot change) and writes the
shards; `workers` threads (by default one per core this process may use: its affinity, capped
by a cgroup quota, `npgpt.threads.available_cores`) encode batches of pieces. tiktoken releases
the GIL while it encodes and `encode_to_numpy` hands back an array, not a list of Python ints,
so the threads hardly wait for each other. `bench/bench_prepare.py` also runs this pipeline on
processes: on 2 idle cores about a fifth faster, but every process holds its own copy of the
tokenizer's tables (about 100 MB), so memory would grow with the number of cores; hence
threads, which share one. At most 2 * workers + 1 batches are in flight, so memory stays
bounded whatever the corpus size (about 200 MB at peak on a 1 GB corpus, half of it the
tokenizer's tables).

>>> import tempfile
>>> tmp = tempfile.TemporaryDirectory()
>>> folder = Path(tmp.name)
>>> _ = (folder / "a.txt").write_text("Hello world")
>>> _ = (folder / "b.txt").write_text("Bye")
>>> manifest = prepare([str(folder / "*.txt")], folder / "out", progress=False)
>>> manifest["tokens"], np.fromfile(folder / "out" / "shard-00000.bin", dtype="<u2").tolist()
(5, [15496, 995, 50256, 3886, 68])
>>> tmp.cleanup()
"""

import collections
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from npgpt.threads import available_cores
from npgpt.tokenizer import EOT_ID, get_tokenizer
from npgpt.training.corpus import DataError, expand
from npgpt.training.shards import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    TOKEN_DTYPE,
    read_manifest,
    record_verified,
    shard_name,
    shard_problem,
    tokenizer_identity,
    unverified,
)
from npgpt.training.sources import BLOCK_BYTES, check_sources, read_pieces
from npgpt.weights.atomic import atomic_write_text, fsync_dir

SHARD_TOKENS = 1 << 25
EOT = np.array([EOT_ID], dtype=TOKEN_DTYPE)


class ResumePoint(NamedTuple):
    """Where the id stream goes on: the ids of the pieces from byte `offset` of source number
    `source` on (after an <|endoftext|> if `eot_before`), less the first `skip` of them."""

    source: int
    offset: int
    eot_before: bool
    skip: int


def prepare(
    inputs,
    out_dir,
    text_field="text",
    val_fraction=0.1,
    shard_tokens=SHARD_TOKENS,
    workers=None,
    progress=True,
    block_bytes=BLOCK_BYTES,
):
    """Encode the files `inputs` (paths or globs) into token shards in `out_dir` and return the
    manifest (see the module docstring). Bad input raises a DataError naming the file and the
    place in it before anything is written; a second run resumes or finds nothing to do.
    `block_bytes`: how much of a file is read at a time, and how much text (at least) a thread
    encodes at a time."""
    if not 0 < val_fraction < 1:
        raise DataError(f"the validation fraction must be in (0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be at least 1, got {shard_tokens}")
    out_dir = Path(out_dir)
    paths = expand(inputs)
    check_out_dir(out_dir, paths)
    sources = check_sources(paths, text_field, block_bytes)
    get_tokenizer()  # its files are checked (and it is built once) before anything is written
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "tokenizer": tokenizer_identity(),
        "shard_tokens": shard_tokens,
        "text_field": text_field if any(s.kind == "jsonl" for s in sources) else None,
        "sources": [s._asdict() for s in sources],
    }
    manifest = start_manifest(out_dir, header)
    write_shards(out_dir, manifest, sources, workers or available_cores(), progress, block_bytes)
    tokens = sum(entry["tokens"] for entry in manifest["shards"])
    val_tokens = int(round(tokens * val_fraction))
    manifest.update(
        complete=True,
        tokens=tokens,
        documents=sum(s.documents for s in sources),
        split={
            "val_fraction": val_fraction,
            "train_tokens": tokens - val_tokens,
            "val_tokens": val_tokens,
        },
    )
    write_manifest(out_dir, manifest)
    record_verified(out_dir, manifest)  # every shard was hashed as written, or when kept
    return manifest


def describe(manifest, out_dir):
    """One line for the command to print once `prepare` is done."""
    split, files = manifest["split"], len(manifest["sources"])
    documents = plural(manifest["documents"], "document")
    return (
        f"{out_dir}: {manifest['tokens']:,} tokens ({documents} from {plural(files, 'file')}) "
        f"in {plural(len(manifest['shards']), 'shard')}; validation "
        f"is the last {split['val_tokens']:,} tokens ({split['val_fraction']:g})"
    )


def plural(count, noun):
    return f"{count:,} {noun}{'s' * (count != 1)}"


def check_out_dir(out_dir, paths):
    """A DataError if `out_dir` holds other things than a prepared corpus, or an input."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file; name a directory for the prepared corpus")
    inside = [p for p in paths if Path(p).resolve().is_relative_to(out_dir.resolve())]
    if inside:
        raise DataError(f"{inside[0]} is inside --out {out_dir}; keep the inputs out of it")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
        raise DataError(
            f"--out {out_dir} is not empty and holds no {MANIFEST_FILE}; name a new or empty "
            f"directory for the prepared corpus"
        )


def write_manifest(out_dir, manifest):
    atomic_write_text(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")


def start_manifest(out_dir, header):
    """The manifest this run starts from, written before anything else changes: the shards of
    an earlier run with the same `header` that still match their sha256 (hashed again unless
    `verified.json` vouches for them), up to the first that does not; no shards if there was
    no such run. A finished corpus of other inputs is never replaced: deleting it is the
    user's call."""
    kept = []
    try:
        previous = read_manifest(out_dir)
    except DataError:
        previous = None
    same_inputs = previous is not None and all(previous.get(k) == v for k, v in header.items())
    if previous is not None and previous.get("complete") and not same_inputs:
        raise DataError(
            f"--out {out_dir} already holds a finished prepared corpus of other inputs or "
            f"settings (its files changed, or others were named); delete it first to prepare "
            f"it again, or name a new directory"
        )
    if same_inputs:
        recheck = {entry["file"] for entry in unverified(out_dir, previous["shards"])}
        for entry in previous["shards"]:
            if shard_problem(out_dir, entry, verify=entry["file"] in recheck):
                break
            kept.append(entry)
    manifest = {**header, "complete": False, "shards": kept}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(out_dir, manifest)
    for path in [*out_dir.glob("shard-*.bin*"), *out_dir.glob(".*.tmp")]:
        if path.name not in {entry["file"] for entry in kept}:
            path.unlink()  # a temporary file (killed mid-write), or a shard no longer listed
    return manifest


def encode_piece(piece):
    """A piece's ids, after the <|endoftext|> that separates it from the document before."""
    # encode_ordinary's ids, without its list of Python ints: with nothing allowed as special,
    # "<|endoftext|>" in the text is encoded as text, and nothing is disallowed (no check)
    ids = get_tokenizer().encode_to_numpy(piece.text, allowed_special=set(), disallowed_special=())
    ids = ids.astype(TOKEN_DTYPE)
    return np.concatenate([EOT, ids]) if piece.eot_before else ids


def encode_batch(batch):
    return [encode_piece(piece) for piece in batch]


def batches(pieces, characters):
    """Lists of consecutive pieces of at least `characters` characters (the last: the rest)."""
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece.text)
        if size >= characters:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encoded_batches(pieces, workers, characters):
    """(batch, the ids of each of its pieces), in order; a batch is at least `characters` long.
    `workers` threads encode while this thread reads on; at most 2 * workers + 1 batches are
    in flight."""
    with ThreadPoolExecutor(workers) as pool:
        in_flight = collections.deque()
        for batch in batches(pieces, characters):
            in_flight.append((batch, pool.submit(encode_batch, batch)))
            if len(in_flight) > 2 * workers:
                batch, future = in_flight.popleft()
                yield batch, future.result()
        for batch, future in in_flight:
            yield batch, future.result()


class ShardWriter:
    """Cuts the id stream into shards of `shard_tokens` ids; each finished shard is renamed
    into place and recorded in the manifest, which is then rewritten."""

    def __init__(self, out_dir, manifest):
        self.out_dir, self.manifest = out_dir, manifest
        self.file = None

    def add(self, piece, ids, consumed):
        """Write ids[consumed:], the rest of `piece`'s ids, closing each shard that fills."""
        while consumed < len(ids):
            if self.file is None:
                self.open()
            part = ids[consumed : consumed + self.manifest["shard_tokens"] - self.count]
            self.file.write(part.tobytes())
            self.digest.update(part)
            self.count += len(part)
            consumed += len(part)
            if self.count == self.manifest["shard_tokens"]:
                self.close(ResumePoint(piece.source, piece.offset, piece.eot_before, consumed))

    def open(self):
        self.name = shard_name(len(self.manifest["shards"]))
        self.file = open(self.out_dir / f"{self.name}.tmp", "wb")
        self.digest, self.count = hashlib.sha256(), 0

    def close(self, end):
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.out_dir / f"{self.name}.tmp", self.out_dir / self.name)
        fsync_dir(self.out_dir)
        self.file = None
        entry = {"file": self.name, "tokens": self.count, "sha256": self.digest.hexdigest()}
        self.manifest["shards"].append({**entry, "end": end._asdict()})
        write_manifest(self.out_dir, self.manifest)

    def discard(self):
        if self.file is not None:
            self.file.close()
            (self.out_dir / f"{self.name}.tmp").unlink(missing_ok=True)


def write_shards(out_dir, manifest, sources, workers, progress, block_bytes):
    """Encode the stream from the manifest's last shard's `end` on and write it into shards."""
    shards = manifest["shards"]
    start = ResumePoint(**shards[-1]["end"]) if shards else ResumePoint(0, 0, False, 0)
    pieces = read_pieces(
        sources, start.source, start.offset, start.eot_before, manifest["text_field"], block_bytes
    )
    writer, skip = ShardWriter(out_dir, manifest), start.skip
    with Progress(sources, start, progress) as bar:
        try:
            for batch, ids_of_batch in encoded_batches(pieces, workers, block_bytes):
                for piece, ids in zip(batch, ids_of_batch, strict=True):
                    writer.add(piece, ids, consumed=min(skip, len(ids)))
                    skip -= min(skip, len(ids))
                bar.advance(batch[-1], sum(map(len, ids_of_batch)))
        except BaseException:
            writer.discard()
            raise
        if writer.file is not None:
            writer.close(ResumePoint(len(sources), 0, False, 0))


class Progress:
    """A tqdm bar on stderr over the sources' bytes, with the tokens per second."""

    def __init__(self, sources, start, enabled):
        self.before = [0]
        for source in sources:
            self.before.append(self.before[-1] + source.bytes)
        self.bar = tqdm(
            total=self.before[-1],
            initial=self.before[min(start.source, len(sources))] + start.offset,
            unit="B",
            unit_scale=True,
            desc="prepare",
            file=sys.stderr,
            disable=not enabled,
        )
        self.tokens, self.started = 0, time.perf_counter()

    def advance(self, piece, tokens):
        self.tokens += tokens
        seconds = max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens / seconds / 1e6:.2f}M tok/s", refresh=False)
        self.bar.update(self.before[piece.source] + piece.offset - self.bar.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not exc[0]:
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()
