"""Semantic segmentation from your own labelled GeoTIFFs, every GSD at its own grid.

:class:`GeoTIFFSegmentationDataModule` reads image GeoTIFFs with a class-mask GeoTIFF
each, in TorchGeo's way for raster segmentation: per native grid, the images (a
:class:`~torchgeo_xscale.datasets.GeoTIFFDataset`) intersected with the masks (a
:class:`MaskRaster`, TorchGeo's :class:`~torchgeo.datasets.RasterDataset` with
``is_image = False``) in a :class:`LabelledRasters`
(:class:`~torchgeo.datasets.IntersectionDataset`). Files are grouped by ``(CRS,
resolution)`` with :func:`~torchgeo_xscale.datasets.group_rasters`, as
:class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule` does for pretraining: each
group is read on its own grid, never resampled, and every tile carries its ``gsd``.

**Pairing.** The mask of ``images/<name>.tif`` is the mask file named
``<name><mask_suffix>.tif`` (or ``.tiff``): under ``masks`` when it is given (a folder,
glob or list), else next to the image (then ``mask_suffix`` is required, and image
files ending in it are masks). Every image needs exactly one mask and every mask an
image; a mask must be one band of integer class indices on its image's grid (same
CRS, transform and size). Anything else is a one-line
:class:`~torchgeo_xscale.datasets.RasterInputError` naming both files.

**Splits.** Deterministic and per raster, so that every GSD group is in every split:
along each image's longer side the last ``test_fraction`` is held out for testing and
the ``val_fraction`` before it for validation (each rounded to whole ``eval_size``
tiles, at least one), the rest trains. Training tiles (``patch_size`` px) are random
positions of the training regions of all groups
(:class:`~torchgeo_xscale.samplers.GroupedPatchSampler`: a group per tile in proportion
to its area, or ``group_sampling='equal'``); validation and test tiles (``eval_size``
px, default ``patch_size``) are a grid over each held-out strip, the last tile flush
with its edge, read on the raster's own pixel grid. Eval tiles larger than
``patch_size`` are segmented by :class:`~torchgeo_xscale.tasks.XScaleSegmentationTask`
with its sliding window.

**Groups.** :attr:`~GeoTIFFSegmentationDataModule.groups` (after
:meth:`~GeoTIFFSegmentationDataModule.setup`, or from
:meth:`~GeoTIFFSegmentationDataModule.group_info`) names each native grid as the
evaluations do (``'EPSG:32632 0.25 m'``) with its GSD; setting
:attr:`~GeoTIFFSegmentationDataModule.test_group` to a group's index restricts the test
set to that group, so that ``trainer.test`` reports the metrics of one group
(``xscale scale-study`` does so for each group, then for all of them pooled).

Batches (on the device, after :meth:`~GeoTIFFSegmentationDataModule.on_after_batch_transfer`):
``image`` ``(B, C, H, W)`` normalised with the global ``mean`` / ``std`` (0 where
invalid) and brought to ``scale_ratio`` by
:func:`~torchgeo_xscale.transforms.scale_to_ratio` (as the ISPRS datamodules do: the
content is down-sampled and resized back, the grid and the labels stay);
``mask`` ``(B, H, W)`` int64 (``ignore_index`` where the image is nodata, when set);
``gsd`` ``(B,)`` native metres per pixel; ``group`` ``(B,)``; ``valid`` ``(B, 1, H,
W)``. Training batches get random horizontal and vertical flips of image and mask.
"""

import functools
import itertools
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import kornia.augmentation as K
import numpy as np
import rasterio
import shapely
import torch
from lightning.pytorch.utilities import rank_zero_info
from rasterio.windows import Window
from torch.utils.data import DataLoader, default_collate
from torchgeo.datamodules import GeoDataModule
from torchgeo.datasets import IntersectionDataset, RasterDataset
from torchgeo.datasets.splits import roi_split

from ..datasets.geotiff import GeoTIFFDataset, GroupedGeoTIFFDataset
from ..datasets.rasters import (
    DEFAULT_RES_TOLERANCE,
    RasterGroup,
    RasterInfo,
    RasterInputError,
    group_rasters,
    resolve_raster_paths,
    validate_rasters,
)
from ..datasets.stats import DEFAULT_STATS_CACHE, band_stats, combine_band_stats
from ..samplers import (
    ExactPatchSampler,
    GroupedPatchSampler,
    ResumableDataLoader,
    flush_starts,
)
from ..transforms import normalize, scale_to_ratio

