"""Raster discovery, validation and grouping by native grid (datasets/rasters.py)."""

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS

from torchgeo_xscale.datasets import (
    GeoTIFFDataset,
    RasterInputError,
    group_rasters,
    resolve_raster_paths,
)


def test_symlink_loops_neither_hang_nor_repeat_files(make_geotiff, tmp_path) -> None:
    """Links back into visited folders (two of them: 2^40 paths for glob) end the
    walk; a file reached through several links is listed once."""
    root = tmp_path / 'archive'
    a = make_geotiff(root / 'a' / 'one.tif', width=32, height=32)
    make_geotiff(root / 'b' / 'two.TIFF', width=32, height=32)
    os.symlink('..', root / 'a' / 'up')  # a/up -> archive
    os.symlink('../a', root / 'b' / 'to_a')  # b/to_a -> a
    os.symlink('..', root / 'b' / 'up')
    os.symlink(root / 'a' / 'one.tif', root / 'b' / 'alias.tif')  # a file link
    found = resolve_raster_paths(root)
    assert sorted(os.path.realpath(p) for p in found) == sorted(
        os.path.realpath(p) for p in (a, root / 'b' / 'two.TIFF')
    )
    assert len(resolve_raster_paths(str(root / '**' / '*.tif'))) == 1
    assert len(resolve_raster_paths([root, a, root / 'b'])) == 2
    assert len(GeoTIFFDataset(root).index) == 2


def test_upper_and_lower_case_extensions(make_geotiff, tmp_path) -> None:
    names = ['a.tif', 'b.TIF', 'c.tiff', 'd.TiFf']
    for i, name in enumerate(names):
        make_geotiff(tmp_path / 'r' / name, width=16, height=16, seed=i)
    (tmp_path / 'r' / 'e.jpg').write_bytes(b'not a raster')
    assert [Path(p).name for p in resolve_raster_paths(tmp_path / 'r')] == names


def test_glob_patterns(make_geotiff, tmp_path) -> None:
    make_geotiff(tmp_path / 'g' / 'x' / 'a.tif', width=16, height=16)
    make_geotiff(tmp_path / 'g' / 'b.tif', width=16, height=16)
    make_geotiff(tmp_path / 'g' / '.hidden.tif', width=16, height=16)
    names = lambda p: sorted(Path(f).name for f in resolve_raster_paths(p))  # noqa: E731
    assert names(str(tmp_path / 'g' / '*.tif')) == ['b.tif']
    assert names(str(tmp_path / 'g' / '**' / '*.tif')) == ['a.tif', 'b.tif']
    assert names(str(tmp_path / 'g' / '*' / '*.tif')) == ['a.tif']


def test_gcp_only_raster_is_named(tmp_path) -> None:
    """Today: ``CRSError: Invalid projection: :`` from TorchGeo, no file named."""
    path = tmp_path / 'gcps.tif'
    corners = [(0, 0), (0, 64), (64, 0), (64, 64)]
    gcps = [
        GroundControlPoint(row, col, 5e5 + 10 * col, 5e6 - 10 * row)
        for row, col in corners
    ]
    profile = dict(driver='GTiff', width=64, height=64, count=1, dtype='uint8')
    with rasterio.open(path, 'w', **profile) as dst:
        dst.gcps = (gcps, CRS.from_epsg(32633))
        dst.write(np.ones((1, 64, 64), 'uint8'))
    with pytest.raises(RasterInputError, match='ground control points') as err:
        GeoTIFFDataset(path)
    message = str(err.value)
    assert 'gcps.tif' in message and 'gdalwarp' in message and '\n' not in message


def test_group_rasters_by_crs_and_resolution(make_geotiff, tmp_path) -> None:
    folder = tmp_path / 'mixed'
    make_geotiff(folder / 'a.tif', res=10.0)
    make_geotiff(folder / 'b.tif', res=10.05, origin=(501000.0, 5e6))  # within 1 %
    make_geotiff(folder / 'c.tif', res=0.5)
    make_geotiff(folder / 'd.tif', res=10.0, crs='EPSG:32632')
    make_geotiff(folder / 'e.tif', crs='EPSG:4326', res=0.001)
    groups = group_rasters(folder)
    assert [[Path(f).name for f in g.files] for g in groups] == [
        ['c.tif'],
        ['a.tif', 'b.tif'],
        ['d.tif'],
        ['e.tif'],
    ]
    assert [g.res for g in groups[:3]] == [(0.5, 0.5), (10.0, 10.0), (10.0, 10.0)]
    assert groups[1].name == 'EPSG:32633 10 m' and groups[2].crs.to_epsg() == 32632
    assert groups[3].gsd == pytest.approx(95.0, rel=0.05)  # 0.001 deg at 45 N
    strict = group_rasters(folder, rtol=0.001)
    assert len(strict) == 5  # b.tif gets its own grid
    dataset = groups[1].dataset()
    assert dataset.res == (10.0, 10.0) and len(dataset.index) == 2
    with pytest.raises(ValueError, match=r'rtol=0\.6'):
        group_rasters(folder, rtol=0.6)
