"""Fetch GPT-2's released weights: OpenAI's TensorFlow checkpoints or Hugging Face's safetensors.

    source   where                                                         files
    openai   https://openaipublic.blob.core.windows.net/gpt-2/models/SIZE/  the seven files of the
             (SIZE: 124M, 355M, 774M, 1558M; what the book's                original release
             gpt_download.py fetches)
    hf       https://huggingface.co/openai-community/NAME/resolve/main/    model.safetensors,
                                                                           config.json

Large files over flaky links need four things, each handled here with the standard library:

  resume      bytes arrive in NAME.part; a retry (in this run or a later one) asks only for the
              rest with `Range: bytes=N-` and appends the 206 reply. A server that ignores the
              Range (200) or says it cannot satisfy it (416) is answered by starting over.
  atomicity   NAME appears only by renaming a .part whose size equals the server's length
              (Content-Length, or the total in Content-Range), so a file under its real name is
              always whole.
  integrity   the sha256 of every finished file goes into `download-manifest.json`; a later run
              re-hashes each file, skips it when it matches and fetches it again when it does not.
  progress    one tqdm bar per file, on stderr.

`NPGPT_DOWNLOAD_URL` (or `base_url=`) replaces the base address, for a mirror or a test server.

>>> urls = file_urls("gpt2", "openai")
>>> len(urls), urls["hparams.json"]
(7, 'https://openaipublic.blob.core.windows.net/gpt-2/models/124M/hparams.json')
>>> file_urls("gpt2-xl", "hf", base_url="http://127.0.0.1:8000")["config.json"]
'http://127.0.0.1:8000/gpt2-xl/resolve/main/config.json'
"""

import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from npgpt.weights.atomic import atomic_write_text
from npgpt.weights.digest import sha256_of

