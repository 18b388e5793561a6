"""`prepare` on the command line, and `train` / `eval --data DIR` on what it makes: the same
batches as from the files, resume, the verification record, and bad input as one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
from click.testing import CliRunner
from gpt2_ids import joined_ids
from trainrun import torchrun_cli

import cli
from npgpt.config import GPTConfig
from npgpt.model import forward, init_params
from npgpt.training import dataset, metrics, shards, windows
from npgpt.training.backend import NumpyBackend
from npgpt.training.loop import train
from npgpt.training.settings import resolve_settings
from npgpt.weights import checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMALL = GPTConfig(context_length=16, emb_dim=16, n_heads=2, n_layers=1)


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def assert_user_error(result, *phrases):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """Four text files, their documents in prepare's order, and the prepared directory (shards
    of 1000 ids, so windows cross shard boundaries)."""
    root = tmp_path_factory.mktemp("prepare")
    names = sorted(topics)[20:24]
    documents = [topics[name] for name in names]
    for i, text in enumerate(documents):
        (root / f"doc{i}.txt").write_text(text, encoding="utf-8")
    result = invoke("prepare", root / "doc*.txt", "--out", root / "prepared",
                    "--shard-tokens", 1000, "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    return root, documents


def test_prepare_writes_each_documents_ids_joined_by_endoftext(texts):
    root, documents = texts
    out = root / "prepared"
    manifest = json.loads((out / "manifest.json").read_text())
    ids = np.concatenate([np.fromfile(out / e["file"], dtype="<u2") for e in manifest["shards"]])
    assert ids.tolist() == joined_ids(documents)
    assert len(manifest["shards"]) == -(-len(ids) // 1000) > 2
    assert [Path(s["path"]).name for s in manifest["sources"]] == [f"doc{i}.txt" for i in range(4)]
    assert manifest["split"]["val_tokens"] == round(len(ids) * 0.1)
    rerun = invoke("prepare", root / "doc*.txt", "--out", root / "again",
                   "--shard-tokens", 1000, "--no-progress")  # fmt: skip
    assert rerun.stdout.startswith(f"{root / 'again'}: {len(ids):,} tokens (4 documents from 4")
    for entry in manifest["shards"]:  # byte-identical in another directory
        assert (root / "again" / entry["file"]).read_bytes() == (out / entry["file"]).read_bytes()


def test_prepare_json_lines_with_a_text_field(tmp_path):
    lines = [{"body": "First one.", "id": 1}, {"body": "Second,\nwith <|endoftext|> as text"}]
    (tmp_path / "a.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n\n")
    (tmp_path / "b.txt").write_text("And a text file.")
    result = invoke("prepare", tmp_path / "a.jsonl", tmp_path / "b.txt", "--text-field", "body",
                    "--out", tmp_path / "out", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    ids = np.fromfile(tmp_path / "out" / "shard-00000.bin", dtype="<u2")
    documents = [line["body"] for line in lines] + ["And a text file."]
    assert ids.tolist() == joined_ids(documents)
    assert "(3 documents from 2 files)" in result.stdout


def test_prepare_never_replaces_a_finished_corpus_of_other_inputs(texts, tmp_path):
    root, _ = texts
    out = tmp_path / "out"
    assert invoke("prepare", root / "doc0.txt", "--out", out, "--no-progress").exit_code == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    result = invoke("prepare", root / "doc1.txt", "--out", out, "--no-progress")
    assert_user_error(result, f"--out {out} already holds a finished prepared corpus", "delete")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_a_prepare_killed_at_any_moment_resumes_to_identical_shards(tmp_path):
    """SIGKILL the command while it writes (timing as it falls), then run it again: the
    finished shards are kept, and the result is byte for byte a clean run's."""
    text = "\n\n".join(topics[name] for name in sorted(topics))
    for i in range(4):
        (tmp_path / f"part{i}.txt").write_text(text[i * 1000 :] + text[: i * 1000])
    args = [sys.executable, "cli.py", "prepare", str(tmp_path / "part*.txt"), "--shard-tokens",
            "10000", "--workers", "1", "--no-progress"]  # fmt: skip
    clean = subprocess.run([*args, "--out", str(tmp_path / "clean")], cwd=ROOT, timeout=300)
    assert clean.returncode == 0
    killed = subprocess.Popen([*args, "--out", str(tmp_path / "out")], cwd=ROOT)
    manifest, deadline = tmp_path / "out" / "manifest.json", time.monotonic() + 120
    while not (manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 2):
        assert killed.poll() is None and time.monotonic() < deadline, "no shard was written"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    listed = json.loads(manifest.read_text())
    total = len(json.loads((tmp_path / "clean" / "manifest.json").read_text())["shards"])
    assert not listed["complete"] and 2 <= len(listed["shards"]) < total
    for entry in listed["shards"]:
        kept = (tmp_path / "out" / entry["file"]).read_bytes()
        assert kept == (tmp_path / "clean" / entry["file"]).read_bytes()
    again = subprocess.run([*args, "--out", str(tmp_path / "out")], cwd=ROOT, timeout=300)
    assert again.returncode == 0
    made = {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir() if p.suffix != ".json"}
    assert len(made) == total > 40 and made == {
        p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.suffix != ".json"
    }
    assert manifest.read_bytes() == (tmp_path / "clean" / "manifest.json").read_bytes()


