"""prepare: the exact ids, JSON Lines, resuming after a kill, determinism, and bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
from gpt2_ids import joined_ids

from npgpt.training import corpus, prepare, windows
from npgpt.training.corpus import DataError
from npgpt.training.shards import VERIFIED_FILE, open_prepared

SMALL = {"shard_tokens": 700, "block_bytes": 512, "progress": False}  # many shards and pieces


def write_corpus(folder):
    """Text files whose documents meet every edge: CRLF, a BOM, non-Latin text, an empty file,
    a document many blocks long; returns the documents in the order prepare reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(topics)[:12]
    documents = {f"{i:02d}.txt": topics[name] for i, name in enumerate(names)}
    documents["12.txt"] = "Windows lines\r\nend here\r\n  and  spaces \t\r\n"
    documents["13.txt"] = "\ufeffBOM first, then 日本語の文章 and émoji 🙂 <|endoftext|> text."
    documents["14.txt"] = ""
    documents["15.txt"] = "".join(topics[name] for name in names[:4])  # ~20 blocks
    for name, text in documents.items():
        (folder / name).write_bytes(text.encode("utf-8"))
    return list(documents.values())


def all_ids(out_dir):
    tokens = open_prepared(out_dir).tokens
    return tokens[np.arange(len(tokens))].tolist()


def snapshot(out_dir):
    """Every file's bytes, by name: what must come out identical. Not verified.json: it records
    the inodes and times of this directory's shards (a cache of their check, not output)."""
    files = sorted(Path(out_dir).iterdir())
    return {p.name: p.read_bytes() for p in files if p.name != VERIFIED_FILE}


def test_ids_are_each_documents_encoding_joined_by_endoftext(tmp_path):
    documents = write_corpus(tmp_path / "in")
    manifest = prepare.prepare([str(tmp_path / "in" / "*.txt")], tmp_path / "out", **SMALL)
    expected = joined_ids(documents)
    assert all_ids(tmp_path / "out") == expected
    assert expected == corpus.encode_documents(documents).tolist()  # the in-memory path's ids
    assert manifest["tokens"] == len(expected) and manifest["documents"] == len(documents)
    assert len(manifest["shards"]) == -(-len(expected) // 700)
    assert all(entry["tokens"] == 700 for entry in manifest["shards"][:-1])
    first = np.fromfile(tmp_path / "out" / "shard-00000.bin", dtype="<u2")
    assert first.tolist() == expected[:700]  # the documented layout: raw little-endian uint16


def test_json_lines_and_text_files_together(tmp_path):
    lines = [{"body": "First doc."}, {"body": "Second, with\nnewlines.", "id": 7}]
    (tmp_path / "a.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n\n")
    (tmp_path / "b.txt").write_text("A text file.")
    inputs = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.txt")]
    manifest = prepare.prepare(inputs, tmp_path / "out", text_field="body", progress=False)
    expected = joined_ids(["First doc.", "Second, with\nnewlines.", "A text file."])
    assert all_ids(tmp_path / "out") == expected
    assert manifest["text_field"] == "body" and manifest["documents"] == 3
    assert [s["kind"] for s in manifest["sources"]] == ["jsonl", "text"]


def test_same_inputs_give_identical_output_whatever_the_workers(tmp_path):
    write_corpus(tmp_path / "in")
    inputs = [str(tmp_path / "in" / "*.txt")]
    prepare.prepare(inputs, tmp_path / "one", workers=1, **SMALL)
    prepare.prepare(inputs, tmp_path / "two", workers=3, **SMALL)
    assert snapshot(tmp_path / "one") == snapshot(tmp_path / "two")


def test_a_second_run_of_a_finished_prepare_changes_nothing(tmp_path):
    write_corpus(tmp_path / "in")
    inputs = [str(tmp_path / "in" / "*.txt")]
    prepare.prepare(inputs, tmp_path / "out", **SMALL)
    before = snapshot(tmp_path / "out")
    inodes = {p.name: p.stat().st_ino for p in (tmp_path / "out").glob("shard-*")}
    prepare.prepare(inputs, tmp_path / "out", **SMALL)
    assert snapshot(tmp_path / "out") == before
    assert inodes == {p.name: p.stat().st_ino for p in (tmp_path / "out").glob("shard-*")}


KILLER = """
import os, signal, sys
from npgpt.training import prepare

close = prepare.ShardWriter.close
def close_or_die(writer, end):
    if len(writer.manifest["shards"]) == 3:  # the 4th shard is written, but not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)
    close(writer, end)
prepare.ShardWriter.close = close_or_die
prepare.prepare([sys.argv[1]], sys.argv[2], shard_tokens=700, block_bytes=512, progress=False)
"""


def test_a_killed_prepare_resumes_to_identical_output(tmp_path):
    write_corpus(tmp_path / "in")
    inputs = [str(tmp_path / "in" / "*.txt")]
    prepare.prepare(inputs, tmp_path / "clean", **SMALL)
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLER), inputs[0], str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 3
    assert (tmp_path / "out" / "shard-00003.bin.tmp").exists()  # partial, and named so
    assert not (tmp_path / "out" / "shard-00003.bin").exists()
    with pytest.raises(DataError, match="prepare did not finish .*run the same prepare"):
        open_prepared(tmp_path / "out")
    prepare.prepare(inputs, tmp_path / "out", **SMALL)
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "clean")


