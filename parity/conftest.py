"""pytest set-up for the parity suite: devices and `--parity-report` (the Hypothesis profiles
are the repository's: ../conftest.py).

pytest parity                                  the `ci` profile (default)
pytest parity --hypothesis-profile thorough    many more examples (about 30 minutes)
pytest parity --parity-report out.md           also write every tensor's error on the
                                               GPT-2-124M-shaped case to out.md
"""

import pytest
import torch

from parity import report

CUDA_SKIP = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU: torch.cuda.is_available() is False"
)


def pytest_addoption(parser):
    parser.addoption(
        "--parity-report",
        metavar="PATH",
        default=None,
        help="write a Markdown table of every tensor's error on the GPT-2-124M-shaped parity "
        "case to PATH",
    )


@pytest.fixture(scope="session")
def parity_record():
    """Where tests put the comparisons that `--parity-report` writes out."""
    return report.RECORDED


def pytest_sessionfinish(session):
    path = session.config.getoption("--parity-report", default=None)
    if path:
        report.write(path)
