"""The ``xscale`` command, one module per subcommand."""

from .lightning import SUBCOMMANDS, XScaleCLI, lightning_cli, main

__all__ = ('SUBCOMMANDS', 'XScaleCLI', 'lightning_cli', 'main')
