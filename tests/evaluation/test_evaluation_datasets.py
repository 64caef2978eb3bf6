"""GeoTIFF evaluation tiles: a grid from the raster's origin, the last tile flush."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import write_geotiff

from torchgeo_xscale.cli import main
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
