"""Evaluation datasets (evaluation/datasets.py): TorchGeo's and class-folder datasets in
their layouts, band checks, and GeoTIFF held-out tiles (a grid from the raster's
origin, the last tile flush)."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from classification_layouts import (
    CLASSES,
    class_image,
    fake_eurosat,
    fake_resisc45,
    fake_ucmerced,
    fake_whu,
)
from conftest import write_geotiff
from PIL import Image

from torchgeo_xscale.cli import main
from torchgeo_xscale.evaluation import (
    ClassFolder,
    build_classification_dataset,
    prepare_classification,
)
from torchgeo_xscale.evaluation.datasets import load_geotiff_tiles

ORIGIN = (500000.0, 5000000.0)


@pytest.fixture
def odd_raster(tmp_path: Path) -> Path:
    """515 x 403 px at 5 m: no multiple of a 224-px tile on either axis."""
    return write_geotiff(
        tmp_path / 'odd.tif', width=515, height=403, res=5.0, origin=ORIGIN
    )


def test_grid_from_origin_last_tile_flush(odd_raster: Path) -> None:
    tiles = load_geotiff_tiles(
        odd_raster, 224, mean=[0.0] * 3, std=[1.0] * 3, stats_cache=None
    )
    x0, y1 = ORIGIN
    cols = [0, 224, 515 - 224]
    rows = [0, 403 - 224]
    expected = [
        (x0 + 5 * c, y1 - 5 * (r + 224), x0 + 5 * (c + 224), y1 - 5 * r)
        for r in rows
        for c in cols
    ]
    assert tiles.bounds == expected  # multiples of 5 m: exact
    assert bool(tiles.valid.all()) and tiles.gsd.tolist() == [5.0] * 6
    with rasterio.open(odd_raster) as src:
        data = src.read().astype(np.float32)
    for i, (r, c) in enumerate((r, c) for r in rows for c in cols):
        np.testing.assert_array_equal(
            tiles.images[i].numpy(), data[:, r : r + 224, c : c + 224]
        )


def test_no_tile_fits_names_both_sizes(tmp_path: Path, odd_raster: Path) -> None:
    small = write_geotiff(tmp_path / 'small.tif', width=200, height=150, res=5.0)
    with pytest.raises(ValueError, match=r'small\.tif \(200x150 px\).*224x224 px'):
        load_geotiff_tiles(small, 224, stats_cache=None)
    # the held-out strip (64 px of the 515 px) is narrower than a tile
    with pytest.raises(
        ValueError,
        match=r'odd\.tif: no tile of 224 x 224 px fits: the held-out region is '
        r'64 x 403 px \(width x height\)',
    ):
        load_geotiff_tiles(
            odd_raster,
            224,
            holdout_fraction=0.1,
            holdout_patch_size=64,
            stats_cache=None,
        )


def test_eval_retrieval_and_reconstruction_on_odd_raster(
    trained: dict, odd_raster: Path, tmp_path: Path
) -> None:
    """The commands of the issue: 224-px tiles on 515 x 403 px find 6 tiles."""
    common = ['--data', str(odd_raster), '--tile-size', '224', '--scales', '0.5', '1']
    out = tmp_path / 'retrieval'
    argv = ['eval', 'retrieval', '--encoder', str(trained['cross_scale_mae'])]
    assert main([*argv, *common, '--output', str(out)]) == 0
    assert '6 tiles of 224 px' in (out / 'retrieval.md').read_text()
    out = tmp_path / 'reconstruction'
    argv = ['eval', 'reconstruction', '--model', str(trained['cross_scale_mae'])]
    assert main([*argv, *common, '--repeats', '1', '--output', str(out)]) == 0
    assert '6 tiles of 224 px' in (out / 'reconstruction.md').read_text()


def test_torchgeo_datasets_in_their_layouts(tmp_path) -> None:
    resisc = build_classification_dataset(
        'resisc45', fake_resisc45(tmp_path / 'r'), 'train', 32
    )
    assert len(resisc) == 6 and resisc.classes == sorted(CLASSES)
    sample = resisc[0]
    assert (
        sample['image'].shape == (3, 32, 32) and sample['image'].dtype == torch.float32
    )
    assert (
        len(build_classification_dataset('resisc45', tmp_path / 'r', 'test', 32)) == 3
    )
    uc = build_classification_dataset(
        'ucmerced', fake_ucmerced(tmp_path / 'u'), 'test', 32
    )
    assert len(uc) == 3 and uc[0]['image'].shape == (3, 32, 32)
    euro = build_classification_dataset(
        'eurosat', fake_eurosat(tmp_path / 'e'), 'train', 32, in_channels=3
    )
    assert len(euro) == 3 and euro[0]['image'].shape == (3, 32, 32)
    assert build_classification_dataset('eurosat', tmp_path / 'e', 'train', 16)[0][
        'image'
    ].shape == (13, 16, 16)
    with pytest.raises(ValueError, match='dataset='):
        build_classification_dataset('mnist', tmp_path, 'train', 32)


def test_class_folder_split_and_whu(tmp_path) -> None:
    root = fake_whu(tmp_path)
    train = build_classification_dataset('whu-rs19', root, 'train', 32)
    test = build_classification_dataset('whu-rs19', root, 'test', 32)
    assert len(train) == 12 and len(test) == 3  # 4 + 1 of 5 per class
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples}
    assert train.classes == ['Forest', 'Pond', 'Residential']
    again = ClassFolder(root / 'WHU-RS19', 'train', seed=0)
    assert [p for p, _ in again.samples] == [p for p, _ in train.samples]
    with pytest.raises(ValueError, match='split'):
        ClassFolder(root, 'val')
    for split in ('train', 'test'):  # explicit split folders win
        for c in ('a', 'b'):
            (tmp_path / 'f' / split / c).mkdir(parents=True)
            Image.fromarray(class_image(0, 0)).save(
                tmp_path / 'f' / split / c / 'x.png'
            )
    assert len(ClassFolder(tmp_path / 'f', 'test')) == 2


def test_prepare_classification_checks_bands(tmp_path) -> None:
    fake_eurosat(tmp_path)
    splits = prepare_classification('eurosat', tmp_path, 32, in_channels=3)
    assert splits.num_classes == 3 and splits.mean.shape == (3,)
    with pytest.raises(ValueError, match=r'13 bands; .* expects 4 \(in_channels;'):
        prepare_classification('eurosat', tmp_path, 32, in_channels=4)
    # the encoder-facing builders take TorchGeo's name; timm's is refused in one line
    renamed = r'^in_chans was renamed in_channels .*expected in_channels=3$'
    with pytest.raises(ValueError, match=renamed):
        prepare_classification('eurosat', tmp_path, 32, in_chans=3)
    with pytest.raises(ValueError, match=renamed):
        build_classification_dataset('eurosat', tmp_path, 'train', 32, in_chans=3)


def test_geotiff_tiles_stay_in_the_held_out_strip(make_geotiff, tmp_path) -> None:
    raster = make_geotiff(
        tmp_path / 'r.tif',
        width=160,
        height=64,
        nodata=255,
        nodata_region=(0, 64, 152, 160),
    )
    tiles = load_geotiff_tiles(
        raster,
        16,
        stride=8,
        holdout_fraction=0.25,
        holdout_patch_size=32,
        stats_cache=tmp_path / 'stats',
    )
    with rasterio.open(raster) as src:
        cut = (
            src.bounds.right - 32 * src.res[0]
        )  # round(0.25 * 160 / 32) = 1 patch held out
    assert len(tiles) > 0 and all(b[0] >= cut - 1e-6 for b in tiles.bounds)
    assert bool(
        tiles.valid.all()
    )  # the nodata columns were dropped (min_valid_fraction=1)
    assert tiles.images.shape[1:] == (3, 16, 16) and tiles.gsd.shape == (len(tiles),)
    everything = load_geotiff_tiles(
        raster,
        16,
        holdout_fraction=0.0,
        min_valid_fraction=0.0,
        max_tiles=5,
        stats_cache=tmp_path / 'stats',
    )
    assert len(everything) == 5
    with pytest.raises(ValueError, match='too small'):
        load_geotiff_tiles(
            raster,
            16,
            holdout_fraction=0.6,
            holdout_patch_size=64,
            stats_cache=tmp_path / 'stats',
        )
