"""``xscale fit|validate|test|predict``: TorchGeo's LightningCLI with our checks.

``xscale fit --config x.yaml`` is a :class:`~lightning.pytorch.cli.LightningCLI` in
subclass mode, as ``torchgeo``'s own command: ``--model`` is any TorchGeo task
(``CrossScaleMAETask``, ``XScaleSegmentationTask``...), ``--data`` any TorchGeo
datamodule, both by their short class names.
"""

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..tasks.checkpoint import RENAMED_HPARAMS

__all__ = ('ConfigError', 'XScaleCLI', 'lightning_cli', 'main')


class ConfigError(ValueError):
    """A config file or command line the task refuses (one line, exit status 2)."""


def _refuse_renamed(config: Any) -> None:
    """Refuse ``in_chans`` in ``--model.init_args`` or ``--data.init_args`` in one line.

    The band count is ``in_channels`` in TorchGeo's tasks and datamodules (and
    ours, :mod:`torchgeo_xscale.renames`); the old name, from a config file or the
    command line, is refused before anything is built.

    Raises:
        ConfigError: Naming the new key and the value to give it.
    """
    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    from ..renames import RENAMED_ARGS, renamed_message
    from ..tasks.pretrain import in_chans_renamed

    for section in ('model', 'data'):
        spec = config.get(section) if isinstance(config, Namespace) else None
        for where in ('init_args', 'dict_kwargs'):
            args = spec.get(where) if isinstance(spec, Namespace | dict) else None
            if not isinstance(args, Namespace | dict):
                continue
            for old in RENAMED_ARGS:
                value = args.get(old)
                if value is None:
                    continue
                if section == 'model' and old == 'in_chans':
                    raise ConfigError(in_chans_renamed(value))
                raise ConfigError(renamed_message(old, value, section))


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
        # deferred: `xscale --help` imports every command module, so each
        # command imports what it runs only when it runs
        from ..tasks.checkpoint import check_resume

        # As LightningCLI.parse_arguments, without its warning about ``args`` given
        # while ``sys.argv`` has arguments: ``xscale`` always passes its arguments
        # explicitly (its own dispatcher and ``xscale scale-study`` call it from
        # Python), so the two never disagree.
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)
        self._resume_settings = {}
        subcommand = self.config.get('subcommand')
        _refuse_renamed(self.config[subcommand] if subcommand else self.config)
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
        """Map the renamed hyper-parameters of an old ``--ckpt_path``.

        Then keep the requested values of the task's ``resume_settings``.
        """
        subcommand = self.config.get('subcommand')
        if subcommand and self.config[subcommand].get('ckpt_path'):
            self._upgrade_checkpoint_hparams(self.config[subcommand]['model'])
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

    @staticmethod
    def _upgrade_checkpoint_hparams(model: Any) -> None:
        """``in_chans`` of a checkpoint written before the rename -> ``in_channels``.

        Lightning puts the checkpoint's hyper-parameters into the model's config
        (``init_args`` or ``dict_kwargs``); the old name would be refused by the task.
        """
        for old, new in RENAMED_HPARAMS.items():
            for where in ('init_args', 'dict_kwargs'):
                args = model.get(where) if isinstance(model, Namespace) else None
                if not args or args.get(old) is None:
                    continue
                value = args[old]
                if where == 'dict_kwargs':
                    del args[old]
                else:
                    args[old] = None
                (model.get('dict_kwargs') or {}).pop(new, None)
                model['init_args'][new] = value
                rank_zero_warn(
                    f'--ckpt_path: the checkpoint stores {old}={value!r} (written before '
                    f'{old} was renamed {new}); read as {new}={value!r}'
                )


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

    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    import torchgeo_xscale.datamodules
    import torchgeo_xscale.tasks

    os.environ.setdefault('GDAL_DISABLE_READDIR_ON_OPEN', 'EMPTY_DIR')
    return XScaleCLI(
        model_class=BaseTask,
        datamodule_class=BaseDataModule,
        seed_everything_default=0,
        parser_kwargs={'prog': 'xscale', 'version': torchgeo_xscale.__version__},
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={'overwrite': True},
        trainer_defaults={
            'plugins': {'class_path': 'torchgeo_xscale.io.AtomicCheckpointIO'}
        },
        args=args,
        run=run,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xscale fit|validate|test|predict ...``.

    Args:
        argv: Arguments from the subcommand on (default ``sys.argv[1:]``).

    Returns:
        Exit status: 0, or 2 when ``--ckpt_path`` contradicts the command line or
        the config uses a renamed argument (one line on stderr).
    """
    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    from ..tasks.checkpoint import CheckpointMismatchError

    try:
        lightning_cli(list(sys.argv[1:] if argv is None else argv))
    except (CheckpointMismatchError, ConfigError) as err:
        print(f'xscale: error: {err}', file=sys.stderr)
        return 2
    return 0
