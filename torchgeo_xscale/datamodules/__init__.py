"""Lightning datamodules for Cross-Scale MAE pretraining."""

from .geotiff import GeoTIFFDataModule

__all__ = ('GeoTIFFDataModule',)
