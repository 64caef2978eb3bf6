"""Evaluation data: TorchGeo classification datasets, class folders, GeoTIFF tiles.

* :func:`build_classification_dataset`: TorchGeo's ``RESISC45``, ``UCMerced``,
  ``EuroSAT`` (their own on-disk layouts and split files),
  :class:`~torchgeo_xscale.datasets.RSSCN7` (all 4 scale levels), and :class:`ClassFolder`
  for WHU-RS19 (not in TorchGeo 0.10) or any ``root/<class>/<image>`` folder. Every
  image is resized to the encoder's input size so that batches stack.
* :func:`load_geotiff_tiles`: a grid of tiles over GeoTIFFs, optionally only over the
  region that :class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule` holds out from
  training, as normalised tensors with their GSD.
"""

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import shapely
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchgeo.datasets import RESISC45, EuroSAT, UCMerced
from torchgeo.datasets.geo import NonGeoClassificationDataset
from torchgeo.datasets.utils import rasterio_loader
from torchvision.datasets.folder import IMG_EXTENSIONS, pil_loader

from ..datamodules.geotiff import GeoTIFFDataModule
from ..datasets.rsscn7 import RSSCN7
from ..renames import refuse_renamed
from ..samplers import flush_starts
from ..transforms import normalize

__all__ = (
    'CLASSIFICATION_DATASETS',
    'IMAGENET_STATS',
    'ClassFolder',
    'ClassificationSplits',
    'ResizeImage',
    'TileSet',
    'build_classification_dataset',
    'channel_stats',
    'group_members',
    'load_geotiff_tiles',
    'overall_rows',
    'prepare_classification',
    'tile_grid',
)

#: Names accepted by :func:`build_classification_dataset`.
CLASSIFICATION_DATASETS = (
    'resisc45',
    'ucmerced',
    'eurosat',
    'whu-rs19',
    'rsscn7',
    'folder',
)

_RASTER_EXTENSIONS = ('.tif', '.tiff')


def _load_any(path: str) -> Any:
    """Read a raster with rasterio (``.tif``) or an image with PIL (RGB)."""
    if path.lower().endswith(_RASTER_EXTENSIONS):
        return rasterio_loader(path)
    return pil_loader(path)


class ClassFolder(NonGeoClassificationDataset):
    """Images in one folder per class (WHU-RS19's layout): ``root/<class>/<image>``.

    If ``root/<split>/`` exists it is used as is. Otherwise the split is made here:
    in each class, files sorted by name are shuffled with *seed* and the first
    ``round(train_fraction * n)`` (at least one) form ``train``, the rest ``test``.
    ``.tif`` files are read with rasterio (any band count), others with PIL as RGB.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = 'train',
        train_fraction: float = 0.8,
        seed: int = 0,
        transforms: Any = None,
    ) -> None:
        """Index the images of *split*.

        Args:
            root: Folder of class folders (or of ``train``/``test`` folders of them).
            split: ``train`` or ``test``.
            train_fraction: Share of each class in ``train`` when splitting here.
            seed: Seed of the split.
            transforms: Function applied to each sample dict.

        Raises:
            ValueError: If *split* or *train_fraction* is invalid.
            FileNotFoundError: If *root* is not a folder.
        """
        root = os.fspath(root)
        if split not in ('train', 'test'):
            raise ValueError(
                f"split={split!r}; expected 'train' or 'test' for a class folder"
            )
        if not 0 < train_fraction < 1:
            raise ValueError(f'train_fraction={train_fraction}; expected in (0, 1)')
        if not os.path.isdir(root):
            raise FileNotFoundError(f'root={root!r} is not a folder of class folders')
        extensions = tuple(IMG_EXTENSIONS) + _RASTER_EXTENSIONS
        if os.path.isdir(os.path.join(root, split)):
            super().__init__(
                os.path.join(root, split),
                transforms,
                _load_any,
                lambda p: str(p).lower().endswith(extensions),
            )
            return
        chosen: set[str] = set()
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                continue
            files = sorted(
                f for f in os.listdir(folder) if f.lower().endswith(extensions)
            )
            random.Random(f'{seed}:{name}').shuffle(files)
            n_train = min(len(files), max(1, round(train_fraction * len(files))))
            keep = files[:n_train] if split == 'train' else files[n_train:]
            chosen.update(os.path.join(folder, f) for f in keep)
        super().__init__(root, transforms, _load_any, lambda p: os.fspath(p) in chosen)


class ResizeImage:
    """Sample transform: ``image`` to float32 ``(C, size, size)`` (antialiased)."""

    def __init__(self, size: int) -> None:
        """Set the output side.

        Args:
            size: Output side in pixels.
        """
        self.size = size

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Resize the sample's image.

        Args:
            sample: Dict with ``image`` ``(C, H, W)``.

        Returns:
            The sample with ``image`` ``(C, size, size)`` float32.
        """
        image = sample['image'].float()
        if tuple(image.shape[-2:]) != (self.size, self.size):
            image = F.interpolate(
                image[None],
                size=(self.size, self.size),
                mode='bilinear',
                align_corners=False,
                antialias=True,
            )[0]
        sample['image'] = image
        return sample


