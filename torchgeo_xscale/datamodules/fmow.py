"""Pretraining on fMoW-RGB: per-image GSD from the JSON sidecars, scale views on device."""

import copy
import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchgeo.datamodules import NonGeoDataModule

from ..datasets.fmow import DEFAULT_INDEX_CACHE, FMOW_RGB_MEAN, FMOW_RGB_STD, FMoWRGB
from .pretraining import PretrainDataModuleMixin

__all__ = ('FMoWDataModule',)

logger = logging.getLogger(__name__)


class FMoWDataModule(PretrainDataModuleMixin, NonGeoDataModule):
    """Cross-Scale MAE pretraining data from an fMoW-RGB folder (or CSV indexes).

    Training images are random square crops (``crop_scale`` of the image area, at
    most the shorter side) resized to ``load_size``, shuffled (a
    :class:`~torch.utils.data.DistributedSampler` under DDP, added by Lightning).
    Validation uses centred crops of ``val_samples`` evenly spaced images of the
    ``val`` split (or, without one, of the training split, logged). Each sample's
    ``gsd`` is the JSON's GSD times the crop's pixels per output pixel.

    The dataset returns raw 8-bit pixels; :meth:`on_after_batch_transfer`
    (:class:`~torchgeo_xscale.datamodules.pretraining.PretrainDataModuleMixin`, as
    in :class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule`) normalises them on
    the device with ``mean`` / ``std`` (given on [0, 1]), makes the
    :class:`~torchgeo_xscale.transforms.ScaleViews` and sets ``sample_weight`` 0 for
    images with a valid fraction below ``min_valid_fraction`` (images that failed
    to decode with ``on_error='skip'`` have none), logged about once per epoch.
    Training views are seeded from ``(seed, rank, step)``, validation views from
    ``seed`` and the images' indexes.
    """

    val_seed_key = 'index'
    #: Bands of every image.
    num_bands = 3

    def __init__(
        self,
        root: str | os.PathLike[str] = 'data/fmow-rgb',
        img_size: int = 128,
        load_size: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        train_split: str = 'train',
        val_split: str = 'val',
        train_csv: str | os.PathLike[str] | None = None,
        val_csv: str | os.PathLike[str] | None = None,
        val_samples: int | None = 2048,
        crop_scale: tuple[float, float] = (1.0, 1.0),
        mean: Sequence[float] = FMOW_RGB_MEAN,
        std: Sequence[float] = FMOW_RGB_STD,
        gsd_key: str = 'gsd',
        min_image_size: int = 0,
        on_error: Literal['skip', 'raise'] = 'skip',
        index_cache: str | os.PathLike[str] | None = DEFAULT_INDEX_CACHE,
        min_valid_fraction: float = 0.5,
        scale_range: tuple[float, float] = (0.2, 0.8),
        num_views: int = 2,
        view_mode: Literal['same_footprint', 'crop'] = 'same_footprint',
        flips: bool = True,
        seed: int = 0,
        pin_memory: bool = True,
    ) -> None:
        """Initialize a new FMoWDataModule instance.

        Args:
            root: fMoW-RGB root holding ``train/`` and ``val/``.
            img_size: side of the views fed to the model, in pixels.
            load_size: side of the images loaded from disk (default *img_size*).
            batch_size: images per batch and device.
            num_workers: data loader worker processes per device.
            train_split: training split folder.
            val_split: validation split folder.
            train_csv: CSV index of the training images instead of the folder scan
                (SatMAE's ``train_62classes.csv`` works; a ``gsd`` column spares the
                JSON reads).
            val_csv: CSV index of the validation images.
            val_samples: validation images (evenly spaced); None uses all.
            crop_scale: ``(min, max)`` area fraction of the random square crops.
            mean: per-channel mean on [0, 1] (default fMoW-RGB's).
            std: per-channel standard deviation on [0, 1].
            gsd_key: JSON field holding the GSD in metres.
            min_image_size: drop images whose shorter side is smaller (pixels).
            on_error: ``skip`` (count and drop / zero-weight) or ``raise`` on a
                missing or corrupt image or JSON.
            index_cache: folder caching the file indexes (built once per node in
                :meth:`prepare_data`); None scans in every process.
            min_valid_fraction: images with fewer valid pixels get weight 0.
            scale_range: ``(r_min, r_max)`` of the low-scale views.
            num_views: views per image (1: full scale only, plain MAE).
            view_mode: ``'same_footprint'`` (paper) or ``'crop'`` (public code).
            flips: random flips shared by the views of an image.
            seed: seed of the views.
            pin_memory: pin host memory of batches when CUDA is available.

        Raises:
            ValueError: If a size or fraction is out of range.
        """
        load = img_size if load_size is None else load_size
        for name, value in (
            ('img_size', img_size),
            ('load_size', load),
            ('batch_size', batch_size),
        ):
            if value < 1:
                raise ValueError(f'{name}={value} is invalid; expected >= 1')
        for name, stats, ok in (
            ('mean', mean, len(mean) == 3),
            ('std', std, len(std) == 3 and min(std) > 0),
        ):
            if not ok:
                msg = f'{name}={tuple(stats)} is invalid; expected 3 values (RGB) on [0, 1]'
                raise ValueError(msg + (', all > 0' if name == 'std' else ''))
        if val_samples is not None and val_samples < 1:
            raise ValueError(
                f'val_samples {val_samples} is invalid; expected >= 1 or None'
            )
        if not 0 <= min_valid_fraction <= 1:
            msg = f'min_valid_fraction {min_valid_fraction} is invalid; expected [0, 1]'
            raise ValueError(msg)
        super().__init__(
            FMoWRGB,
            batch_size=batch_size,
            num_workers=num_workers,
            root=root,
            size=load,
            crop_scale=crop_scale,
            gsd_key=gsd_key,
            min_image_size=min_image_size,
            on_error=on_error,
            index_cache=index_cache,
        )
        self.root = os.fspath(root)
        self.train_split, self.val_split = train_split, val_split
        self.train_csv, self.val_csv = train_csv, val_csv
        self.val_samples = val_samples
        self.pin_memory = pin_memory
        self._init_views(
            img_size,
            min_valid_fraction,
            seed,
            scale_range,
            num_views,
            view_mode,
            flips,
            mean=[255 * m for m in mean],  # the dataset's pixels are 0-255
            std=[255 * s for s in std],
        )

    def _has_val_split(self) -> bool:
        """Whether a validation CSV or split folder exists."""
        return self.val_csv is not None or os.path.isdir(
            os.path.join(self.root, self.val_split)
        )

    def _dataset(self, split: str, csv_path: Any, crop: str) -> FMoWRGB:
        return FMoWRGB(split=split, csv_path=csv_path, crop=crop, **self.kwargs)  # type: ignore[arg-type]

    def prepare_data(self) -> None:
        """Build and cache the file indexes once per node (``index_cache`` set)."""
        if self.kwargs['index_cache'] is None:
            return
        self._dataset(self.train_split, self.train_csv, 'random')
        if self._has_val_split():
            self._dataset(self.val_split, self.val_csv, 'center')

    def setup(self, stage: str) -> None:
        """Build the datasets.

        Args:
            stage: 'fit', 'validate', 'test' or 'predict'.

        Raises:
            ValueError: If the training split has fewer images than one batch.
        """
        train: FMoWRGB | None = None
        if stage == 'fit':
            train = self._dataset(self.train_split, self.train_csv, 'random')
            if len(train) < self.batch_size:
                msg = (
                    f'{self.root}: the {self.train_split!r} split has {len(train)} '
                    f'images; expected at least batch_size={self.batch_size}'
                )
                raise ValueError(msg)
            self.train_dataset = train
            self._batches_per_epoch = max(1, len(train) // self.batch_size)
        if self._has_val_split():
            full = self._dataset(self.val_split, self.val_csv, 'center')
        else:
            full = copy.copy(
                train or self._dataset(self.train_split, self.train_csv, 'center')
            )
            full.crop = 'center'
            logger.info('no %r split: validating on training images', self.val_split)
        self.test_dataset = self.predict_dataset = full
        self.val_dataset = full
        if self.val_samples is not None and self.val_samples < len(full):
            picks = np.linspace(0, len(full) - 1, self.val_samples).round().astype(int)
            self.val_dataset = Subset(full, np.unique(picks).tolist())

    def _dataloader_factory(self, split: str) -> DataLoader[dict[str, Any]]:
        """Data loader of *split*: shuffled and dropping the last batch in training.

        Args:
            split: 'train', 'val', 'test' or 'predict'.

        Returns:
            The data loader.
        """
        dataset: Dataset[dict[str, Any]] = self._valid_attribute(
            f'{split}_dataset', 'dataset'
        )
        batch_size = self._valid_attribute(f'{split}_batch_size', 'batch_size')
        return DataLoader(
            dataset=dataset,
            batch_size=batch_size,
            shuffle=split == 'train',
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            drop_last=split == 'train',
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
        )
