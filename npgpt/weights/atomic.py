"""Writes that a crash cannot half-do: every file npgpt writes goes through `atomic_write`.

A file is written under a temporary name in its own directory, fsync'ed, then renamed over the
old one (`os.replace`, atomic on POSIX and Windows), and the directory is fsync'ed so the rename
itself survives a power cut. A process killed at any point leaves either the old file whole or
the new one whole, never a mix, and no temporary file behind when the writer raises.

>>> import tempfile
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "notes.txt"
>>> atomic_write_text(path, "whole or not at all\\n")
>>> path.read_text()
'whole or not at all\\n'
"""

import os
import tempfile
from pathlib import Path


def fsync_dir(path):
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Call `write(tmp_path)`, fsync the result, then rename it to `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path, text):
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
