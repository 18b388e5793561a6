"""Sources: cut points that keep GPT-2's ids, the streaming reader, and bad-input errors."""

import json
import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npgpt.tokenizer import get_tokenizer
from npgpt.training import sources
from npgpt.training.corpus import DataError

# Fragments chosen to meet the pre-tokenizer's every branch: contractions, letters and digits
# with and without a leading space, punctuation runs, runs of spaces of every kind (Unicode
# White_Space and Python-only whitespace), CRLF, non-Latin letters, emoji, the EOT text.
FRAGMENTS = [
    "a", "Zq", "'s", "'ll", "'t", "x'", "7", "42", " 9", ".", "!?", "(", " ", "  ", "\n", "\n\n",
    "\r\n", "\t", " \n", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2003", "\u2028", "\u3000",
    "é", " ü", "日本", "Ω", "🙂", "<|endoftext|>", "-", "_", "word",
]  # fmt: skip
texts = st.lists(st.sampled_from(FRAGMENTS) | st.characters(), max_size=40).map("".join)

# Unicode's White_Space property (PropList.txt), which `\s` matches in tiktoken's regex.
UNICODE_WHITE_SPACE = [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                       0x2028, 0x2029, 0x202F, 0x205F, 0x3000]  # fmt: skip


def encode(text):
    return get_tokenizer().encode_ordinary(text)


@settings(max_examples=300, deadline=None)
@given(text=texts, end=st.integers(0, 60))
def test_a_cut_point_keeps_the_ids_of_the_whole_text(text, end):
    cut = sources.split_point(text[:end])
    if cut is not None:
        assert 0 < cut < len(text)
        assert encode(text[:cut]) + encode(text[cut:]) == encode(text)


@settings(max_examples=200, deadline=None)
@given(text=texts, block_bytes=st.integers(1, 24))
def test_streamed_pieces_encode_to_the_whole_documents_ids(tmp_path_factory, text, block_bytes):
    path = tmp_path_factory.mktemp("doc") / "doc.txt"
    data = text.encode("utf-8")
    path.write_bytes(data)
    pieces = list(sources.text_pieces(path, 0, block_bytes))
    assert "".join(t for _, t in pieces) == text
    assert [i for _, t in pieces for i in encode(t)] == encode(text)
    whole = encode(text)
    for offset, piece in pieces:
        assert data[offset:].startswith(piece.encode("utf-8"))
        resumed = list(sources.text_pieces(path, offset, block_bytes))
        assert resumed == [p for p in pieces if p[0] >= offset]  # cut where the whole read cut
        tail = [i for _, t in resumed for i in encode(t)]
        assert tail == whole[len(whole) - len(tail) :]


def test_cuts_are_only_between_a_sure_non_space_and_a_sure_space():
    maybe_space = re.compile(f"[{sources.MAYBE_SPACE}]")
    python_space = [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()]
    assert all(maybe_space.match(c) for c in python_space)
    assert all(maybe_space.match(chr(c)) for c in UNICODE_WHITE_SPACE)
    assert sources.split_point("a\u3000b") is None and sources.split_point("a\x1c b") is None
    assert sources.split_point("a\x1cb c") == 3
    assert sources.split_point("x\r\ny") == 1 and sources.split_point(" \n\t") is None


def test_a_long_document_is_cut_into_pieces_near_each_block(tmp_path):
    text = "The quick brown fox jumps over the lazy dog.\n" * 1000
    path = tmp_path / "long.txt"
    path.write_text(text)
    pieces = list(sources.text_pieces(path, 0, block_bytes=4096))
    line = len(text) // 1000
    assert 10 <= len(pieces) <= 12 and all(len(t) <= 4096 + line for _, t in pieces)
    assert "".join(t for _, t in pieces) == text


def test_empty_file_is_one_empty_document(tmp_path):
    (tmp_path / "e.txt").write_bytes(b"")
    assert list(sources.text_pieces(tmp_path / "e.txt", 0, 16)) == [(0, "")]


def test_check_records_size_hash_documents(tmp_path):
    (tmp_path / "a.txt").write_text("héllo")
    lines = [{"text": "one"}, {"text": "two", "id": 2}]
    (tmp_path / "b.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n\n  \n")
    text, jsonl = sources.check_sources([tmp_path / "a.txt", tmp_path / "b.jsonl"], "text")
    assert (text.kind, text.bytes, text.documents, text.characters) == ("text", 6, 1, 5)
    assert len(text.sha256) == 64
    assert (jsonl.kind, jsonl.documents, jsonl.characters) == ("jsonl", 2, 6)


@pytest.mark.parametrize("block_bytes", [1, 3, 1 << 20])
def test_not_utf8_names_file_and_byte_offset(tmp_path, block_bytes):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Ünïcode ok, then: café".encode() + "café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8.*0xe9 at byte offset 28\b"):
        sources.check_sources([bad], "text", block_bytes)


def test_truncated_character_at_the_end_is_found(tmp_path):
    bad = tmp_path / "cut.txt"
    bad.write_bytes("ab€".encode()[:-1])
    with pytest.raises(DataError, match=r"cut.txt is not UTF-8.*0xe2 at byte offset 2\b"):
        sources.check_sources([bad], "text", 2)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"text": "ok"', r"c.jsonl:2: not JSON \(Expecting ',' delimiter at column 14\)"),
        (b'{"body": "x", "id": 1}', r"c.jsonl:2: no field 'text' \(its fields: 'body', 'id'\)"),
        (b"[1, 2]", r"c.jsonl:2: a JSON array, not an object with a 'text' field"),
        (b'{"text": null}', r"c.jsonl:2: field 'text' is a JSON null, not a string"),
        (b'{"text": "\\ud800"}', r"c.jsonl:2: field 'text' holds a lone surrogate"),
        (b'{"text": "caf\xe9"}', r"c.jsonl:2: not UTF-8: byte 0xe9 at byte 13 of the line"),
    ],
)
def test_bad_json_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "fine"}\n' + line + b"\n")
    with pytest.raises(DataError, match=message):
        sources.check_sources([path], "text")


def test_empty_corpus(tmp_path):
    (tmp_path / "e.txt").write_bytes(b"")
    (tmp_path / "e.jsonl").write_text('{"text": ""}\n\n')
    with pytest.raises(DataError, match=r"e.txt, .*e.jsonl: nothing to prepare: 2 document"):
        sources.check_sources([tmp_path / "e.txt", tmp_path / "e.jsonl"], "text")


def test_pieces_run_across_sources_with_eot_between_documents(tmp_path):
    (tmp_path / "a.txt").write_text("alpha beta")
    (tmp_path / "b.jsonl").write_text('{"t": "one"}\n\n{"t": "two"}\n')
    (tmp_path / "c.txt").write_text("")
    paths = [tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.txt"]
    checked = sources.check_sources(paths, "t")
    pieces = list(sources.read_pieces(checked, 0, 0, False, "t", block_bytes=6))
    assert [(p.source, p.offset, p.eot_before, p.text) for p in pieces] == [
        (0, 0, False, "alpha"),
        (0, 5, False, " beta"),
        (1, 0, True, "one"),
        (1, 14, True, "two"),
        (2, 0, True, ""),
    ]
    resumed = list(sources.read_pieces(checked, 0, 5, False, "t", block_bytes=6))
    assert resumed == pieces[1:]
