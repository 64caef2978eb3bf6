"""The device-side half of every pretraining datamodule: normalise, views, weights.

A pretraining batch goes one way, each step in one file:

1. the dataset reads raw pixels, ``valid`` and ``gsd``
   (:class:`~torchgeo_xscale.datasets.GeoTIFFDataset`,
   :class:`~torchgeo_xscale.datasets.FMoWRGB`);
2. the datamodule's :meth:`PretrainDataModuleMixin.on_after_batch_transfer` (on the
   device, TorchGeo's place for augmentation) applies its ``train_aug`` / ``val_aug``,
   a :class:`~torchgeo_xscale.transforms.PretrainAugmentation`: normalisation,
   :class:`~torchgeo_xscale.transforms.ScaleViews`, ``sample_weight``; training
   views are seeded from ``(seed, rank, step)``, validation views from the batch's
   content (:mod:`torchgeo_xscale.seeding`);
3. :class:`~torchgeo_xscale.tasks.CrossScaleMAETask` consumes the views (it never
   makes them) and draws the masks, seeded the same way;
4. :class:`~torchgeo_xscale.models.CrossScaleMAE` computes the losses.

Any TorchGeo datamodule whose samples carry ``image``, ``gsd`` (metres per pixel) and
optionally ``valid`` becomes a pretraining datamodule by mixing
:class:`PretrainDataModuleMixin` in before it and calling :meth:`_init_views` in
``__init__`` (see :class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule`).
"""

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ..seeding import content_generator, step_generator
from ..transforms import PretrainAugmentation, ScaleViews

__all__ = ('PretrainDataModuleMixin',)

logger = logging.getLogger(__name__)