def recorded_batches(settings):
    """Every micro-batch a short run trains on, and its losses."""
    batches = []

    class Recording(NumpyBackend):
        def train_step(self, micro_batches, lr, stop_now):
            batches.extend(micro_batches)
            return super().train_step(micro_batches, lr, stop_now)

    record = train(resolve_settings(settings), Recording, progress=False)
    return batches, record


def tiny(out, data, **more):
    return {"preset": "tiny", "data": data, "context_length": 16, "batch_size": 4,
            "max_steps": 3, "eval_every": 3, "eval_batches": 1, "sample_tokens": 0,
            "out": str(out), "dtype": "float64", **more}  # fmt: skip


def test_training_from_the_prepared_directory_and_from_the_files_gives_identical_batches(
    texts, tmp_path
):
    root, _ = texts
    files = [str(root / f"doc{i}.txt") for i in range(4)]
    cache = str(tmp_path / "cache")
    from_files, files_record = recorded_batches(tiny(tmp_path / "a", files, cache_dir=cache))
    prepared = (str(root / "prepared"),)
    from_dir, dir_record = recorded_batches(tiny(tmp_path / "b", prepared))
    assert len(from_files) == len(from_dir) == 3
    for (x_files, y_files), (x_dir, y_dir) in zip(from_files, from_dir, strict=True):
        assert x_dir.dtype == x_files.dtype == np.int64
        assert np.array_equal(x_dir, x_files) and np.array_equal(y_dir, y_files)
    assert dir_record["loss"] == files_record["loss"]
    assert dir_record["val_loss"] == files_record["val_loss"]


def test_a_resumed_run_on_a_prepared_directory_takes_the_same_batches(texts, tmp_path):
    prepared = (str(texts[0] / "prepared"),)
    straight, _ = recorded_batches(tiny(tmp_path / "straight", prepared, max_steps=4))
    first, _ = recorded_batches(tiny(tmp_path / "resumed", prepared, max_steps=2))
    settings = tiny(tmp_path / "resumed", prepared, max_steps=4)
    rest = []

    class Recording(NumpyBackend):
        def train_step(self, micro_batches, lr, stop_now):
            rest.extend(micro_batches)
            return super().train_step(micro_batches, lr, stop_now)

    train(resolve_settings(settings), Recording, resume=str(tmp_path / "resumed"), progress=False)
    for (x_a, y_a), (x_b, y_b) in zip(straight, first + rest, strict=True):
        assert np.array_equal(x_a, x_b) and np.array_equal(y_a, y_b)


