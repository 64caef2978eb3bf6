"""The bad-input suite: every case ends in one clear line naming the file or argument
and what was expected, or (where skipping is right) a logged warning and a count.

Cases of other modules' inputs live beside them and are listed in the README's
"Failure modes": weights hashes and pickles (test_weights.py, test_convert.py), ISPRS
labels and UPerNet batch size (test_segmentation.py), fMoW JSON/images (test_fmow.py),
disk full while writing (test_reliability.py).
"""

import logging
from pathlib import Path

import pytest
import rasterio
import torch
from affine import Affine
from conftest import TINY_MODEL

from torchgeo_xscale.cli import main
from torchgeo_xscale.datamodules import GeoTIFFDataModule
from torchgeo_xscale.datasets import (
    GeoTIFFDataset,
    RasterInputError,
    RasterNotFoundError,
)
from torchgeo_xscale.models import CrossScaleMAE
from torchgeo_xscale.tasks import CrossScaleMAETask

TINY = TINY_MODEL


def dataset(paths, tmp_path: Path, **kwargs) -> GeoTIFFDataset:
    return GeoTIFFDataset(paths, **kwargs)


def datamodule(paths, tmp_path, **kwargs) -> GeoTIFFDataModule:
    kwargs.setdefault('stats_cache', tmp_path / 'stats')
    kwargs.setdefault('img_size', 32)
    kwargs.setdefault('batch_size', 4)
    return GeoTIFFDataModule(paths, **kwargs)


def assert_names(err: pytest.ExceptionInfo, name: str) -> None:
    message = str(err.value)
    assert name in message and '\n' not in message, message


def test_zero_byte_file(tmp_path) -> None:
    path = tmp_path / 'empty.tif'
    path.write_bytes(b'')
    with pytest.raises(RasterInputError, match='0 bytes') as err:
        dataset(path, tmp_path)
    assert_names(err, 'empty.tif')


def test_truncated_file(utm_raster, tmp_path) -> None:
    data = utm_raster.read_bytes()
    path = tmp_path / 'truncated.tif'
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(RasterInputError, match='truncated') as err:
        dataset(path, tmp_path)
    assert_names(err, 'truncated.tif')


def test_not_a_raster(tmp_path) -> None:
    path = tmp_path / 'text.tif'
    path.write_text('not a GeoTIFF at all')
    with pytest.raises(RasterInputError, match='not a readable raster') as err:
        dataset(tmp_path, tmp_path)
    assert_names(err, 'text.tif')


def test_no_crs(make_geotiff, tmp_path) -> None:
    path = make_geotiff(tmp_path / 'nocrs.tif', crs=None)
    with pytest.raises(RasterInputError, match='no CRS') as err:
        dataset(path, tmp_path)
    assert_names(err, 'nocrs.tif')


def test_band_count_mismatch_between_files(make_geotiff, tmp_path) -> None:
    make_geotiff(tmp_path / 'x' / 'a.tif', bands=3)
    make_geotiff(tmp_path / 'x' / 'b.tif', bands=4, origin=(500640.0, 5000000.0))
    with pytest.raises(RasterInputError, match='expected 3') as err:
        dataset(tmp_path / 'x', tmp_path)
    assert_names(err, 'b.tif')


def test_in_channels_mismatch(utm_raster, tmp_path) -> None:
    with pytest.raises(RasterInputError, match='expected in_channels=4') as err:
        dataset(utm_raster, tmp_path, in_channels=4)
    assert_names(err, 'utm.tif')


def test_band_out_of_range(utm_raster, tmp_path) -> None:
    with pytest.raises(RasterInputError, match=r'1\.\.3') as err:
        dataset(utm_raster, tmp_path, bands=[4])
    assert_names(err, 'utm.tif')


def test_no_rasters_in_folder(tmp_path) -> None:
    folder = tmp_path / 'nothing'
    folder.mkdir()
    (folder / 'readme.md').write_text('no rasters here')
    with pytest.raises(RasterNotFoundError, match='no GeoTIFF') as err:
        dataset(folder, tmp_path)
    assert_names(err, 'nothing')
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError, match=r'missing\.tif'):
        dataset(tmp_path / 'missing.tif', tmp_path)


