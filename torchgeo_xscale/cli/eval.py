r"""``xscale eval <protocol> ...``: evaluate representations across scales.

Protocols: ``knn``, ``linear``, ``reconstruction``, ``retrieval`` (see
:mod:`torchgeo_xscale.evaluation`). Each writes ``<name>.csv``, ``<name>.md`` and
``<name>.png`` into ``--output``; a progress bar of the encoded batches goes to
stderr (``--quiet``: none). Examples::

    xscale eval knn --encoder crossscalemae_base_patch16 --weights w.pth \\
        --dataset resisc45 --root data/resisc45
    xscale eval retrieval --encoder outputs/demo/checkpoints/last.ckpt --data data/example
    xscale eval reconstruction --model run_a.ckpt --model run_b.ckpt --data rasters/
"""

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .. import progress
from ..evaluation.datasets import CLASSIFICATION_DATASETS
from ..evaluation.knn import DEFAULT_SCALES
from .common import (
    HelpFormatter,
    add_encoder_options,
    add_quiet,
    command_line,
    command_parser,
)

__all__ = ('eval_parser', 'main')


def _encoder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--encoder',
        required=True,
        help='model name (torchgeo / torchgeo_xscale / timm / ViT size) or checkpoint/.pth file',
    )
    parser.add_argument(
        '--weights', default=None, help="weights entry name, weights file, or 'timm'"
    )
    add_encoder_options(parser)


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
    add_quiet(parser)


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
    parser = command_parser('xscale eval', 'Evaluate representations across scales.')
    sub = parser.add_subparsers(dest='protocol', required=True, metavar='PROTOCOL')

    def protocol(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=text, description=text, formatter_class=HelpFormatter
        )

    knn = protocol('knn', 'kNN classification vs scale (Scale-MAE protocol)')
    _encoder_args(knn)
    _classification_args(knn)
    _common_args(knn, 'knn')
    knn.add_argument('--k', type=int, default=20)
    knn.add_argument('--temperature', type=float, default=0.07)

    linear = protocol('linear', 'linear probe vs scale')
    _encoder_args(linear)
    _classification_args(linear)
    _common_args(linear, 'linear')
    linear.add_argument('--epochs', type=int, default=100)
    linear.add_argument('--lr', type=float, default=1e-3)
    linear.add_argument('--seed', type=int, default=0)

    recon = protocol(
        'reconstruction', 'multi-scale reconstruction MSE/SSIM on GeoTIFFs'
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

    retrieval = protocol(
        'retrieval', 'cross-scale retrieval on GeoTIFF tiles (label-free)'
    )
    _encoder_args(retrieval)
    _tile_args(retrieval)
    _common_args(retrieval, 'retrieval')
    return parser


def _print_rows(rows: list[dict[str, Any]], output: str) -> None:
    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    from ..evaluation.report import markdown_table

    print(markdown_table(rows))
    print(f'report written to {output}')


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xscale eval <protocol> ...``.

    Args:
        argv: Arguments after ``eval`` (default ``sys.argv[2:]``).

    Returns:
        Exit status 0.
    """
    argv = list(sys.argv[2:] if argv is None else argv)
    args = eval_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    with progress.quiet(args.quiet):
        rows = _run(args, command_line('xscale eval', argv))
    _print_rows(rows, args.output)
    return 0


def _run(args: argparse.Namespace, command: str) -> list[dict[str, Any]]:
    """Run the chosen protocol; its result rows."""
    if args.protocol in ('knn', 'linear') and args.protocol_name == 'scale-transfer':
        # deferred: `xscale --help` imports every command module, so each
        # command imports what it runs only when it runs
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
            # deferred: `xscale --help` imports every command module, so each
            # command imports what it runs only when it runs
            from ..evaluation.knn import run_knn

            rows = run_knn(k=args.k, temperature=args.temperature, **common)
        else:
            # deferred: `xscale --help` imports every command module, so each
            # command imports what it runs only when it runs
            from ..evaluation.linear_probe import run_linear_probe

            rows = run_linear_probe(
                epochs=args.epochs, lr=args.lr, seed=args.seed, **common
            )
    elif args.protocol == 'reconstruction':
        # deferred: `xscale --help` imports every command module, so each
        # command imports what it runs only when it runs
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
        # deferred: `xscale --help` imports every command module, so each
        # command imports what it runs only when it runs
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
    return rows
