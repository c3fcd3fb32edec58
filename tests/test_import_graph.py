"""The layering of moesim, checked from the source: which package may import which, no import loop
between files, ``sim/`` made of wings only, no module over 400 lines.

Every ``import`` statement of every ``.py`` file of the packages below is read with :mod:`ast`:
at module level, inside functions, under ``if TYPE_CHECKING:``, ``import a.b``, ``from a import b``
(an edge to ``a.b`` when ``b`` is a module, else to ``a``) and relative imports. An import of a
module implies its parent packages at run time; those implied edges are not counted (a package's
``__init__`` importing its own modules would otherwise be a loop with every one of them).

The layers, bottom to top (docs/ARCHITECTURE.md draws them)::

    common < world < traces < cost < predictor < policies < serving < {engine, replay, realrun} < app

A layer imports only the layers below it (and itself); the three drivers (engine, replay, realrun)
do not import each other; ``traces`` imports only ``sim.common`` and ``sim.world`` of ``sim``;
``kernels`` and ``analysis`` import only ``sim.common`` (and themselves); ``kernels`` is imported
by realrun (it runs them) and sim.app only, ``analysis`` and ``realrun`` by sim.app only; ``conf``
(Hydra's YAML, a package for its data) imports nothing of moesim. ``sim/__init__.py`` and
``sim/__main__.py`` (``python -m sim``) belong to the app layer.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sim", "traces", "realrun", "kernels", "analysis", "conf")
MAX_LINES = 400

#: layer name -> the module prefixes it holds (a module belongs to its longest matching prefix)
LAYERS: dict[str, tuple[str, ...]] = {
    "common": ("sim.common",),
    "world": ("sim.world",),
    "traces": ("traces",),
    "cost": ("sim.cost",),
    "predictor": ("sim.predictor",),
    "policies": ("sim.policies",),
    "serving": ("sim.serving",),
    "engine": ("sim.engine",),
    "replay": ("sim.replay",),
    "realrun": ("realrun",),
    "app": ("sim.app", "sim"),
    "kernels": ("kernels",),
    "analysis": ("analysis",),
    "conf": ("conf",),
}
#: the stack, bottom first: each layer may import every layer before it
STACK = ("common", "world", "traces", "cost", "predictor", "policies", "serving")
DRIVERS = ("engine", "replay", "realrun")
#: layer -> the other layers it may import (itself always)
MAY_IMPORT: dict[str, frozenset[str]] = {
    **{name: frozenset(STACK[:i]) for i, name in enumerate(STACK)},
    "engine": frozenset(STACK),
    "replay": frozenset(STACK),
    "realrun": frozenset(STACK) | {"kernels"},
    "app": frozenset(LAYERS) - {"app"},
    "kernels": frozenset({"common"}),
    "analysis": frozenset({"common"}),
    "conf": frozenset(),
}
#: the folders ``sim/`` may hold (its wings)
WINGS = {"common", "world", "cost", "predictor", "policies", "serving", "engine", "replay", "app"}

#: (file, imported module) -> the fix: imports that break the rules in files owned by work in
#: progress elsewhere. The lead empties this list; an entry that no longer matches an import fails.
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Edge:
    """``src`` (a file, relative to the root) imports module ``dst`` at ``line``: ``text``."""

    src: str
    line: int
    dst: str
    text: str

    def __str__(self) -> str:
        return f"{self.src}:{self.line}: {self.text}"


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files() -> dict[str, Path]:
    """Every module of the packages -> its file."""
    return {_module_of(f): f for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))
            if "__pycache__" not in f.parts}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` (a dotted import) -> the longest prefix that is one of our modules, or None."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def _edges(modules: dict[str, Path]) -> list[Edge]:
    edges = []
    for mod, path in modules.items():
        rel = path.relative_to(ROOT).as_posix()
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            text = lines[node.lineno - 1].strip() if hasattr(node, "lineno") else ""
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for a in node.names:
                    full = f"{base}.{a.name}" if base else a.name
                    targets.append(full if full in modules else base)
            for t in dict.fromkeys(targets):
                dst = _resolve(t, modules)
                if dst is not None and dst != mod:
                    edges.append(Edge(rel, node.lineno, dst, text))
    return edges


def _layer(module: str) -> str:
    best = max(((p, name) for name, prefixes in LAYERS.items() for p in prefixes
                if module == p or module.startswith(p + ".")), key=lambda pn: len(pn[0]))
    return best[1]


def _graph() -> tuple[dict[str, Path], list[Edge]]:
    modules = _files()
    return modules, _edges(modules)


def _layer_violations(edges: list[Edge]) -> list[Edge]:
    bad = []
    for e in edges:
        src, dst = _layer(_module_of(ROOT / e.src)), _layer(e.dst)
        if src != dst and dst not in MAY_IMPORT[src]:
            bad.append(e)
    return bad


def test_no_import_runs_up_a_layer():
    _, edges = _graph()
    bad = [e for e in _layer_violations(edges) if (e.src, e.dst) not in ALLOWED]
    report = "\n".join(f"{e}  ({_layer(_module_of(ROOT / e.src))} may not import "
                       f"{_layer(e.dst)}: {e.dst})" for e in bad)
    assert not bad, f"imports running up (or across) a layer:\n{report}"


def test_no_import_cycle():
    """No loop between files: Tarjan's strongly connected components of the file graph."""
    modules, edges = _graph()
    succ: dict[str, dict[str, Edge]] = {m: {} for m in modules}
    for e in edges:
        if (e.src, e.dst) not in ALLOWED:
            succ[_module_of(ROOT / e.src)].setdefault(e.dst, e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    for m in sorted(modules):
        if m not in index:
            visit(m)
    reports = []
    for comp in sccs:
        members = set(comp)
        # one loop through the component, from its first module, as the import lines that make it
        start, path, seen = min(comp), [], set()
        v = start
        while v not in seen:
            seen.add(v)
            w = min(w for w in succ[v] if w in members)
            path.append(succ[v][w])
            v = w
        loop = path[[_module_of(ROOT / e.src) for e in path].index(v):]
        reports.append("\n".join(f"  {e}" for e in loop))
    assert not sccs, "import loops:\n" + "\n\n".join(reports)


def test_allowed_list_is_current():
    """Every allow-listed import still exists: once fixed, its entry goes (the list only shrinks)."""
    _, edges = _graph()
    present = {(e.src, e.dst) for e in _layer_violations(edges)}
    present |= {(e.src, e.dst) for e in edges}  # a loop's edge need not cross a layer
    stale = sorted(set(ALLOWED) - present)
    assert not stale, f"allow-listed imports no longer present (remove them from ALLOWED): {stale}"


def test_sim_holds_only_wings():
    entries = {p.name for p in (ROOT / "sim").iterdir() if p.name != "__pycache__"}
    stray = sorted(entries - WINGS - {"__init__.py", "__main__.py"})
    assert not stray, f"sim/ holds only its wings, __init__.py and __main__.py; also found: {stray}"
    missing = sorted(w for w in WINGS if not (ROOT / "sim" / w / "__init__.py").is_file())
    assert not missing, f"wings without an __init__.py: {missing}"


def test_no_module_over_400_lines():
    long = sorted((n, f.relative_to(ROOT).as_posix()) for f in _files().values()
                  if (n := len(f.read_text().splitlines())) > MAX_LINES)
    assert not long, "modules over 400 lines: " + ", ".join(f"{p} ({n} lines)" for n, p in long)


def test_layer_table_covers_every_module():
    """Every module belongs to a layer, and the checker sees a known import (a self-check)."""
    modules, edges = _graph()
    assert all(_layer(m) in MAY_IMPORT for m in modules)
    assert any(e.src == "sim/app/cli.py" for e in edges)
    assert _layer("sim.serving.walk") == "serving" and _layer("sim") == "app"
    up = [Edge("sim/world/config.py", 1, "sim.engine.simulation", ""),  # up the stack
          Edge("sim/replay/cache.py", 1, "realrun.serve", ""),  # across the drivers
          Edge("traces/format.py", 1, "sim.cost.base", ""),  # traces above world only
          Edge("analysis/plots.py", 1, "traces.format", ""),
          Edge("sim/serving/walk.py", 1, "kernels.layer", "")]
    down = [Edge("sim/engine/run.py", 1, "sim.serving.plan", ""),
            Edge("realrun/serve.py", 1, "kernels.layer", ""),
            Edge("sim/app/cli.py", 1, "analysis.report", ""),
            Edge("sim/cost/table.py", 1, "traces.format", "")]
    assert _layer_violations(up + down) == up
