"""``xscale segment --gsd``: segmenting at the model's training GSD, on the input grid.

The classes of the synthetic scenes are told apart by texture at a known ground
scale: class 0 is a checkerboard of 1 m cells, class 1 one of 4 m cells, in blocks of
16 m. A tiny UPerNet fine-tuned (through the real task, from exported pretrained
weights) at 0.5 m sees 2 px and 8 px cells; a 0.1 m raster of the same scene shows
10 px and 40 px cells, which the model reads as one class unless the input is first
resampled to its 0.5 m.
"""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from lightning.pytorch import Trainer, seed_everything
from rasterio.transform import from_origin
from torch.utils.data import DataLoader

from torchgeo_xscale.checkpoints.files import read_metadata
from torchgeo_xscale.cli import main as xscale
from torchgeo_xscale.segment_gsd import GSDPlan, parse_gsd, plan_gsd
from torchgeo_xscale.tasks.segmentation import XScaleSegmentationTask

TRAIN_GSD = 0.5
CELLS = (1.0, 4.0)  # ground size (m) of the checkerboard cells of class 0 and 1
BLOCK = 16.0  # ground size (m) of the class blocks
ORIGIN = (500000.0, 5000000.0)


def scene(height: int, width: int, gsd: float, x0: float = 0, y0: float = 0) -> tuple:
    """Image ``(3, H, W)`` uint8 and classes ``(H, W)`` of the scene at *gsd*.

    Pixel centres at ground ``(x0 + (j + 0.5) * gsd, y0 + (i + 0.5) * gsd)`` metres
    from the origin; the class of a block is a fixed pseudo-random bit.
    """
    y = y0 + (np.arange(height) + 0.5) * gsd
    x = x0 + (np.arange(width) + 0.5) * gsd
    by, bx = (y // BLOCK).astype(np.int64), (x // BLOCK).astype(np.int64)
    classes = ((by[:, None] * 7919 + bx[None, :] * 104729) * 2654435761 >> 7) % 2
    cells = np.where(classes == 0, CELLS[0], CELLS[1])
    parity = ((y[:, None] // cells).astype(np.int64) + (x[None, :] // cells)) % 2
    image = np.where(parity == 1, 215, 40).astype(np.uint8)
    return np.repeat(image[None], 3, 0), classes.astype(np.uint8)


def write_scene(path: Path, size: int, gsd: float) -> tuple[Path, np.ndarray]:
    """A ``size`` square GeoTIFF of the scene at *gsd* (UTM 33N); its classes."""
    image, classes = scene(size, size, gsd)
    profile = {
        'driver': 'GTiff',
        'width': size,
        'height': size,
        'count': 3,
        'dtype': 'uint8',
        'crs': 'EPSG:32633',
        'transform': from_origin(*ORIGIN, gsd, gsd),
    }
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(image)
    return path, classes


def _batches(n: int, size: int = 64, batch: int = 8) -> list[dict[str, Any]]:
    """Random 64 px crops of the scene at 0.5 m, with their ``gsd`` as the datasets give."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        images, masks = [], []
        for _ in range(batch):
            x0, y0 = rng.integers(0, 2000, 2) * TRAIN_GSD
            image, classes = scene(size, size, TRAIN_GSD, x0, y0)
            images.append(torch.from_numpy(image).float() / 255)
            masks.append(torch.from_numpy(classes).long())
        out.append(
            {
                'image': torch.stack(images),
                'mask': torch.stack(masks),
                'gsd': torch.full((batch,), TRAIN_GSD),
            }
        )
    return out


@pytest.fixture(scope='module', autouse=True)
def one_thread() -> Any:
    """One torch thread: these tiny models run 10x slower on 2 busy cores with 2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def pretrained_weights(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``xscale weights export`` of a pretraining checkpoint trained on 10 m tiles."""
    out = tmp_path_factory.mktemp('weights') / 'encoder.pth'
    assert xscale(['weights', 'export', str(trained['cross_scale_mae']), str(out)]) == 0
    return out


@pytest.fixture(scope='module')
def gsd_ckpt(
    pretrained_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny UPerNet fine-tuned at 0.5 m from the 10 m pretrained encoder."""
    root = tmp_path_factory.mktemp('gsd_model')
    seed_everything(0)
    task = XScaleSegmentationTask(
        backbone='xscale_vit_tiny',
        weights=str(pretrained_weights),
        backbone_options={
            'embed_dim': 32,
            'vit_depth': 1,
            'num_heads': 2,
            'patch_size': 8,
            'img_size': 64,
        },
        decoder_channels=32,
        num_classes=2,
        lr=3e-3,
        warmup_epochs=0.05,
        layer_decay=1.0,
        plot_tiles=0,
    )
    trainer = Trainer(
        max_epochs=1,
        accelerator='cpu',
        default_root_dir=str(root),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, DataLoader(_batches(40), batch_size=None, shuffle=False))
    ckpt = root / 'seg.ckpt'
    trainer.save_checkpoint(ckpt)
    return ckpt


def _segment(ckpt: Path, raster: Path, out: Path, *extra: str) -> int:
    args = ['segment', '--checkpoint', str(ckpt), '--input', str(raster)]
    return xscale([*args, '--output', str(out), '--quiet', *extra])


def _accuracy(mask: Path, classes: np.ndarray) -> float:
    with rasterio.open(mask) as dst:
        return float((dst.read(1) == classes).mean())


def test_checkpoint_records_its_own_training_gsd(
    gsd_ckpt: Path, pretrained_weights: Path, tmp_path: Path
) -> None:
    assert read_metadata(pretrained_weights)['gsd']['median'] == pytest.approx(10.0)
    state = torch.load(gsd_ckpt, weights_only=False, map_location='cpu')
    # the encoder came from 10 m weights; the checkpoint records its own 0.5 m
    assert state['xscale_gsd'] == {'min': 0.5, 'median': 0.5, 'max': 0.5}
    out = tmp_path / 'seg_encoder.pth'
    assert xscale(['weights', 'export', str(gsd_ckpt), str(out)]) == 0
    assert read_metadata(out)['gsd'] == {'min': 0.5, 'median': 0.5, 'max': 0.5}


def test_auto_resamples_to_the_training_gsd_and_beats_native(
    gsd_ckpt: Path, tmp_path: Path, capsys
) -> None:
    raster, classes = write_scene(tmp_path / 'fine.tif', 640, TRAIN_GSD / 5)
    probs = tmp_path / 'auto_probs.tif'
    auto, native = tmp_path / 'auto.tif', tmp_path / 'native.tif'
    assert _segment(gsd_ckpt, raster, auto, '--probabilities', str(probs)) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        'xscale segment: input 0.10 m → model 0.50 m, 5.0\N{MULTIPLICATION SIGN} down'
        in lines
    )
    assert _segment(gsd_ckpt, raster, native, '--gsd', 'native') == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        'xscale segment: input 0.10 m, native: --gsd native (the model was trained '
        'at 0.50 m)'
    ) in lines
    with rasterio.open(raster) as src:
        for out in (auto, native, probs):
            with rasterio.open(out) as dst:
                assert (dst.crs, dst.transform, dst.shape) == (
                    src.crs,
                    src.transform,
                    src.shape,
                )
    with rasterio.open(probs) as dst:
        p = dst.read().astype(np.float32)
        assert dst.count == 2 and dst.scales == (1 / 254,) * 2
    # bilinear probabilities: they sum to 1 (254) up to rounding
    assert np.abs(p.sum(0) - 254).max() <= 3
    acc_auto, acc_native = _accuracy(auto, classes), _accuracy(native, classes)
    print(f'accuracy auto {acc_auto:.3f} native {acc_native:.3f}')
    assert acc_auto > 0.9
    assert acc_auto > acc_native + 0.2


def test_explicit_gsd_matches_auto_and_bad_values_fail(
    gsd_ckpt: Path, tmp_path: Path, capsys
) -> None:
    raster, _ = write_scene(tmp_path / 'fine.tif', 320, TRAIN_GSD / 5)
    auto, explicit = tmp_path / 'auto.tif', tmp_path / 'explicit.tif'
    assert _segment(gsd_ckpt, raster, auto) == 0
    capsys.readouterr()
    assert _segment(gsd_ckpt, raster, explicit, '--gsd', '0.5') == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        'xscale segment: input 0.10 m → 0.50 m (--gsd), 5.0\N{MULTIPLICATION SIGN} down'
        in lines
    )
    with rasterio.open(auto) as a, rasterio.open(explicit) as b:
        assert np.array_equal(a.read(), b.read())
    for bad in ('fine', '-1', '0', 'nan'):
        out = tmp_path / f'bad_{bad}.tif'
        with pytest.raises(SystemExit) as exit_info:
            _segment(gsd_ckpt, raster, out, '--gsd', bad)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f'xscale segment: error: --gsd {bad}: expected auto, native or metres '
            'per pixel > 0 (e.g. 0.5)'
        )
        assert not out.exists()


