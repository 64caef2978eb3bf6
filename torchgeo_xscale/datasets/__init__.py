"""Datasets: GeoTIFF rasters with validity masks and GSD, and the demo's example data."""

from .example_data import fetch_example_rasters
from .geotiff import (
    DEFAULT_STATS_CACHE,
    GeoTIFFDataset,
    RasterInputError,
    RasterNotFoundError,
    compute_band_stats,
    resolve_raster_paths,
)

__all__ = (
    'DEFAULT_STATS_CACHE',
    'GeoTIFFDataset',
    'RasterInputError',
    'RasterNotFoundError',
    'compute_band_stats',
    'fetch_example_rasters',
    'resolve_raster_paths',
)