def test_a_failed_prepare_keeps_good_shards_and_remakes_altered_ones(tmp_path, monkeypatch):
    write_corpus(tmp_path / "in")
    inputs = [str(tmp_path / "in" / "*.txt")]
    prepare.prepare(inputs, tmp_path / "clean", **SMALL)
    calls = []

    def encode_or_fail(piece):
        calls.append(piece)
        if len(calls) == 30:
            raise OSError("injected failure")
        return encode_piece(piece)

    encode_piece = prepare.encode_piece
    monkeypatch.setattr(prepare, "encode_piece", encode_or_fail)
    with pytest.raises(OSError, match="injected failure"):
        prepare.prepare(inputs, tmp_path / "out", workers=1, **SMALL)
    monkeypatch.undo()
    shards = sorted((tmp_path / "out").glob("shard-*"))
    assert len(shards) >= 3 and all(p.suffix == ".bin" for p in shards)  # no partial left
    first_inode = shards[0].stat().st_ino
    altered = bytearray(shards[1].read_bytes())
    altered[10] ^= 1
    shards[1].write_bytes(bytes(altered))
    prepare.prepare(inputs, tmp_path / "out", **SMALL)
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "clean")
    assert shards[0].stat().st_ino == first_inode  # kept, not rewritten


def line_at(data, offset):
    return json.loads(data[offset:].split(b"\n", 1)[0])["text"]


def test_json_lines_resume_inside_a_line(tmp_path, monkeypatch):
    lines = [{"text": f"Line {i}: " + "word " * (i % 7)} for i in range(120)]
    (tmp_path / "a.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    (tmp_path / "b.txt").write_text("and a text file after it")
    inputs = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.txt")]
    settings = {"shard_tokens": 37, "block_bytes": 64, "progress": False, "workers": 1}
    prepare.prepare(inputs, tmp_path / "clean", **settings)
    encode_piece = prepare.encode_piece
    monkeypatch.setattr(
        prepare, "encode_piece", lambda p: encode_piece(p) if p.offset < 2000 else 1 / 0
    )
    with pytest.raises(ZeroDivisionError):
        prepare.prepare(inputs, tmp_path / "out", **settings)
    monkeypatch.undo()
    shards = json.loads((tmp_path / "out" / "manifest.json").read_text())["shards"]
    data = (tmp_path / "a.jsonl").read_bytes()
    inside = [
        shard["end"]
        for shard in shards
        if shard["end"]["skip"] < len(joined_ids(["", line_at(data, shard["end"]["offset"])]))
    ]
    assert len(shards) >= 3 and inside  # shards that end inside a line's ids
    prepare.prepare(inputs, tmp_path / "out", **settings)
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "clean")
    documents = [line["text"] for line in lines] + ["and a text file after it"]
    assert all_ids(tmp_path / "out") == joined_ids(documents)


