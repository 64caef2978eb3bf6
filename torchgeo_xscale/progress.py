"""Progress bars of the long loops, one switch for all of them.

Every long loop of the package (``xscale segment``'s windows, ``xscale embed``'s
tiles, the evaluation protocols' batches, ``xscale study``'s training steps, the MD5
check of a weights import) shows a :mod:`tqdm` bar on **stderr**, so that stdout
keeps only results. The commands' ``--quiet`` turns them all off through
:func:`quiet`; from Python, :func:`set_enabled` does the same::

    from torchgeo_xscale import progress

    progress.set_enabled(False)  # no bars from here on

Bars are shown even when stderr is not a terminal (a log file, a CI job), unlike
tqdm's ``disable=None``, so that a long run in a job log says where it is.
"""

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from tqdm.auto import tqdm

__all__ = ('StepProgressBar', 'enabled', 'progress_bar', 'quiet', 'set_enabled')

_ENABLED = True


def enabled() -> bool:
    """Whether progress bars are shown.

    Returns:
        True unless turned off by :func:`set_enabled` or inside :func:`quiet`.
    """
    return _ENABLED


def set_enabled(value: bool) -> None:
    """Turn every progress bar of the package on or off.

    Args:
        value: Show bars.
    """
    global _ENABLED
    _ENABLED = bool(value)


@contextlib.contextmanager
def quiet(value: bool = True) -> Iterator[None]:
    """Turn the bars off (``value=True``) for the duration of a ``with`` block.

    Args:
        value: No bars inside the block (False: leave the setting as it is).

    Yields:
        Nothing.
    """
    before = _ENABLED
    if value:
        set_enabled(False)
    try:
        yield
    finally:
        set_enabled(before)


def progress_bar[T](
    iterable: Iterable[T] | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    unit: str = 'it',
    disable: bool | None = None,
    **kwargs: Any,
) -> 'tqdm[T]':
    """A tqdm bar on stderr that follows the package's switch.

    Args:
        iterable: What to iterate over (None: call ``update`` yourself).
        total: Number of steps (default: ``len(iterable)`` when it has one).
        desc: Text in front of the bar.
        unit: Name of one step.
        disable: Force the bar off (True) or on (False); None follows
            :func:`enabled`.
        **kwargs: More :class:`tqdm.tqdm` arguments (``unit_scale``...).

    Returns:
        The bar (a context manager and an iterable, as tqdm's).
    """
    off = not _ENABLED if disable is None else disable
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=off,
        dynamic_ncols=True,
        leave=kwargs.pop('leave', False),
        **kwargs,
    )


class StepProgressBar(Callback):
    """A Lightning callback: a :func:`progress_bar` of the optimiser steps of a fit.

    For runs whose Trainer shows no progress bar of its own (``xscale study``
    trains many small runs with ``enable_progress_bar=False``).

    Args:
        desc: Text in front of the bar.
    """

    def __init__(self, desc: str) -> None:
        """Initialise the callback; the bar opens when training starts."""
        self.desc = desc
        self._bar: tqdm[Any] | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Open the bar with the run's number of steps."""
        total = trainer.estimated_stepping_batches
        self._bar = progress_bar(
            total=None if total == float('inf') else int(total),
            desc=self.desc,
            unit='step',
            initial=trainer.global_step,
            leave=True,
        )

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Advance the bar to the trainer's step."""
        if self._bar is not None:
            self._bar.update(trainer.global_step - self._bar.n)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
