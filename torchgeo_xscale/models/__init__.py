"""Models: the ViT encoder, attention backends, Cross-Scale MAE (architecture only).

The weights entries and the builders that take weights live in
:mod:`torchgeo_xscale.checkpoints`; their names are also available here
(``from torchgeo_xscale.models import crossscalemae_base_patch16``), where TorchGeo
users look for builders. They are imported on first access (PEP 562), so that
:mod:`torchgeo_xscale.checkpoints` can import these architecture modules without an
import cycle.
"""

import importlib
from typing import Any

from .attention import (
    EagerAttention,
    SDPAttention,
    XFormersAttention,
    build_attention,
    list_attention_backends,
    register_attention,
)
from .cross_scale_mae import CrossScaleMAE, CrossScaleMAEOutput
from .fourier import FourierMix  # registers the 'fourier' attention backend
from .local_attention import LocalAttention  # registers 'local'
from .segmentation import (
    FCNHead,
    Feature2Pyramid,
    XScaleViTEncoder,
    build_upernet,
    register_encoder,
)
from .vit import (
    VIT_SIZES,
    Block,
    CrossScaleViT,
    PostNormBlock,
    build_vit,
    set_residual_norm_style,
)

#: Names re-exported from :mod:`torchgeo_xscale.checkpoints`.
_FROM_CHECKPOINTS = (
    'CrossScaleMAEBase16_Weights',
    'CrossScaleMAELarge16_Weights',
    'CrossScaleMAEWeightsEnum',
    'WeightsNotAvailableError',
    'build_encoder',
    'convert_checkpoint',
    'crossscalemae_base_patch16',
    'crossscalemae_large_patch16',
    'export_lightning_checkpoint',
    'export_weights',
    'register_weights',
    'resolve',
    'upernet',
)

__all__ = (
    'VIT_SIZES',
    'Block',
    'CrossScaleMAE',
    'CrossScaleMAEOutput',
    'CrossScaleViT',
    'EagerAttention',
    'FCNHead',
    'Feature2Pyramid',
    'FourierMix',
    'LocalAttention',
    'PostNormBlock',
    'SDPAttention',
    'XFormersAttention',
    'XScaleViTEncoder',
    'build_attention',
    'build_upernet',
    'build_vit',
    'list_attention_backends',
    'register_attention',
    'register_encoder',
    'set_residual_norm_style',
    *_FROM_CHECKPOINTS,
)


def __getattr__(name: str) -> Any:
    """The weights names, from :mod:`torchgeo_xscale.checkpoints` (on first use).

    Args:
        name: An attribute of this package.

    Returns:
        The object.

    Raises:
        AttributeError: If *name* is not one of them.
    """
    if name in _FROM_CHECKPOINTS:
        return getattr(importlib.import_module('torchgeo_xscale.checkpoints'), name)
    msg = f'module {__name__!r} has no attribute {name!r}'
    raise AttributeError(msg)