MODELS = {"gpt2": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"}
SOURCES = {
    "openai": "https://openaipublic.blob.core.windows.net/gpt-2/models",
    "hf": "https://huggingface.co/openai-community",
}
OPENAI_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
HF_FILES = ("config.json", "model.safetensors")
BASE_URL_ENV = "NPGPT_DOWNLOAD_URL"
MANIFEST_FILE = "download-manifest.json"
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
ATTEMPTS = 5  # per file; each retry resumes where the last one stopped
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")


class DownloadError(Exception):
    """A download that cannot finish; the message says what to do."""


class Interrupted(Exception):
    """The connection ended before the whole file arrived; worth retrying from where it stopped."""


def file_urls(model, source="openai", base_url=None):
    """{file name: URL} of the files that make up `model` at `source`."""
    if model not in MODELS:
        raise DownloadError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if source not in SOURCES:
        raise DownloadError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    base = (base_url or os.environ.get(BASE_URL_ENV) or SOURCES[source]).rstrip("/")
    if source == "openai":
        return {name: f"{base}/{MODELS[model]}/{name}" for name in OPENAI_FILES}
    return {name: f"{base}/{model}/resolve/main/{name}" for name in HF_FILES}


def read_manifest(directory):
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        return {}
    try:
        files = json.loads(path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return {}  # an unreadable manifest only costs re-hashing: every file is re-verified
    return files if isinstance(files, dict) else {}


def write_manifest(directory, files):
    text = json.dumps({"files": files}, indent=2, sort_keys=True) + "\n"
    atomic_write_text(Path(directory) / MANIFEST_FILE, text)


def is_verified(path, record):
    """Whether `path` is the file the manifest recorded: same size, same sha256."""
    return (
        path.exists()
        and path.stat().st_size == record.get("size")
        and sha256_of(path) == record.get("sha256")
    )


def open_range(url, offset, timeout):
    """Open `url` asking for bytes from `offset` on. Returns (response or None, first byte it
    holds, total size or None). None as response: the file is already whole at `offset`."""
    request = urllib.request.Request(url, headers={"User-Agent": "npgpt"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # our part is at least as long as the file
            match = UNSATISFIED_RANGE.fullmatch(err.headers.get("Content-Range", ""))
            total = int(match.group(1)) if match else None
            return None, offset, total
        raise
    except urllib.error.URLError:
        raise  # never connected: not worth retrying, the caller says so
    except (OSError, http.client.HTTPException) as err:  # connected, then dropped before a reply
        raise Interrupted(f"{url}: connection lost before the reply ({err})") from None
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None:
            response.close()
            raise Interrupted(f"{url}: a 206 reply without a usable Content-Range")
        return response, int(match.group(1)), int(match.group(3))
    return response, 0, int(length) if length is not None else None


def fetch_once(url, part, timeout, progress):
    """One attempt: append to `part` from its current size. Returns the total size the server
    reported (None if it gave none). Raises Interrupted if the body stopped short."""
    offset = part.stat().st_size if part.exists() else 0
    response, start, total = open_range(url, offset, timeout)
    if response is None:
        if total == offset:
            return total
        part.unlink()  # longer than the file on the server: a different file; start over
        raise Interrupted(f"{part}: longer than the file on the server; starting again")
    if start not in (0, offset):
        response.close()
        raise Interrupted(f"{url}: asked for bytes from {offset}, the server sent from {start}")
    with response, open(part, "r+b" if part.exists() else "wb") as out:
        out.truncate(start)  # 0 when the server ignored our Range and sends the whole file
        out.seek(start)
        bar = tqdm(
            total=total,
            initial=start,
            desc=part.name.removesuffix(PART_SUFFIX),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
            file=sys.stderr,
        )
        with bar:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise Interrupted(f"{url}: connection lost ({err})") from None
        received = out.tell()
    if total is not None and received != total:
        raise Interrupted(f"{url}: received {received} of {total} bytes")
    return total


def fetch(url, path, timeout=30, progress=True, retry_wait=1.0):
    """Download `url` to `path` through `path.part`, resuming after drops; rename when whole."""
    part = path.with_name(path.name + PART_SUFFIX)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            total = fetch_once(url, part, timeout, progress)
            break
        except Interrupted as err:
            if attempt == ATTEMPTS:
                size = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{err}; gave up after {ATTEMPTS} attempts with {size} bytes in {part}. "
                    f"Run the same command again to resume"
                ) from None
            time.sleep(retry_wait * attempt)
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{part}: {size} bytes, the server said {total}")
    os.replace(part, path)


def fetch_into(directory, name, url, all_names, progress, retry_wait):
    """`fetch`, with its failures turned into one DownloadError line saying what to do."""
    try:
        fetch(url, directory / name, progress=progress, retry_wait=retry_wait)
    except urllib.error.HTTPError as err:
        raise DownloadError(
            f"{url}: HTTP {err.code} {err.reason}; check the model name and source, or "
            f"download {name} elsewhere and put it in {directory}"
        ) from None
    except urllib.error.URLError as err:
        raise DownloadError(
            f"could not reach {url} ({err.reason}); download these files elsewhere and put them "
            f"in {directory}: {', '.join(all_names)}"
        ) from None


def download(model, directory, source="openai", base_url=None, progress=True, retry_wait=1.0):
    """Fetch every file of `model` into `directory`, skipping those the manifest vouches for.
    Returns the directory. Raises DownloadError with one clear message on any failure."""
    urls = file_urls(model, source, base_url)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(directory)
    for name, url in urls.items():
        path = directory / name
        part = path.with_name(name + PART_SUFFIX)
        record = manifest.pop(name, None)
        if record is not None and is_verified(path, record):
            manifest[name] = record
            continue
        if record is not None and path.exists():
            print(
                f"{path}: differs from the sha256 recorded at download; fetching it again",
                file=sys.stderr,
            )
            path.unlink()
        adopted = None
        if path.exists() and not part.exists():
            # a file put here by hand: resume it like a partial download, so the server's size
            # decides whether it is whole (a whole one costs a single 416 reply)
            adopted = path.stat().st_size
            os.replace(path, part)
        try:
            fetch_into(directory, name, url, urls, progress, retry_wait)
        except BaseException:
            if adopted is not None and part.exists() and part.stat().st_size == adopted:
                os.replace(part, path)  # untouched: give the file back its name
            raise
        manifest[name] = {"url": url, "size": path.stat().st_size, "sha256": sha256_of(path)}
        write_manifest(directory, manifest)
    return directory
