"""Figures of a training run, made on rank 0 only without any collective call.

In a multi-process run a figure is drawn by global rank 0 alone while the other
ranks go on to the next gradient all-reduce. Anything collective on rank 0's way
(``Trainer.log_dir`` broadcasts the directory from rank 0) would then wait forever
for ranks that never join it. So the log directory is resolved once per stage in
the task's ``setup`` hook, which Lightning runs on every rank at the same point
(:func:`resolve_log_dir`), and :func:`log_figure` only touches this process's files
and the rank-0 TensorBoard writer.
"""

import os
from typing import TYPE_CHECKING, Any

from lightning.pytorch import LightningModule, Trainer

from ..plotting import save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ('log_figure', 'resolve_log_dir')


def resolve_log_dir(trainer: Trainer) -> str:
    """The run's log directory, the same on every rank.

    Collective (``Trainer.log_dir`` is a broadcast in multi-process runs): call it on
    every rank at the same point, e.g. in ``setup``, and keep the result.

    Args:
        trainer: The trainer.

    Returns:
        ``trainer.log_dir`` (the first logger's folder, e.g.
        ``lightning_logs/version_N``), else ``trainer.default_root_dir``.
    """
    return trainer.log_dir or trainer.default_root_dir


def log_figure(
    module: LightningModule, fig: 'Figure', log_dir: str, name: str, tag: str
) -> str:
    """Save *fig* as ``<log_dir>/<name>`` and add it to every TensorBoard logger.

    Nothing collective: safe on rank 0 alone.

    Args:
        module: The task (its loggers and ``global_step``).
        fig: The figure (closed afterwards).
        log_dir: Folder from :func:`resolve_log_dir`.
        name: File name relative to *log_dir*, e.g. ``reconstructions/step_0.png``.
        tag: TensorBoard tag.

    Returns:
        The path of the PNG written.
    """
    for logger in module.loggers:
        experiment: Any = getattr(logger, 'experiment', None)
        if hasattr(experiment, 'add_figure'):
            experiment.add_figure(tag, fig, module.global_step, close=False)
    return save_figure(fig, os.path.join(log_dir, name))