@pytest.mark.usefixtures("one_torch_thread")
def test_ddp_processes_map_the_prepared_shards_and_reproduce_one_process(texts, tmp_path):
    """torchrun, 2 gloo processes on the prepared directory, against 1 torch process on the
    files: the same losses (float64; the processes split each batch), and no process encodes
    anything (the token cache directory is never made)."""
    pytest.importorskip("torch", reason="torch not installed")
    from torchgpt.training import TorchBackend

    root, _ = texts
    files = [str(root / f"doc{i}.txt") for i in range(4)]
    torch_cpu = {"backend": "torch", "device": "cpu", "max_steps": 2, "eval_every": 1}
    one = tiny(tmp_path / "one", files, cache_dir=str(tmp_path / "cache-one"), **torch_cpu)
    train(resolve_settings(one), TorchBackend, progress=False)
    ddp = tiny(tmp_path / "ddp", [str(root / "prepared")], **torch_cpu)
    (tmp_path / "ddp.json").write_text(json.dumps(ddp | {"cache_dir": str(tmp_path / "none")}))
    torchrun_cli("train", "--config", tmp_path / "ddp.json", "--no-progress", timeout=120)
    assert not (tmp_path / "none").exists()
    by_ddp = metrics.read(tmp_path / "ddp" / "metrics.jsonl")
    by_one = metrics.read(tmp_path / "one" / "metrics.jsonl")
    assert [r["step"] for r in by_ddp] == [r["step"] for r in by_one] == [0, 1, 2]
    for d, o in zip(by_ddp, by_one, strict=True):
        for key in ("loss", "train_loss", "val_loss"):
            if o[key] is not None:
                assert d[key] == pytest.approx(o[key], rel=1e-9)


