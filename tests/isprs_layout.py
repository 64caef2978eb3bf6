"""Generated ISPRS Potsdam / Vaihingen archives in TorchGeo's layout, and a tiny
segmentation task and ``xscale fit`` overrides, shared by the segmentation tests."""

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from torchgeo_xscale.tasks.segmentation import XScaleSegmentationTask

#: Backbone options of the tiny segmentation ViT.
TINY = {'embed_dim': 32, 'vit_depth': 2, 'num_heads': 2, 'img_size': 64}
COLORS = (
    (255, 0, 0),
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
)
POTSDAM = [
    'top_potsdam_2_10',
    'top_potsdam_2_11',
    'top_potsdam_3_10',
    'top_potsdam_4_12',
]
POTSDAM_TEST = ['top_potsdam_5_15', 'top_potsdam_2_13']
VAIHINGEN = [f'top_mosaic_09cm_area{i}.tif' for i in (1, 3, 5, 7)]
VAIHINGEN_TEST = [f'top_mosaic_09cm_area{i}.tif' for i in (2, 4)]
SIZES = [(72, 80), (64, 96), (80, 64), (70, 70), (64, 64), (96, 72)]


def _tile(
    height: int, width: int, bands: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """An image whose brightness follows a blocky 6-class map, and the RGB label."""
    cls = rng.integers(0, 6, (height // 16 + 1, width // 16 + 1))
    cls = cls.repeat(16, 0).repeat(16, 1)[:height, :width]
    noise = rng.integers(0, 20, (bands, height, width))
    image = (cls[None] * 40 + noise).clip(0, 255).astype(np.uint8)
    return image, np.asarray(COLORS, dtype=np.uint8)[cls].transpose(2, 0, 1)


def _write(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = data.shape
    with rasterio.open(
        path, 'w', driver='GTiff', width=w, height=h, count=c, dtype='uint8'
    ) as dst:
        dst.write(data)


def _zip(archive: Path, files: list[tuple[Path, str]]) -> None:
    with zipfile.ZipFile(archive, 'w') as z:
        for path, name in files:
            z.write(path, name)


def make_potsdam(root: Path) -> Path:
    """``4_Ortho_RGBIR.zip`` (``4_Ortho_RGBIR/<tile>_RGBIR.tif``, 4 bands) and
    ``5_Labels_all.zip`` (``<tile>_label.tif``, RGB), as TorchGeo's Potsdam2D reads."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for name, (h, w) in zip(POTSDAM + POTSDAM_TEST, SIZES):
        image, rgb = _tile(h, w, 4, rng)
        _write(root / 'src' / f'{name}_RGBIR.tif', image)
        _write(root / 'src' / f'{name}_label.tif', rgb)
        images.append(
            (root / 'src' / f'{name}_RGBIR.tif', f'4_Ortho_RGBIR/{name}_RGBIR.tif')
        )
        labels.append((root / 'src' / f'{name}_label.tif', f'{name}_label.tif'))
    _zip(root / '4_Ortho_RGBIR.zip', images)
    _zip(root / '5_Labels_all.zip', labels)
    return root


def make_vaihingen(root: Path) -> Path:
    """``ISPRS_semantic_labeling_Vaihingen.zip`` (``top/<tile>``, IRRG) and the
    ``..._ground_truth_COMPLETE.zip`` (``<tile>``, RGB), as TorchGeo's Vaihingen2D reads."""
    rng = np.random.default_rng(1)
    images, labels = [], []
    for name, (h, w) in zip(VAIHINGEN + VAIHINGEN_TEST, SIZES):
        image, rgb = _tile(h, w, 3, rng)
        _write(root / 'src' / 'top' / name, image)
        _write(root / 'src' / 'gt' / name, rgb)
        images.append((root / 'src' / 'top' / name, f'top/{name}'))
        labels.append((root / 'src' / 'gt' / name, name))
    _zip(root / 'ISPRS_semantic_labeling_Vaihingen.zip', images)
    _zip(root / 'ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip', labels)
    return root


def tiny_task(**kwargs: Any) -> XScaleSegmentationTask:
    args: dict[str, Any] = {
        'backbone': 'xscale_vit_tiny',
        'backbone_options': TINY,
        'decoder_channels': 32,
        'num_classes': 6,
        'ignore_index': 0,
        'eval_window': 64,
        'lr': 1e-3,
    }
    return XScaleSegmentationTask(**{**args, **kwargs})


def tiny_overrides(
    root: Path,
    run: Path,
    weights: Path,
    num_workers: int | None = 0,
    precision: str | None = '32-true',
) -> list[str]:
    """Command-line overrides that make an ISPRS segmentation config tiny.

    Args:
        root: The dataset folder.
        run: ``trainer.default_root_dir``.
        weights: Encoder weights file (offline: no download).
        num_workers: ``data.num_workers``; None keeps the config's.
        precision: ``trainer.precision``; None keeps the config's.
    """
    args = [
        '--data.root',
        str(root),
        '--data.batch_size',
        '2',
        '--data.patch_size',
        '64',
        '--data.samples_per_tile',
        '2',
        '--data.val_split_pct',
        '0.5',
        '--model.init_args.backbone',
        'xscale_vit_tiny',
        '--model.init_args.backbone_options',
        '{embed_dim: 32, vit_depth: 2, num_heads: 2, img_size: 64}',
        '--model.init_args.decoder_channels',
        '32',
        '--model.init_args.eval_window',
        '64',
        '--model.init_args.weights',
        str(weights),
        '--trainer.max_epochs',
        '1',
        '--trainer.accelerator',
        'cpu',
        '--trainer.enable_progress_bar',
        'false',
        '--trainer.check_val_every_n_epoch',
        '1',
        '--trainer.default_root_dir',
        str(run),
    ]
    if num_workers is not None:
        args += ['--data.num_workers', str(num_workers)]
    if precision is not None:
        args += ['--trainer.precision', precision]
    return args
