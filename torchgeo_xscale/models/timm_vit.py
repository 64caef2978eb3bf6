"""timm model names for any ViT shape: ``vit_xscale_e{dim}_d{depth}_h{heads}_p{patch}_{img}``.

:class:`torchgeo.tasks.MAE` takes a timm model *name*; :func:`register_timm_vit`
registers one (timm's ``@register_model``) for the shape of any of our encoders, so
the equal-budget study can train TorchGeo's MAE on the same ViT, and
:func:`register_timm_name` registers it again when a checkpoint names it.
"""

import re
import sys
from typing import Any

import timm
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

#: A list: timm appends the names that :func:`register_timm_vit` registers here.
__all__ = ['TIMM_VIT_NAME', 'register_timm_name', 'register_timm_vit']

#: Pattern of the timm names made by :func:`register_timm_vit`.
TIMM_VIT_NAME = re.compile(r'vit_xscale_e(\d+)_d(\d+)_h(\d+)_p(\d+)_(\d+)$')


def register_timm_vit(
    embed_dim: int, depth: int, num_heads: int, patch_size: int, img_size: int
) -> str:
    """Register (once) a timm ViT name with the given dimensions; return the name.

    ``torchgeo.tasks.MAE`` takes a timm model *name*; this makes one for any ViT
    shape, e.g. ``vit_xscale_e128_d4_h4_p8_64``. The checkpoint loaders re-register
    such names when they meet them in a checkpoint (:func:`register_timm_name`).

    Args:
        embed_dim: Width.
        depth: Blocks.
        num_heads: Attention heads.
        patch_size: Patch side.
        img_size: Input side.

    Returns:
        The registered timm model name.
    """
    name = f'vit_xscale_e{embed_dim}_d{depth}_h{num_heads}_p{patch_size}_{img_size}'
    if timm.is_model(name):
        return name
    dims = dict(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
    )

    def builder(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        if pretrained:
            raise ValueError(f'pretrained=True: {name} has no weights')
        for key in ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir'):
            kwargs.pop(key, None)
        return VisionTransformer(**(dims | kwargs))

    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = __name__
    setattr(sys.modules[__name__], name, builder)
    register_model(builder)
    return name


def register_timm_name(name: str) -> bool:
    """Register *name* if it is a :func:`register_timm_vit` name not yet known.

    Args:
        name: A timm model name.

    Returns:
        True if *name* is (now) a timm model.
    """
    match = TIMM_VIT_NAME.match(name)
    if match and not timm.is_model(name):
        register_timm_vit(*(int(g) for g in match.groups()))
    return bool(timm.is_model(name))
