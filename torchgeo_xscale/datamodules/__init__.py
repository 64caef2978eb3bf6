"""Lightning datamodules: pretraining, ISPRS scale protocol, labelled GeoTIFFs.

Configs name them by these short class paths
(``torchgeo_xscale.datamodules.GeoTIFFDataModule``...).
"""

from .fmow import FMoWDataModule
from .geotiff import GeoTIFFDataModule
from .isprs import ScaledPotsdam2DDataModule, ScaledVaihingen2DDataModule, TileCrops
from .pretraining import PretrainDataModuleMixin
from .segmentation import GeoTIFFSegmentationDataModule, LabelledRasters, MaskRaster

__all__ = (
    'FMoWDataModule',
    'GeoTIFFDataModule',
    'GeoTIFFSegmentationDataModule',
    'LabelledRasters',
    'MaskRaster',
    'PretrainDataModuleMixin',
    'ScaledPotsdam2DDataModule',
    'ScaledVaihingen2DDataModule',
    'TileCrops',
)