__all__ = (
    'GeoTIFFSegmentationDataModule',
    'LabelledRasters',
    'MaskRaster',
    'pair_masks',
)


_EXTENSIONS = ('.tif', '.tiff')


class MaskRaster(RasterDataset):
    """Class-mask GeoTIFFs (one band of class indices) as a TorchGeo raster dataset.

    A sample's ``mask`` is int64 ``(H, W)``, read with nearest-neighbour (TorchGeo's
    rule for ``is_image = False``).
    """

    filename_glob = '*'
    is_image = False


def _image_and_mask(
    samples: Sequence[dict[str, Any]], ignore_index: int | None = None
) -> dict[str, Any]:
    """:class:`LabelledRasters`' ``collate_fn``: the image sample plus the mask."""
    image, labels = samples
    sample = dict(image)
    mask = labels['mask']
    if ignore_index is not None:
        mask = torch.where(image['valid'][0], mask, ignore_index)
    sample['mask'] = mask
    return sample


class LabelledRasters(IntersectionDataset):
    """Images and their masks on one grid: TorchGeo's ``images & masks``.

    A sample is the :class:`~torchgeo_xscale.datasets.GeoTIFFDataset` sample
    (``image``, ``valid``, ``gsd``, ``files``...) plus ``mask`` ``(H, W)`` int64,
    set to ``ignore_index`` (when given) where the image is invalid.
    """

    def __init__(
        self,
        images: GeoTIFFDataset,
        masks: MaskRaster,
        ignore_index: int | None = None,
    ) -> None:
        """Initialise the intersection.

        Args:
            images: The images of one grid.
            masks: Their masks, on the same grid.
            ignore_index: Label of invalid image pixels (None: keep the mask's).
        """
        super().__init__(
            images,
            masks,
            spatial_only=True,
            collate_fn=functools.partial(_image_and_mask, ignore_index=ignore_index),
        )
        self.images = images

    @property
    def num_bands(self) -> int:
        """Bands of a sample's ``image``."""
        return self.images.num_bands

    @property
    def infos(self) -> list[RasterInfo]:
        """The image files' headers (see :class:`~torchgeo_xscale.datasets.RasterInfo`)."""
        return self.images.infos


def _stem(path: str, suffix: str = '') -> str | None:
    """File name without extension and *suffix*, or None if it does not end in it."""
    name = os.path.basename(path)
    for ext in _EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    if suffix:
        if not name.endswith(suffix):
            return None
        name = name[: -len(suffix)]
    return name


def pair_masks(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    masks: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    mask_suffix: str = '',
) -> list[tuple[str, str]]:
    """Pair every image GeoTIFF with its mask GeoTIFF by file name.

    The mask of ``<name>.tif`` is named ``<name><mask_suffix>.tif`` (or ``.tiff``):
    among *masks* (a folder, searched recursively, a glob, a file or a list) when
    given, else in the image's folder (*mask_suffix* then required; image files
    ending in it are masks, not images).

    Args:
        images: Image GeoTIFFs (folder, glob, file or list).
        masks: Mask GeoTIFFs (default: next to the images).
        mask_suffix: What a mask's name adds to its image's (e.g. ``'_mask'``).

    Returns:
        ``(image, mask)`` paths, sorted by image.

    Raises:
        RasterInputError: If an image has no mask or a mask no image, or two files
            share a name.
        ValueError: If neither *masks* nor *mask_suffix* is given.
    """
    if masks is None and not mask_suffix:
        msg = (
            'masks=None and mask_suffix empty; expected a masks folder or a mask_suffix '
            "(masks next to their images, e.g. mask_suffix='_mask')"
        )
        raise ValueError(msg)
    image_files = resolve_raster_paths(images)
    if masks is None:
        mask_files = [f for f in image_files if _stem(f, mask_suffix) is not None]
        image_files = [f for f in image_files if f not in set(mask_files)]
        where = 'next to it'
    else:
        mask_files = resolve_raster_paths(masks)
        where = f'in {os.fspath(masks) if isinstance(masks, str | os.PathLike) else "masks"}'
    by_name: dict[str, str] = {}
    for path in mask_files:
        name = _stem(path, mask_suffix)
        if name is None:
            continue  # not a mask by this suffix
        if name in by_name:
            msg = f'{path}: has the name of mask {by_name[name]}; expected one mask per name'
            raise RasterInputError(msg)
        by_name[name] = path
    pairs: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for path in image_files:
        name = _stem(path)
        assert name is not None
        if name in seen:
            msg = f'{path}: has the name of image {seen[name]}; expected one image per name (pairing is by name)'
            raise RasterInputError(msg)
        seen[name] = path
        if name not in by_name:
            msg = (
                f'{path}: no mask {name}{mask_suffix}.tif {where}; expected one mask '
                'per image, named like it'
            )
            raise RasterInputError(msg)
        pairs.append((path, by_name[name]))
    for name, path in by_name.items():
        if name not in seen:
            msg = f'{path}: no image {name}.tif for this mask; expected one image per mask'
            raise RasterInputError(msg)
    if not pairs:
        raise RasterInputError(f'{images}: no image GeoTIFFs; expected some')
    return sorted(pairs)


