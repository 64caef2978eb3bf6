"""Peak memory of ``xscale embed`` against raster size (default 2k² and 8k² pixels).

Writes tiled, compressed 3-band GeoTIFFs of each size, then runs ``xscale embed``
(GeoParquet plus the embedding GeoTIFF with ``--pca 3``) on each in a fresh process and
prints that process's peak resident memory (``getrusage``), the memory after loading
the encoder (the fixed part), the time and the rows written. Memory should stay flat
while the raster grows 16-fold.

    python benchmarks/embed_memory.py [--sizes 2048 8192] [--tile-size 128]
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

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / 'benchmarks'):
    if str(folder) not in sys.path:  # run from a checkout without installing
        sys.path.insert(0, str(folder))

from segment_memory import write_raster  # noqa: E402  (the same blocky rasters)

#: A small ViT (random weights: memory does not depend on them).
VIT = {'img_size': 64, 'patch_size': 8, 'embed_dim': 64, 'depth': 4, 'num_heads': 4}


def child(args: argparse.Namespace) -> None:
    """Run ``xscale embed`` in this process; print peak RSS as JSON."""
    import pyarrow.parquet as pq
    import torch

    from torchgeo_xscale.cli import main
    from torchgeo_xscale.evaluation.encoders import load_encoder

    torch.set_num_threads(args.threads)
    load_encoder('small', model_kwargs=VIT)  # imports + model: the fixed part
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    argv = ['embed', '--encoder', 'small', '--model-kwargs', json.dumps(VIT)]
    argv += ['--input', args.input, '--output', args.output, '--quiet']
    argv += ['--raster', args.output + '.tif', '--pca', '3']
    argv += ['--tile-size', str(args.tile_size), '--batch-size', '32']
    main(argv)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = pq.ParquetFile(args.output).metadata.num_rows
    print(
        json.dumps({'loaded_kb': loaded, 'peak_kb': peak, 's': seconds, 'rows': rows})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[2048, 8192])
    parser.add_argument('--tile-size', type=int, default=128)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--workdir', help='folder for rasters (default: a temp folder)')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--input', help=argparse.SUPPRESS)
    parser.add_argument('--output', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix='embed_memory_'))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f'machine: {os.cpu_count()} CPUs, torch threads {args.threads}; tiles '
        f'{args.tile_size} px; encoder: ViT D={VIT["embed_dim"]}, {VIT["depth"]} '
        'blocks, patch 8; outputs: GeoParquet + embedding GeoTIFF (PCA 3)'
    )
    print(
        f'{"raster":>12} {"MPix":>6} {"tiles":>7} {"peak RSS MB":>12} '
        f'{"after load MB":>14} {"embed MB":>9} {"whole raster f32 MB":>20} {"s":>7}'
    )
    results = []
    for size in args.sizes:
        raster = work / f'scene_{size}.tif'
        if not raster.exists():
            write_raster(raster, size)
        out = work / f'tiles_{size}.parquet'
        cmd = [sys.executable, __file__, '--child', '--input', str(raster)]
        cmd += ['--output', str(out), '--tile-size', str(args.tile_size)]
        cmd += ['--threads', str(args.threads)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(line.strip().splitlines()[-1])
        peak, loaded = r['peak_kb'] / 1024, r['loaded_kb'] / 1024
        whole = 3 * size * size * 4 / 2**20
        results.append((size, peak))
        print(
            f'{size:>5} x {size:<5} {size * size / 1e6:6.1f} {r["rows"]:7d} '
            f'{peak:12.0f} {loaded:14.0f} {peak - loaded:9.0f} {whole:20.0f} '
            f'{r["s"]:7.1f}'
        )
    (small, p0), (large, p1) = results[0], results[-1]
    print(
        f'ratio: {large}² has {(large / small) ** 2:.0f}x the pixels of {small}², '
        f'peak RSS ratio {p1 / p0:.2f}'
    )


if __name__ == '__main__':
    main()
