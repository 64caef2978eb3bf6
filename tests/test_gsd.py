import math

import pytest
import rasterio
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS as RioCRS

from torchgeo_xscale.gsd import GroundUnits, gsd_from_transform, tile_gsd


def expected_geographic_gsd(res_deg: float, lat: float) -> float:
    """Independent reference: geodesic lengths of one pixel on WGS84 (pyproj.Geod)."""
    geod = Geod(ellps='WGS84')
    _, _, dy = geod.inv(0.0, lat - res_deg / 2, 0.0, lat + res_deg / 2)
    _, _, dx = geod.inv(0.0, lat, res_deg, lat)
    return math.sqrt(dx * dy)


def test_projected_utm_10m() -> None:
    transform = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
    assert gsd_from_transform(transform, 'EPSG:32633') == pytest.approx(10.0)


def test_projected_anisotropic_is_geometric_mean() -> None:
    transform = Affine(10.0, 0.0, 0.0, 0.0, -40.0, 0.0)
    assert gsd_from_transform(transform, 'EPSG:32633') == pytest.approx(20.0)


def test_projected_us_survey_feet() -> None:
    transform = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    # EPSG:2263 (NY Long Island) is in US survey feet: 1200 / 3937 m.
    assert gsd_from_transform(transform, 'EPSG:2263') == pytest.approx(1200 / 3937)


@pytest.mark.parametrize('lat', [0.0, 45.0, -60.0, 89.0])
def test_geographic_matches_geodesic(lat: float) -> None:
    res = 0.0001
    transform = Affine(res, 0.0, 10.0, 0.0, -res, lat)
    got = gsd_from_transform(transform, 'EPSG:4326', latitude=lat)
    assert got == pytest.approx(expected_geographic_gsd(res, lat), rel=1e-6)


def test_geographic_at_45_is_about_9_4_m() -> None:
    transform = Affine(0.0001, 0.0, 10.0, 0.0, -0.0001, 45.0)
    got = gsd_from_transform(transform, RioCRS.from_epsg(4326), latitude=45.0)
    # 0.0001 deg: 11.13 m north-south, 7.88 m east-west at 45 N.
    assert got == pytest.approx(math.sqrt(11.1321 * 7.8846), rel=1e-3)


def test_geographic_needs_latitude() -> None:
    transform = Affine(0.0001, 0.0, 10.0, 0.0, -0.0001, 45.0)
    with pytest.raises(ValueError, match='latitude'):
        gsd_from_transform(transform, 'EPSG:4326')


@pytest.mark.parametrize('lat', [89.95, -90.0, 120.0])
def test_geographic_rejects_polar_latitudes(lat: float) -> None:
    transform = Affine(0.0001, 0.0, 10.0, 0.0, -0.0001, 45.0)
    with pytest.raises(ValueError, match=r'89\.9'):
        gsd_from_transform(transform, 'EPSG:4326', latitude=lat)


def test_rotated_transform_rejected() -> None:
    transform = Affine.rotation(10.0) @ Affine.scale(10.0, -10.0)
    with pytest.raises(ValueError, match='north-up'):
        gsd_from_transform(transform, 'EPSG:32633')


def test_missing_crs_rejected() -> None:
    with pytest.raises(ValueError, match='crs is None'):
        gsd_from_transform(Affine.scale(10.0, -10.0), None)


def test_zero_pixel_size_rejected() -> None:
    with pytest.raises(ValueError, match='pixel size'):
        GroundUnits.from_crs('EPSG:32633').gsd(0.0, 10.0)


def test_tile_gsd_uses_tile_centre_latitude() -> None:
    bounds = (10.0, 59.0, 10.01, 61.0)
    got = tile_gsd(bounds, 0.0001, 'EPSG:4326')
    assert got == pytest.approx(expected_geographic_gsd(0.0001, 60.0), rel=1e-6)
    units = GroundUnits.from_crs('EPSG:32633')
    assert tile_gsd((0, 0, 100, 100), (10.0, 10.0), units) == pytest.approx(10.0)


def test_gsd_from_written_raster(utm_raster, geographic_raster) -> None:
    with rasterio.open(utm_raster) as src:
        assert gsd_from_transform(src.transform, src.crs) == pytest.approx(10.0)
    with rasterio.open(geographic_raster) as src:
        lat = (src.bounds.bottom + src.bounds.top) / 2
        got = gsd_from_transform(src.transform, src.crs, latitude=lat)
    assert got == pytest.approx(expected_geographic_gsd(0.0001, lat), rel=1e-6)


def test_gsd_recorder_min_max_exact_median_from_the_sample() -> None:
    import torch

    from torchgeo_xscale.gsd import GSDRecorder

    recorder = GSDRecorder(max_values=5)
    assert recorder.summary() is None and recorder.values() is None
    recorder.update(torch.tensor([[4.0, 8.0], [1.0, 2.0]]))
    recorder.update(torch.tensor([100.0, 0.5, 3.0]))  # only 1 more value kept
    assert len(recorder) == 5
    assert recorder.summary() == {'min': 0.5, 'median': 4.0, 'max': 100.0}
    recorder.reset()
    assert recorder.summary() is None