class PretrainDataModuleMixin:
    """Normalisation, scale views and ``sample_weight`` on the device, seeded.

    :meth:`on_after_batch_transfer` picks ``train_aug`` while training and
    ``val_aug`` otherwise (falling back to ``aug``, as TorchGeo's
    :class:`~torchgeo.datamodules.BaseDataModule` does) and calls it as
    ``aug(batch, generator)``; all three are one
    :class:`~torchgeo_xscale.transforms.PretrainAugmentation` unless replaced.
    Training tiles with a valid fraction below ``min_valid_fraction`` get
    ``sample_weight`` 0; they are counted and logged about once per epoch.
    """

    trainer: Any
    img_size: int
    seed: int
    # TorchGeo's BaseDataModule attributes; _init_views sets them.
    aug: Any
    train_aug: Any
    val_aug: Any
    mean: Tensor
    std: Tensor

    #: Key of the batch whose content seeds the validation views (subclasses).
    val_seed_key = 'bounds'

    def _init_views(
        self,
        img_size: int,
        min_valid_fraction: float,
        seed: int,
        scale_range: tuple[float, float],
        num_views: int,
        view_mode: Literal['same_footprint', 'crop'],
        flips: bool,
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
    ) -> None:
        """Build the device-side augmentation and its counters.

        Args:
            img_size: Output size of the views.
            min_valid_fraction: Valid fraction below which a sample gets weight 0.
            seed: Seed of the views (with rank and step, or the batch's content).
            scale_range: ``(r_min, r_max)`` of the low-scale views.
            num_views: Views per sample.
            view_mode: ``'same_footprint'`` or ``'crop'``.
            flips: Random flips shared by the views of a sample.
            mean: Per-band mean of the raw pixels (None: set in ``setup``).
            std: Per-band standard deviation.
        """
        self.img_size = img_size
        self.seed = seed
        views = ScaleViews(
            size=img_size,
            scale_range=scale_range,
            num_views=num_views,
            mode=view_mode,
            flips=flips,
        )
        aug = PretrainAugmentation(views, mean, std, min_valid_fraction)
        self.aug = self.train_aug = self.val_aug = aug
        self.mean, self.std = aug.mean, aug.std
        self._skipped = torch.zeros((), dtype=torch.long)
        self._skipped_logged = 0
        self._batches_since_log = 0
        self._batches_per_epoch = 1

    @property
    def augmentation(self) -> PretrainAugmentation:
        """The training augmentation (its views and statistics)."""
        aug = self.train_aug or self.aug
        assert isinstance(aug, PretrainAugmentation), type(aug)
        return aug

    @property
    def views(self) -> ScaleViews:
        """The :class:`~torchgeo_xscale.transforms.ScaleViews` of training."""
        return self.augmentation.views

    @property
    def min_valid_fraction(self) -> float:
        """Valid fraction below which a training tile gets ``sample_weight`` 0."""
        return self.augmentation.min_valid_fraction

    def set_statistics(
        self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor
    ) -> None:
        """Set the per-band normalisation of every augmentation, and ``mean``/``std``.

        Args:
            mean: ``(C,)`` per-band mean of the raw pixels.
            std: ``(C,)`` per-band standard deviation.
        """
        for aug in {
            id(a): a for a in (self.aug, self.train_aug, self.val_aug)
        }.values():
            if isinstance(aug, PretrainAugmentation):
                aug.set_statistics(mean, std)
        self.mean = self.augmentation.mean
        self.std = self.augmentation.std

    @property
    def skipped_tiles(self) -> int:
        """Training tiles so far given ``sample_weight`` 0 (too few valid pixels)."""
        return int(self._skipped.item())

    def _stage(self) -> str:
        """``train``, ``val``, ``test`` or ``predict`` (``train`` without a trainer)."""
        trainer = self.trainer
        if trainer is None or getattr(trainer, 'training', False):
            return 'train'
        if getattr(trainer, 'testing', False):
            return 'test'
        if getattr(trainer, 'predicting', False):
            return 'predict'
        return 'val'

    def view_generator(
        self, batch: dict[str, Any], stage: str
    ) -> torch.Generator | None:
        """The generator of a batch's views.

        Args:
            batch: The batch.
            stage: ``train``, ``val``, ``test`` or ``predict``.

        Returns:
            Training: seeded from ``(seed, rank, step)`` (None without a trainer:
            the global generator); otherwise seeded from the batch's
            :attr:`val_seed_key` content.
        """
        if stage != 'train':
            content = batch.get(self.val_seed_key)
            tensor = content if isinstance(content, Tensor) else None
            return content_generator(self.seed, f'views/{stage}', tensor)
        trainer = self.trainer
        if trainer is None:
            return None
        return step_generator(
            self.seed, trainer.global_rank, trainer.global_step, 'views'
        )

    def on_after_batch_transfer(
        self, batch: dict[str, Any], dataloader_idx: int
    ) -> dict[str, Any]:
        """Normalise, make the scale views and ``sample_weight`` on the batch's device.

        Without a trainer (e.g. called by hand) the batch is treated as training.

        Args:
            batch: collated batch with ``image``, ``gsd`` and ``valid``.
            dataloader_idx: index of the data loader the batch came from.

        Returns:
            The batch with the keys of
            :class:`~torchgeo_xscale.transforms.PretrainAugmentation`.
        """
        stage = self._stage()
        aug = getattr(self, f'{stage}_aug', None)
        if aug is None:
            aug = getattr(self, 'aug', None)
        if aug is None:
            msg = f'{type(self).__name__} has neither {stage}_aug nor aug; call _init_views in __init__'
            raise RuntimeError(msg)
        batch = aug(batch, self.view_generator(batch, stage))
        if stage == 'train':
            keep = batch['sample_weight'] > 0
            self._skipped = self._skipped.to(keep.device) + (~keep).sum()
            self._batches_since_log += 1
            if self._batches_since_log >= self._batches_per_epoch:
                self._log_skipped()
        return batch

    def _log_skipped(self) -> None:
        """Warn about tiles skipped since the last warning (about once per epoch)."""
        total = self.skipped_tiles
        new = total - self._skipped_logged
        if new > 0:
            logger.warning(
                '%d training tiles (%d in all) had a valid fraction below %.2f and '
                'were given sample_weight 0',
                new,
                total,
                self.min_valid_fraction,
            )
        self._skipped_logged = total
        self._batches_since_log = 0
