"""`import npgpt` stays light: no torch, tensorflow or chainlit, for any of its modules."""

import subprocess
import sys

HEAVY = ("torch", "tensorflow", "chainlit")

PROBE = """
import importlib, pkgutil, sys
import npgpt
modules = sorted(m.name for m in pkgutil.iter_modules(npgpt.__path__, "npgpt."))
for name in modules:
    importlib.import_module(name)
print(len(modules))
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})))
"""


def test_npgpt_imports_no_heavy_framework():
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=set(HEAVY))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    n_modules, heavy_loaded = result.stdout.splitlines()
    assert int(n_modules) >= 12  # the probe really walked the package
    assert heavy_loaded == ""
