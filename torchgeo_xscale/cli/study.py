"""``xscale study ...``: the equal-budget pretraining study.

A thin command over :func:`torchgeo_xscale.study.run_study`; it writes
``study.md`` and its tables and figures into ``--output`` and prints the summary.
"""

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from .. import progress
from .common import add_quiet, command_line, command_parser

__all__ = ('main', 'study_parser')


def study_parser() -> argparse.ArgumentParser:
    """The parser of ``xscale study``.

    Returns:
        The parser.
    """
    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    from ..study import ABLATIONS, METHODS, StudyConfig

    d = StudyConfig()
    parser = command_parser(
        'xscale study',
        'Equal-budget pretraining study: Cross-Scale MAE vs MAE vs torchgeo.tasks.MAE, '
        'trained on the same tiles for the same steps, evaluated on held-out tiles '
        "(a progress bar of each run's steps on stderr).",
    )
    parser.add_argument('--seeds', type=int, nargs='+', default=list(d.seeds))
    parser.add_argument('--epochs', type=int, default=d.epochs)
    parser.add_argument('--steps-per-epoch', type=int, default=d.steps_per_epoch)
    parser.add_argument('--batch-size', type=int, default=d.batch_size)
    parser.add_argument('--lr', type=float, default=d.lr)
    parser.add_argument(
        '--scale-range', type=float, nargs=2, default=list(d.scale_range)
    )
    parser.add_argument('--holdout-fraction', type=float, default=d.holdout_fraction)
    parser.add_argument('--eval-stride', type=int, default=d.eval_stride)
    parser.add_argument(
        '--max-tiles-per-raster', type=int, default=d.max_tiles_per_raster
    )
    parser.add_argument('--scales', type=float, nargs='+', default=list(d.scales))
    parser.add_argument('--repeats', type=int, default=d.repeats)
    parser.add_argument(
        '--methods',
        nargs='+',
        choices=[*METHODS, *ABLATIONS],
        default=list(d.methods),
        help='methods to train (xscale_paper: the paper read literally; xscale_re*: '
        'loss ablations; xscale_crop: crop views)',
    )
    parser.add_argument(
        '--model-kwargs',
        type=json.loads,
        default=None,
        help='JSON overriding the ViT settings (e.g. larger models)',
    )
    parser.add_argument(
        '--data', default=d.data, help='cache folder of the study rasters'
    )
    parser.add_argument(
        '--rasters',
        nargs='+',
        default=None,
        help='GeoTIFFs to use instead of the study rasters (all bands)',
    )
    parser.add_argument('--output', default=d.output)
    parser.add_argument('--num-workers', type=int, default=d.num_workers)
    parser.add_argument('--accelerator', default=d.accelerator)
    parser.add_argument(
        '--threads', type=int, default=None, help='torch CPU threads (default: torch)'
    )
    add_quiet(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xscale study ...``.

    Args:
        argv: Arguments after ``study`` (default ``sys.argv[2:]``).

    Returns:
        Exit status 0.
    """
    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    from ..study import StudyConfig, run_study

    argv = list(sys.argv[2:] if argv is None else argv)
    args = study_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    config = StudyConfig(
        seeds=tuple(args.seeds),
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        scale_range=tuple(args.scale_range),
        holdout_fraction=args.holdout_fraction,
        eval_stride=args.eval_stride,
        max_tiles_per_raster=args.max_tiles_per_raster,
        scales=tuple(args.scales),
        repeats=args.repeats,
        methods=tuple(args.methods),
        data=args.data,
        rasters=args.rasters,
        output=args.output,
        num_workers=args.num_workers,
        accelerator=args.accelerator,
        num_threads=args.threads,
    )
    if args.model_kwargs:
        config.model.update(args.model_kwargs)
    with progress.quiet(args.quiet):
        result = run_study(config, command=command_line('xscale study', argv))
    with open(result['summary']) as f:
        sys.stdout.write(f.read())
    print(f'\nsummary written to {os.path.abspath(result["summary"])}')
    return 0
