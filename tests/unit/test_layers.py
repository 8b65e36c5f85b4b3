"""The folders are the layers: imports go downward only, no import cycle, and the login node's layers are torch-free.

The imports are read from the source (every `import`, at module level or inside a function), not from what a
process happens to have loaded.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "zoobot_hpc"
# Lowest first; a module may import its own layer and the layers below it. data and model share a level but do
# not import each other.
LAYERS: dict[str, int] = {
    "core": 0,
    "backends": 1,
    "data": 2,
    "model": 2,
    "runtime": 3,
    "training": 4,
    "inference": 5,
    "login": 6,
    "search": 7,
    "": 8,  # zoobot_hpc/__init__.py, cli.py, export.py: the applications
}
TORCH_FREE = ("core", "backends")
HEAVY = ("torch", "lightning", "timm", "torchvision", "torchmetrics", "pytorch_lightning")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, module: str) -> set[str]:
    """Every module name an `import` statement of the file names (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def package_edges() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    known = modules()
    return {
        module: {name for name in imports_of(path, module) if name in known and name != module}
        for module, path in known.items()
    }


def test_no_import_runs_up_the_layers_or_across_data_and_model() -> None:
    against = []
    for module, targets in package_edges().items():
        for target in targets:
            source, dest = layer_of(module), layer_of(target)
            if dest == "" and target == "zoobot_hpc":
                continue  # the package itself (its version)
            if LAYERS[dest] > LAYERS[source] or (LAYERS[dest] == LAYERS[source] and dest != source):
                against.append(f"{module} -> {target}")
    assert not against, "imports against the layers:\n" + "\n".join(sorted(against))


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one member."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_files_or_between_packages() -> None:
    edges = package_edges()
    assert strongly_connected(edges) == []
    packages: dict[str, set[str]] = {}
    for module, targets in edges.items():
        packages.setdefault(layer_of(module), set()).update(
            layer_of(t) for t in targets if layer_of(t) != layer_of(module)
        )
    assert strongly_connected(packages) == []


@pytest.mark.parametrize("layer", TORCH_FREE)
def test_core_and_backends_import_no_torch_lightning_or_timm(layer: str) -> None:
    heavy = [
        f"{module}: {name}"
        for module, path in modules().items()
        if layer_of(module) == layer
        for name in imports_of(path, module)
        if name.split(".")[0] in HEAVY
    ]
    assert not heavy, heavy


# A scheduler named in code: its commands, its environment variables, a backend's name compared or passed.
SCHEDULER_WORDS = re.compile(r"\b(sbatch|sacct|squeue|scontrol|sinfo|scancel|srun|salloc)\b|SLURM_|^slurm$|^local$")
# The one place outside the backends that may spell their names: the config's literal of executor names.
ALLOWED = {("zoobot_hpc.core.config", "slurm"), ("zoobot_hpc.core.config", "local")}


def code_strings(path: Path) -> list[str]:
    """The string literals of a file that are not docstrings (prose may name a scheduler; code may not)."""
    docstrings = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = node.body[0] if node.body else None
            if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
                docstrings.add(doc.lineno)
    strings = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.STRING and token.start[0] not in docstrings:
            strings.append(
                ast.literal_eval(token.string)
                if not token.string.lstrip("rbuRBU").startswith(("f", "F"))
                else token.string
            )
    return [s for s in strings if isinstance(s, str)]


def test_only_the_backends_name_a_scheduler_or_call_its_commands() -> None:
    named = []
    for module, path in modules().items():
        if layer_of(module) == "backends":
            continue
        for text in code_strings(path):
            match = SCHEDULER_WORDS.search(text)
            if match and (module, text) not in ALLOWED:
                named.append(f"{module}: {text!r}")
    assert not named, "scheduler names outside zoobot_hpc/backends:\n" + "\n".join(named)


def test_every_registered_backend_is_a_config_literal_and_implements_the_contract() -> None:
    from typing import get_args

    from zoobot_hpc.backends.base import SchedulerBackend
    from zoobot_hpc.backends.registry import BACKENDS, get_backend
    from zoobot_hpc.core.config import ExecutorName

    assert set(get_args(ExecutorName)) == {"auto", *BACKENDS}
    contract = [name for name in dir(SchedulerBackend) if not name.startswith("_")]
    for name in BACKENDS:
        backend = get_backend(name)
        assert backend.name == name
        missing = [member for member in contract if not hasattr(backend, member)]
        assert not missing, f"{name}: {missing}"
