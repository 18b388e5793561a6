"""The sha256 of a file, read a block at a time so that memory stays small whatever its size:
what the download manifest records of every fetched file and the prepared-corpus manifest of
every shard.

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = pathlib.Path(tmp) / "empty"
...     _ = path.write_bytes(b"")
...     sha256_of(path)[:16]
'e3b0c44298fc1c14'
"""

import hashlib

BLOCK_BYTES = 1 << 20


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()
