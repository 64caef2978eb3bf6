"""Datasets: GeoTIFF rasters with validity masks and GSD, fMoW-RGB, RSSCN7, the demo's data."""

from .example_data import fetch_demo_rasters, fetch_example_rasters
from .fmow import (
    DEFAULT_INDEX_CACHE,
    FMOW_CATEGORIES,
    FMOW_RGB_MEAN,
    FMOW_RGB_STD,
    FMoWInputError,
    FMoWRGB,
)
from .geotiff import GeoTIFFDataset, GroupedGeoTIFFDataset
from .rasters import (
    RasterGroup,
    RasterInfo,
    RasterInputError,
    RasterNotFoundError,
    group_rasters,
    resolve_raster_paths,
    validate_rasters,
)
from .rsscn7 import RSSCN7
from .stats import DEFAULT_STATS_CACHE, band_stats, compute_band_stats

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
    'GroupedGeoTIFFDataset',
    'RasterGroup',
    'RasterInfo',
    'RasterInputError',
    'RasterNotFoundError',
    'band_stats',
    'compute_band_stats',
    'fetch_demo_rasters',
    'fetch_example_rasters',
    'group_rasters',
    'resolve_raster_paths',
    'validate_rasters',
)
