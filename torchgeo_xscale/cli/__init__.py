"""The ``xscale`` command: one module per subcommand, one ``main(argv) -> int`` each.

``xscale fit|validate|test|predict`` are TorchGeo-style
:class:`~lightning.pytorch.cli.LightningCLI` subcommands
(:mod:`torchgeo_xscale.cli.lightning`); the others are argparse commands, each in
its own module of this package (:data:`COMMANDS`). :func:`main` hands the first
word to its module; ``xscale --help`` lists them all with one line each.

To add a command: write ``torchgeo_xscale/cli/<name>.py`` with a
``main(argv: Sequence[str] | None = None) -> int`` (its parser from
:func:`~torchgeo_xscale.cli.common.command_parser`, with
:func:`~torchgeo_xscale.cli.common.add_quiet` when it runs long loops) and add a
line to :data:`COMMANDS`.
"""

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from .lightning import XScaleCLI, lightning_cli

__all__ = ('COMMANDS', 'XScaleCLI', 'lightning_cli', 'main', 'main_parser')

#: ``xscale`` subcommands other than LightningCLI's: name -> (module, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    'demo': (
        'torchgeo_xscale.cli.demo',
        'Pretrain a small Cross-Scale MAE on real GeoTIFFs (CPU, minutes).',
    ),
    'eval': (
        'torchgeo_xscale.cli.eval',
        'Evaluate an encoder across scales (knn, linear, reconstruction...).',
    ),
    'study': (
        'torchgeo_xscale.cli.study',
        'Equal-budget pretraining study: Cross-Scale MAE vs MAE baselines.',
    ),
    'segment': (
        'torchgeo_xscale.cli.segment',
        'Segment a GeoTIFF of any size with a fine-tuned checkpoint.',
    ),
    'scale-study': (
        'torchgeo_xscale.cli.scale_study',
        "Fine-tune and test at each scale ratio (the paper's Table 4).",
    ),
    'weights': (
        'torchgeo_xscale.cli.weights',
        'List, import and export pretrained weights.',
    ),
    'embed': (
        'torchgeo_xscale.cli.embed',
        'Per-tile embeddings of GeoTIFFs as GeoParquet.',
    ),
}


def _lightning_commands() -> dict[str, str]:
    """LightningCLI's subcommands with the first sentence of the Trainer method's doc.

    The same docstrings LightningCLI's own subcommand help is made of.
    """
    from lightning.pytorch import Trainer

    commands = {}
    for name in XScaleCLI.subcommands():
        doc = (getattr(Trainer, name).__doc__ or '').strip()
        first = ' '.join(doc.split('\n\n')[0].split())
        commands[name] = first.split('. ')[0].rstrip('.') + '.'
    return commands


def main_parser() -> argparse.ArgumentParser:
    """The parser of ``xscale`` itself, for its ``--help`` and its errors.

    Returns:
        A parser listing every subcommand (it does not parse their arguments).
    """
    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    import torchgeo_xscale

    parser = argparse.ArgumentParser(
        prog='xscale',
        description='Cross-Scale MAE for TorchGeo. '
        '`xscale COMMAND --help` shows the arguments of a command.',
        epilog='fit, validate, test and predict are LightningCLI subcommands '
        '(-c/--config x.yaml, --print_config, --model.init_args.*, --trainer.*).',
    )
    parser.add_argument(
        '--version', action='version', version=torchgeo_xscale.__version__
    )
    sub = parser.add_subparsers(title='commands', metavar='COMMAND', dest='command')
    for name, line in _lightning_commands().items():
        sub.add_parser(name, help=line, add_help=False)
    for name, (_, line) in COMMANDS.items():
        sub.add_parser(name, help=line, add_help=False)
    return parser


def _command(name: str) -> Callable[[Sequence[str]], int]:
    return importlib.import_module(COMMANDS[name][0]).main  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xscale`` console script.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return _command(args[0])(args[1:])
    if not args or args[0] in ('-h', '--help'):
        main_parser().print_help(None if args else sys.stderr)
        return 0 if args else 2
    if not args[0].startswith('-') and args[0] not in XScaleCLI.subcommands():
        main_parser().parse_args(args[:1])  # exits: invalid choice, listing them
    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    from .lightning import main as lightning_main

    return lightning_main(args)
