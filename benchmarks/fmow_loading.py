"""fMoW-RGB loading speed: is one GPU pretraining ViT-B at 128 px ever data-bound?

Writes a fake fMoW-RGB folder (JPEGs of random sizes with JSON sidecars, the official
layout) and measures, in one run:

* indexing (folder walk + JSON sidecars) in images/s;
* the decode path per image: PIL with reduced DCT decoding (``draft``, what
  :class:`~torchgeo_xscale.datasets.fmow.FMoWRGB` does) vs PIL full decoding vs
  ``torchvision.io.decode_jpeg`` + crop + antialiased resize, as ratios;
* images/s through the DataLoader of :class:`FMoWDataModule` with 0, 1, 2, ... workers
  (second pass, workers warm), and the workers one GPU needs.

The GPU's demand is the paper's (supplement Table 6): ViT-B, 128 px, batch 512,
0.282 s per MAE step on an RTX A6000 = 1816 images/s for one view; Cross-Scale MAE
runs two views per image, about 908 images/s. These are the paper's numbers, not
measured here.

    python benchmarks/fmow_loading.py --num-images 200 --min-side 300 --max-side 600
"""

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, JpegImagePlugin

from torchgeo_xscale.datamodules.fmow import FMoWDataModule
from torchgeo_xscale.datasets.fmow import FMoWRGB

PAPER_STEP_S = 0.282  # ViT-B, 128 px, batch 512, RTX A6000 (supplement Table 6)
PAPER_BATCH = 512


def write_fake_fmow(
    root: Path, num: int, min_side: int, max_side: int, seed: int = 0
) -> None:
    """JPEGs with smooth structure plus texture (compressing like imagery, unlike noise)."""
    rng = np.random.default_rng(seed)
    categories = ('airport', 'dam', 'park', 'port', 'zoo')
    for i in range(num):
        width, height = rng.integers(min_side, max_side + 1, 2)
        coarse = rng.random((3, height // 16 + 2, width // 16 + 2), dtype=np.float32)
        smooth = F.interpolate(
            torch.from_numpy(coarse)[None],
            size=(int(height), int(width)),
            mode='bicubic',
        )[0]
        pixels = smooth.permute(1, 2, 0).numpy() * 200 + rng.normal(
            0, 12, (height, width, 3)
        )
        category = categories[i % len(categories)]
        folder = root / 'train' / category / f'{category}_{i}'
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f'{category}_{i}_0_rgb'
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
            f'{stem}.jpg', quality=90
        )
        meta = {
            'gsd': float(rng.uniform(0.3, 2.0)),
            'img_width': int(width),
            'img_height': int(height),
        }
        Path(f'{stem}.json').write_text(json.dumps(meta))


def per_image_ms(fn, paths: list[str], repeats: int = 2) -> float:
    fn(paths[0])
    start = time.perf_counter()
    for _ in range(repeats):
        for path in paths:
            fn(path)
    return (time.perf_counter() - start) * 1000 / (repeats * len(paths))


def torchvision_load(path: str, size: int) -> torch.Tensor:
    """Full decode with torchvision, largest centred square, antialiased resize."""
    image = torchvision.io.decode_jpeg(torchvision.io.read_file(path))
    _, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[None, :, top : top + side, left : left + side].float()
    return F.interpolate(crop, size=(size, size), mode='bilinear', antialias=True)


def loader_rate(root: Path, workers: int, batch_size: int, size: int) -> float:
    """Images/s of the training DataLoader, second pass (workers already started)."""
    dm = FMoWDataModule(
        root,
        img_size=size,
        batch_size=batch_size,
        num_workers=workers,
        index_cache=None,
        val_split='none',
    )
    dm.setup('fit')
    loader = dm.train_dataloader()
    for _ in loader:  # first pass: start the workers
        pass
    start = time.perf_counter()
    count = sum(len(batch['image']) for batch in loader)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num-images', type=int, default=200)
    parser.add_argument('--min-side', type=int, default=300)
    parser.add_argument('--max-side', type=int, default=600)
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f'machine: {os.cpu_count()} CPU cores; torch {torch.__version__}')
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fake_fmow(root, args.num_images, args.min_side, args.max_side)
        print(
            f'{args.num_images} JPEGs of {args.min_side}-{args.max_side} px, output {args.size} px'
        )

        start = time.perf_counter()
        dataset = FMoWRGB(root, size=args.size, crop='center', index_cache=None)
        rate = len(dataset) / (time.perf_counter() - start)
        print(f'indexing (walk + JSON sidecars): {rate:,.0f} images/s')

        paths = [os.path.join(root, f.decode()) for f in dataset.files]
        draft = per_image_ms(dataset._load, paths)
        original = JpegImagePlugin.JpegImageFile.draft
        JpegImagePlugin.JpegImageFile.draft = lambda self, mode, size: None  # type: ignore[method-assign,assignment,return-value]
        try:
            full = per_image_ms(dataset._load, paths)
        finally:
            JpegImagePlugin.JpegImageFile.draft = original  # type: ignore[method-assign]
        tv = per_image_ms(lambda p: torchvision_load(p, args.size), paths)
        print(
            f'decode + crop + resize per image: PIL draft {draft:.2f} ms, PIL full {full:.2f} ms, torchvision full {tv:.2f} ms'
        )
        print(
            f'  ratio PIL full / PIL draft: {full / draft:.2f}x; torchvision / PIL draft: {tv / draft:.2f}x'
        )

        one_view = PAPER_BATCH / PAPER_STEP_S
        demand = one_view / 2
        print(
            f'GPU demand (paper, A6000, ViT-B 128 px): {one_view:,.0f} img/s one view, ~{demand:,.0f} img/s two views'
        )
        for workers in args.workers:
            rate = loader_rate(root, workers, args.batch_size, args.size)
            per_worker = rate / max(1, workers)
            need = math.ceil(demand / per_worker)
            print(
                f'DataLoader, {workers} workers: {rate:,.0f} images/s ({per_worker:,.0f} per worker process) -> ~{need} workers per A6000 for two views'
            )


if __name__ == '__main__':
    main()
