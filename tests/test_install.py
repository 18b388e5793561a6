"""What installing the project gives a user: the `npgpt` command, the same click group as
`python cli.py`, usable from any directory; and a test run that fails on deprecations."""

import subprocess
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import cli
from npgpt import GPTConfig, init_params, save


def npgpt_script():
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "npgpt"]
    return script


def test_the_npgpt_command_is_the_cli_group():
    assert npgpt_script().value == "cli:main"
    assert npgpt_script().load() is cli.main


def test_the_npgpt_command_runs_from_any_directory(tmp_path):
    executable = Path(sys.executable).with_name("npgpt")
    assert executable.exists(), f"{executable}: not installed; run pip install -e ."
    config = GPTConfig(context_length=8, emb_dim=8, n_heads=2, n_layers=1)
    save(tmp_path / "ckpt", config, init_params(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [str(executable), "info", str(tmp_path / "ckpt")],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout and "n_layers=1" in result.stdout
    listed = subprocess.run(
        [str(executable), "--help"], cwd=elsewhere, capture_output=True, text=True, check=True
    ).stdout
    for command in cli.main.commands:
        assert command in listed


def test_a_deprecation_fails_the_test_run():
    """pyproject's filterwarnings turns deprecations into errors inside tests."""
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        with pytest.raises(category):
            warnings.warn("an API on its way out", category, stacklevel=1)
