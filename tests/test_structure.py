"""The package's import structure: floors that imports only go down, no circles, click only in cli/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "flyt_datacomp"

# Each module belongs to the first floor whose prefix matches its name; a module may import only
# modules of its own floor or of the floors below (and within a floor there is no circle either).
FLOORS = [
    ("ground", ["flyt_datacomp", "flyt_datacomp.errors", "flyt_datacomp.registry", "flyt_datacomp.scales",
                "flyt_datacomp.process", "flyt_datacomp.progress", "flyt_datacomp.console", "flyt_datacomp.parallel",
                "flyt_datacomp.io", "flyt_datacomp.folders", "flyt_datacomp.plots"]),
    ("codecs", ["flyt_datacomp.uids", "flyt_datacomp.tars", "flyt_datacomp.torch_io", "flyt_datacomp.arrow_io"]),
    ("readers", ["flyt_datacomp.pool", "flyt_datacomp.shards", "flyt_datacomp.store", "flyt_datacomp.clip_models",
                 "flyt_datacomp.sampling", "flyt_datacomp.downstream"]),
    ("learning", ["flyt_datacomp.flyt"]),
    ("scores", ["flyt_datacomp.scores"]),
    ("baselines", ["flyt_datacomp.baselines"]),
    ("inputs", ["flyt_datacomp.inputs"]),
    ("selection", ["flyt_datacomp.selection", "flyt_datacomp.recipes", "flyt_datacomp.ray_selection"]),
    ("evaluation", ["flyt_datacomp.evaluation"]),
    ("demo", ["flyt_datacomp.demo"]),
    ("benchmark", ["flyt_datacomp.benchmark"]),
    ("commands", ["flyt_datacomp.cli"]),
    ("entry points", ["flyt_datacomp.filter", "flyt_datacomp.train", "flyt_datacomp.__main__"]),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _floor(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or (prefix != "flyt_datacomp" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    if best is None:
        raise AssertionError(f"module {module} has no floor: add it to FLOORS")
    return best[0]


def _imports(module: str) -> set[str]:
    """Every package module ``module`` imports, at the top or inside functions."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in MODULES and m != module}


def _uses_click(module: str) -> bool:
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "click" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "click":
            return True
    return False


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_floor():
    for module in MODULES:
        _floor(module)


def test_imports_only_go_down():
    up = [f"{m} ({FLOORS[_floor(m)][0]}) imports {t} ({FLOORS[_floor(t)][0]})"
          for m, targets in GRAPH.items() for t in targets if _floor(t) > _floor(m)]
    assert not up, "imports that run up:\n" + "\n".join(sorted(up))


def test_no_import_circles():
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_only_the_command_line_imports_click_or_cli():
    commands = [m for m in MODULES if _floor(m) >= _floor("flyt_datacomp.cli")]
    assert [m for m in MODULES if _uses_click(m) and m not in commands] == []
    importers = [m for m, targets in GRAPH.items() for t in targets
                 if (t == "flyt_datacomp.cli" or t.startswith("flyt_datacomp.cli.")) and m not in commands]
    assert importers == []


@pytest.mark.parametrize("entry", ["flyt_datacomp.filter", "flyt_datacomp.train"])
def test_entry_points_are_shells(entry):
    """``python -m flyt_datacomp.filter`` / ``.train`` only start their command."""
    code = [n for n in ast.parse(MODULES[entry].read_text()).body
            if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert len(code) == 1 and isinstance(code[0], ast.If)  # if __name__ == "__main__": ...
