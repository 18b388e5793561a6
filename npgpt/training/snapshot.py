"""Atomic checkpoint directories: a run killed at any instant leaves a complete checkpoint.

A training checkpoint is several files (weights, optimizer moments, trainer state) that must
agree with each other, so replacing them one by one is not enough: a kill between two files
would pair new weights with old moments. Instead the whole directory is swapped:

    1. write every file into a fresh temporary directory  .checkpoint.tmp-XXXX/, fsync each
    2. rename  checkpoint/        -> checkpoint.old/        (if there is a previous one)
    3. rename  .checkpoint.tmp-XXXX/ -> checkpoint/, fsync the parent directory
    4. delete  checkpoint.old/

A writer that fails (a full disk) deletes the temporary directory and, if it failed between
the renames, renames checkpoint.old/ back. Renames within one file system are atomic, so at
every instant one of these holds, and `recover` (run before reading or writing) turns each into
a single complete `checkpoint/`:

    killed during 1          checkpoint/ is the previous one; the temporary dir is deleted
    killed between 2 and 3   only checkpoint.old/ exists: it is renamed back
    killed during 4          checkpoint/ is the new one; checkpoint.old/ is deleted
"""

import os
import shutil
import tempfile
from pathlib import Path

from npgpt.weights.atomic import fsync_dir


def old_path(target):
    return target.with_name(target.name + ".old")


def recover(target):
    """Bring a directory left half-swapped by a killed writer back to one complete state."""
    target = Path(target)
    old = old_path(target)
    if old.exists():
        if target.exists():
            shutil.rmtree(old)  # the new one was already in place
        else:
            os.rename(old, target)  # killed between the two renames: the old one is complete
    if target.parent.exists():
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)


def fsync_tree(directory):
    for path in directory.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(directory)


def write_directory(target, write_files):
    """Call `write_files(tmp_dir)` to fill a temporary directory, then swap it in as `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write_files(tmp)
        fsync_tree(tmp)
        if target.exists():
            os.rename(target, old_path(target))
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old_path(target).exists() and not target.exists():  # failed between the renames
            os.rename(old_path(target), target)  # so that the previous one is where it was
        raise
    shutil.rmtree(old_path(target), ignore_errors=True)
