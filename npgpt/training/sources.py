r"""The sources of a prepared corpus, checked and then streamed in pieces.

A source is a UTF-8 text file (one document) or a JSON Lines file (`.jsonl`: one document per
line, the text in the field `text_field` of the line's object; blank lines are skipped).

Check first. `check_sources` reads every source once before anything is encoded: it hashes it
(size and sha256 go into the manifest), checks that it is UTF-8 and, for JSON Lines, that each
line is an object with a string in `text_field`. Bad input thus fails in seconds, naming the
file and the byte offset or line, and before a single shard is written.

Stream in pieces. A document may be larger than memory, so it is read in blocks and cut into
pieces that are encoded one by one. A cut must not change the ids: GPT-2's encoder first splits
text into chunks with a regular expression (tiktoken's `r50k_pat_str`, in effect

    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+

with `\s` = Unicode White_Space), then merges bytes within each chunk only. So encoding a text
in two pieces gives the same ids exactly when the cut falls on a chunk boundary and the chunks
left of the cut are found the same without the text right of it. Both hold for a cut between a
non-space character c and a space character s (`split_point`):
- no chunk holds c followed by s: chunks with non-space characters hold no spaces after them
  (the optional space of ` ?\p{L}+` comes first), and chunks with spaces hold only spaces;
- the regex looks past a chunk only in `(?!\S)`, at the end of a run of spaces; every such run
  left of the cut ends before c, so what it sees (the next character) lies left of the cut;
- a regex match depends only on the text from where it starts, so the right piece, which starts
  with s, is split exactly as the same text inside the whole.
Text is cut only where s is one of space, tab, newline, carriage return, and c is a character
that is not whitespace by any definition (Unicode White_Space or Python's `str.isspace`), so
the rule does not depend on the regex engine's idea of `\s` at the edges. A document with no
such point for longer than a block (say, megabytes without a space) is held whole until one.

Every piece records its source and byte offset, so a prepare that was stopped can start again
at any piece: the ids from that offset on are those of the whole document.

>>> text = "Hello world.\nBye now"
>>> cut = split_point(text)
>>> text[:cut], text[cut:]
('Hello world.\nBye', ' now')
>>> split_point("no-spaces-here") is None
True
"""

import codecs
import hashlib
import json
import re
from typing import NamedTuple

from npgpt.training.corpus import DataError

BLOCK_BYTES = 1 << 20  # bytes read at a time; a text piece is about this long

# Every character that is whitespace for Unicode (White_Space) or for Python's str.isspace.
MAYBE_SPACE = (
    "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u180e\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
)
# A cut point read backwards: a sure space, then a sure non-space (see the module docstring).
CUT_BACKWARDS = re.compile(f"[ \t\n\r][^{MAYBE_SPACE}]")
SEARCH_BACK = 1 << 16  # characters searched at the end of a piece before searching all of it


class Source(NamedTuple):
    """One input file as checked: what the manifest records about it."""

    path: str
    kind: str  # "text" (one document) or "jsonl" (one document per non-blank line)
    bytes: int
    sha256: str
    documents: int
    characters: int  # of document text; 0 in every source means there is nothing to encode


class Piece(NamedTuple):
    """Part of a document: encoded, it is the stream's next ids (after `<|endoftext|>` when
    `eot_before`, i.e. when it starts a document that is not the corpus's first)."""

    source: int  # index into the list of sources
    offset: int  # byte offset in the source where the piece starts
    eot_before: bool
    text: str


def split_point(text):
    """The last index i > 0 where the rule above allows a cut, or None: text[:i] and text[i:]
    then encode to the ids of text."""
    match = CUT_BACKWARDS.search(text[-SEARCH_BACK:][::-1])
    if match is None and len(text) > SEARCH_BACK:
        match = CUT_BACKWARDS.search(text[::-1])
    return None if match is None else len(text) - match.start() - 1


def utf8_length(text):
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def decode(decoder, block, block_offset, path, final=False):
    """`block` (read at `block_offset` of `path`) decoded, or a DataError naming the bad byte."""
    pending = len(decoder.getstate()[0])  # bytes of an unfinished character from the last block
    try:
        return decoder.decode(block, final)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text: byte 0x{err.object[err.start]:02x} at byte offset "
            f"{block_offset - pending + err.start} cannot be decoded; convert it "
            f"(e.g. iconv -t UTF-8) or leave the file out"
        ) from None


def utf8_decoder():
    return codecs.getincrementaldecoder("utf-8")()


JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def jsonl_text(line, place, text_field):
    """The document in one line of a JSON Lines file (None for a blank line); `place` names
    the line in errors, e.g. "corpus.jsonl:12"."""
    if not line.strip(b" \t\r\n"):
        return None
    try:
        obj = json.loads(line.rstrip(b"\r\n").decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(
            f"{place}: not UTF-8: byte 0x{line[err.start]:02x} at byte {err.start} of the line "
            f"cannot be decoded; convert the file (e.g. iconv -t UTF-8)"
        ) from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"{place}: not JSON ({err.msg} at column {err.colno}); each line must be one object"
        ) from None
    if not isinstance(obj, dict):
        kind = JSON_TYPES[type(obj)]
        raise DataError(f"{place}: a JSON {kind}, not an object with a {text_field!r} field")
    if text_field not in obj:
        fields = ", ".join(map(repr, obj)) or "none"
        raise DataError(
            f"{place}: no field {text_field!r} (its fields: {fields}); name the field that "
            f"holds the text with --text-field"
        )
    text = obj[text_field]
    if not isinstance(text, str):
        kind = JSON_TYPES[type(text)]
        raise DataError(f"{place}: field {text_field!r} is a JSON {kind}, not a string")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise DataError(
                f"{place}: field {text_field!r} holds a lone surrogate (an unpaired \\u escape) "
                f"at character {err.start}, which is not text; fix or drop the line"
            ) from None
    return text


def kind_of(path):
    return "jsonl" if str(path).lower().endswith(".jsonl") else "text"


def check_text_file(path, block_bytes):
    """Source record of a text file, after checking that all of it is UTF-8."""
    digest, decoder, size, characters = hashlib.sha256(), utf8_decoder(), 0, 0
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            digest.update(block)
            characters += len(decode(decoder, block, size, path))
            size += len(block)
        decode(decoder, b"", size, path, final=True)
    return Source(str(path), "text", size, digest.hexdigest(), 1, characters)


def check_jsonl_file(path, text_field):
    """Source record of a JSON Lines file, after checking every line."""
    digest, size, documents, characters = hashlib.sha256(), 0, 0, 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            digest.update(line)
            size += len(line)
            text = jsonl_text(line, f"{path}:{number}", text_field)
            if text is not None:
                documents += 1
                characters += len(text)
    return Source(str(path), "jsonl", size, digest.hexdigest(), documents, characters)


def check_sources(paths, text_field, block_bytes=BLOCK_BYTES):
    """The Source records of `paths`; a DataError for the first bad file or line, or for a
    corpus without any text."""
    sources = [
        check_jsonl_file(path, text_field)
        if kind_of(path) == "jsonl"
        else check_text_file(path, block_bytes)
        for path in paths
    ]
    if not any(s.characters for s in sources):
        documents = sum(s.documents for s in sources)
        raise DataError(
            f"{', '.join(map(str, paths))}: nothing to prepare: {documents} document(s), all empty"
        )
    return sources


def text_pieces(path, offset, block_bytes):
    """(offset, text) pieces of a text file from byte `offset` on (0, or a piece's offset).
    Pieces are cut at the last `split_point` before each multiple of `block_bytes`, counted
    from the file's start whatever `offset` is, so a resumed read cuts where a whole one did.
    An empty file is one empty piece (an empty document)."""
    decoder, pending, start, position, yielded = utf8_decoder(), "", offset, offset, False
    with open(path, "rb") as f:
        f.seek(offset)
        while block := f.read(block_bytes - position % block_bytes):
            pending += decode(decoder, block, position, path)
            position += len(block)
            cut = split_point(pending)
            if cut is not None:
                yield start, pending[:cut]
                start, pending, yielded = start + utf8_length(pending[:cut]), pending[cut:], True
        pending += decode(decoder, b"", position, path, final=True)
    if pending or not yielded:
        yield start, pending


def jsonl_pieces(path, offset, text_field):
    """(offset, text) of each document of a JSON Lines file, from byte `offset` (a line's)."""
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            text = jsonl_text(line, f"{path} (line at byte offset {offset})", text_field)
            if text is not None:
                yield offset, text
            offset += len(line)


def read_pieces(sources, source, offset, eot_before, text_field, block_bytes=BLOCK_BYTES):
    """The corpus's pieces in order, from byte `offset` of source number `source`; the first
    piece gets `eot_before` as given (it may start in the middle of a document), every later
    piece gets it when it starts a document."""
    first = True
    for index in range(source, len(sources)):
        path, kind = sources[index].path, sources[index].kind
        start = offset if index == source else 0
        if kind == "jsonl":
            pieces = ((at, text, True) for at, text in jsonl_pieces(path, start, text_field))
        else:
            pieces = ((at, text, at == 0) for at, text in text_pieces(path, start, block_bytes))
        for at, text, starts_document in pieces:
            yield Piece(index, at, eot_before if first else starts_document, text)
            first = False
