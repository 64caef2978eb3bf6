r"""``xscale eval <protocol> ...`` and ``xscale study ...``.

Protocols: ``knn``, ``linear``, ``reconstruction``, ``retrieval`` (see
:mod:`torchgeo_xscale.evaluation`). Each writes ``<name>.csv``, ``<name>.md`` and
``<name>.png`` into ``--output``. Examples::

    xscale eval knn --encoder crossscalemae_base_patch16 --weights w.pth \\
        --dataset resisc45 --root data/resisc45
    xscale eval retrieval --encoder outputs/demo/checkpoints/last.ckpt --data data/example
    xscale eval reconstruction --model run_a.ckpt --model run_b.ckpt --data rasters/
    xscale study --seeds 0 1 2
"""

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from ..evaluation.datasets import CLASSIFICATION_DATASETS
from ..evaluation.knn import DEFAULT_SCALES

__all__ = ('eval_main', 'study_main')


def _command(prog: str, argv: Sequence[str]) -> str:
    return ' '.join([prog, *(shlex.quote(a) for a in argv)])


def _encoder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--encoder',
        required=True,
        help='model name (torchgeo / torchgeo_xscale / timm / ViT size) or checkpoint/.pth file',
    )
    parser.add_argument(
        '--weights', default=None, help="weights entry name, weights file, or 'timm'"
    )
    parser.add_argument(
        '--pool',
        choices=('mean', 'cls'),
        default='mean',
        help='feature: mean of patch tokens or CLS',
    )
    parser.add_argument(
        '--model-kwargs',
        type=json.loads,
        default=None,
        help='JSON of extra builder arguments, e.g. \'{"img_size": 128}\'',
    )


def _common_args(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        '--output', default=f'outputs/eval/{name}', help='report folder'
    )
    parser.add_argument(
        '--scales',
        type=float,
        nargs='+',
        default=list(DEFAULT_SCALES),
        help='scale ratios',
    )
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda', 'cuda:1'...")


def _classification_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--dataset', required=True, choices=CLASSIFICATION_DATASETS)
    parser.add_argument('--root', required=True, help='dataset root (TorchGeo layout)')
    parser.add_argument(
        '--split', default='test', choices=('test', 'val'), help='evaluation split'
    )
    parser.add_argument(
        '--normalize', default='dataset', choices=('dataset', 'imagenet', 'none')
    )
    parser.add_argument('--bands', nargs='+', default=None, help='EuroSAT band names')
    parser.add_argument(
        '--train-scale',
        choices=('same', 'full'),
        default='same',
        help='train split at the test scale (same) or at 100%% (full)',
    )
    parser.add_argument(
        '--max-samples', type=int, default=None, help='images per split at most'
    )
    parser.add_argument('--num-workers', type=int, default=0)
    parser.add_argument(
        '--protocol',
        dest='protocol_name',
        choices=('scales', 'scale-transfer'),
        default='scales',
        help='scales: accuracy vs scale ratio (--scales); scale-transfer: fit on '
        'one scale level of a levelled dataset (rsscn7), test on every level',
    )
    parser.add_argument(
        '--train-levels',
        type=int,
        nargs='+',
        default=None,
        help='scale-transfer: levels to fit on (default: all)',
    )
    parser.add_argument(
        '--test-levels',
        type=int,
        nargs='+',
        default=None,
        help='scale-transfer: levels to test on (default: all)',
    )


def _tile_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--data', required=True, nargs='+', help='GeoTIFF folder(s), glob(s) or file(s)'
    )
    parser.add_argument(
        '--tile-size',
        type=int,
        default=None,
        help='tile side (default: model input size)',
    )
    parser.add_argument(
        '--stride', type=int, default=None, help='tile grid step (default: tile size)'
    )
    parser.add_argument(
        '--holdout-fraction',
        type=float,
        default=0.0,
        help='tile only the strip GeoTIFFDataModule(val_fraction=...) held out',
    )
    parser.add_argument('--min-valid-fraction', type=float, default=1.0)
    parser.add_argument('--max-tiles', type=int, default=None)


