"""Lightning datamodules for Cross-Scale MAE pretraining."""

from .fmow import FMoWDataModule
from .geotiff import GeoTIFFDataModule

__all__ = ('FMoWDataModule', 'GeoTIFFDataModule')
