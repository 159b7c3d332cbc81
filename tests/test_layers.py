"""The package's layers, read from the source's own imports (every import, those inside
functions too): arrows point only down, the client sees nothing of the server side,
and no two modules import each other, directly or around a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import chunkyard

ROOT = Path(chunkyard.__file__).parent

#: each module's layer, from the bottom up; a module may import its own layer and those
#: listed for it
FORMAT = {
    "bodies",  # reading an HTTP answer into a buffer: no I/O of its own, client and stores
    "errors",
    "buffers",  # page-aligned, recycled I/O buffers
    "chunking",
    "hashing",
    "hosts",
    "fingerprint",
    "digest",
    "packs",
    "manifest",
    "names",
    "pins",
    "parts",
    "records",
    "signing",
    "version",
}
ALLOWED = {
    "format": {"format"},
    "io": {"format", "io"},  # stores, the network guard, gateway settings
    "catalog": {"format", "catalog"},
    "repository": {"format", "io", "catalog", "repository"},
    "server": {"format", "io", "repository", "server"},
    "client": {"format", "client"},
    "integrations": {"format", "client", "integrations"},  # MLflow, fsspec: the client's users
    # import/export/copy: drives gateways through the client and, for buckets, opens
    # the store backends with the caller's own credentials (never the gateway's)
    "migrate": {"format", "io", "client", "migrate"},
    "program": {"format", "client", "migrate", "server", "program"},
}


def layer(module: str) -> str:
    parts = module.split(".")[1:]  # without "chunkyard"
    if not parts:
        return "program"  # the package's face re-exports the client
    top = parts[0]
    if top in FORMAT:
        return "format"
    if top in ("stores", "netguard", "config"):
        return "io"
    if top in ("catalog", "repository", "server", "client", "integrations", "migrate"):
        return top
    if top in ("cli", "__main__"):
        return "program"
    raise AssertionError(f"module {module} has no layer: add it to tests/test_layers.py")


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        if "migrations" in path.parts:
            continue  # Alembic scripts, run by Alembic
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """The chunkyard modules ``name`` imports, wherever in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("chunkyard")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("chunkyard"):
                target = node.module
            else:
                continue
            names = [f"{target}.{alias.name}" for alias in node.names]
            submodules = [n for n in names if n in known]  # ``from . import uploads``
            found |= set(submodules)
            if len(submodules) < len(names):  # a name defined in ``target`` itself
                found.add(target)
    return {m for m in found if m in known and m != name}


def test_arrows_point_down():
    wrong = []
    for name, path in modules().items():
        for target in imports(name, path):
            if layer(target) not in ALLOWED[layer(name)]:
                wrong.append(f"{name} ({layer(name)}) imports {target} ({layer(target)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_client_imports_nothing_of_the_server_side():
    for name, path in modules().items():
        if layer(name) == "client":
            assert all(layer(t) in ("format", "client") for t in imports(name, path)), name


def test_no_import_cycles():
    graph = {name: imports(name, path) for name, path in modules().items()}
    # a package and its own submodules may refer to each other (``from . import X``
    # in a submodule names the package): only module-to-module circles count
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") or t == name)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m) :] + [m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_the_cli_starts_without_the_server_side():
    """Every ``chunkyard push`` pays for what the program imports: the server's app and
    the catalog (SQLAlchemy, Starlette) are loaded only by the commands that use them
    (they cost 0.4 s of each start)."""
    import subprocess
    import sys

    code = (
        "import sys, chunkyard.cli; "
        "print(sorted(m for m in ('sqlalchemy', 'starlette', 'uvicorn', 'chunkyard.catalog') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
