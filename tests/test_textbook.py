"""The op files read as the textbook they claim to be: each states its math in its docstring,
pairs forward with backward, and loops over nothing in Python (batch, time and heads are array
axes; the only Python loop of the model is over its layers, in model.py)."""

import ast
import importlib
import re
from pathlib import Path

import pytest

OPS = ("embedding", "linear", "layernorm", "gelu", "attention", "dropout", "block", "crossentropy")


@pytest.mark.parametrize("name", OPS)
def test_op_docstring_states_forward_backward_and_shapes(name):
    module = importlib.import_module(f"npgpt.{name}")
    doc = module.__doc__ or ""
    assert "Forward" in doc and "Backward" in doc, f"npgpt/{name}.py: docstring lacks the math"
    assert re.search(r"\((B, T|\.\.\.), ", doc), f"npgpt/{name}.py: docstring gives no shapes"
    assert callable(module.forward) and callable(module.backward)


@pytest.mark.parametrize("name", OPS)
def test_op_has_no_python_loop(name):
    source = Path(importlib.import_module(f"npgpt.{name}").__file__).read_text()
    loops = [
        node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.For | ast.While)
    ]
    assert loops == [], f"npgpt/{name}.py has Python loops at lines {loops}"
