"""Pretraining on a folder of GeoTIFFs at every file's native resolution.

Files are grouped by native grid (:func:`~torchgeo_xscale.datasets.group_rasters`),
each group is a :class:`~torchgeo_xscale.datasets.GeoTIFFDataset` on its own grid, and
one :class:`~torchgeo_xscale.samplers.GroupedPatchSampler` draws the training tiles of
all groups: every tile is ``patch_size`` pixels at its file's own GSD, never resampled,
and carries that GSD. Normalisation and scale views happen on the device
(:class:`~torchgeo_xscale.datamodules.pretraining.PretrainDataModuleMixin`).
"""

import io
import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal, Self, cast

import numpy as np
import shapely
import torch
from lightning.fabric.utilities.cloud_io import _load as pl_load
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from pyproj import CRS
from rasterio.crs import CRS as RioCRS
from torch.utils.data import DataLoader, default_collate
from torchgeo.datamodules import GeoDataModule
from torchgeo.datasets.splits import roi_split

from ..datasets.geotiff import GeoTIFFDataset, GroupedGeoTIFFDataset, describe_files
from ..datasets.rasters import (
    DEFAULT_RES_TOLERANCE,
    RasterGroup,
    RasterInputError,
    group_rasters,
    resolve_raster_paths,
    validate_rasters,
)
from ..datasets.stats import (
    DEFAULT_STATS_CACHE,
    FileStats,
    band_stats,
    combine_band_stats,
)
from ..renames import refuse_renamed, renamed_overrides
from ..samplers import (
    ExactPatchSampler,
    GroupedPatchSampler,
    ResumableDataLoader,
    grid_tiles,
)
from .pretraining import PretrainDataModuleMixin

__all__ = ('GeoTIFFDataModule',)

logger = logging.getLogger(__name__)

#: ``(group, GeoSlice)``: a tile of one group.
Tile = tuple[int, Any]


