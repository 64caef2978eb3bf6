"""Pretraining on a folder of GeoTIFFs: TorchGeo sampling plus scale views on device."""

import logging
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import shapely
import shapely.affinity
import torch
from geopandas import GeoSeries
from pyproj import CRS
from torch import Tensor
from torch.utils.data import DataLoader, default_collate
from torchgeo.datamodules import GeoDataModule
from torchgeo.datasets.splits import roi_split
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

from ..datasets.geotiff import DEFAULT_STATS_CACHE, GeoTIFFDataset, RasterInputError
from ..transforms import ScaleViews

__all__ = ('GeoTIFFDataModule', 'ScaleViewsMixin')

logger = logging.getLogger(__name__)


class _RandomPatchSampler(RandomPatchSampler):
    """:class:`~torchgeo.samplers.RandomPatchSampler` with exact erosion.

    TorchGeo erodes the footprint by half the patch diagonal, which leaves nothing of
    a raster narrower than about 1.42 patches. Eroding by half a patch side (in pixel
    units, mitred corners) keeps every square patch inside the footprint and accepts
    any raster at least one patch wide.
    """

    def __init__(self, dataset: GeoTIFFDataset, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(dataset, generator=seed, **kwargs)
        self.seed = seed
        xres, yres = self.res
        pixels = shapely.affinity.scale(
            self.geometry, 1 / xres, 1 / yres, origin=(0, 0)
        )
        margin = max(self.size[0] / yres, self.size[1] / xres) / 2 - 0.49
        inner = shapely.buffer(pixels, -margin, join_style='mitre')
        inner = shapely.affinity.scale(inner, xres, yres, origin=(0, 0))
        self.series = GeoSeries([inner])

    def set_epoch(self, epoch: int) -> None:
        """Reseed from ``(seed, epoch)``: epoch N draws the same tiles in any run.

        Lightning calls this at the start of every epoch, so a run resumed from a
        checkpoint samples exactly what the uninterrupted run sampled.

        Args:
            epoch: The epoch about to start.
        """
        self.generator = np.random.default_rng([self.seed, epoch])


def _describe_files(dataset: GeoTIFFDataset, limit: int = 3) -> str:
    """Name the dataset's files with their size in pixels, e.g. ``a.tif (40x30 px)``."""
    xres, yres = dataset.res
    parts = []
    for path, geom in zip(dataset.index.filepath, dataset.index.geometry):
        xmin, ymin, xmax, ymax = geom.bounds
        width, height = round((xmax - xmin) / xres), round((ymax - ymin) / yres)
        parts.append(f'{path} ({width}x{height} px)')
    more = f' and {len(parts) - limit} more' if len(parts) > limit else ''
    return ', '.join(parts[:limit]) + more


class ScaleViewsMixin:
    """The device-side half of a pretraining datamodule, shared by GeoTIFF and fMoW.

    :meth:`on_after_batch_transfer` (on the device) applies :class:`ScaleViews` and
    adds ``sample_weight`` ``(B,)``, 0.0 for samples whose valid fraction is below
    ``min_valid_fraction``; skipped samples are counted and logged about once per
    epoch. Training views are seeded from ``(seed, rank, step)`` (exact resume),
    validation views by :meth:`_val_generator` from the batch's content.
    """

    trainer: Any
    img_size: int
    min_valid_fraction: float
    seed: int
    views: ScaleViews
    # TorchGeo's BaseDataModule attributes, set to the views by _init_views.
    aug: Any
    train_aug: Any
    val_aug: Any

    def _val_generator(self, batch: dict[str, Any]) -> torch.Generator:
        """A generator for a validation batch's views (subclasses seed it)."""
        raise NotImplementedError

    def _init_views(
        self,
        img_size: int,
        min_valid_fraction: float,
        seed: int,
        scale_range: tuple[float, float],
        num_views: int,
        view_mode: Literal['same_footprint', 'crop'],
        flips: bool,
    ) -> None:
        """Set up :class:`ScaleViews` as the device-side augmentation and its counters.

        Args:
            img_size: Output size of the views.
            min_valid_fraction: Valid fraction below which a sample gets weight 0.
            seed: Seed of the views (with rank and step, or the batch's content).
            scale_range: ``(r_min, r_max)`` of the low-scale views.
            num_views: Views per sample.
            view_mode: ``'same_footprint'`` or ``'crop'``.
            flips: Random flips shared by the views of a sample.
        """
        self.img_size = img_size
        self.min_valid_fraction = min_valid_fraction
        self.seed = seed
        self.views = ScaleViews(
            size=img_size,
            scale_range=scale_range,
            num_views=num_views,
            mode=view_mode,
            flips=flips,
        )
        self.aug = self.train_aug = self.val_aug = self.views
        self._skipped = torch.zeros((), dtype=torch.long)
        self._skipped_logged = 0
        self._batches_since_log = 0
        self._batches_per_epoch = 1

    @property
    def skipped_tiles(self) -> int:
        """Training tiles so far given ``sample_weight`` 0 (too few valid pixels)."""
        return int(self._skipped.item())

    def on_after_batch_transfer(
        self, batch: dict[str, Any], dataloader_idx: int
    ) -> dict[str, Any]:
        """Make the scale views and ``sample_weight`` on the batch's device.

        Without a trainer (e.g. called by hand) the batch is treated as training.

        Args:
            batch: collated batch with ``image``, ``valid`` and ``gsd``.
            dataloader_idx: index of the data loader the batch came from.

        Returns:
            The batch with the keys of :class:`ScaleViews` and ``sample_weight``.
        """
        trainer = self.trainer
        training = trainer is None or bool(trainer.training)
        if not training:
            generator: torch.Generator | None = self._val_generator(batch)
        elif trainer is not None:
            # Views depend only on (seed, rank, step): a resumed run makes the same.
            step_seed = [self.seed, trainer.global_rank, trainer.global_step]
            generator = torch.Generator().manual_seed(
                zlib.crc32(repr(step_seed).encode())
            )
        else:
            generator = None
        batch = self.views(batch, generator)
        fraction = batch['valid'].flatten(1).float().mean(dim=1)
        keep = fraction >= self.min_valid_fraction
        batch['sample_weight'] = keep.float()
        if training:
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


class GeoTIFFDataModule(ScaleViewsMixin, GeoDataModule):
    """Cross-Scale MAE pretraining data from any folder, glob or list of GeoTIFFs.

    Tiles of ``patch_size`` pixels come from a :class:`GeoTIFFDataset`: random tiles
    (:class:`~torchgeo.samplers.RandomPatchSampler`) from the training region and a
    grid (:class:`~torchgeo.samplers.GriddedPatchSampler`) over the validation region.
    The split is spatial: the last ``val_fraction`` of the rasters' extent along its
    longer axis, rounded to whole patches, goes to validation (TorchGeo's
    :func:`~torchgeo.datasets.splits.roi_split`). When the rasters are too small for
    that, validation reuses a fixed-seed set of training tiles.

    :meth:`on_after_batch_transfer` (on the device) applies :class:`ScaleViews` and
    adds ``sample_weight`` ``(B,)``: 1.0 for tiles whose valid fraction reaches
    ``min_valid_fraction``, else 0.0 (shapes stay static; the model zero-weights
    them). Validation views use a generator seeded from ``seed`` and the tile bounds,
    so validation is deterministic.
    """

    def __init__(
        self,
        paths: Sequence[str | Path] | str | Path,
        img_size: int = 128,
        patch_size: int | None = None,
        batch_size: int = 8,
        length: int | None = None,
        num_workers: int = 0,
        bands: Sequence[int | str] | None = None,
        crs: str | CRS | None = None,
        res: float | tuple[float, float] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        in_chans: int | None = None,
        min_valid_fraction: float = 0.5,
        scale_range: tuple[float, float] = (0.2, 0.8),
        num_views: int = 2,
        view_mode: Literal['same_footprint', 'crop'] = 'same_footprint',
        flips: bool = True,
        val_fraction: float = 0.1,
        seed: int = 0,
        nodata: float | None = None,
        stats_cache: str | Path | None = DEFAULT_STATS_CACHE,
    ) -> None:
        """Initialize a new GeoTIFFDataModule instance.

        Args:
            paths: folder (recursive ``*.tif``/``*.tiff``), glob, file, or a list.
            img_size: side of the views fed to the model, in pixels.
            patch_size: side of the tiles read from the rasters (default *img_size*).
            batch_size: tiles per batch.
            length: training tiles per epoch (default: about the number of
                non-overlapping tiles, at least one batch).
            num_workers: data loader worker processes.
            bands: 1-based band numbers or band descriptions (default all).
            crs: CRS to warp to, e.g. ``'EPSG:32633'`` (default: the first file's).
            res: resolution in CRS units (default: the first file's).
            mean: per-band mean (default: computed over the files and cached).
            std: per-band standard deviation (default: computed with *mean*).
            in_chans: expected number of bands; a mismatch raises.
            min_valid_fraction: tiles with fewer valid pixels get ``sample_weight`` 0.
            scale_range: ``(r_min, r_max)`` of the low-scale views.
            num_views: views per tile (1: full scale only, for plain MAE).
            view_mode: ``'same_footprint'`` (paper) or ``'crop'`` (public code).
            flips: random flips shared by the views of a tile.
            val_fraction: share of the extent held out for validation.
            seed: seed of the training sampler and of the validation views.
            nodata: nodata value overriding the files' own.
            stats_cache: folder caching computed statistics; None disables it.

        Raises:
            ValueError: If a fraction or size is out of range.
        """
        patch = img_size if patch_size is None else patch_size
        for name, value in (('img_size', img_size), ('patch_size', patch)):
            if value < 1:
                raise ValueError(f'{name} {value} is invalid; expected >= 1')
        if not 0 <= min_valid_fraction <= 1:
            msg = f'min_valid_fraction {min_valid_fraction} is invalid; expected [0, 1]'
            raise ValueError(msg)
        if not 0 <= val_fraction < 1:
            raise ValueError(f'val_fraction {val_fraction} is invalid; expected [0, 1)')
        super().__init__(
            GeoTIFFDataset,
            batch_size=batch_size,
            patch_size=patch,
            length=length,
            num_workers=num_workers,
            paths=paths,
            crs=crs,
            res=res,
            bands=bands,
            in_chans=in_chans,
            mean=mean,
            std=std,
            nodata=nodata,
            stats_cache=stats_cache,
        )
        self.patch_size: int = patch
        self.val_fraction = val_fraction
        self.collate_fn = default_collate  # type: ignore[assignment]  # 'files': list
        self.dataset: GeoTIFFDataset | None = None
        self._init_views(
            img_size, min_valid_fraction, seed, scale_range, num_views, view_mode, flips
        )

    def _check_fits(self, dataset: GeoTIFFDataset) -> None:
        """Raise if the rasters cannot hold one patch."""
        xmin, ymin, xmax, ymax = dataset.index.geometry.union_all().bounds
        xres, yres = dataset.res
        width, height = (xmax - xmin) / xres, (ymax - ymin) / yres
        if min(width, height) < self.patch_size - 1e-6:
            msg = (
                f'{_describe_files(dataset)}: smaller than the patch; expected at least '
                f'{self.patch_size}x{self.patch_size} px (patch_size) of raster'
            )
            raise RasterInputError(msg)

    def _train_sampler(self, dataset: GeoTIFFDataset) -> _RandomPatchSampler:
        """Random tiles over *dataset*, at least one full batch per epoch."""
        length = self.length
        if length is None:
            xres, yres = dataset.res
            area = dataset.index.geometry.union_all().area / (xres * yres)
            tiles = max(1, round(area / self.patch_size**2))
            length = math.ceil(max(tiles, self.batch_size) / self.batch_size)
            length *= self.batch_size
        sampler = _RandomPatchSampler(
            dataset, size=self.patch_size, length=length, seed=self.seed
        )
        if sampler.series.iloc[0].is_empty or sampler.series.area.iloc[0] <= 0:
            msg = (
                f'{_describe_files(dataset)}: no region fits a whole patch; expected '
                f'rasters of at least {self.patch_size}x{self.patch_size} px'
            )
            raise RasterInputError(msg)
        return sampler

    def _split(self, dataset: GeoTIFFDataset) -> tuple[GeoTIFFDataset, ...] | None:
        """Spatial train/val split along the longer axis, or None if too small."""
        if self.val_fraction == 0:
            return None
        xmin, ymin, xmax, ymax = dataset.index.geometry.union_all().bounds
        xres, yres = dataset.res
        along_x = (xmax - xmin) / xres >= (ymax - ymin) / yres
        res = xres if along_x else yres
        start, stop = (xmin, xmax) if along_x else (ymin, ymax)
        extent = (stop - start) / res
        val_px = self.patch_size * max(
            1, round(self.val_fraction * extent / self.patch_size)
        )
        if extent - val_px < self.patch_size:
            return None
        cut = stop - val_px * res
        # The val strip is shrunk by 1/1000 px at both ends so that floating-point
        # noise cannot make the grid sampler add a row overhanging the train region.
        lo, hi = cut + 1e-3 * res, stop - 1e-3 * res
        if along_x:
            train_roi = shapely.box(xmin, ymin, cut, ymax)
            val_roi = shapely.box(lo, ymin, hi, ymax)
        else:
            train_roi = shapely.box(xmin, ymin, xmax, cut)
            val_roi = shapely.box(xmin, lo, xmax, hi)
        rois = [train_roi, val_roi]
        train, val = cast(list[GeoTIFFDataset], roi_split(dataset, rois))
        if len(train.index) == 0 or len(val.index) == 0:
            return None
        return train, val

    def setup(self, stage: str) -> None:
        """Build the dataset (validating every file), the split and the samplers.

        Args:
            stage: 'fit', 'validate', 'test' or 'predict'.

        Raises:
            RasterInputError: If a file is unusable or the rasters are smaller than
                ``patch_size``.
        """
        if self.dataset is None:
            self.dataset = GeoTIFFDataset(**self.kwargs)
            self._check_fits(self.dataset)
        dataset = self.dataset
        if stage in ('fit', 'validate'):
            split = self._split(dataset)
            val_sampler: Any = None
            if split is not None:
                train, val = split
                val_sampler = GriddedPatchSampler(val, size=self.patch_size)
                if len(val_sampler) == 0:
                    split = None
            if split is None:
                train = val = dataset
            self.train_dataset, self.val_dataset = train, val
            self.train_sampler = self._train_sampler(train)
            self._batches_per_epoch = max(1, len(self.train_sampler) // self.batch_size)
            if split is None:  # a fixed list of training tiles, the same every epoch
                n_val = max(1, round(self.val_fraction * len(self.train_sampler)))
                fixed = _RandomPatchSampler(
                    dataset, size=self.patch_size, length=n_val, seed=self.seed
                )
                val_sampler = list(fixed)
                logger.info(
                    'rasters too small for a spatial split: %d val tiles reused', n_val
                )
            self.val_sampler = val_sampler
        if stage in ('test', 'predict'):
            self.test_dataset = self.predict_dataset = dataset
            grid = GriddedPatchSampler(dataset, size=self.patch_size)
            self.test_sampler = self.predict_sampler = grid

    def _val_generator(self, batch: dict[str, Any]) -> torch.Generator:
        """A generator seeded by ``seed`` and the batch's tile bounds."""
        seed = self.seed
        bounds = batch.get('bounds')
        if isinstance(bounds, Tensor):
            seed = zlib.crc32(bounds.detach().cpu().numpy().tobytes(), seed)
        return torch.Generator().manual_seed(seed)

    def _dataloader_factory(self, split: str) -> DataLoader[dict[str, Any]]:
        """TorchGeo's data loader, with page-locked batches when CUDA is available.

        Pinned host memory lets Lightning copy each batch to the GPU asynchronously.

        Args:
            split: ``train``, ``val``, ``test`` or ``predict``.

        Returns:
            The data loader.
        """
        loader = super()._dataloader_factory(split)
        loader.pin_memory = torch.cuda.is_available()
        return loader
