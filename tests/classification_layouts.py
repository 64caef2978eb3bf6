"""Classification datasets generated in their on-disk layouts (RESISC45, UC Merced,
EuroSAT, WHU-RS19 class folders) and a tiny ViT, shared by the evaluation tests."""

from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

from torchgeo_xscale.models import build_vit

CLASSES = ('forest', 'lake', 'urban')
COLOURS = ((40, 140, 40), (30, 60, 200), (180, 170, 160))


def tiny_vit(**kw):
    return build_vit(
        'tiny', img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, **kw
    )


def class_image(c: int, i: int, size: int = 40, bands: int = 3) -> np.ndarray:
    """(H, W, bands) uint8 image of class c: its colour plus noise."""
    rng = np.random.default_rng(100 * c + i)
    base = np.array((COLOURS[c] * 5)[:bands], dtype=float)
    return np.clip(base + rng.normal(0, 12, (size, size, bands)), 0, 255).astype(
        np.uint8
    )


def write_split_files(root: Path, names: dict[str, list[str]], pattern: str) -> None:
    for split, files in names.items():
        (root / pattern.format(split)).write_text('\n'.join(files) + '\n')


def fake_resisc45(root: Path, per_class: int = 4) -> Path:
    """NWPU-RESISC45/<class>/<class>_NNN.jpg + resisc45-{train,val,test}.txt."""
    names: dict[str, list[str]] = {'train': [], 'val': [], 'test': []}
    for c, cls in enumerate(CLASSES):
        (root / 'NWPU-RESISC45' / cls).mkdir(parents=True)
        for i in range(per_class):
            name = f'{cls}_{i + 1:03d}.jpg'
            Image.fromarray(class_image(c, i)).save(
                root / 'NWPU-RESISC45' / cls / name, quality=95
            )
            names[
                'train'
                if i < per_class - 2
                else ('val' if i == per_class - 2 else 'test')
            ].append(name)
    write_split_files(root, names, 'resisc45-{}.txt')
    return root


def fake_ucmerced(root: Path, per_class: int = 3) -> Path:
    """UCMerced_LandUse/Images/<class>/<class>NN.tif + uc_merced-{split}.txt."""
    names: dict[str, list[str]] = {'train': [], 'val': [], 'test': []}
    for c, cls in enumerate(CLASSES):
        folder = root / 'UCMerced_LandUse' / 'Images' / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            name = f'{cls}{i:02d}.tif'
            Image.fromarray(class_image(c, i, size=36)).save(folder / name)
            names[('train', 'val', 'test')[i % 3]].append(name)
    write_split_files(root, names, 'uc_merced-{}.txt')
    return root


def fake_eurosat(root: Path, per_class: int = 3) -> Path:
    """ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<Class>_N.tif (13 bands)."""
    base = (
        root
        / 'ds'
        / 'images'
        / 'remote_sensing'
        / 'otherDatasets'
        / 'sentinel_2'
        / 'tif'
    )
    names: dict[str, list[str]] = {'train': [], 'val': [], 'test': []}
    for c, cls in enumerate(('Forest', 'SeaLake', 'Residential')):
        (base / cls).mkdir(parents=True)
        for i in range(per_class):
            data = (
                class_image(c, i, size=16, bands=13)
                .transpose(2, 0, 1)
                .astype(np.uint16)
                * 10
            )
            with rasterio.open(
                base / cls / f'{cls}_{i + 1}.tif',
                'w',
                driver='GTiff',
                width=16,
                height=16,
                count=13,
                dtype='uint16',
            ) as dst:
                dst.write(data)
            names[('train', 'val', 'test')[i % 3]].append(
                f'{cls}_{i + 1}.jpg'
            )  # lists name .jpg
    write_split_files(root, names, 'eurosat-{}.txt')
    return root


def fake_whu(root: Path, per_class: int = 5) -> Path:
    """WHU-RS19/<Class>/<class>_NN.jpg (no split files)."""
    for c, cls in enumerate(('Forest', 'Pond', 'Residential')):
        (root / 'WHU-RS19' / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(class_image(c, i, size=60)).save(
                root / 'WHU-RS19' / cls / f'{cls.lower()}_{i:02d}.jpg'
            )
    return root