def test_wrong_stats_length(utm_raster, tmp_path) -> None:
    dm = datamodule(utm_raster, tmp_path, mean=[0.0, 0.0], std=[1.0, 1.0])
    with pytest.raises(RasterInputError, match='mean: has 2 values; expected 3'):
        dm.setup('fit')


def test_raster_smaller_than_patch(make_geotiff, tmp_path) -> None:
    path = make_geotiff(tmp_path / 'tiny.tif', width=24, height=40)
    dm = datamodule(path, tmp_path, img_size=32)
    with pytest.raises(RasterInputError, match='32x32 px') as err:
        dm.setup('fit')
    assert_names(err, 'tiny.tif (24x40 px)')


def test_datamodule_in_channels_mismatch(utm_raster, tmp_path) -> None:
    with pytest.raises(RasterInputError, match='expected in_channels=1') as err:
        datamodule(utm_raster, tmp_path, in_channels=1).setup('fit')
    assert_names(err, 'utm.tif')


# --- grids -------------------------------------------------------------------------


def test_geographic_raster_near_pole(make_geotiff, tmp_path) -> None:
    path = make_geotiff(
        tmp_path / 'arctic.tif', crs='EPSG:4326', origin=(0.0, 89.999), res=0.00001
    )
    with pytest.raises(RasterInputError, match=r'89\.9') as err:
        dataset(path, tmp_path)
    assert_names(err, 'arctic.tif')


def test_rotated_transform_is_warped_with_a_warning(
    make_geotiff, tmp_path, caplog
) -> None:
    path = make_geotiff(tmp_path / 'rotated.tif')
    with rasterio.open(path, 'r+') as src:
        src.transform = Affine.rotation(30) * src.transform
    with caplog.at_level(logging.WARNING):
        ds = dataset(path, tmp_path)
    assert 'rotated.tif' in caplog.text and 'rotated/sheared' in caplog.text
    sample = ds[ds.bounds]
    assert float(sample['gsd']) == pytest.approx(10 * (3**0.5 / 2 + 0.5), rel=1e-3)


@pytest.mark.parametrize(('width', 'height'), [(1, 1), (64, 1)])
def test_one_pixel_and_one_row_rasters(make_geotiff, tmp_path, width, height) -> None:
    path = make_geotiff(tmp_path / f'r{width}x{height}.tif', width=width, height=height)
    with pytest.raises(RasterInputError, match='smaller than the patch') as err:
        datamodule(path, tmp_path).setup('fit')
    assert_names(err, f'({width}x{height} px)')


def test_all_nodata_raster(make_geotiff, tmp_path) -> None:
    path = make_geotiff(
        tmp_path / 'empty_data.tif', nodata=255, nodata_region=(0, 64, 0, 64)
    )
    with pytest.raises(RasterInputError, match='no valid pixels') as err:
        datamodule(path, tmp_path).setup('fit')
    assert_names(err, 'empty_data.tif')


def test_mixed_crs_folder_is_warped_to_the_first(make_geotiff, tmp_path) -> None:
    make_geotiff(tmp_path / 'mixed' / 'a.tif')
    make_geotiff(tmp_path / 'mixed' / 'b.tif', crs='EPSG:4326', origin=(15.0, 45.2))
    ds = dataset(tmp_path / 'mixed', tmp_path)
    assert len(ds.index) == 2 and ds.crs.to_epsg() == 32633


@pytest.mark.parametrize('dtype', ['uint16', 'int16', 'float32'])
def test_integer_and_float_inputs_train(make_geotiff, tmp_path, dtype) -> None:
    path = make_geotiff(
        tmp_path / f'{dtype}.tif', dtype=dtype, nodata=-9999 if dtype != 'uint16' else 0
    )
    dm = datamodule(path, tmp_path, batch_size=2, length=2)
    dm.setup('fit')
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    out = CrossScaleMAE(**TINY)(
        batch['views'], batch['view_gsd'], batch['view_valid'], batch['sample_weight']
    )
    assert torch.isfinite(out.loss)


# --- model, weights, config ---------------------------------------------------------


