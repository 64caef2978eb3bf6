"""The public API: ``torchgeo_xscale.tasks``, ``.datamodules`` and ``.models`` export
every public class of their modules, and the shipped configs name classes by these
short paths."""

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).parents[1] / 'configs'
SUBPACKAGES = ('tasks', 'datamodules', 'models')


def _public_classes(package: str) -> list[tuple[str, str]]:
    pkg = importlib.import_module(f'torchgeo_xscale.{package}')
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f'{pkg.__name__}.{info.name}')
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and obj.__module__ == module.__name__
                and not name.startswith('_')
            ):
                found.append((module.__name__, name))
    return found


@pytest.mark.parametrize('package', SUBPACKAGES)
def test_subpackage_exports_every_public_class(package: str) -> None:
    pkg = importlib.import_module(f'torchgeo_xscale.{package}')
    classes = _public_classes(package)
    assert classes
    for module, name in classes:
        assert name in pkg.__all__, f'{module}.{name} not in {pkg.__name__}.__all__'
        assert getattr(pkg, name) is getattr(importlib.import_module(module), name)


def _class_paths(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node['class_path']] if isinstance(node.get('class_path'), str) else []
        return own + [p for v in node.values() for p in _class_paths(v)]
    if isinstance(node, list):
        return [p for v in node for p in _class_paths(v)]
    return []


def test_configs_use_the_short_class_paths() -> None:
    paths = [
        (config, path)
        for config in sorted(CONFIGS.rglob('*.yaml'))
        for path in _class_paths(yaml.safe_load(config.read_text()))
        if path.startswith('torchgeo_xscale.')
    ]
    assert len({p for _, p in paths}) >= 5
    for config, path in paths:
        package, _, name = path.rpartition('.')
        assert package in {f'torchgeo_xscale.{s}' for s in SUBPACKAGES}, (config, path)
        assert name in importlib.import_module(package).__all__, (config, path)
