"""The package's import graph, read with :mod:`ast`: no cycles, no upward imports.

Every module of :mod:`torchgeo_xscale` is parsed (nothing is imported but the
package itself, to find its folder); each ``import`` / ``from ... import`` of the
package's own modules becomes an edge, relative imports resolved, and a name taken
from a package (``from ..masks import MaskInfo``) followed through the package's
``__init__`` re-exports to the module that defines it. Imports inside functions are
edges too (kind ``function``); those under ``if TYPE_CHECKING:`` are kind
``typing``.

Rules (issue 21.2):

- no cycle among the module-level imports;
- :mod:`torchgeo_xscale.evaluation` never imports :mod:`~torchgeo_xscale.tasks`,
  :mod:`~torchgeo_xscale.study`, the CLI modules or the demo, at any level:
  evaluation scores encoders, it does not train them.
"""

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import torchgeo_xscale

PACKAGE = 'torchgeo_xscale'
ROOT = Path(torchgeo_xscale.__file__).resolve().parent

#: Modules that :mod:`torchgeo_xscale.evaluation` may not import (prefixes): the
#: tasks, everything that trains (the study) and the commands.
FORBIDDEN_FROM_EVALUATION = (
    f'{PACKAGE}.tasks',
    f'{PACKAGE}.study',
    f'{PACKAGE}.cli',
    f'{PACKAGE}.demo',
    f'{PACKAGE}.__main__',
)


@dataclass(frozen=True)
class Edge:
    """One import of a package module by another."""

    source: str
    target: str
    kind: str  # 'module', 'function' or 'typing'
    line: int


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package, by dotted name (packages by their ``__init__``).

    Args:
        root: The package folder.
        package: Its dotted name.

    Returns:
        ``{'torchgeo_xscale.masks.base': Path(...), ...}``.
    """
    modules = {}
    for path in sorted(root.rglob('*.py')):
        parts = list(path.relative_to(root).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        modules['.'.join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
        isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING'
    )


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement of a module with its kind."""

    def visit(
        node: ast.AST, kind: str
    ) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, kind
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from visit(child, 'function' if kind == 'module' else kind)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), 'typing')
                for stmt in child.orelse:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), kind)
            else:
                yield from visit(child, kind)

    yield from visit(tree, 'module')


