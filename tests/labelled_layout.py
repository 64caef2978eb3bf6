"""A folder of labelled GeoTIFFs at three GSDs (images/ and masks/ of the same names),
shared by the GeoTIFF segmentation datamodule and scale-study tests."""

from pathlib import Path

import numpy as np
from conftest import write_geotiff

#: ``(name, crs, res, origin, width, height)``: 0.25 m UTM 32N, 10 m UTM 33N, 0.01
#: degree EPSG:4326; origins on whole pixels of each grid.
RASTERS = (
    ('aerial', 'EPSG:32632', 0.25, (500000.0, 5500000.0), 160, 96),
    ('sentinel2', 'EPSG:32633', 10.0, (400000.0, 5000000.0), 96, 128),
    ('coarse', 'EPSG:4326', 0.01, (10.0, 45.0), 128, 96),
)
#: The groups' names, finest first, as RasterGroup.name writes them.
GROUPS = ('EPSG:32632 0.25 m', 'EPSG:32633 10 m', 'EPSG:4326 940 m')
NUM_CLASSES = 4


def class_pattern(height: int, width: int, shift: int) -> np.ndarray:
    """Diagonal stripes of 8 px, classes ``0..3``: every window's labels are known."""
    rows, cols = np.arange(height)[:, None], np.arange(width)[None]
    return ((rows // 8 + cols // 8 + shift) % NUM_CLASSES).astype(np.uint8)


def make_labelled_folder(root: Path) -> Path:
    """``root/images/<name>.tif`` (3-band uint8, brightness following the class) and
    ``root/masks/<name>.tif`` (uint8 classes) for each of :data:`RASTERS`."""
    for i, (name, crs, res, origin, width, height) in enumerate(RASTERS):
        cls = class_pattern(height, width, i)
        noise = np.random.default_rng(i).integers(0, 30, (3, height, width))
        image = (cls[None] * 50 + noise).astype(np.uint8)
        grid = dict(width=width, height=height, crs=crs, res=res, origin=origin)
        write_geotiff(root / 'images' / f'{name}.tif', data=image, **grid)
        write_geotiff(root / 'masks' / f'{name}.tif', bands=1, data=cls[None], **grid)
    return root