def test_changed_inputs_leave_a_finished_corpus_alone_until_it_is_deleted(tmp_path):
    write_corpus(tmp_path / "in")
    inputs = [str(tmp_path / "in" / "*.txt")]
    prepare.prepare(inputs, tmp_path / "out", **SMALL)
    before = snapshot(tmp_path / "out")
    for path in sorted((tmp_path / "in").glob("*.txt"))[1:]:
        path.unlink()
    with pytest.raises(DataError, match="already holds a finished prepared corpus"):
        prepare.prepare(inputs, tmp_path / "out", **SMALL)
    assert snapshot(tmp_path / "out") == before
    shutil.rmtree(tmp_path / "out")
    prepare.prepare(inputs, tmp_path / "out", **SMALL)
    prepare.prepare(inputs, tmp_path / "clean", **SMALL)
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "clean")


def test_the_split_is_the_last_val_fraction_of_the_tokens(tmp_path):
    write_corpus(tmp_path / "in")
    manifest = prepare.prepare(
        [str(tmp_path / "in" / "*.txt")], tmp_path / "out", val_fraction=0.25, **SMALL
    )
    prepared = open_prepared(tmp_path / "out")
    train, val = windows.split(prepared.tokens, 16, 16, prepared.val_fraction, prepared.source)
    split = manifest["split"]
    assert split["val_fraction"] == 0.25
    assert (len(train.ids), len(val.ids)) == (split["train_tokens"], split["val_tokens"])
    assert split["val_tokens"] == round(manifest["tokens"] * 0.25)
    line = prepare.describe(manifest, "out")
    assert line.startswith(f"out: {manifest['tokens']:,} tokens (16 documents from 16 files)")


def test_progress_bar_shows_tokens_per_second(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("Some text to prepare.")
    prepare.prepare([str(tmp_path / "a.txt")], tmp_path / "out", progress=True)
    assert "tok/s" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("files", "kwargs", "message"),
    [
        ({"a.txt": b"ok", "b.txt": b"caf\xe9"}, {}, r"b.txt is not UTF-8.*byte offset 3"),
        ({"c.jsonl": b'{"text": "x"}\n{"txt": "y"}\n'}, {}, r"c.jsonl:2: no field 'text'"),
        ({"c.jsonl": b'{"text": "x"}\nnot json\n'}, {}, r"c.jsonl:2: not JSON"),
        ({"e.txt": b"", "f.jsonl": b"\n"}, {}, r"nothing to prepare: 1 document\(s\), all empty"),
        ({"a.txt": b"ok"}, {"val_fraction": 1.0}, r"validation fraction must be in \(0, 1\)"),
    ],
)
def test_bad_input_fails_before_anything_is_written(tmp_path, files, kwargs, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    inputs = [str(tmp_path / name) for name in files]
    with pytest.raises(DataError, match=message):
        prepare.prepare(inputs, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_out_dir_must_be_new_empty_or_prepared(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"busy is not empty and holds no manifest.json"):
        prepare.prepare([str(tmp_path / "a.txt")], tmp_path / "busy", progress=False)
    with pytest.raises(DataError, match=r"a.txt is a file; name a directory"):
        prepare.prepare([str(tmp_path / "a.txt")], tmp_path / "a.txt", progress=False)
    with pytest.raises(DataError, match=r"busy/notes.txt is inside --out"):
        prepare.prepare([str(tmp_path / "busy" / "notes.txt")], tmp_path, progress=False)
    assert os.listdir(tmp_path / "busy") == ["notes.txt"]
