"""Tables of one or more ``xscale study`` outputs, merged (docs/evaluation.md, README).

A study may be run as several processes with the same budget and seeds but different
``--methods`` (to use more cores, or to run the core methods first); this script
merges their ``runs.csv``, ``retrieval.csv`` and ``reconstruction.csv`` and prints
Markdown tables with mean ± std and min-max over seeds, every seed's value, the
per-seed comparison of each method with a reference, and the L_cp collapse signal
of every run (the lowest epoch mean of ``train_cp_target_std`` after the first epoch,
read from each run's ``metrics.csv``)::

    python benchmarks/study_tables.py outputs/study_core outputs/study_rest

``random_init`` (the untrained encoder) of each seed is taken from the first folder
that has it (each process builds it from its first method).
"""

import argparse
import csv
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

#: ``torchgeo_xscale.tasks.pretrain.COLLAPSE_FLOOR`` (not imported: this script needs no torch)
COLLAPSE_FLOOR = 0.2


def read(path: str) -> list[dict[str, Any]]:
    """Rows of a CSV file, numbers as floats (empty list if missing)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for row in csv.DictReader(f):
            out: dict[str, Any] = {}
            for key, value in row.items():
                try:
                    out[key] = float(value)
                except (TypeError, ValueError):
                    out[key] = value
            rows.append(out)
    return rows


def stats(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std (min-max)`` of *values* (sample std)."""
    if not values:
        return ''
    mean = sum(values) / len(values)
    std = (
        math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        if len(values) > 1
        else 0.0
    )
    return (
        f'{mean:.{digits}f} ± {std:.{digits}f} '
        f'({min(values):.{digits}f}-{max(values):.{digits}f})'
    )


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of *rows* (keys of the first row as columns)."""
    if not rows:
        return '(no rows)\n'
    cols = list(rows[0])
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    lines += ['| ' + ' | '.join(str(r.get(c, '')) for c in cols) + ' |' for r in rows]
    return '\n'.join(lines) + '\n'


def min_cp_std(run: dict[str, Any]) -> float:
    """Lowest epoch mean of ``train_cp_target_std`` after epoch 0 (NaN if none)."""
    path = os.path.join(os.path.dirname(str(run['checkpoint'])), 'metrics.csv')
    values = [
        r['train_cp_target_std_epoch']
        for r in read(path)
        if isinstance(r.get('train_cp_target_std_epoch'), float) and r['epoch'] >= 1
    ]
    return min(values) if values else math.nan


def main(argv: Sequence[str] | None = None) -> int:
    """Print the merged tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('folders', nargs='+')
    p.add_argument('--reference', default='cross_scale_mae')
    p.add_argument('--baseline', default='mae')
    args = p.parse_args(argv)
    runs, retrieval, recon, origin = [], [], [], {}
    untrained: dict[int, str] = {}  # seed -> the folder its random_init comes from
    for folder in args.folders:
        for r in read(os.path.join(folder, 'runs.csv')):
            if (r['method'], int(r['seed'])) in origin:
                continue  # a run evaluated twice: the first folder's
            origin[(r['method'], int(r['seed']))] = folder
            runs.append(r)
        for r in read(os.path.join(folder, 'retrieval.csv')):
            if r['model'] == 'random_init':
                if untrained.setdefault(int(r['seed']), folder) != folder:
                    continue
            retrieval.append(r)
        recon += read(os.path.join(folder, 'reconstruction.csv'))
    pooled = [r for r in retrieval if r.get('raster', 'all') == 'all']
    methods = list(dict.fromkeys(r['model'] for r in pooled))
    scales = sorted({r['scale'] for r in pooled})
    seeds = sorted({int(r['seed']) for r in pooled})
    at = {(r['model'], int(r['seed']), r['scale']): r for r in pooled}

    def values(method: str, scale: float, key: str) -> list[float]:
        return [at[(method, s, scale)][key] for s in seeds if (method, s, scale) in at]

    print(f'seeds {seeds}; {int(pooled[0]["n"])} held-out tiles pooled\n')
    print('## Retrieval top-1, mean ± std (min-max) over seeds\n')
    print(
        table(
            [
                {
                    'method': m,
                    'seeds': len(values(m, scales[0], 'top1')),
                    **{
                        f'top-1 @{100 * s:g}%': stats(values(m, s, 'top1'))
                        for s in scales
                        if s < 1
                    },
                }
                for m in methods
            ]
        )
    )
    print('## Retrieval mean rank, mean ± std (min-max) over seeds\n')
    print(
        table(
            [
                {
                    'method': m,
                    **{
                        f'mean rank @{100 * s:g}%': stats(values(m, s, 'mean_rank'), 1)
                        for s in scales
                        if s < 1
                    },
                }
                for m in methods
            ]
        )
    )
    print('## Retrieval top-1 per seed (sN: seed N)\n')
    print(
        table(
            [
                {
                    'method': m,
                    **{
                        f'@{100 * s:g}%': ' / '.join(
                            f's{sd} {at[(m, sd, s)]["top1"]:.3f}'
                            for sd in seeds
                            if (m, sd, s) in at
                        )
                        for s in scales
                        if s < 1
                    },
                }
                for m in methods
            ]
        )
    )
    for ref in (args.reference, args.baseline):
        if ref not in methods:
            continue
        print(f'## Per seed and scale < 100 %: top-1 of each method vs {ref}\n')
        rows = []
        for m in methods:
            if m == ref:
                continue
            wins = losses = ties = 0
            for s in seeds:
                for x in scales:
                    if x >= 1 or (m, s, x) not in at or (ref, s, x) not in at:
                        continue
                    a, b = at[(m, s, x)]['top1'], at[(ref, s, x)]['top1']
                    wins, losses, ties = (
                        wins + (a > b),
                        losses + (a < b),
                        ties + (a == b),
                    )
            rows.append(
                {
                    'method': m,
                    f'higher than {ref}': wins,
                    'lower': losses,
                    'equal': ties,
                }
            )
        print(table(rows))
    rscales = sorted({r['scale'] for r in recon})
    rmethods = list(dict.fromkeys(r['model'] for r in recon))
    print('## Masked-patch reconstruction, mean ± std (min-max) over seeds\n')
    rec = {(r['model'], int(r['seed']), r['scale']): r for r in recon}
    for metric in ('mse', 'ssim'):
        print(
            table(
                [
                    {
                        'method': m,
                        **{
                            f'{metric.upper()} @{100 * s:g}%': stats(
                                [
                                    rec[(m, sd, s)][metric]
                                    for sd in seeds
                                    if (m, sd, s) in rec
                                ]
                            )
                            for s in rscales
                        },
                    }
                    for m in rmethods
                ]
            )
        )
    print(
        f'## Training: minutes per run, final loss, L_cp, collapse signal (floor {COLLAPSE_FLOOR})\n'
    )
    rows = []
    for m in dict.fromkeys(r['method'] for r in runs):
        mine = [r for r in runs if r['method'] == m]
        lows = [min_cp_std(r) for r in mine]
        lows = [v for v in lows if not math.isnan(v)]
        rows.append(
            {
                'method': m,
                'seeds': len(mine),
                'tiles seen': int(mine[0]['tiles_seen']),
                'minutes per run': stats(
                    [r['minutes'] for r in mine if not math.isnan(r['minutes'])], 2
                ),
                'final L_cp': stats(
                    [
                        r['final_loss_cp']
                        for r in mine
                        if not math.isnan(r['final_loss_cp'])
                    ]
                ),
                'final cp_target_std': stats(
                    [
                        r['final_cp_target_std']
                        for r in mine
                        if not math.isnan(r['final_cp_target_std'])
                    ]
                ),
                'lowest epoch cp_target_std (epochs >= 1), per seed': ' / '.join(
                    f'{v:.3f}' for v in lows
                ),
                'above floor in every seed': (
                    ('yes' if min(lows) >= COLLAPSE_FLOOR else 'NO') if lows else '-'
                ),
            }
        )
    print(table(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