def test_views_of_the_wrong_size_or_band_count() -> None:
    model = CrossScaleMAE(**TINY)
    with pytest.raises(
        ValueError, match=r'4 bands of 32x32 px; the model expects 3 bands'
    ):
        model(torch.zeros(1, 2, 4, 32, 32))
    with pytest.raises(
        ValueError, match=r'3 bands of 48x48 px; the model expects 3 bands of 32x32'
    ):
        model(torch.zeros(1, 2, 3, 48, 48))


def test_checkpoint_of_another_model_size(tmp_path) -> None:
    other = CrossScaleMAETask(**{**TINY, 'embed_dim': 64, 'num_heads': 4})
    path = tmp_path / 'other.pth'
    torch.save(other.model.encoder.state_dict(), path)
    with pytest.raises(
        ValueError, match=r'other\.pth.*do not fit.*shape \(1, 1, 64\)'
    ) as err:
        CrossScaleMAETask(**TINY, weights=str(path))
    assert '\n' not in str(err.value)


def test_band_count_mismatch_vs_weights(tmp_path) -> None:
    rgb = CrossScaleMAETask(**TINY)
    path = tmp_path / 'rgb.pth'
    torch.save(rgb.model.encoder.state_dict(), path)
    with pytest.raises(
        ValueError,
        match=r'patch_embed\.proj\.weight has shape \(32, 3, 8, 8\), the model \(32, 4, 8, 8\)',
    ):
        CrossScaleMAETask(**TINY, in_channels=4, weights=str(path))


def test_unknown_config_key(tmp_path, capsys, utm_raster) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                'fit',
                '--model',
                'torchgeo_xscale.tasks.CrossScaleMAETask',
                '--model.init_args.mask_ration',
                '0.5',
                '--data',
                'torchgeo_xscale.datamodules.GeoTIFFDataModule',
                '--data.init_args.paths',
                str(utm_raster),
            ]
        )
    assert exit_info.value.code != 0
    assert 'mask_ration' in capsys.readouterr().err


def test_bad_option_values() -> None:
    with pytest.raises(ValueError, match="mask_strategy='nope'"):
        CrossScaleMAE(**TINY, mask_strategy='nope')
    with pytest.raises(ValueError, match="attention='nope'"):
        CrossScaleMAE(**TINY, attention='nope')
    with pytest.raises(ValueError, match=r'mask_ratio=1\.0'):
        CrossScaleMAE(**TINY, mask_ratio=1.0)(torch.zeros(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match='min_valid_fraction'):
        GeoTIFFDataModule('x.tif', min_valid_fraction=2.0)


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        ({'batch_size': 0}, 'batch_size=0 is invalid; expected >= 1'),
        ({'batch_size': -2}, 'batch_size=-2 is invalid'),
        ({'length': 0}, 'length=0 is invalid; expected >= 1 tiles per epoch'),
        ({'group_sampling': 'most'}, "group_sampling='most'"),
    ],
)
def test_datamodule_counts_are_checked_where_they_enter(utm_raster, kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        GeoTIFFDataModule(utm_raster, **kwargs)
    assert '\n' not in str(err.value)


def test_band_count_against_in_channels_before_step_0(make_geotiff, tmp_path) -> None:
    """4-band files, a 3-band model: stopped at setup naming a file (today: a shape
    error of the model at step 0 that names no file)."""
    path = make_geotiff(tmp_path / 'r' / 'four.tif', bands=4, width=64, height=64)
    args = ['fit', '--model', 'torchgeo_xscale.tasks.CrossScaleMAETask']
    args += ['--data', 'torchgeo_xscale.datamodules.GeoTIFFDataModule']
    args += ['--data.paths', str(tmp_path / 'r'), '--data.img_size', '32']
    args += ['--data.stats_cache', str(tmp_path / 'stats')]
    args += ['--trainer.default_root_dir', str(tmp_path / 'run')]
    args += ['--trainer.accelerator', 'cpu', '--trainer.logger', 'false']
    for key, value in TINY.items():
        args += [f'--model.{key}', str(value)]
    with pytest.raises(ValueError, match='in_channels=3') as err:
        main(args)
    assert_names(err, str(path))
    assert 'in_channels 4' in str(err.value)
    assert not list((tmp_path / 'run').rglob('*.ckpt'))
