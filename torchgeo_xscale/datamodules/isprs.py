"""ISPRS Potsdam and Vaihingen with the paper's scale protocol, on TorchGeo's datamodules.

:class:`ScaledPotsdam2DDataModule` and :class:`ScaledVaihingen2DDataModule` are
TorchGeo's :class:`~torchgeo.datamodules.Potsdam2DDataModule` and
:class:`~torchgeo.datamodules.Vaihingen2DDataModule` (same archives, splits, classes
and normalisation) with four additions:

* ``scale_ratio``: every image (train, val, test) is area-down-sampled by the ratio and
  resized back (:func:`~torchgeo_xscale.transforms.scale_to_ratio`) after cropping,
  on the device; labels stay at full resolution (Table 4's 25/50/100 % protocol);
* ``samples_per_tile``: training reads ``samples_per_tile`` random crops of each tile
  per epoch, as windows with rasterio (a Potsdam tile is 6000 x 6000 px; TorchGeo
  reads the whole tile for one crop);
* ``whole_tile_eval``: validation and test see whole tiles (batch size 1), for the
  task's sliding-window evaluation, instead of one centre crop per tile;
* ``bands``, ``mean``, ``std``: keep a subset of bands (e.g. ``[0, 1, 2]`` for
  Potsdam's RGB), then normalise them with these statistics (raw 0-255 units; default
  TorchGeo's ``0`` and ``255``).
"""

from typing import Any

import kornia.augmentation as K
import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchgeo.datamodules import (
    NonGeoDataModule,
    Potsdam2DDataModule,
    Vaihingen2DDataModule,
)
from torchgeo.datasets.utils import rgb_to_mask

from ..transforms import scale_to_ratio

__all__ = ('ScaledPotsdam2DDataModule', 'ScaledVaihingen2DDataModule', 'TileCrops')


