"""Masking strategies: which patches each sample's encoder sees.

:mod:`.base` holds the interface (:class:`MaskInfo`, :class:`MaskStrategy`), the
registry (:func:`register_mask_strategy`, :func:`build_mask_strategy`,
:func:`list_mask_strategies`) and MAE's ``random`` masking. Each other strategy lives
in its own module and registers itself with the ``@register_mask_strategy(name)``
decorator; importing this package imports them, so every name is registered (as
timm's ``models/__init__.py`` imports its model modules):

- :mod:`.colormae`: ``colormae-{green,blue,red,purple}`` (ColorMAE).
- :mod:`.lomar`: ``lomar`` (LoMaR local windows).
- :mod:`.easy_first`: ``easy-first`` (Efficient MAE, P²Dist).

A new strategy is one new module here (a factory decorated with
``@register_mask_strategy('my-name')``) plus its import below.
"""

from .base import (
    MaskInfo,
    MaskStrategy,
    build_mask_strategy,
    choose_targets,
    list_mask_strategies,
    mask_from_scores,
    num_kept_targets,
    num_targets,
    num_visible,
    random_masking,
    register_mask_strategy,
)
from .colormae import COLORS, ColorNoiseMasking, color_noise_bank
from .easy_first import EasyFirstMasking, patch_distance
from .lomar import LocalWindowMasking, fit_window_size, place_windows

__all__ = (
    'COLORS',
    'ColorNoiseMasking',
    'EasyFirstMasking',
    'LocalWindowMasking',
    'MaskInfo',
    'MaskStrategy',
    'build_mask_strategy',
    'choose_targets',
    'color_noise_bank',
    'fit_window_size',
    'list_mask_strategies',
    'mask_from_scores',
    'num_kept_targets',
    'num_targets',
    'num_visible',
    'patch_distance',
    'place_windows',
    'random_masking',
    'register_mask_strategy',
)
