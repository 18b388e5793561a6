"""npgpt.weights.download against a local HTTP server on 127.0.0.1 (started here, in a
thread): whole downloads, dropped connections resumed with Range, 404, size mismatches, skip
and re-verify."""

import hashlib
import http.server
import json
import re
import socket
import threading

import pytest
from click.testing import CliRunner

import cli
from npgpt.weights.download import (
    BASE_URL_ENV,
    HF_FILES,
    MANIFEST_FILE,
    OPENAI_FILES,
    DownloadError,
    download,
    file_urls,
)


class FileServer(http.server.ThreadingHTTPServer):
    """Serves `files` ({url path: bytes}) with Range support, and misbehaves on request:
    `drops` ({path: n}) cuts the body in half on the first n requests for that path; `lies`
    ({path: extra}) announces `extra` more bytes than it has, every time; `ignore_range`
    answers every Range request with the whole file (200)."""

    daemon_threads = True

    def __init__(self, files):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.drops, self.lies, self.ignore_range = dict(files), {}, {}, False
        self.requests = []  # (path, Range header or None), in arrival order

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        """Quiet: the tests read `server.requests` instead."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if self.path not in server.files:
            self.send_error(404)
            return
        body = server.files[self.path]
        total = len(body) + server.lies.get(self.path, 0)
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and not server.ignore_range else 0
        if start >= total and match:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{total}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        self.send_header("Content-Length", str(total - start))
        self.end_headers()
        chunk = body[start:]
        if server.drops.get(self.path, 0) > 0:
            server.drops[self.path] -= 1
            chunk = chunk[: len(chunk) // 2]
            self.close_connection = True
        self.wfile.write(chunk)


def payloads():
    """Seven OpenAI-release-like files; the data file is the big one."""
    files = {name: f"contents of {name}\n".encode() for name in OPENAI_FILES}
    files["model.ckpt.data-00000-of-00001"] = bytes(range(256)) * 9000  # 2.3 MB: several chunks
    return files


@pytest.fixture
def server():
    files = payloads()
    served = FileServer({f"/124M/{name}": body for name, body in files.items()})
    thread = threading.Thread(target=served.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    served.expected = files
    yield served
    served.shutdown()
    served.server_close()


def fetch(server, directory, **kwargs):
    return download("gpt2", directory, base_url=server.url, progress=False, retry_wait=0, **kwargs)


def assert_complete(directory, expected):
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted([*expected, MANIFEST_FILE])
    manifest = json.loads((directory / MANIFEST_FILE).read_text())["files"]
    for name, body in expected.items():
        assert (directory / name).read_bytes() == body, name
        assert manifest[name]["size"] == len(body)
        assert manifest[name]["sha256"] == hashlib.sha256(body).hexdigest()


def test_urls_match_the_public_stores():
    assert file_urls("gpt2-large")["model.ckpt.index"] == (
        "https://openaipublic.blob.core.windows.net/gpt-2/models/774M/model.ckpt.index"
    )
    hf = file_urls("gpt2-medium", "hf")
    assert sorted(hf) == sorted(HF_FILES)
    assert hf["model.safetensors"] == (
        "https://huggingface.co/openai-community/gpt2-medium/resolve/main/model.safetensors"
    )
    with pytest.raises(DownloadError, match="unknown model 'gpt3'"):
        file_urls("gpt3")


def test_base_url_from_the_environment(monkeypatch):
    monkeypatch.setenv(BASE_URL_ENV, "http://mirror.example/gpt-2/")
    assert file_urls("gpt2")["vocab.bpe"] == "http://mirror.example/gpt-2/124M/vocab.bpe"


def test_normal_download(server, tmp_path):
    assert fetch(server, tmp_path / "m") == tmp_path / "m"
    assert_complete(tmp_path / "m", server.expected)
    assert len(server.requests) == len(OPENAI_FILES)
    assert all(rng is None for _, rng in server.requests)


def test_hf_source_layout(server, tmp_path):
    server.files = {f"/gpt2/resolve/main/{name}": name.encode() * 3 for name in HF_FILES}
    download("gpt2", tmp_path, "hf", base_url=server.url, progress=False, retry_wait=0)
    assert_complete(tmp_path, {name: name.encode() * 3 for name in HF_FILES})


def test_dropped_connection_is_resumed_with_range(server, tmp_path):
    path = "/124M/model.ckpt.data-00000-of-00001"
    size = len(server.files[path])
    server.drops[path] = 2  # two drops in a row: the second resume starts further on
    fetch(server, tmp_path)
    assert_complete(tmp_path, server.expected)
    ranges = [rng for p, rng in server.requests if p == path]
    assert ranges == [None, f"bytes={size // 2}-", f"bytes={size // 2 + size // 4}-"]


def test_a_server_that_ignores_range_restarts_cleanly(server, tmp_path):
    path = "/124M/model.ckpt.data-00000-of-00001"
    server.drops[path] = 1
    server.ignore_range = True
    fetch(server, tmp_path)
    assert_complete(tmp_path, server.expected)


def test_partial_file_survives_a_failed_run_and_resumes_later(server, tmp_path):
    path = "/124M/model.ckpt.data-00000-of-00001"
    server.drops[path] = 100  # every attempt of this run is cut short
    with pytest.raises(
        DownloadError, match="gave up after 5 attempts.*Run the same command again to resume"
    ):
        fetch(server, tmp_path)
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    assert not data.exists()  # nothing under the real name until it is whole
    part = data.with_name(data.name + ".part")
    part_size = part.stat().st_size
    assert 0 < part_size < len(server.files[path])
    server.drops[path] = 0
    server.requests.clear()
    fetch(server, tmp_path)
    assert_complete(tmp_path, server.expected)
    assert [rng for p, rng in server.requests if p == path] == [f"bytes={part_size}-"]


def test_404_names_the_url_and_what_to_do(server, tmp_path):
    del server.files["/124M/vocab.bpe"]
    with pytest.raises(DownloadError) as err:
        fetch(server, tmp_path)
    message = str(err.value)
    assert message.startswith(f"{server.url}/124M/vocab.bpe: HTTP 404")
    assert "\n" not in message
    assert not (tmp_path / "vocab.bpe").exists()


def test_size_mismatch_never_produces_the_file(server, tmp_path):
    path = "/124M/model.ckpt.index"
    server.lies[path] = 10  # Content-Length says 10 bytes more than ever arrive
    with pytest.raises(DownloadError, match=r"received \d+ of \d+ bytes") as err:
        fetch(server, tmp_path)
    assert "model.ckpt.index" in str(err.value)
    assert not (tmp_path / "model.ckpt.index").exists()
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())["files"]
    assert "model.ckpt.index" not in manifest


def test_part_longer_than_the_server_file_starts_over(server, tmp_path):
    (tmp_path / "encoder.json.part").write_bytes(b"x" * 1000)  # a different, longer file
    fetch(server, tmp_path)
    assert_complete(tmp_path, server.expected)


def test_second_run_skips_verified_files_and_refetches_changed_ones(server, tmp_path):
    fetch(server, tmp_path)
    server.requests.clear()
    fetch(server, tmp_path)
    assert server.requests == []  # all seven verified against the manifest
    damaged = tmp_path / "model.ckpt.data-00000-of-00001"
    raw = bytearray(damaged.read_bytes())
    raw[12345] ^= 0xFF  # same size, different contents: only the sha256 can tell
    damaged.write_bytes(bytes(raw))
    fetch(server, tmp_path)
    assert server.requests == [("/124M/model.ckpt.data-00000-of-00001", None)]
    assert_complete(tmp_path, server.expected)


def test_files_put_there_by_hand_are_checked_with_one_request_each(server, tmp_path):
    for name, body in server.expected.items():
        (tmp_path / name).write_bytes(body)
    fetch(server, tmp_path)
    assert_complete(tmp_path, server.expected)
    assert len(server.requests) == len(OPENAI_FILES)
    assert all(rng is not None for _, rng in server.requests)  # 416s, no bodies


def unused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_clear_line(tmp_path):
    base = f"http://127.0.0.1:{unused_port()}"
    with pytest.raises(DownloadError) as err:
        download("gpt2", tmp_path / "m", base_url=base, progress=False, retry_wait=0)
    message = str(err.value)
    assert message.startswith(f"could not reach {base}/124M/checkpoint (")
    assert f"download these files elsewhere and put them in {tmp_path / 'm'}: checkpoint," in (
        message
    )
    assert "\n" not in message
    assert [p.name for p in (tmp_path / "m").iterdir()] == []


def test_cli_download(server, tmp_path):
    target = tmp_path / "gpt2"
    args = ["download", "gpt2", "--dir", str(target), "--base-url", server.url]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{target}\n"
    assert_complete(target, server.expected)


def test_cli_download_without_network_is_one_line_and_fails(tmp_path):
    base = f"http://127.0.0.1:{unused_port()}"
    args = ["download", "gpt2-xl", "--source", "hf", "--dir", str(tmp_path), "--base-url", base]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"Error: could not reach {base}/gpt2-xl/resolve/main/")
    assert f"put them in {tmp_path}: config.json, model.safetensors" in result.stderr
    assert list(tmp_path.iterdir()) == []