class TileCrops(Dataset[dict[str, Tensor]]):
    """Random square crops of an ISPRS dataset's tiles, read as windows.

    Samples are ``{'image': (C, h, w) float, 'mask': (h, w) long}`` like
    :class:`~torchgeo.datasets.Potsdam2D`'s; crops past a tile's edge are zero-padded
    (label 0).
    """

    def __init__(
        self,
        dataset: Any,
        size: tuple[int, int],
        samples_per_tile: int = 1,
        num_bands: int | None = None,
    ) -> None:
        """Initialise the crops.

        Args:
            dataset: A :class:`~torchgeo.datasets.Potsdam2D` or
                :class:`~torchgeo.datasets.Vaihingen2D`, or a ``Subset`` of one.
            size: Crop ``(height, width)``.
            samples_per_tile: Crops per tile per epoch.
            num_bands: Image bands read (default: all).

        Raises:
            ValueError: If *samples_per_tile* is below 1.
        """
        if samples_per_tile < 1:
            raise ValueError(f'samples_per_tile={samples_per_tile}; expected >= 1')
        base: Any = dataset.dataset if isinstance(dataset, Subset) else dataset
        indices = (
            dataset.indices if isinstance(dataset, Subset) else range(len(base.files))
        )
        self.files: list[dict[str, str]] = [base.files[i] for i in indices]
        self.colormap = base.colormap
        self.transforms = base.transforms
        self.size = size
        self.samples_per_tile = samples_per_tile
        self.num_bands = num_bands

    def __len__(self) -> int:
        """Crops per epoch."""
        return len(self.files) * self.samples_per_tile

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """A random crop of tile ``index // samples_per_tile``.

        Args:
            index: Sample index.

        Returns:
            ``image`` ``(C, h, w)`` and ``mask`` ``(h, w)``.
        """
        files = self.files[index // self.samples_per_tile]
        h, w = self.size
        with rasterio.open(files['image']) as img, rasterio.open(files['mask']) as lab:
            height, width = min(img.height, lab.height), min(img.width, lab.width)
            row = int(torch.randint(0, max(1, height - h + 1), ()).item())
            col = int(torch.randint(0, max(1, width - w + 1), ()).item())
            win = Window(col, row, min(w, width - col), min(h, height - row))  # type: ignore[call-arg]
            bands = list(range(1, (self.num_bands or img.count) + 1))
            image = np.zeros((len(bands), h, w), dtype=np.float32)
            image[:, : win.height, : win.width] = img.read(bands, window=win)
            rgb = np.zeros((h, w, 3), dtype=np.uint8)
            rgb[: win.height, : win.width] = lab.read([1, 2, 3], window=win).transpose(
                1, 2, 0
            )
        mask = torch.from_numpy(rgb_to_mask(rgb, self.colormap)).long()
        sample = {'image': torch.from_numpy(image), 'mask': mask}
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


class _ScaleProtocol(NonGeoDataModule):
    """Adds scale_ratio / samples_per_tile / whole_tile_eval / bands to an ISPRS module."""

    #: Image bands of the dataset's tiles read for training crops.
    image_bands: int | None = None

    scale_ratio: float
    gsd: float
    samples_per_tile: int
    whole_tile_eval: bool
    bands: list[int] | None
    patch_size: tuple[int, int]

    def _set_stats(
        self,
        bands: list[int] | None,
        mean: list[float] | None,
        std: list[float] | None,
    ) -> None:
        """Band selection and normalisation statistics (before TorchGeo builds its augs)."""
        self.bands = list(bands) if bands is not None else None
        for name, value in (('mean', mean), ('std', std)):
            if value is not None:
                if bands is not None and len(value) not in (1, len(bands)):
                    msg = f'{name} has {len(value)} values; expected 1 or {len(bands)} (bands={bands})'
                    raise ValueError(msg)
                setattr(self, name, torch.tensor(value, dtype=torch.float32))

    def _init_protocol(
        self, scale_ratio: float, samples_per_tile: int, whole_tile_eval: bool
    ) -> None:
        if not 0 < scale_ratio <= 1:
            raise ValueError(
                f'scale_ratio={scale_ratio}; expected 0 < scale_ratio <= 1'
            )
        if samples_per_tile < 1:
            raise ValueError(f'samples_per_tile={samples_per_tile}; expected >= 1')
        self.scale_ratio = scale_ratio
        self.samples_per_tile = samples_per_tile
        self.whole_tile_eval = whole_tile_eval
        if whole_tile_eval:
            self.aug = K.AugmentationSequential(
                K.Normalize(mean=self.mean, std=self.std),
                data_keys=None,
                keepdim=True,
            )
            self.val_batch_size = self.test_batch_size = self.predict_batch_size = 1

    def prepare_data(self) -> None:
        """Verify the dataset and extract its archives, once per node.

        TorchGeo's ISPRS datasets extract their zip archives when first constructed;
        Lightning calls this hook on local rank 0 only, behind a barrier, so processes
        of a multi-process run do not extract the same archives concurrently (which
        fails with ``FileExistsError``) before each constructs the dataset in
        :meth:`setup`.
        """
        self.dataset_class(split='train', **self.kwargs)  # type: ignore[call-arg]

    def setup(self, stage: str) -> None:
        """Set up datasets; training reads random window crops.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.
        """
        super().setup(stage)
        if stage == 'fit':
            self.train_dataset = TileCrops(
                self.train_dataset,
                self.patch_size,
                self.samples_per_tile,
                self.image_bands,
            )

    def on_after_batch_transfer(
        self, batch: dict[str, Any], dataloader_idx: int
    ) -> dict[str, Any]:
        """Select bands, normalise and crop (TorchGeo), then apply the scale ratio.

        Args:
            batch: The batch on the device.
            dataloader_idx: Index of the dataloader.

        Returns:
            The batch with ``image`` ``(B, C, H, W)`` at ``scale_ratio``.
        """
        if self.bands is not None:
            batch['image'] = batch['image'][:, self.bands]
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        if self.scale_ratio < 1:
            batch['image'] = scale_to_ratio(batch['image'], self.scale_ratio)
        return batch


class ScaledPotsdam2DDataModule(_ScaleProtocol, Potsdam2DDataModule):
    """ISPRS Potsdam (TorchGeo's :class:`~torchgeo.datasets.Potsdam2D`, RGBIR) with the scale protocol.

    Labels: 0 clutter/background, 1 impervious surfaces, 2 building, 3 low
    vegetation, 4 tree, 5 car (TorchGeo's order).
    """

    #: Native GSD of the tiles in metres per pixel (ISPRS: 5 cm true orthophotos);
    #: recorded in the segmentation checkpoints as ``xscale_gsd``. The pixel grid
    #: stays at it for every ``scale_ratio`` (the content is down-sampled and resized
    #: back).
    gsd = 0.05

    def __init__(
        self,
        root: str = 'data/potsdam',
        batch_size: int = 8,
        patch_size: tuple[int, int] | int = 512,
        val_split_pct: float = 0.2,
        num_workers: int = 0,
        scale_ratio: float = 1.0,
        samples_per_tile: int = 1,
        whole_tile_eval: bool = True,
        bands: list[int] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        checksum: bool = False,
        **kwargs: Any,
    ) -> None:
        """Initialise the datamodule.

        Args:
            root: Folder with ``4_Ortho_RGBIR.zip`` and ``5_Labels_all.zip`` (or their
                extracted contents).
            batch_size: Training batch size (at least 2: UPerNet uses BatchNorm).
            patch_size: Training crop size.
            val_split_pct: Fraction of training tiles held out for validation.
            num_workers: Data loading workers.
            scale_ratio: Image scale in ``(0, 1]`` (0.25 / 0.5 / 1 for Table 4).
            samples_per_tile: Random crops per training tile per epoch.
            whole_tile_eval: Validate/test on whole tiles (batch size 1).
            bands: Band indices to keep (default: all four).
            mean: Per-band (or one) mean of the kept bands, raw units (default 0).
            std: Per-band (or one) std of the kept bands, raw units (default 255).
            checksum: Verify the archives' MD5.
            **kwargs: Passed to :class:`~torchgeo.datasets.Potsdam2D`.
        """
        self._set_stats(bands, mean, std)
        super().__init__(
            batch_size=batch_size,
            patch_size=patch_size,
            val_split_pct=val_split_pct,
            num_workers=num_workers,
            root=root,
            checksum=checksum,
            **kwargs,
        )
        self._init_protocol(scale_ratio, samples_per_tile, whole_tile_eval)


class ScaledVaihingen2DDataModule(_ScaleProtocol, Vaihingen2DDataModule):
    """ISPRS Vaihingen (TorchGeo's :class:`~torchgeo.datasets.Vaihingen2D`, IRRG) with the scale protocol.

    Labels as :class:`ScaledPotsdam2DDataModule`.
    """

    image_bands = 3
    #: Native GSD of the tiles in metres per pixel (ISPRS: 9 cm true orthophotos).
    gsd = 0.09

    def __init__(
        self,
        root: str = 'data/vaihingen',
        batch_size: int = 8,
        patch_size: tuple[int, int] | int = 512,
        val_split_pct: float = 0.2,
        num_workers: int = 0,
        scale_ratio: float = 1.0,
        samples_per_tile: int = 1,
        whole_tile_eval: bool = True,
        bands: list[int] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        checksum: bool = False,
        **kwargs: Any,
    ) -> None:
        """Initialise the datamodule.

        Args:
            root: Folder with ``ISPRS_semantic_labeling_Vaihingen.zip`` and
                ``ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip`` (or
                their extracted contents).
            batch_size: Training batch size (at least 2: UPerNet uses BatchNorm).
            patch_size: Training crop size.
            val_split_pct: Fraction of training tiles held out for validation.
            num_workers: Data loading workers.
            scale_ratio: Image scale in ``(0, 1]`` (0.25 / 0.5 / 1 for Table 4).
            samples_per_tile: Random crops per training tile per epoch.
            whole_tile_eval: Validate/test on whole tiles (batch size 1).
            bands: Band indices to keep (default: all three).
            mean: Per-band (or one) mean of the kept bands, raw units (default 0).
            std: Per-band (or one) std of the kept bands, raw units (default 255).
            checksum: Verify the archives' MD5.
            **kwargs: Passed to :class:`~torchgeo.datasets.Vaihingen2D`.
        """
        self._set_stats(bands, mean, std)
        super().__init__(
            batch_size=batch_size,
            patch_size=patch_size,
            val_split_pct=val_split_pct,
            num_workers=num_workers,
            root=root,
            checksum=checksum,
            **kwargs,
        )
        self._init_protocol(scale_ratio, samples_per_tile, whole_tile_eval)
