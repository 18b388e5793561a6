"""Data: corpus reading and its errors, the token cache (corpus.py); windows, split and order
(windows.py)."""

import numpy as np
import pytest

from npgpt.tokenizer import EOT_ID, get_tokenizer
from npgpt.training import corpus, windows


def test_builtin_corpus_is_built_from_pydoc_topics():
    docs, source = corpus.load_documents()
    assert source == corpus.BUILTIN
    assert len(docs) > 50 and sum(map(len, docs)) > 100_000
    assert any("assert" in d for d in docs)


def test_documents_are_joined_by_endoftext(tmp_path):
    ids = corpus.token_ids(["Hello world", "Good bye"], cache_dir=tmp_path)
    tok = get_tokenizer()
    assert ids.tolist() == tok.encode("Hello world") + [EOT_ID] + tok.encode("Good bye")


def test_token_cache_is_keyed_by_text_and_not_pickled(tmp_path, monkeypatch):
    ids = corpus.token_ids(["some text"], cache_dir=tmp_path)
    (cached,) = tmp_path.glob("tokens-*.npy")
    assert np.load(cached, allow_pickle=False).tolist() == ids.tolist()
    calls = []
    monkeypatch.setattr(corpus, "encode_documents", lambda docs: calls.append(docs))
    assert corpus.token_ids(["some text"], cache_dir=tmp_path).tolist() == ids.tolist()
    assert calls == []  # served from the cache
    monkeypatch.undo()
    corpus.token_ids(["other text"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tokens-*.npy"))) == 2


def test_damaged_cache_file_is_remade(tmp_path):
    ids = corpus.token_ids(["some text"], cache_dir=tmp_path)
    (cached,) = tmp_path.glob("tokens-*.npy")
    cached.write_bytes(b"garbage")
    assert corpus.token_ids(["some text"], cache_dir=tmp_path).tolist() == ids.tolist()


def test_paths_and_globs(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    docs, source = corpus.load_documents([str(tmp_path / "*.txt"), str(tmp_path / "a.txt")])
    assert docs == ["alpha", "beta"]
    assert "a.txt" in source and "b.txt" in source


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(corpus.DataError, match=f"{missing}: no such file"):
        corpus.load_documents([str(missing)])
    with pytest.raises(corpus.DataError, match="matches no files"):
        corpus.load_documents([str(tmp_path / "*.md")])
    with pytest.raises(corpus.DataError, match="is a directory"):
        corpus.load_documents([str(tmp_path)])


def test_not_utf8_names_file_and_byte_offset(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(corpus.DataError, match=r"latin1.txt is not UTF-8.*0xe9 at byte offset 3"):
        corpus.load_documents([str(bad)])


def test_too_short_corpus_says_has_and_needs():
    with pytest.raises(corpus.DataError, match=r"src: the corpus has 10 tokens but needs .* = 17"):
        windows.split(np.arange(10), 16, 16, 0.1, "src")


def test_empty_validation_split():
    with pytest.raises(corpus.DataError, match=r"src: the validation split is empty.*2 for valid"):
        windows.split(np.arange(20), 16, 16, 0.1, "src")
    train, val = windows.split(np.arange(100), 4, 2, 0.2, "src")
    assert train.ids.tolist() == list(range(80)) and val.ids.tolist() == list(range(80, 100))


@pytest.mark.parametrize(("n", "T", "stride"), [(5, 4, 1), (10, 4, 2), (11, 4, 2), (100, 7, 3)])
def test_windows_cover_the_ids_shifted_by_one(n, T, stride):
    ids = np.arange(n) * 10
    w = windows.Windows(ids, T, stride)
    starts = list(range(0, n - T, stride))
    assert len(w) == len(starts)
    x, y = w.batch(range(len(w)))
    assert x.shape == y.shape == (len(starts), T) and x.dtype == np.int64
    for row, s in enumerate(starts):
        assert x[row].tolist() == ids[s : s + T].tolist()
        assert y[row].tolist() == ids[s + 1 : s + T + 1].tolist()


def test_order_is_seeded_visits_each_window_once_per_epoch_and_resumes():
    n, seed = 10, 3
    pos, seen = windows.Position(), []
    for _ in range(7):  # 7 batches of 3 = 2 epochs + 1 window
        batch, pos = windows.next_indices(n, 3, seed, pos)
        seen += batch
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert seen[:10] != seen[10:20]  # each epoch its own permutation
    assert pos == windows.Position(epoch=2, cursor=1)
    # resuming from any saved position continues the same stream
    batch, mid = windows.next_indices(n, 8, seed, windows.Position())
    assert batch + windows.next_indices(n, 13, seed, mid)[0] == seen
    assert windows.next_indices(n, 10, seed + 1, windows.Position())[0] != seen[:10]


def test_fixed_indices_spread_and_stay_in_range():
    assert windows.fixed_indices(10, 3) == [0, 4, 9]  # linspace(0, 9, 3) rounds half to even
    assert windows.fixed_indices(2, 5) == [0, 1]
