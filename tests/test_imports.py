"""`import npgpt` stays light: no torch, tensorflow or chainlit, for any of its modules; the book's
modules import only NumPy, the standard library and each other (threads.py also threadpoolctl);
no module of the project imports another in a circle, and the web page imports no CLI code."""

import ast
import subprocess
import sys
from pathlib import Path

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


def probe(code):
    """The lines `code` prints, run in a fresh interpreter (nothing imported yet)."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_npgpt_imports_no_heavy_framework():
    n_modules, heavy_loaded = probe(PROBE.format(heavy=set(HEAVY)))
    assert int(n_modules) >= 12  # the probe really walked the package
    assert heavy_loaded == ""


# ---- the book imports the book; nothing imports in a circle --------------------------------

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("npgpt", "torchgpt", "webapp", "parity", "cli", "frontend")
# the file formats, networking and progress bars of npgpt.weights / npgpt.training
MACHINERY = ("safetensors", "tiktoken", "tqdm", "npgpt.weights", "npgpt.training")
# what the book's own modules may import besides NumPy and each other: the standard library,
# minus its file and network I/O (tiktoken is tokenizer.py's alone)
IO_MODULES = {"io", "json", "os", "pathlib", "pickle", "shutil", "socket", "tempfile", "urllib"}
# threads.py alone talks to the BLAS library (threadpoolctl: BLAS on one thread while npgpt's
# own pool works) and asks the system how many cores this process may use (os)
THREADS_ONLY = ("threadpoolctl", "os")


def project_modules():
    """{module name: path} of every Python module of the project."""
    modules = {}
    for path in ROOT.glob("*.py"):
        if path.stem in PROJECT:
            modules[path.stem] = path
    for package in PROJECT:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(path, modules):
    """Every module an import statement in `path` names, at any depth of the file (an import
    inside a function is still a dependency): `from a import b` names a.b when that is one of
    `modules`, else a."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in modules else node.module


def import_graph():
    modules = project_modules()
    return {
        name: sorted({dep for dep in imported_names(path, modules) if dep in modules} - {name})
        for name, path in modules.items()
    }


def cycles(graph):
    """Every strongly connected component of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_anywhere():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the whole tree
    assert "frontend" in graph["cli"] and "npgpt.weights.check" in graph["torchgpt.model"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def test_the_web_page_imports_no_cli_code():
    graph = import_graph()
    for name in graph:
        if name.startswith("webapp"):
            assert "cli" not in graph[name], name


def book_modules():
    return sorted(path for path in (ROOT / "npgpt").glob("*.py") if path.name != "__init__.py")


def test_the_book_imports_only_numpy_the_standard_library_and_itself():
    modules = project_modules()
    book = {f"npgpt.{path.stem}" for path in book_modules()} | {"npgpt"}
    for path in book_modules():
        for name in imported_names(path, modules):
            root = name.split(".")[0]
            if root == "npgpt":
                assert name in book, f"{path.name} imports {name}"
            elif root in ("tiktoken", "tiktoken_ext"):
                assert path.name == "tokenizer.py", f"{path.name} imports {name}"
            elif path.name == "threads.py" and root in THREADS_ONLY:
                continue
            else:
                allowed = root == "numpy" or root in sys.stdlib_module_names
                assert allowed and root not in IO_MODULES, f"{path.name} imports {name}"


IMPORT_AN_OP = """
import sys
import npgpt.layernorm
print(",".join(sorted(m for m in sys.modules if m.startswith({machinery!r}))))
from npgpt import GPTConfig, PRESETS, backward, forward, get_tokenizer, init_params, load, save
import npgpt.tokenizer, npgpt.weights.checkpoint
assert load is npgpt.weights.checkpoint.load and save is npgpt.weights.checkpoint.save
assert get_tokenizer is npgpt.tokenizer.get_tokenizer
print(sorted(n for n in ("load", "save", "get_tokenizer") if n in dir(npgpt)))
"""


def test_importing_an_op_loads_no_file_format_or_tokenizer():
    loaded, public = probe(IMPORT_AN_OP.format(machinery=MACHINERY))
    assert loaded == ""
    assert public == "['get_tokenizer', 'load', 'save']"
