"""The shipped LightningCLI configs, read as plain data.

``configs/`` (next to the package in a source checkout or an editable install) holds
the YAML files that ``xscale fit --config`` runs. Code that needs the same settings
(the demo's model, the study's encoder) reads them from there with
:func:`init_args` instead of repeating them, so a config and its Python users cannot
drift. This module imports nothing of the package.
"""

from pathlib import Path
from typing import Any

import yaml

__all__ = ('CONFIG_DIR', 'DEMO_CONFIG', 'init_args', 'load_config')

#: The shipped configs folder.
CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs'

#: The demo's config: a small Cross-Scale MAE that trains on a laptop CPU.
DEMO_CONFIG = CONFIG_DIR / 'pretrain' / 'xscale_tiny_geotiff.yaml'


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a LightningCLI YAML config.

    Args:
        path: The file.

    Returns:
        The config as nested dicts.

    Raises:
        FileNotFoundError: If *path* does not exist (the shipped configs are in the
            source checkout, not in a wheel).
        ValueError: If the file is not a YAML mapping.
    """
    path = Path(path)
    if not path.is_file():
        msg = (
            f'config {path} not found; the shipped configs live in configs/ of a '
            'source checkout (pip install -e .)'
        )
        raise FileNotFoundError(msg)
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        msg = f'config {path} is a YAML {type(config).__name__}; expected a mapping'
        raise ValueError(msg)
    return config


def init_args(path: str | Path, section: str = 'model') -> dict[str, Any]:
    """The ``init_args`` of one section of a LightningCLI config.

    Args:
        path: The config file.
        section: ``model``, ``data``...

    Returns:
        A new dict of the section's ``init_args`` (empty if it has none).

    Raises:
        ValueError: If the config has no mapping *section*.
    """
    config = load_config(path)
    part = config.get(section)
    if not isinstance(part, dict):
        msg = f'config {path} has no {section!r} section; expected {section}: ...'
        raise ValueError(msg)
    return dict(part.get('init_args') or {})
