"""Import rules of the package, read from the source with ``ast`` (every import counts, also the
late ones inside functions):

- imports point down the layers (``LAYERS``); ``FORBIDDEN`` lists the pairs that rules out;
- no import cycles between modules;
- no module imports a private name (``_x``) of a module outside its own package;
- ``import same_fast`` loads nothing from the lab (``lab/``), and no package module names it.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top-level parts of same_fast, lowest first. A part may import parts of lower layers; within a
# layer only the pairs in SIDEWAYS. eval sits beside train: source training validates with the
# paper protocol; picker training crops with adaptation's random window.
LAYERS: list[set[str]] = [
    {"errors", "progress", "_stream"},
    {"files"},
    {"data", "checkpoint", "io", "degrade", "ops", "kernels"},
    {"nn"},
    {"models", "picker", "adapt", "train", "engine", "eval"},
    {"stream", "enhancer"},
    {"batch"},
    {"distributed"},
    {"serve", "benchsuites", "commands", "cli", "__main__"},
]
SIDEWAYS = {("degrade", "ops"), ("degrade", "io"), ("ops", "kernels"), ("io", "checkpoint"),
            ("adapt", "picker"), ("train", "adapt"), ("train", "picker"), ("train", "models"),
            ("train", "eval"),
            ("engine", "models"), ("picker", "models"), ("serve", "engine"),
            ("benchsuites", "serve"), ("commands", "serve"), ("commands", "benchsuites"),
            ("cli", "commands"), ("__main__", "cli")}
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}
FORBIDDEN = sorted((a, b) for a in RANK for b in RANK
                   if a != b and (RANK[b] > RANK[a] or (RANK[b] == RANK[a]
                                                       and (a, b) not in SIDEWAYS)))
# ``same_fast`` itself (``__init__``) is the public front: it may reach any part (lazily), and a
# part may import its version from it.
FRONT = "same_fast"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["same_fast", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    files = sorted((ROOT / "same_fast").rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py"))
    return {_module_name(f): (f, ast.parse(f.read_text(), str(f))) for f in files}


SOURCES = _sources()
MODULES = set(SOURCES) | {"same_fast._stream"}  # the C++ extension


def _resolve(name: str) -> str:
    """The longest known module that ``name`` (a module or a module's attribute) lies in."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(mod: str, tree: ast.Module) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for every same_fast import."""
    package = mod if SOURCES[mod][0].name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names
                    if a.name.split(".")[0] in ("same_fast", "lab")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] not in ("same_fast", "lab"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES
                           else (base, a.name, node.lineno))
    return out


def _part(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else FRONT


def _edges() -> dict[str, set[str]]:
    return {m: {_resolve(t) for t, _, _ in _imports(m, tree)} - {m}
            for m, (_, tree) in SOURCES.items()}


def test_every_part_has_a_layer():
    parts = {_part(m) for m in MODULES} - {FRONT}
    assert parts <= set(RANK), f"give these a layer in LAYERS: {sorted(parts - set(RANK))}"
    assert ("engine", "benchsuites") in FORBIDDEN and ("kernels", "ops") in FORBIDDEN
    assert ("nn", "adapt") in FORBIDDEN and ("adapt", "serve") in FORBIDDEN


def test_imports_point_down_the_layers():
    bad = []
    for mod, targets in _edges().items():
        a = _part(mod)
        for t in targets:
            b = _part(t)
            if t.split(".")[0] == "lab":
                bad.append(f"{mod} imports the lab ({t})")
            elif a != FRONT and b != FRONT and (a, b) in FORBIDDEN:
                bad.append(f"{mod} -> {t} ({a} may not import {b})")
    assert not bad, "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    # the front reaches everything lazily; a part importing its version is not a cycle
    graph = {m: t - {FRONT} for m, t in _edges().items() if m != FRONT}
    assert _cycles(graph) == []


def test_no_private_names_across_packages():
    bad = []
    for mod, (_, tree) in SOURCES.items():
        own = mod if SOURCES[mod][0].name == "__init__.py" else mod.rsplit(".", 1)[0]
        aliases = {}
        for target, name, line in _imports(mod, tree):
            home = target.rsplit(".", 1)[0] if target in MODULES and name is None else target
            private = (name or target.rsplit(".", 1)[-1]).startswith("_")
            dunder = (name or "").startswith("__")
            if private and not dunder and home != own and not own.startswith(home + "."):
                bad.append(f"{mod}:{line} imports {name or target}")
        for node in ast.walk(tree):  # import same_fast.x as y; y._private
            if isinstance(node, ast.Import):
                aliases.update({a.asname or a.name: a.name for a in node.names
                                if a.name.startswith("same_fast")})
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in aliases and node.attr.startswith("_")
                  and not node.attr.startswith("__")):
                bad.append(f"{mod}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "\n".join(bad)


def test_importing_the_package_loads_nothing_from_the_lab():
    code = ("import sys, same_fast, same_fast.cli, same_fast.commands; "
            "print(sorted(m for m in sys.modules if m == 'lab' or m.startswith('lab.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"

