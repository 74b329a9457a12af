"""
The layout keeps the promises of docs/architecture.md: the server and the
client side share only the modules beside them, and no module imports
itself back at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parents[1] / "gridlike"

CLIENT_MAY_IMPORT = frozenset({"gridlike.server.config", "gridlike.server.errors"})
"""What of the server the client side may import: the CLI's C{check-config}
validates a configuration file with the server's own reader."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_imports(path: Path) -> set[str]:
    """
    The GridLike modules C{path} imports when it is imported: at its top
    level, not inside functions, C{if TYPE_CHECKING:} or C{if __name__ ==
    "__main__":} blocks.
    """
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and (
                "TYPE_CHECKING" in ast.unparse(node.test) or "__main__" in ast.unparse(node.test)
            ):
                visit(node.orelse)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("gridlike"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")
                    parent = parent[: len(parent) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                if base.startswith("gridlike"):
                    for alias in node.names:
                        found.add(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base)

    visit(tree.body)
    return found


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    return {module_name(p): runtime_imports(p) for p in PACKAGE.rglob("*.py")}


class LayoutTests(SynchronousTestCase):
    def test_server_imports_no_client(self) -> None:
        """Nothing in gridlike.server imports gridlike.client."""
        for module, imports in graph().items():
            if module.startswith("gridlike.server"):
                self.assertEqual(
                    {i for i in imports if i.startswith("gridlike.client")}, set(), module
                )

    def test_client_imports_little_of_the_server(self) -> None:
        """The client side imports of the server only what the CLI needs to check a config."""
        for module, imports in graph().items():
            if module.startswith("gridlike.client"):
                server = {i for i in imports if i.startswith("gridlike.server")}
                self.assertLessEqual(server, CLIENT_MAY_IMPORT, module)

    def test_wire_imports_nothing(self) -> None:
        """The wire format imports nothing of GridLike, so either side can use it alone."""
        self.assertEqual(graph()["gridlike.wire"], set())

    def test_no_cycles(self) -> None:
        """No module imports itself back, through any chain, at import time."""
        edges = graph()
        seen: dict[str, int] = {}
        path: list[str] = []

        def visit(module: str) -> None:
            seen[module] = 1
            path.append(module)
            for target in sorted(edges.get(module, ())):
                if target not in edges:
                    continue
                if seen.get(target) == 1:
                    cycle = path[path.index(target):] + [target]
                    self.fail("import cycle: " + " -> ".join(cycle))
                if target not in seen:
                    visit(target)
            path.pop()
            seen[module] = 2

        for module in sorted(edges):
            if module not in seen:
                visit(module)

    def test_modules_small(self) -> None:
        """No module is over about 800 lines: a bigger one hides several rooms."""
        big = {
            module_name(p): n
            for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 800
        }
        self.assertEqual(big, {})