def _describe(info: RasterInfo) -> str:
    code = info.crs.to_epsg()
    crs = f'EPSG:{code}' if code else info.crs.to_string()[:40]
    return f'{crs}, {info.res[0]:g} x {info.res[1]:g}, {info.width} x {info.height} px'


def _check_pair(image: RasterInfo, mask: RasterInfo) -> None:
    """Raise unless *mask* is one band on *image*'s grid (CRS, transform, size)."""
    if mask.count != 1:
        msg = (
            f'{mask.path}: mask has {mask.count} bands; expected 1 band of class '
            f'indices (image {image.path})'
        )
        raise RasterInputError(msg)
    tol = 1e-6 * min(image.res)
    same = (
        mask.crs == image.crs
        and (mask.width, mask.height) == (image.width, image.height)
        and all(abs(a - b) <= tol for a, b in zip(mask.bounds, image.bounds))
    )
    if not same:
        msg = (
            f'{mask.path}: mask grid ({_describe(mask)}, bounds {mask.bounds}) differs '
            f'from its image {image.path} ({_describe(image)}, bounds {image.bounds}); '
            'expected the same CRS, transform and size'
        )
        raise RasterInputError(msg)


def _check_classes(
    path: str, num_classes: int | None, ignore_index: int | None
) -> None:
    """Raise if a mask holds a value outside ``0..num_classes-1`` and ``ignore_index``."""
    with rasterio.open(path) as src:
        if np.dtype(src.dtypes[0]).kind not in 'iu':
            msg = f'{path}: mask dtype {src.dtypes[0]}; expected integer class indices'
            raise RasterInputError(msg)
        if num_classes is None:
            return
        rows = max(1, 2**24 // max(1, src.width))  # about 16 M pixels per read
        for row in range(0, src.height, rows):
            window = Window(0, row, src.width, min(rows, src.height - row))  # type: ignore[call-arg]
            values = np.unique(src.read(1, window=window))
            bad = values[
                ((values < 0) | (values >= num_classes)) & (values != ignore_index)
            ]
            if bad.size:
                msg = (
                    f'{path}: mask has class {int(bad[0])}; expected 0..{num_classes - 1} '
                    f'(num_classes={num_classes}) or ignore_index={ignore_index}'
                )
                raise RasterInputError(msg)


class GeoTIFFSegmentationDataModule(GeoDataModule):
    """Labelled GeoTIFFs (image + class mask) at one or many GSDs, each on its own grid.

    See the module docstring for the pairing rule, the per-raster splits, the groups
    and the batches. After :meth:`setup`: :attr:`groups`, :attr:`group_datasets`
    (a :class:`LabelledRasters` per group), :attr:`splits` (the
    ``(train, val, test)`` regions of each group), :attr:`num_bands` and
    :attr:`gsd_range` (min, median, max native GSD of the training tiles).
    """

    def __init__(
        self,
        images: Sequence[str | Path] | str | Path,
        masks: Sequence[str | Path] | str | Path | None = None,
        mask_suffix: str = '',
        num_classes: int | None = None,
        ignore_index: int | None = None,
        patch_size: int = 256,
        batch_size: int = 8,
        length: int | None = None,
        num_workers: int = 0,
        scale_ratio: float = 1.0,
        bands: Sequence[int | str] | None = None,
        in_channels: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        eval_size: int | None = None,
        flips: bool = True,
        seed: int = 0,
        nodata: float | None = None,
        stats_cache: str | Path | None = DEFAULT_STATS_CACHE,
        group_sampling: Literal['area', 'equal'] = 'area',
        res_tolerance: float = DEFAULT_RES_TOLERANCE,
    ) -> None:
        """Initialise the datamodule.

        Args:
            images: Image GeoTIFFs: folder (recursive), glob, file or list.
            masks: Mask GeoTIFFs, paired by name (default: next to the images, with
                *mask_suffix*).
            mask_suffix: What a mask's file name adds to its image's (``'_mask'``).
            num_classes: Classes K (as the task's): masks are checked to hold
                ``0..K-1`` or *ignore_index* only.
            ignore_index: The task's ignored label; image nodata pixels get it.
            patch_size: Side of the training tiles in pixels.
            batch_size: Tiles per batch (at least 2 for UPerNet's BatchNorm).
            length: Training tiles per epoch (default: about the number of
                non-overlapping tiles of the training regions).
            num_workers: Data loader worker processes.
            scale_ratio: Image scale in ``(0, 1]``, as the ISPRS datamodules.
            bands: 1-based band numbers or band descriptions (default all).
            in_channels: Expected number of bands read; a mismatch raises.
            mean: Per-band mean, raw units (default: computed over the images).
            std: Per-band std, raw units (default: computed with *mean*).
            val_fraction: Share of each image's longer side for validation.
            test_fraction: Share of each image's longer side for testing.
            eval_size: Side of the validation/test tiles (default *patch_size*).
            flips: Random horizontal/vertical flips of the training tiles.
            seed: Seed of the training tiles.
            nodata: Image nodata value overriding the files' own.
            stats_cache: Folder caching computed statistics; None disables it.
            group_sampling: ``'area'`` or ``'equal'`` share of tiles per group.
            res_tolerance: Relative pixel-size difference within which files share
                a grid.

        Raises:
            ValueError: If a size, fraction or ratio is out of range.
        """
        evaluation = patch_size if eval_size is None else eval_size
        for name, value in (
            ('patch_size', patch_size),
            ('batch_size', batch_size),
            ('eval_size', evaluation),
        ):
            if value < 1:
                raise ValueError(f'{name}={value}; expected >= 1')
        if not 0 < scale_ratio <= 1:
            raise ValueError(
                f'scale_ratio={scale_ratio}; expected 0 < scale_ratio <= 1'
            )
        for name, fraction in (
            ('val_fraction', val_fraction),
            ('test_fraction', test_fraction),
        ):
            if not 0 <= fraction < 1:
                raise ValueError(f'{name}={fraction}; expected 0 <= {name} < 1')
        if val_fraction + test_fraction >= 1:
            msg = f'val_fraction + test_fraction = {val_fraction + test_fraction}; expected < 1'
            raise ValueError(msg)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f'num_classes={num_classes}; expected >= 1')
        if (mean is None) != (std is None):
            raise ValueError('mean and std go together; expected both or neither')
        if group_sampling not in ('area', 'equal'):
            msg = f"group_sampling={group_sampling!r}; expected 'area' or 'equal'"
            raise ValueError(msg)
        super().__init__(
            GeoTIFFDataset,
            batch_size=batch_size,
            patch_size=patch_size,
            length=length,
            num_workers=num_workers,
        )
        self.images, self.masks, self.mask_suffix = images, masks, mask_suffix
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.patch_size: int = patch_size
        self.eval_size = evaluation
        self.scale_ratio = scale_ratio
        self.band_selection = list(bands) if bands is not None else None
        #: 0-based indexes of the bands read (as the ISPRS datamodules' ``bands``,
        #: which ``xscale segment`` reads from the checkpoint); None: all. Set by
        #: :meth:`setup`.
        self.bands: list[int] | None = None
        self.in_channels = in_channels
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.flips, self.seed, self.nodata = flips, seed, nodata
        self.stats_cache = stats_cache
        self.group_sampling = group_sampling
        self.res_tolerance = res_tolerance
        self.collate_fn = default_collate  # type: ignore[assignment]  # 'files': list
        self._given_stats = (mean, std)
        #: The native grid of each group (finest GSD first).
        self.groups: list[RasterGroup] = []
        #: Images and masks of each group, over all its files.
        self.group_datasets: list[LabelledRasters] = []
        #: ``(train, val, test)`` regions (shapely, CRS units) of each group.
        self.splits: list[tuple[Any, Any, Any]] = []
        #: Validation / test tiles of each group: ``[(x, y) slices]``.
        self.val_tiles: list[list[tuple[slice, slice]]] = []
        self.test_tiles: list[list[tuple[slice, slice]]] = []
        #: Index of the group the test set is restricted to (None: all groups).
        self.test_group: int | None = None
        #: ``{'min', 'median', 'max'}`` native GSD (m) of the training tiles.
        self.gsd_range: dict[str, float] | None = None
        self.pairs: list[tuple[str, str]] = []
        self.flip = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=0.5),
            K.RandomVerticalFlip(p=0.5),
            data_keys=['input', 'mask'],
        )

    # ----------------------------------------------------------------- build
    @property
    def num_bands(self) -> int | None:
        """Bands per tile (None before :meth:`setup`)."""
        return self.group_datasets[0].num_bands if self.group_datasets else None

    def group_info(self) -> list[tuple[str, float]]:
        """Name and median GSD (m) of each group, finest first (validates the files).

        Returns:
            ``(name, gsd)`` per group, e.g. ``('EPSG:32632 0.25 m', 0.25)``.
        """
        if not self.groups:
            self._build()
        return [(g.name, g.gsd) for g in self.groups]

    def _build(self) -> None:
        """Pair, validate and group the files; build the datasets, splits, statistics."""
        self.pairs = pair_masks(self.images, self.masks, self.mask_suffix)  # type: ignore[arg-type]
        image_files = [image for image, _ in self.pairs]
        _, indexes, infos = validate_rasters(
            image_files, self.band_selection, self.in_channels
        )
        self.bands = [i - 1 for i in indexes] if indexes else None
        mask_of = {}
        for (_, mask_path), info in zip(self.pairs, infos):
            # one by one: a mask's band count is checked against its image's grid
            mask = validate_rasters([mask_path])[2][0]
            _check_pair(info, mask)
            _check_classes(mask_path, self.num_classes, self.ignore_index)
            mask_of[info.path] = mask_path
        self.groups = group_rasters(infos, rtol=self.res_tolerance)
        by_path = {info.path: info for info in infos}
        self.group_datasets, self.splits = [], []
        self.val_tiles, self.test_tiles = [], []
        for group in self.groups:
            images = group.dataset(bands=self.band_selection, nodata=self.nodata)
            masks = MaskRaster(
                [mask_of[f] for f in group.files], crs=images.crs, res=images.res
            )
            self.group_datasets.append(
                LabelledRasters(images, masks, self.ignore_index)
            )
            regions = [self._regions(by_path[f]) for f in group.files]
            train = shapely.union_all([r[0] for r in regions])
            val = shapely.union_all([r[1] for r in regions if r[1] is not None])
            test = shapely.union_all([r[2] for r in regions if r[2] is not None])
            # overlapping rasters: a pixel held out anywhere is held out everywhere
            self.splits.append(
                (train.difference(val.union(test)), val.difference(test), test)
            )
            val_tiles, test_tiles = [], []
            for f, (_, val_box, test_box) in zip(group.files, regions):
                val_tiles += self._grid(by_path[f], val_box)
                test_tiles += self._grid(by_path[f], test_box)
            self.val_tiles.append(val_tiles)
            self.test_tiles.append(test_tiles)
        mean, std = self._given_stats
        if mean is None or std is None:
            stats = band_stats(image_files, indexes, self.nodata, self.stats_cache)
            mean, std = combine_band_stats(stats)
        n_bands = self.group_datasets[0].num_bands
        for name, value in (('mean', mean), ('std', std)):
            if len(value) != n_bands:
                msg = f'{name}: has {len(value)} values; expected {n_bands} (one per band)'
                raise RasterInputError(msg)
        if min(std) <= 0:
            raise RasterInputError(f'std: {list(std)} has values <= 0; expected > 0')
        self.mean = torch.tensor(list(mean), dtype=torch.float32)
        self.std = torch.tensor(list(std), dtype=torch.float32)

    def _strip(self, extent: int, fraction: float) -> int:
        """Pixels held out for *fraction* of *extent*: whole eval tiles, at least one."""
        if fraction == 0:
            return 0
        return self.eval_size * max(1, round(fraction * extent / self.eval_size))

    def _regions(self, info: RasterInfo) -> tuple[Any, Any, Any]:
        """The train, val and test boxes of one image (val/test None if not held out)."""
        left, bottom, right, top = info.bounds
        xres, yres = info.res
        side = max(self.patch_size, self.eval_size)
        if min(info.width, info.height) < side:
            msg = (
                f'{info.path}: {info.width} x {info.height} px; expected at least '
                f'{side} px on each side (patch_size={self.patch_size}, '
                f'eval_size={self.eval_size})'
            )
            raise RasterInputError(msg)
        along_x = info.width >= info.height
        extent = info.width if along_x else info.height
        val_px = self._strip(extent, self.val_fraction)
        test_px = self._strip(extent, self.test_fraction)
        train_px = extent - val_px - test_px
        if train_px < self.patch_size:
            msg = (
                f'{info.path}: {extent} px along its longer side; expected at least '
                f'{self.patch_size + val_px + test_px} px ({self.patch_size} to train '
                f'(patch_size) + {val_px} validation + {test_px} test, whole eval_size '
                f'tiles): lower patch_size, eval_size, val_fraction or test_fraction'
            )
            raise RasterInputError(msg)
        cuts = [0, train_px, train_px + val_px, extent]  # pixels from the left / top
        boxes: list[Any] = []
        for start, stop in itertools.pairwise(cuts):
            if stop == start:
                boxes.append(None)
            elif along_x:
                boxes.append(
                    shapely.box(left + start * xres, bottom, left + stop * xres, top)
                )
            else:
                boxes.append(
                    shapely.box(left, top - stop * yres, right, top - start * yres)
                )
        return boxes[0], boxes[1], boxes[2]

    def _grid(self, info: RasterInfo, box: Any) -> list[tuple[slice, slice]]:
        """Eval tiles over *box* on *info*'s pixel grid, the last flush with each edge."""
        if box is None:
            return []
        xres, yres = info.res
        left, bottom, right, top = box.bounds
        cols = flush_starts(0, round((right - left) / xres), self.eval_size)
        rows = flush_starts(0, round((top - bottom) / yres), self.eval_size)
        size_x, size_y = self.eval_size * xres, self.eval_size * yres
        return [
            (
                slice(left + c * xres, left + c * xres + size_x),
                slice(top - r * yres - size_y, top - r * yres),
            )
            for r in rows
            for c in cols
        ]

    def _world(self) -> tuple[int, int]:
        """``(rank, world_size)`` of this process (``(0, 1)`` without a trainer)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _check_task(self) -> None:
        """Raise if the trainer's task has other ``num_classes`` / ``ignore_index``."""
        task = getattr(self.trainer, 'lightning_module', None) if self.trainer else None
        hparams = getattr(task, 'hparams', {})
        for name in ('num_classes', 'ignore_index'):
            mine, theirs = getattr(self, name), hparams.get(name, getattr(self, name))
            if mine is not None and mine != theirs:
                msg = f'data {name}={mine} but model {name}={theirs}; expected the same'
                raise ValueError(msg)

    def _train_sampler(self) -> GroupedPatchSampler:
        """The grouped random sampler over every group's training region."""
        datasets = cast(GroupedGeoTIFFDataset, self.train_dataset).datasets
        samplers = []
        for dataset, group in zip(datasets, self.groups):
            sampler = ExactPatchSampler(dataset, size=self.patch_size, seed=self.seed)
            if sampler.empty:
                msg = (
                    f'{group.files[0]}: group {group.name} has no training region of '
                    f'{self.patch_size} x {self.patch_size} px; expected larger rasters'
                )
                raise RasterInputError(msg)
            samplers.append(sampler)
        weights = (
            [1.0] * len(samplers)
            if self.group_sampling == 'equal'
            else [s.capacity for s in samplers]
        )
        rank, world = self._world()
        if self.length is None:
            tiles = sum(
                max(1, round(s.capacity / self.patch_size**2)) for s in samplers
            )
            per_step = self.batch_size * world
            length = math.ceil(max(tiles, per_step) / per_step) * per_step
        else:
            length = self.length
        return GroupedPatchSampler(
            samplers,
            length=length,
            batch_size=self.batch_size,
            weights=weights,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
        )

    def setup(self, stage: str) -> None:
        """Build the datasets (validating every pair), the splits and the samplers.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.

        Raises:
            RasterInputError: On a bad file or pair, or rasters too small to split.
            ValueError: If the task's ``num_classes`` / ``ignore_index`` differ.
        """
        if not self.groups:
            self._build()
        self._check_task()
        whole = GroupedGeoTIFFDataset(cast(Any, self.group_datasets))
        if stage == 'fit':
            train = [
                roi_split(dataset, [split[0]])[0]
                for dataset, split in zip(self.group_datasets, self.splits)
            ]
            self.train_dataset = GroupedGeoTIFFDataset(cast(Any, train))
            sampler = self._train_sampler()
            self.train_sampler = sampler  # type: ignore[assignment]
            self.gsd_range = self._gsd_range(sampler)
            for group, weight in zip(self.groups, sampler.weights):
                rank_zero_info(
                    f'GeoTIFFSegmentationDataModule: group {group.name}: '
                    f'{len(group.files)} labelled raster(s), {100 * weight:.1f}% of the '
                    'training tiles, read at native resolution'
                )
        if stage in ('fit', 'validate'):
            self.val_dataset = whole
            self.val_sampler = [  # type: ignore[assignment]
                (g, where) for g, tiles in enumerate(self.val_tiles) for where in tiles
            ]
        if stage in ('test', 'predict'):
            if self.test_group is not None and not 0 <= self.test_group < len(
                self.groups
            ):
                msg = f'test_group={self.test_group}; expected 0..{len(self.groups) - 1} or None'
                raise ValueError(msg)
            self.test_dataset = self.predict_dataset = whole
            self.test_sampler = self.predict_sampler = [  # type: ignore[assignment]
                (g, where)
                for g, tiles in enumerate(self.test_tiles)
                if self.test_group in (None, g)
                for where in tiles
            ]

    def _gsd_range(self, sampler: GroupedPatchSampler) -> dict[str, float]:
        """Min, median and max native GSD of epoch 0's training tiles (20,000 at most)."""
        values = []
        for group, where in sampler.epoch_tiles(0, count=20_000):
            images = self.group_datasets[group].images
            y: slice = where[1]  # type: ignore[index, misc]
            lat = (y.start + y.stop) / 2 if images.ground_units.geographic else None
            values.append(images.ground_units.gsd(*images.res, lat))
        return {
            'min': float(min(values)),
            'median': float(statistics.median(values)),
            'max': float(max(values)),
        }

    # ----------------------------------------------------------------- loaders
    def _dataloader_factory(self, split: str) -> DataLoader[dict[str, Any]]:
        """The data loader of *split* (training: resumable, whole batches).

        Args:
            split: ``train``, ``val``, ``test`` or ``predict``.

        Returns:
            The data loader.
        """
        if split == 'train':
            return ResumableDataLoader(
                self._valid_attribute('train_dataset'),
                batch_size=self.batch_size,
                sampler=self._valid_attribute('train_sampler'),
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                drop_last=True,
                persistent_workers=self.num_workers > 0,
                pin_memory=torch.cuda.is_available(),
            )
        loader = super()._dataloader_factory(split)
        loader.pin_memory = torch.cuda.is_available()
        return loader

    def on_after_batch_transfer(
        self, batch: dict[str, Any], dataloader_idx: int
    ) -> dict[str, Any]:
        """Normalise, flip (training), then apply the scale ratio, on the device.

        Args:
            batch: The collated tiles (raw ``image`` ``(B, C, H, W)``, ``mask``
                ``(B, H, W)``, ``valid``, ``gsd``...).
            dataloader_idx: Index of the data loader.

        Returns:
            The batch with ``image`` normalised and at ``scale_ratio``.
        """
        image = normalize(batch['image'], self.mean, self.std, batch.get('valid'))
        mask = batch['mask']
        training = bool(self.trainer is not None and self.trainer.training)
        if training and self.flips:
            image, flipped = self.flip(image, mask[:, None].float())
            mask = flipped[:, 0].round().long()
        if self.scale_ratio < 1:
            image = scale_to_ratio(image, self.scale_ratio)
        batch['image'], batch['mask'] = image, mask
        return batch
