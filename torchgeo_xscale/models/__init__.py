"""Models: the ViT encoder, attention backends, Cross-Scale MAE and its weights."""

from .attention import build_attention, list_attention_backends, register_attention
from .convert import (
    PostNormBlock,
    convert_checkpoint,
    export_lightning_checkpoint,
    export_weights,
    set_residual_norm_style,
)
from .cross_scale_mae import CrossScaleMAE, CrossScaleMAEOutput
from .vit import VIT_SIZES, CrossScaleViT, build_vit
from .weights import (
    CrossScaleMAEBase16_Weights,
    CrossScaleMAELarge16_Weights,
    CrossScaleMAEWeightsEnum,
    WeightsNotAvailableError,
    build_encoder,
    crossscalemae_base_patch16,
    crossscalemae_large_patch16,
    load_weights,
    register_weights,
)

__all__ = (
    'VIT_SIZES',
    'CrossScaleMAE',
    'CrossScaleMAEBase16_Weights',
    'CrossScaleMAELarge16_Weights',
    'CrossScaleMAEOutput',
    'CrossScaleMAEWeightsEnum',
    'CrossScaleViT',
    'PostNormBlock',
    'WeightsNotAvailableError',
    'build_attention',
    'build_encoder',
    'build_vit',
    'convert_checkpoint',
    'crossscalemae_base_patch16',
    'crossscalemae_large_patch16',
    'export_lightning_checkpoint',
    'export_weights',
    'list_attention_backends',
    'load_weights',
    'register_attention',
    'register_weights',
    'set_residual_norm_style',
)
