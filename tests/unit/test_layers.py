"""The package's folders are its architecture: each layer imports only the layers below it.

core (pure: bytes in, decisions out) < config, services (the router's DHCP and DNS servers: sans-IO
too, but on wire-format libraries that load socket) < shell (IO) < tools (debug, bench) < cli and api
< testing (the pytest plugin: networks of namespaces as fixtures, on api's Switch and tools' pingall).
Every import counts: plain, from, relative, inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vswitch

PACKAGE = Path(vswitch.__file__).parent
LAYERS = {
    "core": 0,
    "config": 1,
    "services": 1,
    "shell": 2,
    "tools": 3,
    "cli": 4,
    "api": 4,
    "testing": 5,
    "__main__": 5,
}
IO_MODULES = ("asyncio", "socket", "fcntl", "pyroute2", "uvloop", "selectors", "subprocess")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every vswitch module path imports, resolved to absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "vswitch")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "vswitch":
                continue
            found.add(target)
            for alias in node.names:  # "from . import topology" names a module
                candidate = f"{target}.{alias.name}"
                if module_path(candidate) is not None:
                    found.add(candidate)
    return found


def module_path(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for candidate in (PACKAGE / rel / "__init__.py", (PACKAGE / rel).with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def layer_of(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:
        return -1  # vswitch/__init__: the version, importable from anywhere
    return LAYERS[parts[1]]


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_sits_in_a_known_layer() -> None:
    for name in graph():
        assert name == "vswitch" or name.split(".")[1] in LAYERS, f"{name} is in no layer"


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = [
        f"{name} ({name.split('.')[1]}) imports {target}"
        for name, targets in graph().items()
        if name != "vswitch"
        for target in targets
        if layer_of(target) > layer_of(name)
    ]
    assert wrong == []


def test_the_package_root_imports_nothing_of_its_own() -> None:
    assert graph()["vswitch"] == set()


def test_no_module_imports_itself_through_a_circle() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for target in edges.get(name, ()):
            # a package's __init__ and its own submodules are one unit here
            if target != name and not target.startswith(name + ".") and not name.startswith(target + "."):
                visit(target, [*path, name])
        done.add(name)

    for name in edges:
        visit(name, [])


def test_the_walker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checks above are only as good as the walk: a relative, a function-level and a
    TYPE_CHECKING import of the shell from the core are all found."""
    probe = PACKAGE / "core" / "datapath.py"
    names = imports_of(probe)
    assert "vswitch.core.l2" in names and "vswitch.core.counters" in names
    fake = PACKAGE / "core" / "_layer_probe.py"
    fake.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..shell import loop\n"
        "def f():\n    from ..shell.tap import open_tap\n    import vswitch.tools.debug\n"
    )
    try:
        found = imports_of(fake)
    finally:
        fake.unlink()
    assert {"vswitch.shell.loop", "vswitch.shell.tap", "vswitch.tools.debug"} <= found


def test_the_core_loads_without_any_io_module() -> None:
    """Imported alone, in a fresh interpreter, the core brings in no event loop, socket or netlink."""
    core = [module_name(p) for p in sorted((PACKAGE / "core").glob("*.py"))]
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in core)
        + f"print(sorted(m for m in {IO_MODULES!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# A function of the core longer than this needs a reason (the rule of thumb: a reader should
# see a stage whole). Each exemption says why.
CORE_FUNCTION_LINES = 60
LONG_ON_PURPOSE: dict[str, str] = {  # name -> why
    # The flow cache's hit, its counting inline: one call more per hit measured +2% (bench-micro).
    "vswitch.core.flowcache.forward": "the per-packet fast path, one function on purpose",
}


def test_core_functions_are_short_or_say_why() -> None:
    long = []
    for path in sorted((PACKAGE / "core").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                name = f"{module_name(path)}.{node.name}"
                if lines > CORE_FUNCTION_LINES and name not in LONG_ON_PURPOSE:
                    long.append(f"{name}: {lines} lines")
    assert long == []
