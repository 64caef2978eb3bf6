"""``xscale eval retrieval/reconstruction`` on a folder of two native grids: per group."""

import csv
from pathlib import Path

import pytest
from conftest import write_geotiff

from torchgeo_xscale.cli import main
from torchgeo_xscale.evaluation.datasets import group_members, load_geotiff_tiles


@pytest.fixture
def two_grids(tmp_path: Path) -> Path:
    """0.5 m UTM 33N (96 x 64 px: 6 tiles of 32) and 10 m UTM 34N (64 x 64: 4 tiles)."""
    folder = tmp_path / 'mixed'
    write_geotiff(folder / 'aerial.tif', width=96, height=64, res=0.5, seed=1)
    write_geotiff(
        folder / 's2.tif',
        width=64,
        height=64,
        res=10.0,
        crs='EPSG:32634',
        origin=(400000.0, 5000000.0),
        seed=2,
    )
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _check_groups(rows: list[dict[str, str]], metric: str) -> None:
    """Per scale: an ``all`` row, then one per group whose n-weighted mean is it."""
    for scale in ('0.5', '1.0'):
        at = [r for r in rows if float(r['scale']) == float(scale)]
        assert [r['group'] for r in at] == [
            'all',
            'EPSG:32633 0.5 m',
            'EPSG:32634 10 m',
        ]
        assert [float(r['gsd']) for r in at[1:]] == [0.5, 10.0]
        n = [int(r['n']) for r in at]
        assert n[0] == n[1] + n[2] and n[1] > 0 and n[2] > 0
        mean = sum(float(r[metric]) * int(r['n']) for r in at[1:]) / n[0]
        assert mean == pytest.approx(float(at[0][metric]), rel=1e-4, abs=1e-6)


def test_tiles_know_their_group(two_grids: Path) -> None:
    tiles = load_geotiff_tiles(two_grids, 32, mean=[0.0] * 3, std=[1.0] * 3)
    assert tiles.groups == ['EPSG:32633 0.5 m'] * 6 + ['EPSG:32634 10 m'] * 4
    (name0, g0, m0), (name1, g1, m1) = group_members(tiles)
    assert (name0, name1) == ('EPSG:32633 0.5 m', 'EPSG:32634 10 m')
    assert (g0, g1) == (0.5, 10.0) and int(m0.sum()) == 6 and int(m1.sum()) == 4
    assert tiles.gsd[m0].tolist() == [0.5] * 6 and tiles.gsd[m1].tolist() == [10.0] * 4


def test_eval_retrieval_and_reconstruction_report_per_group(
    trained: dict, two_grids: Path, tmp_path: Path
) -> None:
    common = ['--data', str(two_grids), '--tile-size', '32', '--scales', '0.5', '1']
    out = tmp_path / 'retrieval'
    argv = ['eval', 'retrieval', '--encoder', str(trained['cross_scale_mae'])]
    assert main([*argv, *common, '--output', str(out)]) == 0
    rows = _rows(out / 'retrieval.csv')
    _check_groups(rows, 'top1')
    _check_groups(rows, 'mrr')
    assert '| EPSG:32634 10 m |' in (out / 'retrieval.md').read_text()
    out = tmp_path / 'reconstruction'
    argv = ['eval', 'reconstruction', '--model', str(trained['cross_scale_mae'])]
    assert main([*argv, *common, '--repeats', '1', '--output', str(out)]) == 0
    rows = _rows(out / 'reconstruction.csv')
    _check_groups(rows, 'mse')
    _check_groups(rows, 'ssim')
