"""RSSCN7 in its on-disk layout (seven class folders, JPEGs numbered in level
blocks), generated for the RSSCN7 and scale-transfer tests."""

from pathlib import Path

import numpy as np
from PIL import Image

from torchgeo_xscale.datasets import RSSCN7

#: A distinct colour per class, so that even a random encoder separates them a bit.
CLASS_COLOURS = (
    (60, 160, 60),
    (200, 190, 80),
    (150, 150, 160),
    (40, 80, 190),
    (20, 90, 30),
    (190, 100, 80),
    (110, 110, 110),
)


def write_rsscn7(root: Path, per_level: int = 8, size: int = 32) -> Path:
    """RSSCN7's layout with *per_level* JPEGs per class and level (of 100 in the data).

    Class ``aGrass`` gets ``a001.jpg``... (level 1), ``a101.jpg``... (level 2), up to
    ``a3NN.jpg`` (level 4). Each image is its class colour plus stripes whose period
    grows with the level (a stand-in for the scale change) and noise.
    """
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    for c, folder in enumerate(RSSCN7.folders):
        (root / folder).mkdir(parents=True)
        for level in range(1, 5):
            stripes = (((x + y) // (2 * level)) % 2)[..., None] * 40
            for i in range(1, per_level + 1):
                noise = rng.normal(0, 12, (size, size, 3))
                image = np.asarray(CLASS_COLOURS[c]) + stripes + noise - 20
                name = f'{folder[0]}{100 * (level - 1) + i:03d}.jpg'
                Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
                    root / folder / name, quality=95
                )
    (root / 'README.md').write_text('not a class folder')
    return root
