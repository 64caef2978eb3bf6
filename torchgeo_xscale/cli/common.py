"""What the ``xscale`` subcommands share: the help layout, ``--quiet``, the command line.

Every argparse subcommand builds its parser with :func:`command_parser`, so that
``--help`` shows the defaults the same way, and adds :func:`add_quiet`.
"""

import argparse
import copy
import json
import shlex
from collections.abc import Sequence

__all__ = ('HelpFormatter', 'add_quiet', 'command_line', 'command_parser')


class HelpFormatter(
    argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
):
    """Show each default, keep the description's line breaks.

    Required arguments and None / False defaults show none: their help says what
    happens without them.
    """

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        default = action.default
        hidden = default is None or default is False or default == argparse.SUPPRESS
        return bool(action.option_strings) and not (action.required or hidden)

    def _get_help_string(self, action: argparse.Action) -> str:
        if not self._shows_default(action):
            return action.help or ''
        return super()._get_help_string(action) or ''

    def _format_action(self, action: argparse.Action) -> str:
        # argparse prints no help column for an argument without help text: give
        # such an argument one, so that its default shows too.
        if not action.help and self._shows_default(action):
            action = copy.copy(action)
            action.help = '(default: %(default)s)'
        return super()._format_action(action)


def command_parser(
    prog: str, description: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand's parser with the shared help layout.

    Args:
        prog: Program name shown in usage (``xscale segment``).
        description: Plain text (no reStructuredText markup: it is printed as is).
        epilog: Plain text after the arguments (examples...).

    Returns:
        The parser.
    """
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=HelpFormatter,
    )


def add_quiet(parser: argparse.ArgumentParser, what: str = 'no progress bars') -> None:
    """Add ``--quiet``: turn the progress bars (on stderr) off.

    Args:
        parser: The parser or subparser.
        what: Help text.
    """
    parser.add_argument('--quiet', action='store_true', help=what)


def add_encoder_options(
    parser: argparse.ArgumentParser, pooled: str = 'feature'
) -> None:
    """Add ``--pool`` and ``--model-kwargs``, shared by the commands that embed tiles.

    Args:
        parser: The command's parser.
        pooled: What the pooled vector is called in the help (``feature``,
            ``embedding``).
    """
    parser.add_argument(
        '--pool',
        choices=('mean', 'cls'),
        default='mean',
        help=f'{pooled}: mean of patch tokens or CLS',
    )
    parser.add_argument(
        '--model-kwargs',
        type=json.loads,
        default=None,
        help='JSON of extra builder arguments, e.g. \'{"img_size": 128}\'',
    )


def command_line(prog: str, argv: Sequence[str]) -> str:
    """The command as a shell line, for reports.

    Args:
        prog: ``xscale eval`` etc.
        argv: Its arguments.

    Returns:
        The quoted command line.
    """
    return ' '.join([prog, *(shlex.quote(a) for a in argv)])
