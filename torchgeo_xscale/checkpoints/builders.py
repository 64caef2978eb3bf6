"""Builders that take weights: the Cross-Scale MAE encoders and UPerNet.

Importing this module registers ``crossscalemae_base_patch16`` and
``crossscalemae_large_patch16`` with their weights enums in TorchGeo's model API
(:func:`torchgeo.models.get_model`, :func:`~torchgeo.models.get_weight`,
:func:`~torchgeo.models.get_model_weights`, :func:`~torchgeo.models.list_models`), so
``torchgeo.tasks.Classification(model='vit_base_patch16_224',
weights='CrossScaleMAEBase16_Weights.FMOW_RGB')`` works as with TorchGeo's own weights.

Every builder resolves its ``weights`` with
:func:`~torchgeo_xscale.checkpoints.loading.resolve` and loads them with
:func:`~torchgeo_xscale.checkpoints.loading.load_into`.
"""

import os
from typing import Any

import segmentation_models_pytorch as smp
import timm
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys
from torchvision.models._api import WeightsEnum

from ..models.segmentation import XScaleViTEncoder, build_upernet
from ..models.timm_vit import register_timm_name
from ..models.vit import VIT_SIZES, CrossScaleViT, build_vit
from .entries import (
    CrossScaleMAEBase16_Weights,
    CrossScaleMAELarge16_Weights,
    register_weights,
)
from .layouts import ENCODER_ARGS
from .loading import ResolvedWeights, load_into, resolve

__all__ = (
    'build_encoder',
    'checkpoint_encoder',
    'crossscalemae_base_patch16',
    'crossscalemae_large_patch16',
    'load_pretrained_encoder',
    'upernet',
)

#: What the builders take as ``weights``.
type Source = WeightsEnum | str | os.PathLike[str] | ResolvedWeights


def build_encoder(
    size: str, weights: Source | None = None, **kwargs: Any
) -> CrossScaleViT:
    """A :class:`CrossScaleViT` of *size*, with weights loaded if given.

    The architecture recorded with the weights (depth, width, heads, patch size...)
    wins over *size*, so that any of our checkpoints loads by path; *kwargs* win over
    both (``img_size``, ``in_chans``, ``num_classes``, ``attention``...). The
    encoder computes what the weights computed: post-norm blocks for the authors'
    xFormers weights, and no final norm (``norm`` the identity) for weights without
    one, such as the authors'; ``final_norm=True`` keeps timm's final LayerNorm
    (starting at weight 1, bias 0) instead. Positional embeddings are regenerated
    (fixed sin-cos) or resampled for ``img_size``; the patch embedding is adapted to
    ``in_chans`` (timm's ``adapt_input_conv``).

    Args:
        size: ``tiny``, ``small``, ``base`` or ``large``.
        weights: See :func:`~torchgeo_xscale.checkpoints.loading.resolve`; None for
            random initialisation.
        **kwargs: Passed to :func:`~torchgeo_xscale.models.vit.build_vit`, plus
            ``final_norm`` (None: as the weights).

    Returns:
        The encoder (timm ``VisionTransformer``: ``forward_features``,
        ``num_features``...), ``num_classes=0`` unless given.

    Raises:
        ValueError: If the number of heads cannot be known, or the weights do not fit.
    """
    if weights is None:
        return build_vit(size, **{'patch_size': 16, **kwargs})
    resolved = resolve(weights)
    metadata = resolved.metadata
    recorded = metadata.get('model', {})
    final_norm = kwargs.pop('final_norm', None)
    args = {
        'patch_size': 16,
        **{k: v for k, v in recorded.items() if k in ENCODER_ARGS},
    }
    args.update(kwargs)
    dim = args.get('embed_dim', VIT_SIZES[size][0])
    if 'num_heads' not in args and dim != VIT_SIZES[size][0]:
        source = metadata['source'].get('file') or metadata['source'].get('entry')
        msg = f'weights {source} have width {dim} and no recorded num_heads; pass num_heads=...'
        raise ValueError(msg)
    keep = metadata.get('final_norm', True) if final_norm is None else final_norm
    if not args.get('num_classes'):  # every tensor comes from the weights: no init
        args.setdefault('weight_init', 'skip')
    model = build_vit(size, final_norm=bool(keep), **args)
    load_into(model, resolved.state_dict, metadata, final_norm=final_norm)
    return model


