"""Datasets: GeoTIFF rasters with validity masks and GSD, fMoW-RGB, RSSCN7, the demo's data."""

from .example_data import fetch_example_rasters
from .fmow import (
    DEFAULT_INDEX_CACHE,
    FMOW_CATEGORIES,
    FMOW_RGB_MEAN,
    FMOW_RGB_STD,
    FMoWInputError,
    FMoWRGB,
)
from .geotiff import (
    DEFAULT_STATS_CACHE,
    GeoTIFFDataset,
    RasterInputError,
    RasterNotFoundError,
    compute_band_stats,
    resolve_raster_paths,
)
from .rsscn7 import RSSCN7

__all__ = (
    'DEFAULT_INDEX_CACHE',
    'DEFAULT_STATS_CACHE',
    'FMOW_CATEGORIES',
    'FMOW_RGB_MEAN',
    'FMOW_RGB_STD',
    'RSSCN7',
    'FMoWInputError',
    'FMoWRGB',
    'GeoTIFFDataset',
    'RasterInputError',
    'RasterNotFoundError',
    'compute_band_stats',
    'fetch_example_rasters',
    'resolve_raster_paths',
)
