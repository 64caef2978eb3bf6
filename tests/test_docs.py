"""The documentation covers the code: docstrings, API pages, notebooks, figures.

The HTML itself is built (warnings as errors) and the notebooks executed by
``docs/build.sh``; these checks are the fast part that needs neither.
"""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

import torchgeo_xscale

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / 'docs'
NOTEBOOKS = sorted((ROOT / 'notebooks').glob('*.ipynb'))
# Figures made by docs/make_figures.py.
FIGURES = ('concept_', 'reconstruction_across_scales')


def _modules() -> list[str]:
    names = [torchgeo_xscale.__name__]
    for info in pkgutil.walk_packages(
        torchgeo_xscale.__path__, prefix=f'{torchgeo_xscale.__name__}.'
    ):
        if not info.name.endswith('__main__'):
            names.append(info.name)
    return sorted(names)


def _public_names(module: ModuleType) -> list[str]:
    """``__all__``, else the public classes and functions defined in the module."""
    if hasattr(module, '__all__'):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith('_')
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    ]


def _documented_modules() -> set[str]:
    text = '\n'.join(p.read_text() for p in (DOCS / 'api').glob('*.rst'))
    return set(re.findall(r'^\.\. automodule:: (\S+)', text, flags=re.M))


MODULES = _modules()


def test_walk_finds_the_package() -> None:
    assert {'torchgeo_xscale.models.cross_scale_mae', 'torchgeo_xscale.cli'} <= set(
        MODULES
    )


@pytest.mark.parametrize('name', MODULES)
def test_module_is_in_the_api_reference(name: str) -> None:
    assert name in _documented_modules(), f'add `.. automodule:: {name}` to docs/api/'


@pytest.mark.parametrize('name', MODULES)
def test_public_names_have_docstrings(name: str) -> None:
    module = importlib.import_module(name)
    assert inspect.getdoc(module), f'{name} has no module docstring'
    missing = []
    for attr in _public_names(module):
        obj = getattr(module, attr)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # constants are documented with `#:` comments
        if inspect.isfunction(obj) and obj.__code__.co_name != attr:
            continue  # made at run time (timm registers builders in `__all__`)
        if not (obj.__doc__ or '').strip():
            missing.append(attr)
            continue
        if inspect.isclass(obj):
            for method, value in vars(obj).items():
                if method.startswith('_') or not inspect.isfunction(value):
                    continue
                if not (value.__doc__ or '').strip():
                    missing.append(f'{attr}.{method}')
    assert not missing, f'{name}: no docstring on {missing}'


def test_api_pages_are_in_the_toctree() -> None:
    index = (DOCS / 'api' / 'index.rst').read_text()
    for page in (DOCS / 'api').glob('*.rst'):
        if page.stem != 'index':
            assert re.search(rf'^\s+{page.stem}$', index, flags=re.M), page.name


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_valid_and_stripped(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == 'code']
    assert code, 'a notebook without code'
    for cell in code:
        assert cell.outputs == [], f'{path.name}: outputs not stripped'
        assert cell.execution_count is None, f'{path.name}: execution counts'


def test_three_notebooks() -> None:
    assert [p.name[:3] for p in NOTEBOOKS] == ['01_', '02_', '03_']


def test_figures_exist_and_are_small() -> None:
    pages = [*DOCS.glob('*.md'), *(DOCS / 'guides').glob('*.md')]
    referenced = {
        name
        for page in pages
        for name in re.findall(r'\]\((figures/[^)\s]+)\)', page.read_text())
    }
    assert 'figures/reconstruction_across_scales.png' in referenced
    for name in referenced:
        assert (DOCS / name).is_file(), f'{name} is referenced but missing'
    for path in (DOCS / 'figures').glob('*.png'):
        if path.name.startswith(FIGURES):
            assert path.stat().st_size < 300_000, f'{path.name} is over 300 KB'


def _code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf'```{language}\n(.*?)```', path.read_text(), flags=re.S)


@pytest.mark.parametrize(
    'page', ['README.md', *sorted(p.name for p in DOCS.rglob('*.md'))]
)
def test_documented_imports_exist(page: str) -> None:
    """Every ``import``/``from`` line of the Python examples in README and docs runs."""
    path = ROOT / page if page == 'README.md' else next(DOCS.rglob(page))
    for block in _code_blocks(path, 'python'):
        for line in block.splitlines():
            if re.match(r'(from \S+ )?import ', line) and '(' not in line:
                exec(line, {})
            elif re.match(r'from \S+ import \($', line):
                names = block.split(line, 1)[1].split(')', 1)[0]
                exec(f'{line}{names})', {})