def test_train_cli_on_a_prepared_directory(texts, tmp_path):
    prepared = texts[0] / "prepared"
    result = invoke("train", "--data", prepared, "--context-length", 16, "--batch-size", 2,
                    "--max-steps", 1, "--eval-batches", 1, "--sample-tokens", 0,
                    "--out", tmp_path / "run", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"on {prepared} (" in result.stderr and "tokens from 4 files)" in result.stderr
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()


def test_eval_on_a_prepared_directory_is_its_validation_split(texts, tmp_path):
    prepared = texts[0] / "prepared"
    checkpoint.save(tmp_path / "ckpt", SMALL, init_params(SMALL, seed=3))
    result = invoke("eval", "--checkpoint", tmp_path / "ckpt", "--data", prepared,
                    "--batch-size", 4, "--max-batches", 2)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"8 windows of 16 tokens from {prepared} (" in result.stderr
    assert "validation split" in result.stderr
    config, params = checkpoint.load(tmp_path / "ckpt")
    tokens = shards.open_prepared(prepared).tokens
    _, validation = windows.split(tokens, 16, 16, 0.1, "store")
    by_hand = np.mean([forward(params, config, *validation.batch(range(a, a + 4)))[1]
                       for a in (0, 4)])  # fmt: skip
    assert float(result.stdout.split()[1]) == pytest.approx(float(by_hand), abs=1e-4)


def test_opening_hashes_only_shards_changed_since_the_last_check(texts, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    out.mkdir()
    for path in (texts[0] / "prepared").iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    hashed = []
    sha256_of = shards.sha256_of
    monkeypatch.setattr(shards, "sha256_of", lambda p: hashed.append(p.name) or sha256_of(p))
    count = len(json.loads((out / "manifest.json").read_text())["shards"])
    shards.open_prepared(out)  # copied: new inodes, so every shard is hashed
    assert len(hashed) == count and (out / "verified.json").is_file()
    hashed.clear()
    shards.open_prepared(out)
    assert hashed == []
    os.utime(out / "shard-00001.bin", ns=(1, 1))  # touched: hashed again, and still good
    shards.open_prepared(out)
    assert hashed == ["shard-00001.bin"]
    hashed.clear()
    shards.open_prepared(out)
    assert hashed == []
    shard = out / "shard-00002.bin"
    before = shard.stat()
    data = bytearray(shard.read_bytes())
    data[7] ^= 1
    shard.write_bytes(bytes(data))  # altered in place, its mtime put back: the ctime tells
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(dataset.DataError, match=r"shard-00002.bin has changed since it was"):
        shards.open_prepared(out)


def test_a_prepared_corpus_fixes_the_validation_fraction(texts, tmp_path):
    prepared = (str(texts[0] / "prepared"),)
    with pytest.raises(dataset.DataError, match=r"--val-fraction 0.2 differs from the split"):
        dataset.training_windows(prepared, 16, 16, 0.2)
    with pytest.raises(dataset.DataError, match=r"prepared corpus, to be given alone"):
        dataset.training_windows((*prepared, str(texts[0] / "doc0.txt")), 16, 16, 0.1)


@pytest.mark.parametrize(
    ("files", "extra", "phrases"),
    [
        ({"a.txt": b"fine", "b.txt": b"caf\xc3\xa9 caf\xe9"}, [],
         ["b.txt is not UTF-8", "0xe9 at byte offset 9"]),
        ({"c.jsonl": b'{"text": "x"}\n{"body": "y"}\n'}, [],
         ["c.jsonl:2: no field 'text'", "--text-field"]),
        ({"c.jsonl": b'{"body": "x"}\n{"body": "y"\n'}, ["--text-field", "body"],
         ["c.jsonl:2: not JSON"]),
        ({"e.txt": b"", "f.txt": b""}, [], ["nothing to prepare"]),
        ({"a.txt": b"x"}, ["--val-fraction", "1.5"], ["validation fraction must be in (0, 1)"]),
    ],
)  # fmt: skip
def test_prepare_bad_input_is_one_line_and_writes_nothing(tmp_path, files, extra, phrases):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    inputs = [tmp_path / name for name in files]
    result = invoke("prepare", *inputs, "--out", tmp_path / "out", "--no-progress", *extra)
    assert_user_error(result, *phrases)
    assert not (tmp_path / "out").exists()


def damaged(source, tmp_path, how):
    out = tmp_path / "damaged"
    out.mkdir()
    for path in source.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    shard = out / "shard-00001.bin"
    if how == "missing":
        shard.unlink()
    elif how == "truncated":
        shard.write_bytes(shard.read_bytes()[:-2])
    else:
        data = bytearray(shard.read_bytes())
        data[100] ^= 1
        shard.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize(
    ("how", "phrase"),
    [
        ("missing", "shard-00001.bin is missing"),
        ("truncated", "shard-00001.bin has 1998 bytes, but the manifest lists 2000"),
        ("altered", "shard-00001.bin has changed since it was written"),
    ],
)
@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_damaged_prepared_directory_is_one_line(texts, tmp_path, how, phrase, command):
    out = damaged(texts[0] / "prepared", tmp_path, how)
    if command == "train":
        args = ["train", "--data", out, "--context-length", 16, "--max-steps", 1,
                "--out", tmp_path / "run", "--no-progress"]  # fmt: skip
    else:
        checkpoint.save(tmp_path / "ckpt", SMALL, init_params(SMALL, seed=3))
        args = ["eval", "--checkpoint", tmp_path / "ckpt", "--data", out]
    assert_user_error(invoke(*args), phrase, "prepare the corpus again")
    assert not (tmp_path / "run").exists()


def test_a_directory_that_is_not_prepared_says_how_to_prepare_it(texts, tmp_path):
    result = invoke("train", "--data", texts[0], "--out", tmp_path / "run", "--no-progress")
    assert_user_error(result, "is a directory but not a prepared corpus", "cli.py prepare")
    assert not (tmp_path / "run").exists()


def test_an_unfinished_prepare_is_refused_with_what_to_do(texts, tmp_path):
    out = damaged(texts[0] / "prepared", tmp_path, "altered")
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(manifest | {"complete": False}))
    result = invoke("train", "--data", out, "--out", tmp_path / "run", "--no-progress")
    assert_user_error(result, "prepare did not finish", "run the same prepare command again")
