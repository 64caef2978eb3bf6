"""Masking strategies from the seed papers, registered by name in :mod:`..masking`.

- :mod:`.colormae`: ``colormae-{green,blue,red,purple}`` (ColorMAE).
- :mod:`.lomar`: ``lomar`` (LoMaR local windows).
- :mod:`.easy_first`: ``easy-first`` (Efficient MAE, P²Dist).
"""

from .colormae import COLORS, ColorNoiseMasking, color_noise_bank
from .easy_first import EasyFirstMasking, patch_distance
from .lomar import LocalWindowMasking, fit_window_size, place_windows

__all__ = (
    'COLORS',
    'ColorNoiseMasking',
    'EasyFirstMasking',
    'LocalWindowMasking',
    'color_noise_bank',
    'fit_window_size',
    'patch_distance',
    'place_windows',
)