def test_checkpoint_without_gsd_segments_natively_with_a_note(
    gsd_ckpt: Path, tmp_path: Path, capsys
) -> None:
    state = torch.load(gsd_ckpt, weights_only=False, map_location='cpu')
    del state['xscale_gsd']  # e.g. written before the GSD was recorded
    old = tmp_path / 'old.ckpt'
    torch.save(state, old)
    raster, _ = write_scene(tmp_path / 'fine.tif', 96, TRAIN_GSD / 5)
    out = tmp_path / 'mask.tif'
    assert _segment(old, raster, out) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == (
        'xscale segment: input 0.10 m, native: the checkpoint records no training '
        'GSD (xscale_gsd); --gsd <metres> sets one'
    )
    with rasterio.open(out) as dst, rasterio.open(raster) as src:
        assert (dst.transform, dst.shape) == (src.transform, src.shape)


def test_plan_gsd_up_geographic_and_no_crs(tmp_path: Path, make_geotiff) -> None:
    from torchgeo_xscale.datasets.rasters import validate_rasters

    utm = make_geotiff(tmp_path / 'utm.tif', res=10.0)
    plan = plan_gsd('auto', utm, {'min': 1.0, 'median': 2.0, 'max': 4.0})
    assert plan.message == 'input 10.00 m → model 2.00 m, 5.0\N{MULTIPLICATION SIGN} up'
    assert plan.factor == pytest.approx(0.2) and plan.shape(64, 64) == (320, 320)
    # geographic: metres at the raster's centre latitude, as the datasets compute
    geo = make_geotiff(tmp_path / 'geo.tif', crs='EPSG:4326', res=0.0001)
    metres = validate_rasters([str(geo)])[2][0].gsd
    plan = plan_gsd('auto', geo, {'min': 5.0, 'median': 5.0, 'max': 5.0})
    assert plan.input_gsd == metres and 5 < metres < 12
    assert plan.factor == pytest.approx(5.0 / metres)
    # within 1 %: the input's own grid
    plan = plan_gsd('auto', utm, {'min': 10.05, 'median': 10.05, 'max': 10.05})
    assert (
        not plan.resamples and plan.message == 'input 10.00 m → model 10.05 m, native'
    )
    bare = make_geotiff(tmp_path / 'bare.tif', crs=None)
    assert plan_gsd('auto', bare, {'min': 1, 'median': 1, 'max': 1}) == GSDPlan(
        None,
        None,
        'input (no CRS), native: the model was trained at 1.00 m, its GSD is unknown',
    )
    with pytest.raises(ValueError, match=r'--gsd 0.5: .*bare.tif has no CRS'):
        plan_gsd('0.5', bare, None)
    assert parse_gsd(' Auto ') == 'auto' and parse_gsd('0.25') == 0.25
