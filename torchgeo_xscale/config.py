"""The shipped YAML configs: where they are, a task's arguments from one, tied sizes.

The configs under ``configs/`` are LightningCLI files (``xscale fit --config ...``).
Code that needs the same model outside LightningCLI (``xscale demo``, the study)
reads it from them here instead of repeating it:

* :func:`read_config` reads a config file with one-line errors;
* :func:`load_model_args` returns its ``model.init_args`` (all of them, or the
  :data:`ARCHITECTURE_KEYS`);
* :func:`link_img_size` gives ``data.init_args.img_size`` the model's
  ``img_size``, the one place both are set outside LightningCLI, so that they cannot
  drift apart.
"""

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .renames import RENAMED_ARGS, renamed_message

__all__ = (
    'ARCHITECTURE_KEYS',
    'CONFIG_DIR',
    'TINY_CONFIG',
    'link_img_size',
    'load_model_args',
    'read_config',
)

#: The ``configs/`` folder of the source checkout (next to the package).
CONFIG_DIR = Path(__file__).resolve().parent.parent / 'configs'

#: The small Cross-Scale MAE that trains on a laptop CPU (``xscale demo``'s model).
TINY_CONFIG = CONFIG_DIR / 'pretrain' / 'xscale_tiny_geotiff.yaml'

#: ``model.init_args`` keys that fix the network's shapes (not its losses or
#: training settings): what the study shares with the demo.
ARCHITECTURE_KEYS = (
    'size',
    'img_size',
    'patch_size',
    'in_channels',  # the band count (TorchGeo's name, see torchgeo_xscale.renames)
    'embed_dim',
    'depth',
    'num_heads',
    'decoder_embed_dim',
    'decoder_depth',
    'decoder_num_heads',
    'mlp_ratio',
    'projection_dim',
    'projection_hidden_dim',
    'predictor_hidden_dim',
)


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a LightningCLI YAML config that has a ``model`` section.

    Args:
        path: The YAML file.

    Returns:
        The parsed mapping.

    Raises:
        FileNotFoundError: If *path* does not exist (the ``configs/`` folder ships
            with the source checkout, not with a wheel).
        ValueError: If the file is not a mapping with ``model.init_args``, or uses
            a renamed argument (``in_chans`` in ``model.init_args`` or
            ``data.init_args``; :mod:`torchgeo_xscale.renames`).
    """
    path = Path(path)
    if not path.is_file():
        msg = (
            f'config {path} does not exist; expected a YAML file (the shipped configs '
            f'are in {CONFIG_DIR} of a source checkout)'
        )
        raise FileNotFoundError(msg)
    config = yaml.safe_load(path.read_text())
    model = config.get('model') if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get('init_args'), dict):
        msg = (
            f'config {path} has no model.init_args mapping; expected a LightningCLI '
            'config (model: {class_path: ..., init_args: {...}})'
        )
        raise ValueError(msg)
    for section in ('model', 'data'):
        spec = config.get(section)
        args = spec.get('init_args') if isinstance(spec, dict) else None
        for old in RENAMED_ARGS:
            value = args.get(old) if isinstance(args, dict) else None
            if value is not None:
                raise ValueError(
                    f'config {path}: {renamed_message(old, value, section)}'
                )
    return config


def load_model_args(
    path: str | os.PathLike[str] = TINY_CONFIG, keys: Iterable[str] | None = None
) -> dict[str, Any]:
    """The task arguments (``model.init_args``) of a config.

    Args:
        path: The YAML config (default :data:`TINY_CONFIG`).
        keys: Keep only these keys (e.g. :data:`ARCHITECTURE_KEYS`); keys the config
            does not set are left out (the task's defaults apply). None: all.

    Returns:
        A new dict of the arguments.
    """
    args = dict(read_config(path)['model']['init_args'])
    if keys is not None:
        wanted = set(keys)
        args = {k: v for k, v in args.items() if k in wanted}
    return args


def link_img_size(config: dict[str, Any], source: str = 'config') -> dict[str, Any]:
    """Tie ``data.init_args.img_size`` to ``model.init_args.img_size`` (in place).

    The model's value wins; a different value given for the data is refused, so the
    views fed to the model always have the model's size.

    Args:
        config: A config mapping with ``model`` and ``data`` sections.
        source: Name of the config in error messages.

    Returns:
        *config*.

    Raises:
        ValueError: If the config sets ``data.init_args.img_size`` to another value
            than ``model.init_args.img_size``, or has no ``data`` section.
    """
    model = config['model']['init_args']
    data = config.get('data')
    if not isinstance(data, dict):
        raise ValueError(f'{source} has no data section; expected data.class_path')
    data_args = data.setdefault('init_args', {})
    size = model.get('img_size')
    if size is None:
        raise ValueError(f'{source} sets no model.init_args.img_size; expected an int')
    given = data_args.get('img_size')
    if given is not None and given != size:
        msg = (
            f'{source}: data.init_args.img_size={given} but model.init_args.img_size='
            f'{size}; expected the same value (or leave data.init_args.img_size out)'
        )
        raise ValueError(msg)
    data_args['img_size'] = size
    return config
