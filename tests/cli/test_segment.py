"""``xscale segment`` as users run it: progress, window notes, wrong checkpoints, kills."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import write_geotiff
from isprs_layout import tiny_task

from torchgeo_xscale.cli import main as xscale
from torchgeo_xscale.cli.scale_study import write_scale_table
from torchgeo_xscale.cli.segment import choose_window

#: GSD of the ISPRS Vaihingen tiles, which ``segmentation_ckpt`` records.
VAIHINGEN_GSD = 0.09


@pytest.fixture(scope='module')
def raster_2k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2048 x 2048 px, 3 bands, uint8, at the 0.09 m of ``segmentation_ckpt``."""
    path = tmp_path_factory.mktemp('raster') / 'big.tif'
    return write_geotiff(path, width=2048, height=2048, res=VAIHINGEN_GSD)


def test_predict_logits_on_tiles_smaller_than_the_padding() -> None:
    """TorchGeo's ISPRS test fixtures are 2 x 2 px: reflection padding to 32 fails."""
    task = tiny_task().eval()
    for h, w in ((2, 2), (2, 40), (33, 3)):
        with torch.no_grad():
            logits = task.predict_logits(torch.randn(1, 3, h, w))
        assert logits.shape == (1, 6, h, w) and bool(torch.isfinite(logits).all())
    # large enough to reflect: unchanged behaviour
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        expected = task(torch.nn.functional.pad(x, (0, 24, 0, 24), mode='reflect'))
        torch.testing.assert_close(task.predict_logits(x), expected[..., :40, :40])


def test_choose_window_says_why_it_replaces_the_crop() -> None:
    assert choose_window(None, (64, 64), 32, 2048, 500, 500) == (64, None)
    assert choose_window(128, 64, 32, 2048, 500, 500) == (128, None)
    window, note = choose_window(None, 70, 32, 2048, 500, 500)
    assert window == 64 and 'training crop of 70 px' in note
    assert 'not a multiple of the encoder stride 32' in note
    window, note = choose_window(None, 4096, 32, 2048, 5000, 5000)
    assert window == 2048 and 'larger than --chunk-size 2048' in note
    window, note = choose_window(None, 512, 32, 2048, 100, 150)
    assert window == 160 and 'larger than the raster (150 x 100 px)' in note
    window, note = choose_window(None, None, 32, 2048, 900, 900)
    assert window == 512 and 'no training crop' in note
    with pytest.raises(ValueError, match='--window 70: expected a multiple of 32'):
        choose_window(70, 64, 32, 2048, 500, 500)


def _segment(ckpt: Path, raster: Path, out: Path, *extra: str) -> int:
    args = ['segment', '--checkpoint', str(ckpt), '--input', str(raster)]
    return xscale([*args, '--output', str(out), *extra])


def test_segment_2k_raster_shows_progress(
    segmentation_ckpt: Path, raster_2k: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / 'mask.tif'
    extra = ('--window', '256', '--overlap', '0')
    assert _segment(segmentation_ckpt, raster_2k, out, *extra) == 0
    captured = capsys.readouterr()
    # 256-px windows without overlap: 8 x 8 windows, the bar counts each once
    assert '64/64' in captured.err and 'window' in captured.err
    assert 'mask.tif: 2048x2048 px, 6 classes' in captured.out
    with rasterio.open(out) as dst:
        assert dst.shape == (2048, 2048) and dst.read(1).max() < 6


def test_segment_quiet_and_window_note(
    segmentation_ckpt: Path, tmp_path: Path, capsys
) -> None:
    small = write_geotiff(
        tmp_path / 'small.tif', width=20, height=20, res=VAIHINGEN_GSD
    )
    out = tmp_path / 'small_mask.tif'
    assert _segment(segmentation_ckpt, small, out, '--quiet') == 0
    captured = capsys.readouterr()
    # the GSD, then the 64-px training crop that does not fit the 20 px raster
    assert captured.err.strip().splitlines() == [
        'xscale segment: input 0.09 m → model 0.09 m, native',
        'xscale segment: the training crop of 64 px does not fit (it is larger than '
        'the raster (20 x 20 px)): using a 32 px window (--window sets it)',
    ]
    assert captured.out == ''
    with rasterio.open(out) as dst:
        assert dst.shape == (20, 20)


def test_segment_refuses_pretraining_checkpoint(
    trained: dict, tmp_path: Path, capsys
) -> None:
    small = write_geotiff(tmp_path / 'small.tif', width=64, height=64)
    with pytest.raises(SystemExit) as exit_info:
        _segment(trained['cross_scale_mae'], small, tmp_path / 'mask.tif')
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f'xscale segment: error: --checkpoint {trained["cross_scale_mae"]}: a '
        'checkpoint of torchgeo_xscale.tasks.pretrain.CrossScaleMAETask (Cross-Scale '
        'MAE pretraining); expected a checkpoint of XScaleSegmentationTask (fine-tune '
        'one with xscale fit --config configs/segmentation/<dataset>.yaml)'
    )
    assert not (tmp_path / 'mask.tif').exists()


@pytest.mark.slow
def test_killed_segment_rerun_removes_its_temporaries(
    segmentation_ckpt: Path, tmp_path: Path
) -> None:
    """SIGKILL a running ``xscale segment``: its hidden ``.part`` file stays; a rerun
    of the same command removes it and writes the output."""
    raster = write_geotiff(
        tmp_path / 'scene.tif', width=512, height=512, res=VAIHINGEN_GSD
    )
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    out = out_dir / 'mask.tif'
    command = [sys.executable, '-m', 'torchgeo_xscale', 'segment']
    command += ['--checkpoint', str(segmentation_ckpt), '--input', str(raster)]
    command += ['--output', str(out), '--window', '64', '--batch-size', '1']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while not list(out_dir.glob('.mask.tif.*.part*')):
            assert proc.poll() is None, 'segment ended before it could be killed'
            assert time.monotonic() < deadline, 'no temporary file appeared'
            time.sleep(0.05)
        assert proc.poll() is None  # still segmenting (121 windows, one at a time)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (stale,) = out_dir.glob('.mask.tif.*.part*')
    assert f'-p{proc.pid}.' in stale.name and not out.exists()
    assert _segment(segmentation_ckpt, raster, out, '--window', '256', '--quiet') == 0
    assert [p.name for p in out_dir.iterdir()] == ['mask.tif']
    with rasterio.open(out) as dst:
        assert np.all(dst.read(1) < 6)


def test_write_scale_table(tmp_path: Path) -> None:
    rows = [
        {
            'scale': s,
            'miou': 0.5 + s / 10,
            'overall_accuracy': 0.8,
            'iou': [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
        }
        for s in (0.25, 0.5, 1.0)
    ]
    csv_path, md_path = write_scale_table(
        rows, tmp_path, 'vaihingen', list('abcdef'), ignore_index=0
    )
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    assert [r['scale'] for r in table] == ['0.25', '0.5', '1.0']
    assert table[0]['paper_miou'] == '0.7163' and table[2]['iou_f'] == '0.5000'
    text = Path(md_path).read_text()
    assert '| 25 % | 50 % | 100 % |' in text and '0.7603' in text
    assert '| a | - | - | - |' in text  # the ignored class
