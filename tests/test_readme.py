"""npgpt/README.md: its examples run as written, and it links every module and nothing else."""

import doctest
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "npgpt" / "README.md"


def test_npgpt_readme_examples_run():
    result = doctest.testfile(str(README), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_npgpt_readme_lists_every_module_and_links_only_real_files():
    text = README.read_text()
    linked = set(re.findall(r"\]\(([a-z_0-9/]+\.py)\)", text))
    modules = {
        str(p.relative_to(README.parent))
        for p in README.parent.rglob("*.py")
        if p.name != "__init__.py"
    }
    assert sorted(linked - modules) == []  # no dead links
    assert sorted(modules - linked) == []  # every module has its place in the reading order