def eval_parser() -> argparse.ArgumentParser:
    """The parser of ``xscale eval``.

    Returns:
        The parser, one subcommand per protocol.
    """
    parser = argparse.ArgumentParser(
        prog='xscale eval', description='Evaluate representations across scales.'
    )
    sub = parser.add_subparsers(dest='protocol', required=True)
    knn = sub.add_parser('knn', help='kNN classification vs scale (Scale-MAE protocol)')
    _encoder_args(knn)
    _classification_args(knn)
    _common_args(knn, 'knn')
    knn.add_argument('--k', type=int, default=20)
    knn.add_argument('--temperature', type=float, default=0.07)

    linear = sub.add_parser('linear', help='linear probe vs scale')
    _encoder_args(linear)
    _classification_args(linear)
    _common_args(linear, 'linear')
    linear.add_argument('--epochs', type=int, default=100)
    linear.add_argument('--lr', type=float, default=1e-3)
    linear.add_argument('--seed', type=int, default=0)

    recon = sub.add_parser(
        'reconstruction', help='multi-scale reconstruction MSE/SSIM on GeoTIFFs'
    )
    recon.add_argument(
        '--model',
        required=True,
        action='append',
        help='CrossScaleMAETask or torchgeo.tasks.MAE checkpoint (repeat to compare)',
    )
    _tile_args(recon)
    _common_args(recon, 'reconstruction')
    recon.add_argument(
        '--repeats', type=int, default=2, help='random crops + masks per tile and scale'
    )
    recon.add_argument('--mask-ratio', type=float, default=0.75)
    recon.add_argument(
        '--mode', choices=('same_footprint', 'crop'), default='same_footprint'
    )
    recon.add_argument('--seed', type=int, default=0)

    retrieval = sub.add_parser(
        'retrieval', help='cross-scale retrieval on GeoTIFF tiles (label-free)'
    )
    _encoder_args(retrieval)
    _tile_args(retrieval)
    _common_args(retrieval, 'retrieval')
    return parser


def _print_rows(rows: list[dict[str, Any]], output: str) -> None:
    from ..evaluation.report import markdown_table

    print(markdown_table(rows))
    print(f'report written to {output}')


def eval_main(argv: Sequence[str] = ()) -> int:
    """Run ``xscale eval <protocol> ...``.

    Args:
        argv: Arguments after ``eval``.

    Returns:
        Exit status 0.
    """
    args = eval_parser().parse_args(list(argv))
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    command = _command('xscale eval', argv)
    if args.protocol in ('knn', 'linear') and args.protocol_name == 'scale-transfer':
        from ..evaluation.scale_transfer import run_scale_transfer

        rows = run_scale_transfer(
            args.encoder,
            args.dataset,
            args.root,
            args.output,
            classifier=args.protocol,
            weights=args.weights,
            train_levels=args.train_levels,
            test_levels=args.test_levels,
            pool=args.pool,
            normalize=args.normalize,
            max_samples=args.max_samples,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            model_kwargs=args.model_kwargs,
            command=command,
            **(
                {'k': args.k, 'temperature': args.temperature}
                if args.protocol == 'knn'
                else {'epochs': args.epochs, 'lr': args.lr, 'seed': args.seed}
            ),
        )
    elif args.protocol in ('knn', 'linear'):
        common: dict[str, Any] = dict(
            encoder=args.encoder,
            weights=args.weights,
            dataset=args.dataset,
            root=args.root,
            output=args.output,
            scales=args.scales,
            pool=args.pool,
            train_scale=args.train_scale,
            split=args.split,
            normalize=args.normalize,
            bands=args.bands,
            max_samples=args.max_samples,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            model_kwargs=args.model_kwargs,
            command=command,
        )
        if args.protocol == 'knn':
            from ..evaluation.knn import run_knn

            rows = run_knn(k=args.k, temperature=args.temperature, **common)
        else:
            from ..evaluation.linear_probe import run_linear_probe

            rows = run_linear_probe(
                epochs=args.epochs, lr=args.lr, seed=args.seed, **common
            )
    elif args.protocol == 'reconstruction':
        from ..evaluation.reconstruction import run_reconstruction

        rows = run_reconstruction(
            args.model,
            args.data,
            args.output,
            args.scales,
            args.tile_size,
            args.stride,
            args.holdout_fraction,
            args.repeats,
            args.mask_ratio,
            args.mode,
            args.max_tiles,
            args.min_valid_fraction,
            args.seed,
            args.device,
            command=command,
        )
    else:
        from ..evaluation.retrieval import run_retrieval

        rows = run_retrieval(
            args.encoder,
            args.data,
            args.output,
            args.weights,
            args.scales,
            args.pool,
            args.tile_size,
            args.stride,
            args.holdout_fraction,
            args.min_valid_fraction,
            args.max_tiles,
            args.batch_size,
            args.device,
            args.model_kwargs,
            command=command,
        )
    _print_rows(rows, args.output)
    return 0


def study_parser() -> argparse.ArgumentParser:
    """The parser of ``xscale study``.

    Returns:
        The parser.
    """
    from ..evaluation.study import ABLATIONS, METHODS, StudyConfig

    d = StudyConfig()
    parser = argparse.ArgumentParser(
        prog='xscale study',
        description='Equal-budget pretraining study: Cross-Scale MAE vs MAE vs torchgeo.tasks.MAE.',
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
    return parser


def study_main(argv: Sequence[str] = ()) -> int:
    """Run ``xscale study ...``.

    Args:
        argv: Arguments after ``study``.

    Returns:
        Exit status 0.
    """
    from ..evaluation.study import StudyConfig, run_study

    args = study_parser().parse_args(list(argv))
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
    result = run_study(config, command=_command('xscale study', argv))
    with open(result['summary']) as f:
        sys.stdout.write(f.read())
    print(f'\nsummary written to {os.path.abspath(result["summary"])}')
    return 0
