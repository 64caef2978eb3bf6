"""Models: the ViT encoder, attention backends and Cross-Scale MAE."""

from .attention import build_attention, list_attention_backends, register_attention
from .cross_scale_mae import CrossScaleMAE, CrossScaleMAEOutput
from .vit import VIT_SIZES, CrossScaleViT, build_vit

__all__ = (
    'VIT_SIZES',
    'CrossScaleMAE',
    'CrossScaleMAEOutput',
    'CrossScaleViT',
    'build_attention',
    'build_vit',
    'list_attention_backends',
    'register_attention',
)
