"""Lightning datamodules: pretraining (GeoTIFF, fMoW) and the ISPRS scale protocol.

Configs name them by these short class paths
(``torchgeo_xscale.datamodules.GeoTIFFDataModule``...).
"""

from .fmow import FMoWDataModule
from .geotiff import GeoTIFFDataModule
from .isprs import ScaledPotsdam2DDataModule, ScaledVaihingen2DDataModule, TileCrops
from .pretraining import PretrainDataModuleMixin

__all__ = (
    'FMoWDataModule',
    'GeoTIFFDataModule',
    'PretrainDataModuleMixin',
    'ScaledPotsdam2DDataModule',
    'ScaledVaihingen2DDataModule',
    'TileCrops',
)