def checkpoint_encoder(resolved: ResolvedWeights, **kwargs: Any) -> nn.Module:
    """The encoder a resolved checkpoint holds, with its weights.

    Args:
        resolved: From :func:`~torchgeo_xscale.checkpoints.resolve`.
        **kwargs: Encoder builder arguments (``img_size``...).

    Returns:
        timm's ViT for a ``torchgeo.tasks.MAE`` checkpoint (its timm name
        registered again if needed), else a
        :class:`~torchgeo_xscale.models.CrossScaleViT` with the architecture
        recorded with the weights (or read off the shapes).
    """
    metadata = resolved.metadata
    timm_name = metadata.get('timm_model')
    if metadata.get('layout') == 'torchgeo-mae' and timm_name:
        register_timm_name(timm_name)
        in_chans = metadata.get('model', {}).get('in_chans', 3)
        model = timm.create_model(timm_name, in_chans=in_chans, num_classes=0, **kwargs)
        load_into(model, resolved.state_dict, metadata)
        return model  # type: ignore[no-any-return]
    # the architecture recorded with the weights (or read off the shapes) wins
    return build_encoder('base', resolved, **kwargs)


def crossscalemae_base_patch16(
    weights: CrossScaleMAEBase16_Weights | Source | None = None,
    *args: Any,
    **kwargs: Any,
) -> CrossScaleViT:
    """Cross-Scale MAE ViT-B/16 encoder.

    If you use this model in your research, please cite
    https://openreview.net/forum?id=5oEVdOd6TV (Tang et al., NeurIPS 2023).

    Args:
        weights: Pretrained weights: an entry, its name, or a file (any of our
            checkpoints or the authors', see
            :func:`~torchgeo_xscale.checkpoints.loading.resolve`).
        *args: Unused (TorchGeo's builder signature).
        **kwargs: Passed to :class:`~torchgeo_xscale.models.vit.CrossScaleViT`
            (``img_size`` default 224 or the weights', any ``in_chans``,
            ``num_classes``, ``attention``, ``final_norm``...).

    Returns:
        The encoder.
    """
    return build_encoder('base', weights, **kwargs)


def crossscalemae_large_patch16(
    weights: CrossScaleMAELarge16_Weights | Source | None = None,
    *args: Any,
    **kwargs: Any,
) -> CrossScaleViT:
    """Cross-Scale MAE ViT-L/16 encoder.

    If you use this model in your research, please cite
    https://openreview.net/forum?id=5oEVdOd6TV (Tang et al., NeurIPS 2023).

    Args:
        weights: Pretrained weights: an entry, its name, or a file.
        *args: Unused (TorchGeo's builder signature).
        **kwargs: Passed to :class:`~torchgeo_xscale.models.vit.CrossScaleViT`.

    Returns:
        The encoder.
    """
    return build_encoder('large', weights, **kwargs)


def load_pretrained_encoder(
    encoder: XScaleViTEncoder, weights: Source
) -> _IncompatibleKeys:
    """Load pretrained weights into a segmentation encoder (the neck keeps its init).

    Args:
        encoder: The encoder.
        weights: A weights entry, its name, or a file (see
            :func:`~torchgeo_xscale.checkpoints.loading.resolve`).

    Returns:
        Missing and unexpected keys (the neck's are missing).

    Raises:
        ValueError: If the weights do not fit the encoder's architecture.
    """
    resolved = resolve(weights)
    return load_into(
        encoder, resolved.state_dict, resolved.metadata, optional=('neck.',)
    )


def upernet(
    backbone: str = 'xscale_vit_base',
    num_classes: int = 6,
    in_channels: int = 3,
    weights: Source | None = None,
    decoder_channels: int = 512,
    **encoder_options: Any,
) -> smp.UPerNet:
    """SMP's UPerNet on one of our ViTs, optionally with pretrained weights.

    Args:
        backbone: Registered encoder name (``xscale_vit_base``...).
        num_classes: Output classes K.
        in_channels: Input bands.
        weights: Pretrained encoder: a weights entry, its name, or a file (see
            :func:`load_pretrained_encoder`).
        decoder_channels: UPerNet decoder width.
        **encoder_options: Overrides of the encoder's params (``img_size``,
            ``drop_path_rate``, ``embed_dim``, ``vit_depth``...).

    Returns:
        The model; ``model(x)`` maps ``(B, C, H, W)`` to logits ``(B, K, H, W)`` for H,
        W divisible by 32.
    """
    model = build_upernet(
        backbone, num_classes, in_channels, decoder_channels, **encoder_options
    )
    if weights is not None:
        load_pretrained_encoder(model.encoder, weights)
    return model


register_weights(
    'crossscalemae_base_patch16',
    crossscalemae_base_patch16,
    CrossScaleMAEBase16_Weights,
)
register_weights(
    'crossscalemae_large_patch16',
    crossscalemae_large_patch16,
    CrossScaleMAELarge16_Weights,
)
