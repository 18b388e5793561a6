"""The token store: the same windows as the in-memory ids, and every check made at open."""

import json

import numpy as np
import pytest

from npgpt.training import corpus, shards, windows
from npgpt.training.corpus import DataError
from npgpt.training.prepare import prepare


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A corpus of 3 documents in shards of 50 ids, and the ids it must hold."""
    folder = tmp_path_factory.mktemp("corpus")
    documents = ["The first document, short.", "A second one: " * 40, "And 3rd\nline. " * 25]
    for i, text in enumerate(documents):
        (folder / f"{i}.txt").write_text(text)
    prepare([str(folder / "*.txt")], folder / "out", shard_tokens=50, progress=False)
    ids = corpus.encode_documents(documents)
    return folder / "out", ids


def copy_of(out_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return copy


def test_store_holds_the_ids_in_memory_mapped_shards(prepared):
    out_dir, ids = prepared
    tokens = shards.open_prepared(out_dir).tokens
    assert len(tokens) == len(ids) and len(tokens.shards) == -(-len(ids) // 50) > 3
    assert all(isinstance(shard, np.memmap) for shard in tokens.shards)
    assert tokens[np.arange(len(ids))].tolist() == ids.tolist()
    assert shards.is_prepared(out_dir) and not shards.is_prepared(out_dir / "shard-00000.bin")


def test_gathering_matches_numpy_indexing_across_shard_boundaries(prepared):
    out_dir, ids = prepared
    tokens = shards.open_prepared(out_dir).tokens
    rng = np.random.default_rng(0)
    positions = rng.integers(0, len(ids), size=(7, 65))
    assert np.array_equal(tokens[positions], ids[positions])
    for a, b in [(0, 10), (45, 160), (-30, None), (100, 40), (None, -5)]:
        view, expected = tokens[a:b], ids[a:b]
        assert len(view) == len(expected)
        assert view[np.arange(len(view))].tolist() == expected.tolist()
        assert view[3:][np.arange(len(view[3:]))].tolist() == expected[3:].tolist()


def test_bad_positions_are_refused(prepared):
    tokens = shards.open_prepared(prepared[0]).tokens
    with pytest.raises(IndexError, match=r"in \[0, "):
        tokens[np.array([0, len(tokens)])]
    with pytest.raises(IndexError):
        tokens[np.array([-1])]
    with pytest.raises(TypeError, match="must be integers"):
        tokens[np.array([0.5])]
    with pytest.raises(ValueError, match="step 1"):
        tokens[::2]


@pytest.mark.parametrize(("T", "stride"), [(8, 8), (16, 5), (31, 40)])
def test_windows_from_the_store_equal_windows_from_the_array(prepared, T, stride):
    out_dir, ids = prepared
    prepared = shards.open_prepared(out_dir)
    from_store = windows.split(prepared.tokens, T, stride, prepared.val_fraction, "store")
    from_array = windows.split(ids, T, stride, prepared.val_fraction, "array")
    for store_windows, array_windows in zip(from_store, from_array, strict=True):
        assert len(store_windows) == len(array_windows)
        indices = list(range(len(array_windows)))
        for got, expected in zip(
            store_windows.batch(indices), array_windows.batch(indices), strict=True
        ):
            assert got.dtype == expected.dtype and np.array_equal(got, expected)


def rewrite_manifest(out_dir, **changes):
    manifest = json.loads((out_dir / "manifest.json").read_text())
    manifest.update(changes)
    (out_dir / "manifest.json").write_text(json.dumps(manifest))


def test_missing_truncated_and_altered_shards_are_named(prepared, tmp_path):
    out_dir = copy_of(prepared[0], tmp_path)
    shard = out_dir / "shard-00002.bin"
    original = shard.read_bytes()
    shard.write_bytes(original[:-2])
    with pytest.raises(
        DataError, match=r"shard-00002.bin has 98 bytes, but the manifest lists 100"
    ):
        shards.open_prepared(out_dir)
    shard.write_bytes(original[:10] + bytes([original[10] ^ 1]) + original[11:])
    with pytest.raises(DataError, match=r"shard-00002.bin has changed since it was written"):
        shards.open_prepared(out_dir)
    assert len(shards.open_prepared(out_dir, verify=False).tokens) > 0  # sizes only
    shard.unlink()
    with pytest.raises(DataError, match=r"shard-00002.bin is missing; prepare the corpus again"):
        shards.open_prepared(out_dir, verify=False)


def test_manifest_problems_are_named(prepared, tmp_path):
    out_dir = copy_of(prepared[0], tmp_path)
    manifest_text = (out_dir / "manifest.json").read_text()
    other = shards.tokenizer_identity() | {"name": "cl100k_base"}
    rewrite_manifest(out_dir, tokenizer=other)
    with pytest.raises(DataError, match=r"manifest.json: the corpus was prepared with another"):
        shards.open_prepared(out_dir)
    (out_dir / "manifest.json").write_text(manifest_text)
    rewrite_manifest(out_dir, version=99)
    with pytest.raises(DataError, match=r"format version 99, this npgpt reads 1"):
        shards.open_prepared(out_dir)
    (out_dir / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest.json is not a JSON manifest"):
        shards.open_prepared(out_dir)
    (out_dir / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match=r"is not an npgpt prepared-corpus manifest"):
        shards.open_prepared(out_dir)
    (out_dir / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"holds no manifest.json, so it is not a prepared corpus"):
        shards.open_prepared(out_dir)
