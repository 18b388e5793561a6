"""The op files read as the textbook they claim to be: each states its math in its docstring,
pairs forward with backward, keeps its cache in a named tuple of its own, and loops over nothing
in Python (batch, time and heads are array axes; the only Python loop of the model is over its
layers, in model.py). And no function of the book, its subpackages, the twin or the front ends
is longer than 60 lines."""

import ast
import importlib
import re
from pathlib import Path

import numpy as np
import pytest

from npgpt import (
    attention,
    block,
    crossentropy,
    dropout,
    embedding,
    gelu,
    layernorm,
    linear,
    model,
)
from npgpt.config import GPTConfig

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


def op_caches():
    """{op name: the cache its forward returns}, from small inputs."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8))
    config = GPTConfig(vocab_size=11, context_length=4, emb_dim=8, n_heads=2, n_layers=1)
    block_params = model.in_layer(model.init_params(config), 0)
    wte, wpe = rng.standard_normal((11, 8)), rng.standard_normal((4, 8))
    return {
        "embedding": embedding.forward(np.array([[1, 2]]), wte, wpe)[1],
        "linear": linear.forward(x, rng.standard_normal((8, 4)))[1],
        "layernorm": layernorm.forward(x, np.ones(8), np.zeros(8))[1],
        "gelu": gelu.forward(x)[1],
        "attention": attention.forward(rng.standard_normal((2, 3, 24)), n_heads=2)[1],
        "dropout": dropout.forward(x, 0.5, x > 0)[1],
        "block": block.forward(x.astype(np.float32), block_params, 2, 1e-5)[1],
        "crossentropy": crossentropy.forward(x, np.zeros((2, 3), dtype=int))[1],
    }


def test_every_op_cache_is_a_named_tuple_of_its_own_file():
    """A cache is read by field name (`cache.xhat`), never by position in an anonymous tuple or
    by string key, and its definition sits beside the forward and backward that use it."""
    caches = op_caches()
    assert sorted(caches) == sorted(OPS)
    for name, cache in caches.items():
        kind = type(cache)
        assert issubclass(kind, tuple) and hasattr(kind, "_fields"), f"{name}: {kind}"
        assert kind.__module__ == f"npgpt.{name}", f"{name}'s cache is defined in {kind.__module__}"


ROOT = Path(__file__).resolve().parents[1]
# every place the no-function-over-a-screen rule covers: the book and its subpackages, the twin,
# and the front ends
SHORT_FUNCTIONS = sorted(
    [ROOT / "cli.py", ROOT / "frontend.py"]
    + [path for folder in ("npgpt", "torchgpt", "webapp") for path in (ROOT / folder).rglob("*.py")]
)


@pytest.mark.parametrize("path", SHORT_FUNCTIONS, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_function_over_60_lines(path):
    tree = ast.parse(path.read_text())
    long = {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > 60
    }
    assert long == {}, f"{path}: functions over 60 lines (name: lines): {long}"