class ImportGraph:
    """The intra-package import graph of a package folder."""

    def __init__(self, root: Path = ROOT, package: str = PACKAGE) -> None:
        self.package = package
        self.files = module_files(root, package)
        self.trees = {
            name: ast.parse(path.read_text(), str(path))
            for name, path in self.files.items()
        }
        self.edges = [edge for name in self.files for edge in self._edges(name)]

    def _is_package(self, module: str) -> bool:
        return self.files[module].name == '__init__.py'

    def _absolute(self, module: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ''
        base = module.split('.')
        if not self._is_package(module):
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        return '.'.join(base + ([node.module] if node.module else []))

    def _bindings(self, module: str) -> dict[str, tuple[str, str]]:
        """Names a package ``__init__`` imports from elsewhere: ``name -> (module, name)``."""
        found = {}
        for node in self.trees[module].body:
            if isinstance(node, ast.ImportFrom):
                source = self._absolute(module, node)
                for alias in node.names:
                    found[alias.asname or alias.name] = (source, alias.name)
        return found

    def resolve(
        self, module: str, name: str, seen: frozenset[str] = frozenset()
    ) -> str:
        """The module that ``from <module> import <name>`` finally reads.

        A submodule is itself; a name re-exported by a package ``__init__`` is
        followed to the module that defines it; anything else is *module*.
        """
        if f'{module}.{name}' in self.files:
            return f'{module}.{name}'
        if module in seen or not self._is_package(module):
            return module
        source, original = self._bindings(module).get(name, (module, name))
        if source == module or source not in self.files:
            return module
        return self.resolve(source, original, seen | {module})

    def _edges(self, name: str) -> Iterator[Edge]:
        for node, kind in _imports(self.trees[name]):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in self.files and alias.name != self.package:
                        yield Edge(name, alias.name, kind, node.lineno)
                continue
            source = self._absolute(name, node)
            if source != self.package and not source.startswith(f'{self.package}.'):
                continue
            for alias in node.names:
                target = self.resolve(source, alias.name)
                if target in self.files and target != name:
                    yield Edge(name, target, kind, node.lineno)

    def cycles(self, kinds: tuple[str, ...] = ('module',)) -> list[list[str]]:
        """Strongly connected components with more than one module (Tarjan)."""
        graph: dict[str, set[str]] = {name: set() for name in self.files}
        for edge in self.edges:
            if edge.kind in kinds:
                graph[edge.source].add(edge.target)
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []

        def connect(node: str) -> None:
            index[node] = low[node] = len(index)
            stack.append(node)
            on_stack.add(node)
            for succ in sorted(graph[node]):
                if succ not in index:
                    connect(succ)
                    low[node] = min(low[node], low[succ])
                elif succ in on_stack:
                    low[node] = min(low[node], index[succ])
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

        for node in sorted(graph):
            if node not in index:
                connect(node)
        return found


def _forbidden(edge: Edge) -> bool:
    return edge.source.startswith(f'{PACKAGE}.evaluation') and any(
        edge.target == prefix or edge.target.startswith(f'{prefix}.')
        for prefix in FORBIDDEN_FROM_EVALUATION
    )


@pytest.fixture(scope='module')
def graph() -> ImportGraph:
    return ImportGraph()


def test_no_import_cycles(graph: ImportGraph) -> None:
    cycles = graph.cycles()
    assert not cycles, 'import cycles among module-level imports:\n' + '\n'.join(
        ' <-> '.join(cycle) for cycle in cycles
    )


def test_evaluation_does_not_import_tasks_cli_or_demo(graph: ImportGraph) -> None:
    bad = [
        f'{edge.source}:{edge.line} imports {edge.target} ({edge.kind})'
        for edge in graph.edges
        if _forbidden(edge)
    ]
    assert not bad, '\n'.join(bad)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / 'pkg' / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / 'pkg'


def test_graph_finds_cycles_through_reexports(tmp_path: Path) -> None:
    # The shape of the old masking <-> masks circle: the registry imports its
    # implementations on its last line, and they import the registry.
    root = _write(
        tmp_path,
        {
            '__init__.py': '',
            'registry.py': 'REG = {}\nfrom . import impls  # noqa\n',
            'impls/__init__.py': 'from .one import One\n',
            'impls/one.py': 'from ..registry import REG\nclass One: ...\n',
            'user.py': 'from .impls import One\n',
            'lazy.py': 'def f():\n    from .user import One\n',
            'user2.py': 'from .lazy import f\n',
        },
    )
    graph = ImportGraph(root, 'pkg')
    assert graph.cycles() == [['pkg.impls', 'pkg.impls.one', 'pkg.registry']]
    edges = {(e.source, e.target, e.kind) for e in graph.edges}
    # The name from the package resolves to the module that defines it.
    assert ('pkg.user', 'pkg.impls.one', 'module') in edges
    assert ('pkg.lazy', 'pkg.user', 'function') in edges
    # A function-level import closes no cycle.
    assert graph.cycles(('module', 'function')) == graph.cycles()


def test_graph_sees_function_and_typing_imports(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            '__init__.py': '',
            'a.py': (
                'from typing import TYPE_CHECKING\n'
                'if TYPE_CHECKING:\n    from .b import B\n'
                'def f():\n    import pkg.b\n'
            ),
            'b.py': 'from .a import f\nclass B: ...\n',
        },
    )
    graph = ImportGraph(root, 'pkg')
    edges = {(e.source, e.target, e.kind) for e in graph.edges}
    assert edges == {
        ('pkg.b', 'pkg.a', 'module'),
        ('pkg.a', 'pkg.b', 'typing'),
        ('pkg.a', 'pkg.b', 'function'),
    }
    assert graph.cycles() == []
