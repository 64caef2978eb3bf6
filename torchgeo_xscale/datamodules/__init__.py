"""Lightning datamodules for Cross-Scale MAE pretraining."""

from .fmow import FMoWDataModule
from .geotiff import GeoTIFFDataModule
from .pretraining import PretrainDataModuleMixin

__all__ = ('FMoWDataModule', 'GeoTIFFDataModule', 'PretrainDataModuleMixin')