def build_classification_dataset(
    name: str,
    root: str | os.PathLike[str],
    split: str,
    size: int,
    bands: Sequence[str] | None = None,
    in_channels: int | None = None,
    train_fraction: float = 0.8,
    seed: int = 0,
    *,
    in_chans: int | None = None,
) -> Dataset[dict[str, Any]]:
    """A classification split whose images are resized to *size*.

    Args:
        name: One of :data:`CLASSIFICATION_DATASETS`.
        root: Dataset root, as the TorchGeo class expects it (``whu-rs19``: the
            folder of class folders, or its parent holding ``WHU-RS19/``).
        split: ``train`` or ``test`` (``val`` too for the TorchGeo datasets).
        size: Encoder input side in pixels.
        bands: EuroSAT band names (default: RGB for a 3-band encoder, else all).
        in_channels: Bands the encoder takes (TorchGeo's name; picks EuroSAT's
            default bands).
        train_fraction: Train share of class folders without split folders
            (RSSCN7 keeps its own 50/50 split of each class and level).
        seed: Seed of that split.
        in_chans: Renamed *in_channels* (:mod:`torchgeo_xscale.renames`); giving
            it raises.

    Returns:
        The dataset; samples are ``{'image': (C, size, size) float32, 'label': ()}``.

    Raises:
        ValueError: If *name* is unknown, or *in_chans* is given.
    """
    refuse_renamed('in_chans', in_chans)
    transform = ResizeImage(size)
    key = name.lower().replace('_', '-')
    if key == 'resisc45':
        return RESISC45(os.fspath(root), split, transforms=transform)  # type: ignore[arg-type]
    if key in ('ucmerced', 'uc-merced'):
        return UCMerced(os.fspath(root), split, transforms=transform)  # type: ignore[arg-type]
    if key == 'eurosat':
        if bands is None:
            bands = EuroSAT.rgb_bands if in_channels == 3 else EuroSAT.all_band_names
        return EuroSAT(os.fspath(root), split, bands=bands, transforms=transform)  # type: ignore[arg-type]
    if key == 'rsscn7':
        return RSSCN7(
            root,
            'test' if split == 'val' else split,  # type: ignore[arg-type]
            seed=seed,
            transforms=transform,
        )
    if key in ('whu-rs19', 'folder'):
        nested = os.path.join(os.fspath(root), 'WHU-RS19')
        folder = nested if key == 'whu-rs19' and os.path.isdir(nested) else root
        return ClassFolder(
            folder, 'test' if split == 'val' else split, train_fraction, seed, transform
        )
    raise ValueError(f'dataset={name!r}; expected one of {CLASSIFICATION_DATASETS}')


