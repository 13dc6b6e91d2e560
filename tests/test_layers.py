"""The package's imports run one way, down the layers, with no circles.

The layers, bottom first (README, Architecture): shared pieces, data, models, training,
features, index, less, selectors, selection, evaluation, compare, cli. A module may import
its own layer or a lower one. An import inside a function is kept only when it loads a heavy
optional package (torch and the like, or a module of ours that loads them) that importing its
module does not load already, and it says so in a comment on its line or just above.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "influence"

LAYERS = [
    ("base", ["influence.errors", "influence.constants", "influence.io", "influence.hub", "influence.provenance",
              "influence.locks", "influence.ranking", "influence.distributed", "influence.testing"]),
    ("data", ["influence.data"]),
    ("models", ["influence.models", "influence.lora"]),
    ("training", ["influence.training"]),
    ("features", ["influence.features"]),
    ("index", ["influence.index", "influence.scoring", "influence.algorithms"]),
    ("less", ["influence.less", "influence.representations"]),
    ("selectors", ["influence.selectors"]),
    ("selection", ["influence.selection", "influence"]),   # `influence` itself: the public facade
    ("evaluation", ["influence.evaluation"]),
    ("compare", ["influence.compare"]),
    ("cli", ["influence.cli"]),
]
HEAVY = {"torch", "transformers", "peft", "datasets", "faiss", "pyarrow", "matplotlib", "safetensors", "fast_jl",
         "trak", "tokenizers", "tqdm", "bm25s", "Stemmer", "data_selection", "nltk", "sentence_transformers",
         "huggingface_hub", "ot", "accelerate", "lm_eval"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{module} belongs to no layer; add it to LAYERS (and to README's list)"
    return rank


@functools.cache
def imports(module: str) -> list[tuple[str, ast.stmt, bool]]:
    """(imported module, statement, inside a function) for every import in `module`."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(child) for child in ast.walk(node) if child is not node}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node, id(node) in inside) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in MODULES else node.module, node, id(node) in inside))
    return found


def ours(name: str) -> bool:
    return name == "influence" or name.startswith("influence.")


def resolve(name: str) -> str:
    while name not in MODULES:
        name = name.rsplit(".", 1)[0]
    return name


def ancestors(module: str) -> list[str]:
    """The packages whose __init__ runs before `module` (the root package, always first, left out)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def graph() -> dict[str, set[str]]:
    """Module -> the modules importing it runs, counting the __init__ of each package entered on the way."""
    edges = {}
    for module in MODULES:
        targets = set()
        for name, _, _ in imports(module):
            if ours(name):
                target = resolve(name)
                own = set(ancestors(module)) | {module}
                targets |= {target, *ancestors(target)} - own
        edges[module] = targets - {module}
    return edges


@functools.cache
def heavy_at_import(module: str) -> frozenset[str]:
    """The heavy packages that importing `module` loads: its module-level imports followed, with the
    __init__ of every package entered on the way (the root package's too)."""
    found: set[str] = set()
    seen: set[str] = set()
    stack = [module]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        stack += [package for package in ["influence", *ancestors(current)] if package not in seen]
        for name, _, in_function in imports(current):
            if in_function:
                continue
            if ours(name):
                stack.append(resolve(name))
            elif name.split(".")[0] in HEAVY:
                found.add(name.split(".")[0])
    return frozenset(found)


def brought_by(name: str) -> frozenset[str]:
    """The heavy packages that importing `name` loads."""
    return heavy_at_import(resolve(name)) if ours(name) else frozenset({name.split(".")[0]}) & HEAVY


def test_every_module_belongs_to_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
              for m, targets in graph().items() for t in targets if layer_of(t) > layer_of(m)]
    assert not upward, "imports running up the layers:\n" + "\n".join(upward)


def test_no_import_circles():
    edges, state, cycles = graph(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [module, target]) if target in path
                              else f"{module} -> {target}")
            elif target not in state:
                visit(target, path + [module])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_imports_inside_functions_are_heavy_and_say_so():
    problems = []
    for module, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for name, node, in_function in imports(module):
            if not in_function:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {name}"
            if not brought_by(name) - heavy_at_import(module):
                loaded = sorted(brought_by(name))
                problems.append(f"{where} inside a function, but it loads no heavy package"
                                + (f" that the module does not load already ({', '.join(loaded)})" if loaded else "")
                                + ": import it at the top")
            elif not _commented(lines, node.lineno - 1):
                problems.append(f"{where} inside a function without a comment saying why, on its line or above it")
    assert not problems, "\n".join(problems)


def _commented(lines: list[str], index: int) -> bool:
    """A comment on the import's line, or on the line above it (or above the block of imports it
    belongs to, with no blank line between)."""
    while "#" not in lines[index]:
        index -= 1
        if index < 0 or not lines[index].strip().startswith(("import ", "from ")):
            return index >= 0 and lines[index].strip().startswith("#")
    return True
