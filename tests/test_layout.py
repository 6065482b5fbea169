"""The package's shape: which modules may import which (read from the source, nothing is imported here)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import xclip_cli

PACKAGE = Path(xclip_cli.__file__).parent


def _modules(folder: Path = PACKAGE, name: str = "xclip_cli") -> dict[str, Path]:
    """Every module of xclip_cli (packages by their __init__.py), by dotted name.

    pkgutil.walk_packages would import each package to find its subpackages (torch with xclip_cli.model);
    iter_modules per folder finds the same modules without running them.
    """
    found = {name: folder / "__init__.py"}
    for info in pkgutil.iter_modules([str(folder)]):
        if info.ispkg:
            found.update(_modules(folder / info.name, f"{name}.{info.name}"))
        else:
            found[f"{name}.{info.name}"] = folder / f"{info.name}.py"
    return found


MODULES = _modules()


def _runtime_nodes(tree: ast.AST, *, top_level: bool):
    """The import statements that run, at import time only (`top_level`) or anywhere.

    At import time: not inside a function (those run on call) nor under ``if TYPE_CHECKING:``.
    """
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if top_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(name: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The xclip_cli modules an import statement of module `name` loads (relative imports resolved)."""
    if isinstance(node, ast.Import):
        named = [alias.name for alias in node.names]
    else:
        if node.level:
            package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module or ""
        # `from pkg import sub` loads the submodule pkg.sub; `from pkg import thing` loads pkg.
        named = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
    targets = set()
    for target in named:
        while target and target not in MODULES:  # `import xclip_cli.video.decode.x` → the module that exists
            target = target.rpartition(".")[0]
        if target.startswith("xclip_cli"):
            targets.add(target)
    return targets


def _imports(*, top_level: bool) -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph[name] = set().union(*(_targets(name, n) for n in _runtime_nodes(tree, top_level=top_level))) - {
            name
        }
    return graph


def test_the_walk_sees_the_package():
    assert {
        "xclip_cli.cli",
        "xclip_cli.cli.common",
        "xclip_cli.cli.tag",
        "xclip_cli.video",
        "xclip_cli.model",
    } <= set(MODULES)
    graph = _imports(top_level=True)
    assert "xclip_cli.cli.common" in graph["xclip_cli.cli.tag"]  # a relative import, resolved
    assert "xclip_cli.cli.tag" in graph["xclip_cli.cli"]  # `from . import tag` names the submodule


def test_no_import_cycle_at_module_level():
    graph = _imports(top_level=True)
    cycles, state = [], {}  # state: 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_nothing_outside_the_cli_imports_it():
    """The CLI is the top of the arrows: the library never reaches up into it (not even in a function).

    xclip_cli.__main__ (``python -m xclip_cli``) is the one other way in: it only calls ``cli.main``.
    """
    offenders = {
        module: sorted(t for t in targets if t == "xclip_cli.cli" or t.startswith("xclip_cli.cli."))
        for module, targets in _imports(top_level=False).items()
        if module != "xclip_cli.cli"
        and not module.startswith("xclip_cli.cli.")
        and module != "xclip_cli.__main__"
    }
    assert not {m: t for m, t in offenders.items() if t}


def _crossing(graph: dict[str, set[str]], source: str, target: str) -> dict[str, list[str]]:
    inside = lambda module, package: module == package or module.startswith(package + ".")  # noqa: E731
    return {
        module: sorted(t for t in targets if inside(t, target))
        for module, targets in graph.items()
        if inside(module, source) and any(inside(t, target) for t in targets)
    }


def test_video_and_model_know_nothing_of_each_other():
    graph = _imports(top_level=False)
    assert _crossing(graph, "xclip_cli.video", "xclip_cli.model") == {}
    assert _crossing(graph, "xclip_cli.model", "xclip_cli.video") == {}


def test_importing_the_cli_loads_no_torch():
    """``xclip --help`` and every usage error stay fast: the commands import torch when they run."""
    code = "import sys, xclip_cli.cli; print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_loading_a_saved_model_imports_no_open_clip(tiny_dir):
    """``xclip tag`` with a saved model starts fast: open_clip's package import (timm, torchvision and with
    it torch._dynamo) takes seconds, and loading, tokenizing and running a saved model need none of it."""
    code = f"""
import sys, torch
import xclip_cli.model
from xclip_cli import load_model
model = load_model({str(tiny_dir)!r})
with torch.no_grad():
    model(torch.zeros(1, model.frames, 3, model.image_size, model.image_size), model.tokenize(["ride a bike"]))
print(sorted(m for m in ("open_clip", "torchvision", "timm", "torch._dynamo") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
