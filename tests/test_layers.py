"""The house's floors: a package imports only packages below it, never one above, and no
modules import each other in a loop. Read from the code's own imports (every ``import`` and
``from ... import`` anywhere in a module, inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: From the ground up: each package may import those on its own floor or below. The flow:
#: the edge (ingest) -> the middle (proximity, on numerics and geofence) -> the one door out
#: (cic), with storage beside it; the wiring (service) above them, the simulator and the
#: benchmarks above the wiring, and the command line (cli) on top.
FLOORS = {
    "numerics": 0,
    "ingest": 0,
    "geofence": 1,
    "proximity": 2,
    "storage": 3,
    "cic": 4,
    "service": 5,
    "simulator": 6,
    "benchmarks": 7,
    "cli": 8,
}
#: Packages on the same floor that may not import each other either.
APART = [("numerics", "ingest")]
#: The middle knows no file, network or payload format.
MIDDLE_NEVER = (
    "sqlite3",
    "paho",
    "orjson",
    "json",
    "fastapi",
    "uvicorn",
    "pathlib",
    "socket",
    "shutil",
    "tempfile",
    "urllib",
    "http",
)


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> set[str]:
    """Every name ``path`` imports, as ``module`` and ``module.name`` (absolute imports; the
    project uses no others)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _imports(path: Path) -> set[str]:
    """The project modules ``path`` imports."""
    return {m for m in _imported(path) if m.split(".")[0] in FLOORS}


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for package in FLOORS for p in sorted((ROOT / package).rglob("*.py"))}
    return {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_package_imports_one_on_a_higher_floor() -> None:
    upward = sorted(
        (name, target)
        for name, targets in _graph().items()
        for target in targets
        if FLOORS[target.split(".")[0]] > FLOORS[name.split(".")[0]]
    )
    assert upward == []


def test_packages_on_one_floor_do_not_import_each_other() -> None:
    across = sorted(
        (name, target)
        for name, targets in _graph().items()
        for target in targets
        for a, b in APART
        if {name.split(".")[0], target.split(".")[0]} == {a, b}
    )
    assert across == []


def test_the_middle_imports_no_file_network_or_payload_library() -> None:
    found = sorted(
        (path.name, n)
        for path in sorted((ROOT / "proximity").rglob("*.py"))
        for n in _imported(path)
        if n.split(".")[0] in MIDDLE_NEVER
    )
    assert found == []


def test_no_modules_import_each_other_in_a_loop() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    loops: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                loops.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert loops == []
