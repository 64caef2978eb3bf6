"""The ``xscale`` command: TorchGeo's LightningCLI plus project subcommands.

``xscale fit|validate|test|predict --config x.yaml`` is a
:class:`~lightning.pytorch.cli.LightningCLI` in subclass mode, as ``torchgeo``'s own
command. Other first words dispatch to the subcommands in :data:`SUBCOMMANDS`.
"""

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

#: Extra subcommands: name -> ``module:function`` taking the remaining arguments.
SUBCOMMANDS: dict[str, str] = {
    'demo': 'torchgeo_xscale.demo:main',
    'embed': 'torchgeo_xscale.cli.embed:main',
    'eval': 'torchgeo_xscale.cli.eval:eval_main',
    'study': 'torchgeo_xscale.cli.eval:study_main',
    'weights': 'torchgeo_xscale.cli.weights:main',
    'segment': 'torchgeo_xscale.cli.segment:segment_main',
    'scale-study': 'torchgeo_xscale.cli.segment:scale_study_main',
}


def _subcommand(name: str) -> Callable[[Sequence[str]], int | None]:
    module, func = SUBCOMMANDS[name].split(':')
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


class XScaleCLI(LightningCLI):
    """LightningCLI that refuses a ``--ckpt_path`` contradicting the command line.

    Lightning replaces the model arguments by the checkpoint's hyper-parameters when
    ``--ckpt_path`` is given, so a checkpoint of another size, band count or task
    would silently be trained instead of the requested model. Here the arguments
    given explicitly (config files and command line, not defaults) are compared with
    the checkpoint's first (:func:`~torchgeo_xscale.tasks.checkpoint.check_resume`).
    """

    _resume_settings: dict[str, Any]

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, then check ``--ckpt_path`` against the explicitly given model.

        Args:
            parser: The parser.
            args: The arguments (None: ``sys.argv[1:]``).

        Raises:
            CheckpointMismatchError: If the checkpoint contradicts the command line.
        """
        from ..tasks.checkpoint import check_resume

        super().parse_arguments(parser, args)
        self._resume_settings = {}
        subcommand = self.config.get('subcommand')
        ckpt_path = self.config[subcommand].get('ckpt_path') if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return  # as Lightning: only a checkpoint file's hyper-parameters are read
        if args is None or isinstance(args, list):
            argv = sys.argv[1:] if args is None else args
            given = parser.parse_args(argv, defaults=False)
        else:
            given = parser.parse_object(args, defaults=False)
        self._resume_settings = check_resume(ckpt_path, given[subcommand].get('model'))

    def before_instantiate_classes(self) -> None:
        """Keep the requested values of the task's ``resume_settings``."""
        if self._resume_settings:
            model = self.config[self.config['subcommand']]['model']
            for key, value in self._resume_settings.items():
                where = (
                    'init_args'
                    if key in (model.get('init_args') or {})
                    else 'dict_kwargs'
                )
                rank_zero_info(
                    f'--ckpt_path: {key}={value!r} from the command line '
                    f'(the checkpoint has {model[where][key]!r})'
                )
                model[where][key] = value


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
    return XScaleCLI(
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
    from ..tasks.checkpoint import CheckpointMismatchError

    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv[0])(argv[1:])
    try:
        lightning_cli(argv)
    except CheckpointMismatchError as err:
        print(f'xscale: error: {err}', file=sys.stderr)
        return 2
    return None
