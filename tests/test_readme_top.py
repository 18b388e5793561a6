"""The top-level README: its Python example runs as written, and its commands name real flags."""

import doctest
import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    # only the ```python blocks: a model's sample quoted elsewhere may itself contain ">>>"
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), {}, "README", str(README), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.summarize(verbose=False).attempted >= 10
    assert runner.summarize(verbose=False).failed == 0


def readme_cli_commands():
    """Every `python cli.py ...` command in the README's code blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "cli.py " in line:
            commands.append(shlex.split(line.split("cli.py ", 1)[1]))
    return commands


def test_readme_commands_use_existing_commands_and_flags():
    commands = readme_cli_commands()
    assert len(commands) >= 10
    runner = CliRunner()
    for args in commands:
        command = main.get_command(None, args[0])
        assert command is not None, f"README uses unknown command {args[0]!r}"
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        flags = {a.split("=", 1)[0] for a in args[1:] if a.startswith("--")}
        assert flags <= known, f"README: {args[0]} has no {sorted(flags - known)}"
        assert runner.invoke(main, [args[0], "--help"]).exit_code == 0
