"""The examples in npgpt/README.md run as written."""

import doctest
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "npgpt" / "README.md"


def test_npgpt_readme_examples_run():
    result = doctest.testfile(str(README), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0
