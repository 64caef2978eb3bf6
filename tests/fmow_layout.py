"""The fMoW-RGB on-disk layout, generated: JPEGs with JSON sidecars and the CSV index.

Shared by ``tests/datasets/test_fmow.py`` and ``benchmarks/gpu_check.py`` (which adds this
folder to ``sys.path``), so there is one writer of the layout. Plain functions, no
pytest.
"""

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

# (split, category or None for test/, location id, width, height, gsd in metres)
LAYOUT = [
    ('train', 'airport', 0, 64, 48, 0.5),
    ('train', 'airport', 1, 40, 72, 1.0),
    ('train', 'zoo', 2, 50, 50, 2.0),
    ('train', 'zoo', 3, 96, 64, 0.3),
    ('train', 'dam', 4, 48, 48, 0.8),
    ('train', 'dam', 5, 80, 40, 1.5),
    ('val', 'park', 6, 56, 56, 1.2),
    ('val', 'port', 7, 64, 40, 0.6),
    ('test', None, 8, 48, 64, 0.7),
]


def write_fmow_image(
    root: Path,
    split: str,
    category: str | None,
    location: int,
    width: int,
    height: int,
    gsd: float,
    number: int = 0,
    value: int | None = None,
    meta_size: tuple[int, int] | None = None,
) -> Path:
    """Write ``<split>/<category>/<category>_<id>/<..>_rgb.jpg`` and its JSON sidecar."""
    name = f'{category}_{location}' if category else f'{location:07d}'
    folder = root / split / category / name if category else root / split / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(location)
    if value is None:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        pixels = np.full((height, width, 3), value, dtype=np.uint8)
    image = folder / f'{name}_{number}_rgb.jpg'
    Image.fromarray(pixels).save(image, quality=95)
    meta_width, meta_height = meta_size or (width, height)
    meta = {
        'gsd': gsd,
        'img_width': meta_width,
        'img_height': meta_height,
        'timestamp': '2016-05-01T10:00:00Z',
        'pan_resolution_dbl': gsd * 0.9,
        'bounding_boxes': [
            {'box': [2, 2, width - 4, height - 4], 'category': category, 'ID': location}
        ],
    }
    image.with_suffix('.json').write_text(json.dumps(meta))
    return image


def write_fmow(root: Path) -> Path:
    """The whole :data:`LAYOUT` plus a SatMAE-style CSV index of the training split."""
    rows = []
    for split, category, location, width, height, gsd in LAYOUT:
        image = write_fmow_image(root, split, category, location, width, height, gsd)
        if split == 'train':
            rel = image.relative_to(root).as_posix()
            rows.append([category, location, 0, '2016-05-01', 'POLYGON(...)', rel])
    with open(root / 'train_62classes.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                'category',
                'location_id',
                'image_id',
                'timestamp',
                'polygon',
                'image_path',
            ]
        )
        writer.writerows(rows)
    return root
