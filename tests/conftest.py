"""Fixtures shared by the training tests of both backends; the fuzz tests' summary."""

import pytest
from fuzzing import CASES
from trainrun import cli_run, stop_settings, train_args, train_on_one_thread

from npgpt.training.corpus import builtin_documents


def write_corpus(directory):
    """~25 kB of the built-in corpus as a text file: a few thousand tokens."""
    path = directory / "corpus.txt"
    path.write_text("\n\n".join(builtin_documents()[:6])[:25_000])
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def straight_runs(tmp_path_factory):
    """The uninterrupted run of trainrun.stop_settings on a backend, made on first use, on one
    thread: what every stopped or killed run must end as. Its corpus is a copy of `corpus`.
    numpy's in a subprocess (OMP_NUM_THREADS; OpenBLAS's threads cannot be set once loaded),
    torch's here (set_num_threads; a torch process takes seconds to start)."""
    root, made = tmp_path_factory.mktemp("straight"), {}
    corpus = write_corpus(root)

    def run(backend):
        if backend not in made:
            settings = stop_settings(corpus, root / backend, backend)
            if backend == "torch":
                train_on_one_thread(settings)
            else:
                cli_run(*train_args(settings, root))
            made[backend] = root / backend
        return made[backend]

    return run


def pytest_terminal_summary(terminalreporter):
    """The fuzz tests' examples per format damaged, when any ran (the closing note quotes it)."""
    if CASES:
        terminalreporter.write_sep("-", "fuzz cases tried per format")
        for fmt, count in sorted(CASES.items()):
            terminalreporter.write_line(f"{count:>8,}  {fmt}")
        terminalreporter.write_line(f"{CASES.total():>8,}  in all")