class GeoTIFFDataModule(PretrainDataModuleMixin, GeoDataModule):
    """Cross-Scale MAE pretraining data from any folder, glob or list of GeoTIFFs.

    **Native resolution (default).** Files are grouped by ``(CRS, resolution)``
    within ``res_tolerance``; each group is read on its own grid, without
    resampling. Training tiles of ``patch_size`` pixels are drawn from every group by
    a :class:`~torchgeo_xscale.samplers.GroupedPatchSampler`: a group per tile with
    probability proportional to its valid area in its own pixels (the area where a
    tile fits, times the files' valid fraction; ``group_sampling='equal'``: the same
    for every group), then a random position in it. Batches are static-shaped (every
    tile is ``patch_size`` pixels) and each tile's ``gsd`` is its own.
    **One grid.** With ``crs`` or ``res`` given, every file is warped to that grid by
    TorchGeo (a warning names each file resampled by more than 1.5x).

    Validation is spatial and per group: the last ``val_fraction`` of each group's
    extent along its longer axis, rounded to whole patches, is held out (TorchGeo's
    :func:`~torchgeo.datasets.splits.roi_split`) and read on a grid of whole tiles
    (:func:`~torchgeo_xscale.samplers.grid_tiles`, on the group's pixel grid). A
    group too small for that lends a fixed-seed set of its training tiles instead.

    Per-band ``mean`` / ``std`` are global, one for all groups (the model and its
    weights have one input normalisation): computed over every file's valid pixels
    and cached, unless given. :meth:`on_after_batch_transfer` (on the device)
    normalises, makes the :class:`~torchgeo_xscale.transforms.ScaleViews` and adds
    ``sample_weight`` (0.0 for tiles below ``min_valid_fraction``).

    After :meth:`setup`: :attr:`groups` (the :class:`~torchgeo_xscale.datasets.RasterGroup`
    of each dataset), :attr:`group_datasets`, :attr:`val_groups` (the held-out region
    per group, None where a group is too small), :attr:`num_bands` and
    :attr:`gsd_range` (min, median, max native GSD of the training tiles).
    """

    val_seed_key = 'bounds'

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
        in_channels: int | None = None,
        min_valid_fraction: float = 0.5,
        scale_range: tuple[float, float] = (0.2, 0.8),
        num_views: int = 2,
        view_mode: Literal['same_footprint', 'crop'] = 'same_footprint',
        flips: bool = True,
        val_fraction: float = 0.1,
        seed: int = 0,
        nodata: float | None = None,
        stats_cache: str | Path | None = DEFAULT_STATS_CACHE,
        group_sampling: Literal['area', 'equal'] = 'area',
        res_tolerance: float = DEFAULT_RES_TOLERANCE,
        *,
        in_chans: int | None = None,
    ) -> None:
        """Initialize a new GeoTIFFDataModule instance.

        Args:
            paths: folder (recursive ``*.tif``/``*.tiff``), glob, file, or a list.
            img_size: side of the views fed to the model, in pixels.
            patch_size: side of the tiles read from the rasters (default *img_size*).
            batch_size: tiles per batch (and device).
            length: training tiles per epoch over all devices (default: about the
                number of non-overlapping tiles, at least one batch per device).
            num_workers: data loader worker processes.
            bands: 1-based band numbers or band descriptions (default all).
            crs: CRS to warp every file to, e.g. ``'EPSG:32633'`` (default: none,
                every file on its own grid).
            res: resolution in CRS units to warp every file to (default: none).
            mean: per-band mean (default: computed over the files and cached).
            std: per-band standard deviation (default: computed with *mean*).
            in_channels: expected number of bands (TorchGeo's name, as the task's
                ``in_channels``); a mismatch raises in :meth:`setup`, naming the
                file.
            min_valid_fraction: tiles with fewer valid pixels get ``sample_weight`` 0.
            scale_range: ``(r_min, r_max)`` of the low-scale views.
            num_views: views per tile (1: full scale only, for plain MAE).
            view_mode: ``'same_footprint'`` (paper) or ``'crop'`` (public code).
            flips: random flips shared by the views of a tile.
            val_fraction: share of each group's extent held out for validation.
            seed: seed of the training tiles and views, and of the validation views.
            nodata: nodata value overriding the files' own.
            stats_cache: folder caching computed statistics; None disables it.
            group_sampling: ``'area'`` (tiles per group in proportion to its valid
                area in pixels) or ``'equal'`` (the same share per group).
            res_tolerance: relative pixel-size difference within which files share a
                grid.
            in_chans: renamed *in_channels* (:mod:`torchgeo_xscale.renames`);
                giving it raises.

        Raises:
            ValueError: If a fraction, size or count is out of range, or *in_chans*
                is given.
        """
        refuse_renamed('in_chans', in_chans, 'data')
        patch = img_size if patch_size is None else patch_size
        for name, value in (
            ('img_size', img_size),
            ('patch_size', patch),
            ('batch_size', batch_size),
        ):
            if value < 1:
                raise ValueError(f'{name}={value} is invalid; expected >= 1')
        if length is not None and length < 1:
            msg = f'length={length} is invalid; expected >= 1 tiles per epoch (or None)'
            raise ValueError(msg)
        if num_workers < 0:
            raise ValueError(f'num_workers={num_workers} is invalid; expected >= 0')
        if not 0 <= min_valid_fraction <= 1:
            msg = f'min_valid_fraction {min_valid_fraction} is invalid; expected [0, 1]'
            raise ValueError(msg)
        if not 0 <= val_fraction < 1:
            raise ValueError(f'val_fraction {val_fraction} is invalid; expected [0, 1)')
        if group_sampling not in ('area', 'equal'):
            msg = f"group_sampling={group_sampling!r} is invalid; expected 'area' or 'equal'"
            raise ValueError(msg)
        if (mean is None) != (std is None):
            raise ValueError('mean and std go together; expected both or neither')
        super().__init__(
            GeoTIFFDataset,
            batch_size=batch_size,
            patch_size=patch,
            length=length,
            num_workers=num_workers,
            paths=paths,
            bands=bands,
            in_channels=in_channels,
            nodata=nodata,
        )
        self.paths = paths
        self.warp_crs, self.warp_res = crs, res
        self.stats_cache = stats_cache
        self.group_sampling = group_sampling
        self.res_tolerance = res_tolerance
        self.patch_size: int = patch
        self.val_fraction = val_fraction
        self.collate_fn = default_collate  # type: ignore[assignment]  # 'files': list
        #: The native grid of each group (one group with ``crs``/``res``).
        self.groups: list[RasterGroup] = []
        #: One dataset per group, over all its files.
        self.group_datasets: list[GeoTIFFDataset] = []
        #: The held-out region of each group (None: too small to hold one out).
        self.val_groups: list[GeoTIFFDataset | None] = []
        #: ``{'min', 'median', 'max'}`` native GSD (m) of the training tiles.
        self.gsd_range: dict[str, float] | None = None
        self.dataset: GroupedGeoTIFFDataset | None = None  # type: ignore[assignment]
        self._given_stats = (mean, std)
        self._file_stats: list[FileStats] | None = None
        self._sampler_state: dict[str, Any] | None = None
        self._init_views(
            img_size,
            min_valid_fraction,
            seed,
            scale_range,
            num_views,
            view_mode,
            flips,
            mean,
            std,
        )

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO[bytes],
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Self:
        """As :meth:`~lightning.pytorch.core.LightningDataModule.load_from_checkpoint`.

        Saved ``datamodule_hyper_parameters`` under a renamed argument (``in_chans``,
        :mod:`torchgeo_xscale.renames`) are read under the new name, with a
        warning. (Our datamodules save no hyper-parameters, so this only matters
        for a checkpoint of a subclass that did; ``xscale fit --ckpt_path`` builds
        the datamodule from the command line, as Lightning's CLI does, and restores
        only its :meth:`state_dict`.)

        Args:
            checkpoint_path: The checkpoint (path or binary file object).
            map_location: As :func:`torch.load`.
            hparams_file: A YAML/CSV file of hyper-parameters to use instead.
            weights_only: As :func:`torch.load`.
            **kwargs: Arguments overriding the saved ones.

        Returns:
            The datamodule.
        """
        if not isinstance(checkpoint_path, str | Path):  # read once, here and below
            checkpoint_path = io.BytesIO(checkpoint_path.read())
        if hparams_file is None:  # Lightning's reader, as its load_from_checkpoint
            checkpoint = pl_load(
                checkpoint_path, map_location='cpu', weights_only=weights_only
            )
            if isinstance(checkpoint_path, io.BytesIO):
                checkpoint_path.seek(0)
            stored = checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {}
            overrides, notes = renamed_overrides(stored, kwargs)
            kwargs = {**overrides, **kwargs}
            for note in notes:
                rank_zero_warn(
                    f'{cls.__name__}.load_from_checkpoint: the checkpoint {note}'
                )
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, weights_only, **kwargs
        )

    # ----------------------------------------------------------------- build
    @property
    def num_bands(self) -> int | None:
        """Bands per tile (None before :meth:`setup`)."""
        return self.dataset.num_bands if self.dataset is not None else None

    @property
    def band_source(self) -> str | None:
        """A file the band count comes from (for error messages)."""
        return self.groups[0].files[0] if self.groups else None

    def _build(self) -> None:
        """Validate every file, group them, build the datasets and statistics."""
        kwargs = {k: self.kwargs[k] for k in ('bands', 'in_channels', 'nodata')}
        files = resolve_raster_paths(self.paths)
        _, indexes, infos = validate_rasters(
            files, kwargs['bands'], kwargs['in_channels']
        )
        if self.warp_crs is not None or self.warp_res is not None:  # one grid
            dataset = GeoTIFFDataset(
                files, crs=self.warp_crs, res=self.warp_res, **kwargs
            )
            gsds = tuple(i.gsd for i in dataset.infos)
            crs = RioCRS.from_wkt(dataset.crs.to_wkt())
            group = RasterGroup(crs, dataset.res, tuple(files), gsds)
            self.groups, self.group_datasets = [group], [dataset]
        else:
            self.groups = group_rasters(infos, rtol=self.res_tolerance)
            self.group_datasets = [g.dataset(**kwargs) for g in self.groups]
        for dataset in self.group_datasets:
            self._check_fits(dataset)
        self.dataset = GroupedGeoTIFFDataset(self.group_datasets)
        mean, std = self._given_stats
        if mean is None or len(self.groups) > 1:
            self._file_stats = band_stats(
                files, indexes, kwargs['nodata'], self.stats_cache
            )
        if mean is None or std is None:
            assert self._file_stats is not None
            mean, std = combine_band_stats(self._file_stats)
        n_bands = self.dataset.num_bands
        for name, value in (('mean', mean), ('std', std)):
            if len(value) != n_bands:
                raise RasterInputError(
                    f'{name}: has {len(value)} values; expected {n_bands} (one per band)'
                )
        if min(std) <= 0:
            raise RasterInputError(f'std: {list(std)} has values <= 0; expected > 0')
        self.set_statistics(mean, std)

    def _check_fits(self, dataset: GeoTIFFDataset) -> None:
        """Raise if the rasters cannot hold one patch."""
        xmin, ymin, xmax, ymax = dataset.index.geometry.union_all().bounds
        xres, yres = dataset.res
        width, height = (xmax - xmin) / xres, (ymax - ymin) / yres
        if min(width, height) < self.patch_size - 1e-6:
            msg = (
                f'{describe_files(dataset)}: smaller than the patch; expected at least '
                f'{self.patch_size}x{self.patch_size} px (patch_size) of raster'
            )
            raise RasterInputError(msg)

    def _valid_fraction(self, dataset: GeoTIFFDataset) -> float:
        """Pixel-area weighted valid fraction of a group's files (1 if unknown)."""
        if self._file_stats is None:
            return 1.0
        fractions = {s.path: s.valid_fraction for s in self._file_stats}
        areas = {i.path: i.width * i.height for i in dataset.infos}
        total = sum(areas.values())
        return sum(fractions[p] * a for p, a in areas.items()) / max(1, total)

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
        train, val = cast(
            list[GeoTIFFDataset], roi_split(dataset, [train_roi, val_roi])
        )
        if len(train.index) == 0 or len(val.index) == 0:
            return None
        if not grid_tiles(dataset, self.patch_size, val_roi.bounds):
            return None
        return train, val

    def _default_length(self, samplers: Sequence[ExactPatchSampler]) -> int:
        """About the number of non-overlapping tiles, at least a batch per device."""
        tiles = sum(max(1, round(s.capacity / self.patch_size**2)) for s in samplers)
        per_step = self.batch_size * self._world()[1]
        return math.ceil(max(tiles, per_step) / per_step) * per_step

    def _world(self) -> tuple[int, int]:
        """``(rank, world_size)`` of this process (``(0, 1)`` without a trainer)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _train_sampler(self, datasets: Sequence[GeoTIFFDataset]) -> GroupedPatchSampler:
        """The grouped random sampler over the training regions."""
        samplers = []
        for dataset in datasets:
            sampler = ExactPatchSampler(dataset, size=self.patch_size, seed=self.seed)
            if sampler.empty:
                msg = (
                    f'{describe_files(dataset)}: no region fits a whole patch; '
                    f'expected rasters of at least {self.patch_size}x{self.patch_size} px'
                )
                raise RasterInputError(msg)
            samplers.append(sampler)
        if self.group_sampling == 'equal':
            weights = [1.0] * len(samplers)
        else:
            weights = [
                s.capacity * max(self._valid_fraction(d), 1e-6)
                for s, d in zip(samplers, datasets)
            ]
        rank, world = self._world()
        length = self.length or self._default_length(samplers)
        return GroupedPatchSampler(
            samplers,
            length=length,
            batch_size=self.batch_size,
            weights=weights,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
        )

    def _gsd_range(self, sampler: GroupedPatchSampler) -> dict[str, float]:
        """Min, median and max native GSD of epoch 0's training tiles (20,000 at most)."""
        values = []
        for group, where in sampler.epoch_tiles(0, count=20_000):
            dataset = cast(GroupedGeoTIFFDataset, self.train_dataset).datasets[group]
            y: slice = where[1]  # type: ignore[index, misc]
            lat = (y.start + y.stop) / 2 if dataset.ground_units.geographic else None
            values.append(dataset.ground_units.gsd(*dataset.res, lat))
        return {
            'min': float(min(values)),
            'median': float(statistics.median(values)),
            'max': float(max(values)),
        }

    def _fixed_val_tiles(self, group: int, dataset: GeoTIFFDataset) -> list[Tile]:
        """A fixed-seed set of tiles of a group too small for a spatial split."""
        sampler = ExactPatchSampler(dataset, size=self.patch_size)
        share = max(1, round(sampler.capacity / self.patch_size**2))
        count = max(1, round(self.val_fraction * share))
        rng = np.random.default_rng([self.seed, 2**31 - 1, group])  # not an epoch key
        return [(group, where) for where in sampler.draw(count, rng)]

    def setup(self, stage: str) -> None:
        """Build the datasets (validating every file), the splits and the samplers.

        Args:
            stage: 'fit', 'validate', 'test' or 'predict'.

        Raises:
            RasterInputError: If a file is unusable or a group is smaller than
                ``patch_size``.
        """
        if self.dataset is None:
            self._build()
        assert self.dataset is not None
        if stage in ('fit', 'validate') and self.val_dataset is None:
            train_sets, val_sets, val_tiles = [], [], []
            self.val_groups = []
            for group, dataset in enumerate(self.group_datasets):
                split = self._split(dataset)
                if split is None:
                    train_sets.append(dataset)
                    val_sets.append(dataset)
                    val_tiles += self._fixed_val_tiles(group, dataset)
                    self.val_groups.append(None)
                    logger.info(
                        '%s: too small for a spatial split; validating on fixed '
                        'training tiles',
                        self.groups[group].name,
                    )
                    continue
                train, val = split
                train_sets.append(train)
                val_sets.append(val)
                self.val_groups.append(val)
                region = val.index.geometry.union_all().bounds
                grid = grid_tiles(dataset, self.patch_size, region)
                val_tiles += [(group, where) for where in grid]
            self.train_dataset = GroupedGeoTIFFDataset(train_sets)
            self.val_dataset = GroupedGeoTIFFDataset(val_sets)
            self.val_sampler = val_tiles  # type: ignore[assignment]
        if stage == 'fit':
            current: Any = self.train_sampler
            if (
                isinstance(current, GroupedPatchSampler)
                and (
                    current.rank,
                    current.num_replicas,
                )
                == self._world()
            ):
                sampler = current  # set up before (e.g. fit, then fit again)
            else:
                assert self.train_dataset is not None
                datasets = cast(GroupedGeoTIFFDataset, self.train_dataset).datasets
                sampler = self._train_sampler(datasets)
                self.train_sampler = sampler  # type: ignore[assignment]
                self.gsd_range = self._gsd_range(sampler)
                self._log_plan(sampler)
            if self._sampler_state is not None:
                sampler.load_state_dict(self._sampler_state)
                self._sampler_state = None
            self._batches_per_epoch = sampler.batches_per_epoch
        if stage in ('test', 'predict'):
            self.test_dataset = self.predict_dataset = self.dataset
            tiles = [
                (group, where)
                for group, dataset in enumerate(self.group_datasets)
                for where in grid_tiles(dataset, self.patch_size)
            ]
            self.test_sampler = self.predict_sampler = tiles  # type: ignore[assignment]

    def state_dict(self) -> dict[str, Any]:
        """The training sampler's position (Lightning saves it in checkpoints).

        The same state is saved through the
        :class:`~torchgeo_xscale.samplers.ResumableDataLoader`; Lightning restores
        the datamodule's before the first batch is fetched in every case (the data
        loader's only when the loader is created after the checkpoint is loaded,
        which ``estimated_stepping_batches`` in ``configure_optimizers`` prevents).

        Returns:
            ``{'train_sampler': ...}``, or ``{}`` before ``setup('fit')``.
        """
        sampler = self.train_sampler
        if isinstance(sampler, GroupedPatchSampler):
            return {'train_sampler': sampler.state_dict()}
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training tiles where the checkpoint left them.

        Args:
            state_dict: A :meth:`state_dict` (applied now, or in ``setup('fit')``).
        """
        state = state_dict.get('train_sampler')
        if state is None:
            return
        if isinstance(self.train_sampler, GroupedPatchSampler):
            self.train_sampler.load_state_dict(state)
        else:
            self._sampler_state = dict(state)

    def _log_plan(self, sampler: GroupedPatchSampler) -> None:
        """Say (rank 0, in Lightning's log) the groups, their share and the GSDs."""
        for group, weight in zip(self.groups, sampler.weights):
            rank_zero_info(
                f'GeoTIFFDataModule: group {group.name}: {len(group.files)} file(s), '
                f'{100 * weight:.1f}% of the training tiles, read at native resolution'
            )
        if self.gsd_range is not None:
            low, high = self.views.scale_range
            scale = self.patch_size / self.img_size
            coarsest = scale / (low if self.views.num_views > 1 else 1)
            rank_zero_info(
                f'GeoTIFFDataModule: native GSD of the training tiles '
                f'{self.gsd_range["min"]:.3g}-{self.gsd_range["max"]:.3g} m (median '
                f'{self.gsd_range["median"]:.3g} m); the views span '
                f'{self.gsd_range["min"] * scale:.3g}-{self.gsd_range["max"] * coarsest:.3g}'
                f' m (r = 1 and r in [{low:.2f}, {high:.2f}])'
            )

    def _dataloader_factory(self, split: str) -> DataLoader[dict[str, Any]]:
        """The data loader of *split*, pinned when CUDA is available.

        Training uses a :class:`~torchgeo_xscale.samplers.ResumableDataLoader`, so
        the sampler's position is part of Lightning's checkpoints. Pinned host
        memory lets Lightning copy each batch to the GPU asynchronously.

        Args:
            split: ``train``, ``val``, ``test`` or ``predict``.

        Returns:
            The data loader.
        """
        if split == 'train':
            loader: DataLoader[dict[str, Any]] = ResumableDataLoader(
                self._valid_attribute('train_dataset', 'dataset'),
                batch_size=self.batch_size,
                sampler=self._valid_attribute('train_sampler'),
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                drop_last=True,
                persistent_workers=self.num_workers > 0,
                pin_memory=torch.cuda.is_available(),
            )
            return loader
        loader = super()._dataloader_factory(split)
        loader.pin_memory = torch.cuda.is_available()
        return loader
