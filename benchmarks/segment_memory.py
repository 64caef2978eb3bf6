"""Peak memory of ``xscale segment`` against raster size (2k², 4k², 8k² pixels).

Writes tiled, compressed 3-band GeoTIFFs of each size, a checkpoint of a tiny UPerNet
(trained for one step, so it is a real Lightning checkpoint), then runs
``xscale segment`` on each raster in a fresh process and prints that process's peak
resident memory (``getrusage``), the memory after loading the model (the fixed part)
and the time. Memory should stay flat while the raster grows 16-fold.

With ``--gsd-factor F`` the checkpoint records a training GSD F times the rasters'
0.5 m (``xscale_gsd``, from its training batches' ``gsd``), so ``xscale segment`` (its
default ``--gsd auto``) resamples each raster F times down (F > 1) or up (F < 1),
segments it there and writes the mask back on the raster's grid.

    python benchmarks/segment_memory.py [--sizes 2048 4096 8192] [--window 512]
    python benchmarks/segment_memory.py --sizes 2048 8192 --gsd-factor 5
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: GSD of the benchmark rasters (m).
RASTER_GSD = 0.5

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def write_raster(path: Path, size: int, seed: int = 0) -> None:
    """A blocky 3-band uint8 GeoTIFF of ``size`` x ``size`` px, written by windows."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        'driver': 'GTiff',
        'width': size,
        'height': size,
        'count': 3,
        'dtype': 'uint8',
        'crs': 'EPSG:32633',
        'transform': from_origin(500000, 5000000, RASTER_GSD, RASTER_GSD),
        'tiled': True,
        'blockxsize': 256,
        'blockysize': 256,
        'compress': 'deflate',
        'nodata': 0,
    }
    rng = np.random.default_rng(seed)
    with rasterio.open(path, 'w', **profile) as dst:
        for row in range(0, size, 1024):
            for col in range(0, size, 1024):
                h, w = min(1024, size - row), min(1024, size - col)
                blocks = rng.integers(
                    1, 255, (3, h // 32 + 1, w // 32 + 1), dtype=np.uint8
                )
                data = blocks.repeat(32, 1).repeat(32, 2)[:, :h, :w]
                dst.write(data, window=Window(col, row, w, h))


def make_checkpoint(path: Path, gsd: float | None = None) -> None:
    """A tiny UPerNet segmentation checkpoint, trained for one step with Lightning.

    With *gsd*, the training batch carries it (``batch['gsd']``), so the checkpoint
    records it as its training GSD.
    """
    import torch
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from torchgeo_xscale.tasks.segmentation import XScaleSegmentationTask

    task = XScaleSegmentationTask(
        backbone='xscale_vit_tiny',
        backbone_options={
            'embed_dim': 64,
            'vit_depth': 4,
            'num_heads': 4,
            'img_size': 512,
        },
        decoder_channels=64,
        num_classes=6,
        in_channels=3,
        lr=1e-4,
        plot_tiles=0,
    )
    batch = {
        'image': torch.randn(2, 3, 64, 64),
        'mask': torch.randint(0, 6, (2, 64, 64)),
    }
    if gsd is not None:
        batch['gsd'] = torch.full((2,), gsd)
    loader = DataLoader([batch], batch_size=None)
    trainer = Trainer(
        max_steps=1,
        accelerator='cpu',
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(path.parent),
    )
    trainer.fit(task, loader)
    trainer.save_checkpoint(path)


def child(args: argparse.Namespace) -> None:
    """Run ``xscale segment`` in this process; print peak RSS as JSON."""
    import torch

    from torchgeo_xscale.cli import main
    from torchgeo_xscale.cli.segment import _load_task

    torch.set_num_threads(args.threads)
    _load_task(args.checkpoint, torch.device('cpu'))  # imports + weights: fixed part
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    main(
        [
            'segment',
            '--checkpoint',
            args.checkpoint,
            '--input',
            args.input,
            '--output',
            args.output,
            '--window',
            str(args.window),
            '--chunk-size',
            str(args.chunk_size),
            '--device',
            'cpu',
        ]
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({'loaded_kb': loaded, 'peak_kb': peak, 'seconds': seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[2048, 4096, 8192])
    parser.add_argument('--window', type=int, default=512)
    parser.add_argument('--chunk-size', type=int, default=2048)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument(
        '--gsd-factor',
        type=float,
        default=None,
        help='checkpoint trained at this many times the rasters 0.5 m GSD',
    )
    parser.add_argument('--workdir', help='folder for rasters (default: a temp folder)')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--checkpoint', help=argparse.SUPPRESS)
    parser.add_argument('--input', help=argparse.SUPPRESS)
    parser.add_argument('--output', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix='segment_memory_'))
    work.mkdir(parents=True, exist_ok=True)
    factor = args.gsd_factor
    ckpt = work / (
        f'tiny_upernet_gsd{factor:g}.ckpt' if factor else 'tiny_upernet.ckpt'
    )
    if not ckpt.exists():
        make_checkpoint(ckpt, RASTER_GSD * factor if factor else None)
    print(
        f'machine: {os.cpu_count()} CPUs, torch threads {args.threads}; window '
        f'{args.window}, chunk {args.chunk_size}; model: UPerNet on a ViT (D=64, 4 blocks)'
    )
    print(
        f'{"raster":>12} {"MPix":>6} {"peak RSS MB":>12} {"after load MB":>14} '
        f'{"segment MB":>11} {"whole raster f32 MB":>20} {"s":>7}'
    )
    results = []
    for size in args.sizes:
        raster = work / f'scene_{size}.tif'
        if not raster.exists():
            write_raster(raster, size)
        out = work / f'mask_{size}.tif'
        cmd = [
            sys.executable,
            __file__,
            '--child',
            '--checkpoint',
            str(ckpt),
            '--input',
            str(raster),
            '--output',
            str(out),
            '--window',
            str(args.window),
            '--chunk-size',
            str(args.chunk_size),
            '--threads',
            str(args.threads),
        ]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        said = [x for x in done.stderr.splitlines() if x.startswith('xscale segment:')]
        if said:
            print('  ' + said[0])
        peak, loaded = r['peak_kb'] / 1024, r['loaded_kb'] / 1024
        whole = 3 * size * size * 4 / 2**20
        results.append((size, peak))
        print(
            f'{size:>5} x {size:<5} {size * size / 1e6:6.1f} {peak:12.0f} {loaded:14.0f} '
            f'{peak - loaded:11.0f} {whole:20.0f} {r["seconds"]:7.1f}'
        )
    (small, p0), (large, p1) = results[0], results[-1]
    print(
        f'ratio: {large}² has {(large / small) ** 2:.0f}x the pixels of {small}², '
        f'peak RSS ratio {p1 / p0:.2f}'
    )


if __name__ == '__main__':
    main()
