"""Fixtures shared by the training tests of both backends, and the fuzz tests' tracing."""

import tracemalloc

import pytest

from npgpt.training.corpus import builtin_documents


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~25 kB of the built-in corpus as a text file: a few thousand tokens."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(builtin_documents()[:6])[:25_000])
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one thread, then restore the count. The tensors are tiny:
    OpenMP's start-up and spinning cost more than the work on a busy 2-core machine; and the
    kill-and-resume tests' subprocesses use one thread too, so float64 sums add up in the same
    order everywhere."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def traced():
    """tracemalloc on for a module's examples (NumPy reports its arrays to it): the fuzz tests
    bound what reading a damaged file may allocate (tests/fuzzing.py)."""
    tracemalloc.start()
    yield
    tracemalloc.stop()
