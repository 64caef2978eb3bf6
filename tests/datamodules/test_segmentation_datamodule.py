"""GeoTIFFSegmentationDataModule (datamodules/segmentation.py) on labelled rasters at
three GSDs: tiles are the files' windows (image and mask, no resampling) at their own
GSD, every group sampled, splits disjoint per group, bad pairs a one-line error."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from conftest import native_gsd, write_geotiff
from isprs_layout import tiny_task
from labelled_layout import GROUPS, NUM_CLASSES, RASTERS, make_labelled_folder
from lightning.pytorch import Trainer

from torchgeo_xscale.datamodules import GeoTIFFSegmentationDataModule
from torchgeo_xscale.datasets import RasterInputError
from torchgeo_xscale.transforms import normalize, scale_to_ratio


@pytest.fixture(scope='module')
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_labelled_folder(tmp_path_factory.mktemp('labelled'))


def datamodule(folder: Path, **kwargs: object) -> GeoTIFFSegmentationDataModule:
    args: dict[str, object] = dict(
        num_classes=NUM_CLASSES, patch_size=32, batch_size=4, stats_cache=None
    )
    return GeoTIFFSegmentationDataModule(
        folder / 'images', folder / 'masks', **{**args, **kwargs}
    )


def read_window(path: str, x: slice, y: slice) -> np.ndarray:
    """The pixels of the tile ``(x, y)``, read directly (whole-pixel offsets only)."""
    with rasterio.open(path) as src:
        col = (x.start - src.bounds.left) / src.res[0]
        row = (src.bounds.top - y.stop) / src.res[1]
        width = (x.stop - x.start) / src.res[0]
        height = (y.stop - y.start) / src.res[1]
        for value in (col, row, width, height):
            assert abs(value - round(value)) < 1e-6, (path, x, y)
        window = rasterio.windows.Window(round(col), round(row), 32, 32)
        assert (round(width), round(height)) == (32, 32)
        return src.read(window=window)


def test_tiles_are_windows_of_image_and_mask_at_their_own_gsd(folder: Path) -> None:
    dm = datamodule(folder)
    dm.setup('fit')
    assert [name for name, _ in dm.group_info()] == list(GROUPS)
    train = list(dm.train_sampler)  # type: ignore[arg-type]
    assert {g for g, _ in train} == {0, 1, 2}  # every group sampled
    dm.setup('test')
    splits = [
        (dm.train_dataset, train),
        (dm.val_dataset, dm.val_sampler),
        (dm.test_dataset, dm.test_sampler),
    ]
    pairs = dict(dm.pairs)
    for dataset, tiles in splits:
        assert tiles
        for group, (x, y) in tiles:  # type: ignore[union-attr]
            sample = dataset[(group, (x, y))]  # type: ignore[index]
            (image_path,) = sample['files'].split(';')
            assert image_path in dm.groups[group].files
            image = read_window(image_path, x, y)
            mask = read_window(pairs[image_path], x, y)[0]
            assert torch.equal(sample['image'], torch.from_numpy(image).float())
            assert torch.equal(sample['mask'], torch.from_numpy(mask).long())
            assert sample['mask'].dtype == torch.int64
            assert int(sample['group']) == group
            assert float(sample['gsd']) == pytest.approx(
                native_gsd(image_path), rel=0.01
            )
    assert dm.gsd_range is not None
    assert dm.gsd_range['min'] == pytest.approx(0.25)
    assert dm.gsd_range['max'] > 900  # 0.01 degree at 45 N


def test_splits_are_disjoint_per_group_and_test_restricts_to_a_group(
    folder: Path,
) -> None:
    dm = datamodule(folder, val_fraction=0.1, test_fraction=0.2)
    dm.setup('fit')
    dm.setup('test')
    boxes = {
        name: [
            (g, shapely.box(x.start, y.start, x.stop, y.stop)) for g, (x, y) in tiles
        ]
        for name, tiles in (
            ('train', list(dm.train_sampler)),  # type: ignore[arg-type]
            ('val', dm.val_sampler),
            ('test', dm.test_sampler),
        )
    }
    for group, (train, val, test) in enumerate(dm.splits):
        assert (
            {g for g, _ in boxes['val']} == {g for g, _ in boxes['test']} == {0, 1, 2}
        )
        for region in (val, test):
            assert train.intersection(region).area == pytest.approx(0, abs=1e-9)
        assert val.intersection(test).area == pytest.approx(0, abs=1e-9)
        inside = {'train': train, 'val': val, 'test': test}
        for name, tiles in boxes.items():
            for g, box in tiles:
                if g == group:  # each tile lies in its own split's region
                    grown = inside[name].buffer(1e-6 * box.length)
                    assert grown.contains(box), (name, g)
    # deterministic: the same splits and held-out tiles again
    again = datamodule(folder, val_fraction=0.1, test_fraction=0.2)
    again.setup('test')
    assert again.test_tiles == dm.test_tiles and again.val_tiles == dm.val_tiles
    again.test_group = 1
    again.setup('test')
    assert again.test_sampler and {g for g, _ in again.test_sampler} == {1}  # type: ignore[union-attr]


def test_batches_normalised_at_the_scale_ratio(folder: Path) -> None:
    dm = datamodule(folder, scale_ratio=0.5, mean=[60.0] * 3, std=[40.0] * 3)
    dm.setup('fit')
    batch = next(iter(dm.train_dataloader()))
    raw = batch['image'].clone()
    mask = batch['mask'].clone()
    out = dm.on_after_batch_transfer(batch, 0)  # no trainer: not training, no flips
    expected = scale_to_ratio(normalize(raw, dm.mean, dm.std), 0.5)
    torch.testing.assert_close(out['image'], expected)
    assert torch.equal(out['mask'], mask) and out['gsd'].shape == (4,)


def test_masks_next_to_the_images_with_a_suffix(tmp_path: Path) -> None:
    _, crs, res, origin, width, height = RASTERS[0]
    grid = dict(width=width, height=height, crs=crs, res=res, origin=origin)
    write_geotiff(tmp_path / 'a.tif', **grid)
    write_geotiff(
        tmp_path / 'a_mask.tif', bands=1, **grid, data=np.zeros((1, height, width))
    )
    dm = GeoTIFFSegmentationDataModule(
        tmp_path, mask_suffix='_mask', patch_size=32, stats_cache=None
    )
    assert dm.group_info() == [('EPSG:32632 0.25 m', 0.25)]  # the mask is no image
    assert dm.pairs == [(str(tmp_path / 'a.tif'), str(tmp_path / 'a_mask.tif'))]


def _bad_folder(tmp_path: Path, folder: Path) -> Path:
    root = tmp_path / 'bad'
    shutil.copytree(folder, root)
    return root


@pytest.mark.parametrize(
    ('problem', 'match'),
    [
        ('missing', r'images/coarse\.tif: no mask coarse\.tif in .*masks'),
        ('orphan', r'masks/extra\.tif: no image extra\.tif'),
        (
            'res',
            r'masks/coarse\.tif: mask grid .* differs from its image .*images/coarse\.tif',
        ),
        (
            'shifted',
            r'masks/coarse\.tif: mask grid .* differs from its image .*images/coarse\.tif',
        ),
        (
            'crs',
            r'masks/coarse\.tif: mask grid \(EPSG:32633.* differs from its image .*images/coarse\.tif \(EPSG:4326',
        ),
        (
            'size',
            r'masks/coarse\.tif: mask grid .* 127 x 96 px.* differs from its image .*images/coarse\.tif .*128 x 96 px',
        ),
        (
            'bands',
            r'masks/coarse\.tif: mask has 3 bands; expected 1 band .*images/coarse\.tif',
        ),
        ('float', r'masks/coarse\.tif: mask dtype float32; expected integer'),
        (
            'class',
            r'masks/coarse\.tif: mask has class 9; expected 0\.\.3 \(num_classes=4\)',
        ),
    ],
)
def test_bad_pairs_are_one_line_errors(
    problem: str, match: str, tmp_path: Path, folder: Path
) -> None:
    root = _bad_folder(tmp_path, folder)
    mask = root / 'masks' / 'coarse.tif'
    _, crs, res, (x, y), width, height = RASTERS[2]
    grid = dict(width=width, height=height, crs=crs, res=res, origin=(x, y))
    zeros = np.zeros((1, height, width), dtype=np.uint8)
    if problem == 'missing':
        mask.unlink()
    elif problem == 'orphan':
        write_geotiff(root / 'masks' / 'extra.tif', bands=1, **grid, data=zeros)
    elif problem == 'res':
        write_geotiff(mask, bands=1, **{**grid, 'res': 0.02}, data=zeros)
    elif problem == 'shifted':
        write_geotiff(mask, bands=1, **{**grid, 'origin': (x + 0.01, y)}, data=zeros)
    elif problem == 'crs':
        write_geotiff(
            mask, bands=1, **{**grid, 'crs': 'EPSG:32633', 'res': 10.0}, data=zeros
        )
    elif problem == 'size':
        write_geotiff(mask, bands=1, **{**grid, 'width': 127}, data=zeros[..., :127])
    elif problem == 'bands':
        write_geotiff(mask, bands=3, **grid, data=zeros.repeat(3, 0))
    elif problem == 'float':
        write_geotiff(mask, bands=1, dtype='float32', **grid, data=zeros)
    elif problem == 'class':
        write_geotiff(mask, bands=1, **grid, data=zeros + 9)
    with pytest.raises(RasterInputError, match=match) as err:
        datamodule(root).setup('fit')
    assert '\n' not in str(err.value)


@pytest.mark.parametrize(
    ('width', 'height', 'match'),
    [
        (64, 64, r'a\.tif: 64 px along its longer side; expected at least 96 px'),
        (200, 20, r'a\.tif: 200 x 20 px; expected at least 32 px on each side'),
    ],
)
def test_rasters_too_small_to_split_say_what_fits(
    width: int, height: int, match: str, tmp_path: Path
) -> None:
    grid = dict(width=width, height=height, crs='EPSG:32632', res=1.0)
    write_geotiff(tmp_path / 'images' / 'a.tif', **grid)
    zeros = np.zeros((1, height, width))
    write_geotiff(tmp_path / 'masks' / 'a.tif', bands=1, **grid, data=zeros)
    with pytest.raises(RasterInputError, match=match):
        datamodule(tmp_path).setup('fit')


def test_num_classes_of_data_and_model_must_agree(folder: Path, tmp_path: Path) -> None:
    trainer = Trainer(
        max_steps=1,
        accelerator='cpu',
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match='data num_classes=4 but model num_classes=6'):
        trainer.fit(tiny_task(), datamodule=datamodule(folder))
