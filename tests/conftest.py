"""Fixtures shared by the training tests of both backends."""

import pytest

from npgpt.data import builtin_documents


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~25 kB of the built-in corpus as a text file: a few thousand tokens."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(builtin_documents()[:6])[:25_000])
    return path