def channel_stats(
    dataset: Dataset[dict[str, Any]], max_samples: int = 1000, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Per-band mean and standard deviation over (up to *max_samples*) images.

    Args:
        dataset: Samples with ``image`` ``(C, H, W)`` of one size.
        max_samples: Images used (the first ones; datasets are sorted by class, so
            a stride over the whole dataset is taken).
        batch_size: Images per batch.

    Returns:
        ``mean`` and ``std``, both ``(C,)``.
    """
    n = len(dataset)  # type: ignore[arg-type]
    step = max(1, n // max_samples)
    subset = torch.utils.data.Subset(dataset, range(0, n, step))
    total = total_sq = None
    count = 0
    for batch in DataLoader(subset, batch_size=batch_size):
        x = batch['image'].double().transpose(0, 1).flatten(1)  # (C, B*H*W)
        total = x.sum(1) if total is None else total + x.sum(1)
        total_sq = (x**2).sum(1) if total_sq is None else total_sq + (x**2).sum(1)
        count += x.shape[1]
    assert total is not None and total_sq is not None
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


@dataclass
class TileSet:
    """Tiles read from GeoTIFFs.

    Attributes:
        images: Normalised tiles ``(N, C, T, T)`` (0 where invalid).
        valid: Valid pixels ``(N, 1, T, T)``.
        gsd: Metres per pixel ``(N,)``.
        bounds: ``(xmin, ymin, xmax, ymax)`` of each tile in the rasters' CRS.
        groups: The native-grid group of each tile, by name (e.g.
            ``'EPSG:32633 0.25 m'``, :attr:`~torchgeo_xscale.datasets.RasterGroup.name`);
            empty when unknown.
    """

    images: Tensor
    valid: Tensor
    gsd: Tensor
    bounds: list[tuple[float, float, float, float]]
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        """Number of tiles."""
        return int(self.images.shape[0])


def group_members(tiles: TileSet) -> list[tuple[str, float, Tensor]]:
    """The native-grid groups of a tile set with more than one, for per-group rows.

    Args:
        tiles: The tiles.

    Returns:
        ``(name, median gsd in metres, members)`` per group in order of first
        appearance (finest first for :func:`load_geotiff_tiles`), *members* a boolean
        ``(N,)``; empty for tiles of one group (or of unknown groups).
    """
    names = list(dict.fromkeys(tiles.groups))
    if len(names) < 2 or len(tiles.groups) != len(tiles):
        return []
    out = []
    for name in names:
        members = torch.tensor([g == name for g in tiles.groups])
        out.append((name, float(tiles.gsd[members].median()), members))
    return out


def overall_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows over all tiles (``group`` absent or ``all``), e.g. for a plot.

    Args:
        rows: Result rows, some per group.

    Returns:
        The overall rows.
    """
    return [r for r in rows if r.get('group', 'all') == 'all']


def tile_grid(
    geometry: Any,
    reference: Sequence[float],
    res: Sequence[float],
    tile_size: int,
    stride: int,
) -> tuple[list[tuple[float, float, float, float]], list[tuple[int, int]]]:
    """A grid of tiles from each part's top-left corner, the last flush to each edge.

    Columns start at ``0, stride, 2 * stride, ...`` pixels from the left edge, as
    TorchGeo's :class:`~torchgeo.samplers.GridGeoSampler` lays its chips from the
    origin, plus a last one moved back to end at the right edge instead of
    overhanging it; rows likewise from the top. So a raster of any size at least one
    tile wide is covered and no tile overhangs. (TorchGeo 0.10's
    :class:`~torchgeo.samplers.GriddedPatchSampler` centres its grid on the extent, so
    that every tile overhangs an edge when the size is not a multiple of the stride.)
    Corners are snapped to the pixel grid of *reference*.

    Args:
        geometry: Region (a shapely geometry in CRS units); each of its parts gets a
            grid over its bounds.
        reference: ``(xmin, ymin, xmax, ymax)`` whose corner the pixels align to.
        res: ``(x, y)`` pixel size in CRS units.
        tile_size: Tile side in pixels.
        stride: Grid step in pixels.

    Returns:
        ``(xmin, ymin, xmax, ymax)`` of each tile, and the ``(width, height)`` in
        pixels of each part.
    """
    xres, yres = res
    boxes: list[tuple[float, float, float, float]] = []
    sizes: list[tuple[int, int]] = []
    for part in shapely.get_parts(geometry):
        xmin, ymin, xmax, ymax = part.bounds
        # Snap the part's left/top edge to the pixel grid, count whole pixels.
        left = reference[0] + round((xmin - reference[0]) / xres) * xres
        top = reference[3] - round((reference[3] - ymax) / yres) * yres
        width = round((xmax - left) / xres)
        height = round((top - ymin) / yres)
        sizes.append((width, height))
        if width < tile_size or height < tile_size:
            continue
        for row in flush_starts(0, height, tile_size, stride):
            y1 = top - row * yres
            for col in flush_starts(0, width, tile_size, stride):
                x0 = float(left + col * xres)
                x1, y0 = x0 + tile_size * xres, float(y1 - tile_size * yres)
                boxes.append((x0, y0, x1, float(y1)))
    return boxes, sizes


def load_geotiff_tiles(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    tile_size: int,
    stride: int | None = None,
    holdout_fraction: float = 0.0,
    holdout_patch_size: int | None = None,
    min_valid_fraction: float = 1.0,
    max_tiles: int | None = None,
    **dataset_kwargs: Any,
) -> TileSet:
    """A grid of tiles over GeoTIFFs (all of them, or their held-out region).

    With ``holdout_fraction > 0`` only the region that
    :class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule` (same *paths*,
    ``patch_size=holdout_patch_size``, ``val_fraction=holdout_fraction``) keeps out of
    training is tiled, and only tiles lying wholly inside it are kept: no pixel of a
    training tile is read.

    Args:
        paths: GeoTIFF folder, glob, file or list.
        tile_size: Tile side in pixels.
        stride: Grid step in pixels (default *tile_size*: no overlap).
        holdout_fraction: Share of the extent held out (0: tile everything).
        holdout_patch_size: Patch size of the training datamodule (default
            *tile_size*), which rounds the held-out width.
        min_valid_fraction: Tiles with a smaller valid-pixel share are dropped.
        max_tiles: Keep at most this many tiles (evenly spaced).
        **dataset_kwargs: Passed to
            :class:`~torchgeo_xscale.datasets.GeoTIFFDataset` (``bands``, ``mean``...).

    Returns:
        The tiles.

    Raises:
        ValueError: If no held-out region fits or no tile is left.
    """
    datamodule = GeoTIFFDataModule(
        paths,  # type: ignore[arg-type]
        img_size=tile_size,
        patch_size=holdout_patch_size or tile_size,
        val_fraction=holdout_fraction,
        **dataset_kwargs,
    )
    datamodule.setup('validate')
    # One region per native-grid group: its held-out strip, or all of it.
    regions = (
        datamodule.val_groups if holdout_fraction > 0 else datamodule.group_datasets
    )
    if any(region is None for region in regions):
        msg = (
            f'{paths}: too small to hold out {holdout_fraction} of the extent in whole '
            f'patches of {holdout_patch_size or tile_size} px; expected larger rasters'
        )
        raise ValueError(msg)
    what = 'the held-out region is' if holdout_fraction > 0 else 'the rasters are'
    images, valid, gsd, bounds, names = [], [], [], [], []
    all_sizes: list[tuple[int, int]] = []
    n_boxes, best = 0, 0.0
    for region, group, info in zip(
        regions, datamodule.group_datasets, datamodule.groups, strict=True
    ):
        assert region is not None
        geometry = region.index.geometry.union_all()
        inside = shapely.buffer(geometry, 0.5 * min(region.res))
        reference = group.index.total_bounds  # pixel grid of the group's rasters
        boxes, sizes = tile_grid(
            geometry, reference, region.res, tile_size, stride or tile_size
        )
        all_sizes += sizes
        n_boxes += len(boxes)
        for x0, y0, x1, y1 in boxes:
            if not inside.contains(shapely.box(x0, y0, x1, y1)):
                continue
            sample = region[slice(x0, x1), slice(y0, y1)]
            fraction = float(sample['valid'].float().mean())
            best = max(best, fraction)
            if fraction < min_valid_fraction:
                continue
            # The dataset reads raw pixels; normalise as the datamodule does.
            images.append(
                normalize(
                    sample['image'], datamodule.mean, datamodule.std, sample['valid']
                )
            )
            valid.append(sample['valid'])
            gsd.append(sample['gsd'])
            bounds.append((x0, y0, x1, y1))
            names.append(info.name)
    sizes = all_sizes
    if not n_boxes:
        msg = (
            f'{paths}: no tile of {tile_size} x {tile_size} px fits: {what} '
            f'{", ".join(f"{w} x {h}" for w, h in sizes)} px (width x height); '
            f'expected at least {tile_size} px on each side, or a smaller tile size'
        )
        raise ValueError(msg)
    if not images:
        msg = (
            f'{paths}: no tile of {tile_size} px with valid fraction >= '
            f'{min_valid_fraction} ({n_boxes} tiles on {what} '
            f'{", ".join(f"{w} x {h}" for w, h in sizes)} px; best valid fraction '
            f'{best:.2f}); expected fewer nodata pixels or a lower min_valid_fraction'
        )
        raise ValueError(msg)
    keep = list(range(len(images)))
    if max_tiles is not None and len(keep) > max_tiles:
        keep = [
            round(i * (len(images) - 1) / max(1, max_tiles - 1))
            for i in range(max_tiles)
        ]
    return TileSet(
        images=torch.stack([images[i] for i in keep]).float(),
        valid=torch.stack([valid[i] for i in keep]),
        gsd=torch.stack([gsd[i] for i in keep]).float(),
        bounds=[bounds[i] for i in keep],
        groups=[names[i] for i in keep],
    )


#: Per-band mean and std of ImageNet RGB in 0-255 units (Scale-MAE's weights use them).
IMAGENET_STATS = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


@dataclass
class ClassificationSplits:
    """Train and evaluation splits of a classification dataset, ready to embed.

    Attributes:
        train: Training samples (the kNN bank / linear probe's training set).
        test: Evaluation samples.
        num_classes: Number of classes.
        mean: Per-band mean ``(C,)`` subtracted before the encoder.
        std: Per-band std ``(C,)`` dividing after that.
        name: Dataset name.
    """

    train: Dataset[dict[str, Any]]
    test: Dataset[dict[str, Any]]
    num_classes: int
    mean: Tensor
    std: Tensor
    name: str


def _subsample(
    dataset: Dataset[dict[str, Any]], max_samples: int | None
) -> Dataset[dict[str, Any]]:
    n = len(dataset)  # type: ignore[arg-type]
    if max_samples is None or n <= max_samples:
        return dataset
    return torch.utils.data.Subset(
        dataset, [i * n // max_samples for i in range(max_samples)]
    )


def prepare_classification(
    name: str,
    root: str | os.PathLike[str],
    size: int,
    in_channels: int | None = None,
    split: str = 'test',
    normalize: str = 'dataset',
    bands: Sequence[str] | None = None,
    max_samples: int | None = None,
    train_fraction: float = 0.8,
    seed: int = 0,
    *,
    in_chans: int | None = None,
) -> ClassificationSplits:
    """Build train and evaluation splits and their normalisation.

    Args:
        name: Dataset name (:data:`CLASSIFICATION_DATASETS`).
        root: Dataset root.
        size: Encoder input side.
        in_channels: Encoder bands (TorchGeo's name; checked against the data).
        split: Evaluation split, ``test`` or ``val``.
        normalize: ``dataset`` (per-band statistics of the train split), ``imagenet``
            (0-255 RGB, as Scale-MAE's weights expect) or ``none``.
        bands: EuroSAT band names.
        max_samples: Use at most this many images per split (evenly spaced).
        train_fraction: Train share for class folders without split folders.
        seed: Seed of that split.
        in_chans: Renamed *in_channels* (:mod:`torchgeo_xscale.renames`); giving
            it raises.

    Returns:
        The splits.

    Raises:
        ValueError: On an unknown *normalize*, a band-count mismatch or *in_chans*
            given.
    """
    refuse_renamed('in_chans', in_chans)
    if normalize not in ('dataset', 'imagenet', 'none'):
        raise ValueError(
            f"normalize={normalize!r}; expected 'dataset', 'imagenet' or 'none'"
        )
    train = build_classification_dataset(
        name, root, 'train', size, bands, in_channels, train_fraction, seed
    )
    test = build_classification_dataset(
        name, root, split, size, bands, in_channels, train_fraction, seed
    )
    classes = getattr(train, 'classes', None)
    num_classes = len(classes) if classes else 1 + max(int(s) for s in train.targets)  # type: ignore[attr-defined]
    channels = int(train[0]['image'].shape[0])
    if in_channels is not None and channels != in_channels:
        msg = (
            f'dataset={name!r} gives {channels} bands; the encoder expects '
            f'{in_channels} (in_channels; see bands=)'
        )
        raise ValueError(msg)
    train, test = _subsample(train, max_samples), _subsample(test, max_samples)
    if normalize == 'dataset':
        mean, std = channel_stats(train)
    elif normalize == 'imagenet':
        if channels != 3:
            raise ValueError(
                f"normalize='imagenet' needs 3 bands; dataset={name!r} gives {channels}"
            )
        mean, std = (torch.tensor(v) for v in IMAGENET_STATS)
    else:
        mean, std = torch.zeros(channels), torch.ones(channels)
    return ClassificationSplits(train, test, num_classes, mean, std, name)
