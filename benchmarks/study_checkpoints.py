"""Evaluate the checkpoints a study saved, also of a study that was stopped part-way.

``xscale study`` saves every trained run as ``<output>/runs/<method>_seed<N>/last.ckpt``
before it evaluates, and writes its tables once a seed is complete. When a study
must be stopped (e.g. a shared machine that runs it far slower than an idle one),
this script evaluates the runs that did finish, with the same held-out tiles,
retrieval and reconstruction protocol, and writes the same ``runs.csv``,
``retrieval.csv`` and ``reconstruction.csv`` (merge them with
``benchmarks/study_tables.py``)::

    python benchmarks/study_checkpoints.py outputs/study_core outputs/study_core_s1 \\
        --output outputs/ckpt --runs xscale_paper_seed1 mae_seed2 --until 14:30

(``--runs``: the runs to evaluate, waited for until ``--until`` (UTC) as they
finish; without it, every finished run of the folders.)

Training minutes are not in a checkpoint; ``runs.csv`` has NaN there, and the last
epoch's losses and collapse signal from the run's ``metrics.csv``.
"""

import argparse
import csv
import logging
import math
import os
import sys
import time
from pathlib import Path

from lightning.pytorch import seed_everything

from torchgeo_xscale.evaluation.reconstruction import (
    MAEReconstructor,
    evaluate_reconstruction,
)
from torchgeo_xscale.evaluation.report import write_csv
from torchgeo_xscale.study import (
    StudyConfig,
    _encoder,
    _held_out_tiles,
    _pool,
    _rasters,
    _retrieval_rows,
    build_task,
)


def last_epoch(metrics: Path) -> dict[str, float]:
    """Epoch means of the last epoch in a run's ``metrics.csv``."""
    out: dict[str, float] = {}
    with open(metrics) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key.endswith('_epoch') and value:
                    out[key[: -len('_epoch')]] = float(value)
    return out


def main() -> int:
    """Evaluate every finished run of a study folder."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('study', nargs='+', help='output folders of the study')
    p.add_argument('--runs', nargs='*', help='runs (<method>_seed<N>) to evaluate')
    p.add_argument('--until', help='UTC HH:MM after which to stop waiting')
    p.add_argument(
        '--pooled-only',
        action='store_true',
        help='retrieval over the pooled tiles only (not also within each raster)',
    )
    p.add_argument('--no-reconstruction', action='store_true', help='retrieval only')
    p.add_argument('--output', required=True)
    p.add_argument('--skip', nargs='*', default=[], help='run folders to leave out')
    p.add_argument('--data', default='data/study')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--batch-size', type=int, default=16, help="the study's")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    import torch
    from torchgeo.tasks import MAE

    from torchgeo_xscale.tasks import CrossScaleMAETask

    torch.set_num_threads(args.threads)
    config = StudyConfig(data=args.data, output=args.output)
    os.makedirs(args.output, exist_ok=True)
    rasters = _rasters(config)
    tiles = _held_out_tiles(config, rasters)
    pooled = _pool(tiles)
    runs, retrieval, recon = [], [], []
    by_seed: dict[int, list[tuple[str, object]]] = {}

    def find(name: str) -> Path | None:
        for folder in args.study:
            path = Path(folder, 'runs', name, 'last.ckpt')
            if path.exists():
                return path
        return None

    names = args.runs or sorted(
        {c.parent.name for f in args.study for c in Path(f, 'runs').glob('*/last.ckpt')}
    )
    pending = [n for n in names if n not in args.skip]
    while pending:
        ready = [n for n in pending if find(n)]
        if not ready:
            if args.until and time.strftime('%H:%M', time.gmtime()) >= args.until:
                logging.info('not finished by %s: %s', args.until, pending)
                break
            time.sleep(20)
            continue
        name = ready[0]
        pending.remove(name)
        ckpt = find(name)
        assert ckpt is not None
        time.sleep(5)  # the checkpoint is written atomically; metrics.csv after it
        method, seed_text = name.rsplit('_seed', 1)
        seed = int(seed_text)
        cls = MAE if method == 'torchgeo_mae' else CrossScaleMAETask
        if method == 'torchgeo_mae':
            build_task(method, config)  # registers its timm ViT name
        task = cls.load_from_checkpoint(str(ckpt), map_location='cpu').eval()
        last = last_epoch(ckpt.parent / 'metrics.csv')
        steps = torch.load(ckpt, map_location='cpu', weights_only=False)['global_step']
        runs.append(
            {
                'method': method,
                'seed': seed,
                'checkpoint': str(ckpt),
                'minutes': math.nan,
                'tiles_seen': steps * args.batch_size,
                'final_loss': last.get('train_loss', math.nan),
                **{
                    f'final_loss_{k}': last.get(f'train_loss_{k}', math.nan)
                    for k in ('re', 'cc', 'cp')
                },
                'final_cp_target_std': last.get('train_cp_target_std', math.nan),
            }
        )
        retrieval += _retrieval_rows(
            _encoder(method, task),
            pooled,
            {} if args.pooled_only else tiles,
            config.scales,
            seed=seed,
        )
        by_seed.setdefault(seed, []).append((method, task))
        write_csv(runs, os.path.join(args.output, 'runs.csv'))
        write_csv(retrieval, os.path.join(args.output, 'retrieval.csv'))
        logging.info('%s: evaluated (%s)', name, time.strftime('%H:%M:%S'))
    for seed, tasks in by_seed.items():
        if args.no_reconstruction:
            break
        seed_everything(seed)
        untrained = _encoder('cross_scale_mae', build_task('cross_scale_mae', config))
        untrained.name = 'random_init'
        retrieval += _retrieval_rows(untrained, pooled, tiles, config.scales, seed=seed)
        recons = [MAEReconstructor(task, method) for method, task in tasks]
        rows, _ = evaluate_reconstruction(
            recons, pooled, config.scales, config.repeats, seed=seed
        )
        recon.extend({**row, 'seed': seed} for row in rows)
    write_csv(runs, os.path.join(args.output, 'runs.csv'))
    write_csv(retrieval, os.path.join(args.output, 'retrieval.csv'))
    write_csv(recon, os.path.join(args.output, 'reconstruction.csv'))
    print(f'{len(runs)} runs evaluated into {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
