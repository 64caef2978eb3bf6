"""The ``xscale`` command: TorchGeo's LightningCLI plus project subcommands.

``xscale fit|validate|test|predict --config x.yaml`` is a
:class:`~lightning.pytorch.cli.LightningCLI` in subclass mode, as ``torchgeo``'s own
command. Other first words dispatch to the subcommands in :data:`SUBCOMMANDS`.
"""

import importlib
import os
import sys
from collections.abc import Callable, Sequence

from lightning.pytorch.cli import ArgsType, LightningCLI

#: Extra subcommands: name -> ``module:function`` taking the remaining arguments.
SUBCOMMANDS: dict[str, str] = {
    'demo': 'torchgeo_xscale.demo:main',
    'embed': 'torchgeo_xscale.embed_cli:main',
    'eval': 'torchgeo_xscale.eval_cli:eval_main',
    'study': 'torchgeo_xscale.eval_cli:study_main',
    'weights': 'torchgeo_xscale.weights_cli:main',
    'segment': 'torchgeo_xscale.segment_cli:segment_main',
    'scale-study': 'torchgeo_xscale.segment_cli:scale_study_main',
}


def _subcommand(name: str) -> Callable[[Sequence[str]], int | None]:
    module, func = SUBCOMMANDS[name].split(':')
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def lightning_cli(args: ArgsType = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the LightningCLI used by ``xscale fit`` etc.

    Args:
        args: Command-line arguments (default ``sys.argv[1:]``).
        run: Run the subcommand (False: only parse and instantiate).

    Returns:
        The CLI object.
    """
    # Importing registers our tasks and datamodules for short class names.
    from torchgeo.datamodules import BaseDataModule
    from torchgeo.tasks import BaseTask

    import torchgeo_xscale.datamodules
    import torchgeo_xscale.tasks

    os.environ.setdefault('GDAL_DISABLE_READDIR_ON_OPEN', 'EMPTY_DIR')
    return LightningCLI(
        model_class=BaseTask,
        datamodule_class=BaseDataModule,
        seed_everything_default=0,
        parser_kwargs={'version': torchgeo_xscale.__version__},
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={'overwrite': True},
        trainer_defaults={
            'plugins': {'class_path': 'torchgeo_xscale.io.AtomicCheckpointIO'}
        },
        args=args,
        run=run,
    )


def main(args: Sequence[str] | None = None) -> int | None:
    """Entry point of the ``xscale`` console script.

    Args:
        args: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        Exit status of a subcommand, or None after a Lightning run.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv[0])(argv[1:])
    lightning_cli(argv)
    return None
