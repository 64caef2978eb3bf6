"""TorchGeo raster datasets over any GeoTIFFs, with validity masks and GSD.

:class:`GeoTIFFDataset` is a :class:`torchgeo.datasets.RasterDataset` that accepts any
band count and file layout, validates every file before indexing (RasterDataset skips
unreadable files silently), and returns per sample the raw pixels, a valid-pixel mask
and the ground sample distance in metres. Normalisation is the datamodule's business
(TorchGeo's convention). A dataset reads on one grid; files on another grid are warped
to it, with a warning naming every file resampled by more than 1.5x.

:class:`GroupedGeoTIFFDataset` holds one :class:`GeoTIFFDataset` per native grid (see
:func:`~torchgeo_xscale.datasets.rasters.group_rasters`) and is indexed by
``(group, GeoSlice)``: each tile is read on its own file's grid, never resampled.
"""

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.merge
import rasterio.warp
import torch
from pyproj import CRS
from torch import Tensor
from torch.utils.data import Dataset
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import GeoSlice

from ..gsd import GroundUnits
from ..renames import refuse_renamed
from .rasters import RasterInfo, _error, resolve_raster_paths, validate_rasters

__all__ = (
    'RESAMPLING_WARN_FACTOR',
    'GeoTIFFDataset',
    'GroupedGeoTIFFDataset',
    'describe_files',
)

#: A file read at a GSD this many times finer or coarser than its own is warned about.
RESAMPLING_WARN_FACTOR = 1.5


def _first_valid(
    merged_data: np.ndarray, new_data: np.ma.MaskedArray, *args: Any, **kwargs: Any
) -> None:
    """Merge method for :func:`rasterio.merge.merge` keeping a validity band.

    ``merged_data`` has one band more than ``new_data``: the last band is 1 where a
    pixel has been filled from a file where all bands were valid. Earlier files win.
    """
    count = new_data.shape[0]
    new_valid = ~np.ma.getmaskarray(new_data).any(axis=0)
    take = new_valid & (merged_data[count] == 0)
    np.copyto(merged_data[:count], np.ma.getdata(new_data), 'unsafe', take[None])
    merged_data[count][take] = 1


class GeoTIFFDataset(RasterDataset):
    """Any folder, glob or list of GeoTIFFs as a TorchGeo raster dataset.

    Index it like any :class:`~torchgeo.datasets.RasterDataset` (with a GeoSlice from
    a TorchGeo sampler). Every file is validated when the dataset is built. Each sample
    holds:

    * ``image``: float32 ``(C, H, W)``, the raw pixel values, 0 where invalid;
    * ``valid``: bool ``(1, H, W)``, False where any band is nodata (the file's nodata
      or mask, or outside every file's footprint), NaN or +-Inf;
    * ``gsd``: float32 ``()``, metres per pixel of the sample grid (for a geographic
      CRS at the tile-centre latitude);
    * ``bounds`` and ``transform`` as in TorchGeo, and ``files``: the files read for
      this tile, joined by ``';'``.

    The grid is *crs* / *res*, by default the first file's (TorchGeo's rule). Files
    on another grid are warped to it by TorchGeo (their outside-footprint pixels are
    invalid too, GDAL's warped mask), and a :class:`UserWarning` names every file
    whose GSD changes by more than :data:`RESAMPLING_WARN_FACTOR` and by how much. To
    read a folder of mixed grids without resampling, use one dataset per grid
    (:func:`~torchgeo_xscale.datasets.rasters.group_rasters`,
    :class:`GroupedGeoTIFFDataset`), as
    :class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule` does.
    """

    filename_glob = '*'

    def __init__(
        self,
        paths: Sequence[str | Path] | str | Path = 'data',
        crs: str | CRS | None = None,
        res: float | tuple[float, float] | None = None,
        bands: Sequence[int | str] | None = None,
        in_channels: int | None = None,
        nodata: float | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        cache: bool = True,
        *,
        in_chans: int | None = None,
    ) -> None:
        """Initialize a new GeoTIFFDataset instance.

        Args:
            paths: folder (recursive ``*.tif``/``*.tiff``), glob, file, or a list.
            crs: CRS to warp to, e.g. ``'EPSG:32633'`` (default: the first file's).
            res: resolution in CRS units (default: the first file's).
            bands: 1-based band numbers or band descriptions to read (default all).
            in_channels: expected number of bands read (TorchGeo's name); a
                mismatch raises, naming the file.
            nodata: nodata value overriding the files' own.
            transforms: function applied to each finished sample.
            cache: if True, keep file handles open (TorchGeo's LRU cache).
            in_chans: renamed *in_channels* (:mod:`torchgeo_xscale.renames`);
                giving it raises.

        Raises:
            RasterInputError: If a file is unusable; RasterNotFoundError if no file
                is found.
            ValueError: If *in_chans* is given.
        """
        refuse_renamed('in_chans', in_chans)
        if crs is not None:
            try:
                crs = CRS.from_user_input(crs)
            except Exception as err:
                raise _error(
                    'crs', f'{crs!r} cannot be parsed', 'e.g. EPSG:32633'
                ) from err
        files = resolve_raster_paths(paths)
        self._count, band_indexes, infos = validate_rasters(files, bands, in_channels)
        self.nodata = nodata
        super().__init__(files, crs=crs, res=res, transforms=None, cache=cache)
        missing = sorted(set(files) - set(self.index.filepath))
        if missing:  # RasterDataset skips files it cannot open; we do not
            raise _error(missing[0], 'TorchGeo could not index it', 'a readable raster')
        #: What was read from each file's header (CRS, resolution, bounds, GSD).
        self.infos: list[RasterInfo] = infos
        self.band_indexes = band_indexes
        self.bands = [str(i) for i in band_indexes or range(1, self._count + 1)]
        self.sample_transforms = transforms
        self.ground_units = GroundUnits.from_crs(self.crs)
        self._last_files: list[str] = []
        self._warn_resampled()

    @property
    def num_bands(self) -> int:
        """Number of bands a sample's ``image`` has."""
        return len(self.bands)

    def resampling_factors(self) -> dict[str, float]:
        """How much each file is resampled on the dataset's grid.

        Returns:
            ``{file: native GSD / dataset GSD}`` at each file's centre: above 1 the
            file is up-sampled (read finer than its pixels), below 1 down-sampled.
        """
        factors = {}
        xres, yres = self.res
        for info in self.infos:
            left, bottom, right, top = info.bounds
            _, ys = rasterio.warp.transform(
                info.crs, self.crs, [(left + right) / 2], [(bottom + top) / 2]
            )
            latitude = ys[0] if self.ground_units.geographic else None
            factors[info.path] = info.gsd / self.ground_units.gsd(xres, yres, latitude)
        return factors

    def _warn_resampled(self) -> None:
        """Warn, in one message, about every file resampled by more than 1.5x."""
        limit = RESAMPLING_WARN_FACTOR
        parts = []
        for path, factor in self.resampling_factors().items():
            if factor > limit:
                parts.append(f'{path} up-sampled {factor:.3g}x')
            elif factor < 1 / limit:
                parts.append(f'{path} down-sampled {1 / factor:.3g}x')
        if parts:
            msg = (
                f'{len(parts)} of {len(self.infos)} files are resampled to one grid '
                f'({self.crs.to_string()}, res {self.res[0]:g}): '
                + '; '.join(parts)
                + '. Read each file at its own resolution with one dataset per grid '
                '(GeoTIFFDataModule does so unless crs/res are given).'
            )
            warnings.warn(msg, UserWarning, stacklevel=3)

    def _merge_or_stack(
        self,
        filepaths: Sequence[str],
        index: GeoSlice,
        band_indexes: Sequence[int] | None = None,
        out_crs: CRS | None = None,
    ) -> Tensor:
        """Merge files with :func:`rasterio.merge.merge`, adding a validity band.

        Args:
            filepaths: files intersecting the tile.
            index: ``[xmin:xmax:xres, ymin:ymax:yres, tmin:tmax:tres]`` to read.
            band_indexes: 1-based bands to read (default all).
            out_crs: CRS to warp to (default :attr:`crs`).

        Returns:
            float32 ``(C + 1, H, W)``: the bands, then 1 where valid in the files.
        """
        out_crs = out_crs or self.crs
        load = self._cached_load_warp_file if self.cache else self._load_warp_file
        handles = [load(fp, out_crs) for fp in filepaths]
        x, y, _ = self._disambiguate_slice(index)
        count = len(band_indexes) if band_indexes else self._count
        dest, _ = rasterio.merge.merge(
            handles,
            bounds=(x.start, y.start, x.stop, y.stop),
            res=(x.step, y.step),
            indexes=band_indexes,
            resampling=self.resampling,
            nodata=0,
            dtype='float32',
            output_count=count + 1,
            method=_first_valid,
        )
        self._last_files = list(filepaths)
        return torch.from_numpy(dest)

    def __getitem__(self, index: GeoSlice) -> dict[str, Any]:
        """Read one tile: raw pixels, validity and GSD.

        Args:
            index: ``[xmin:xmax:xres, ymin:ymax:yres, tmin:tmax:tres]`` coordinates.

        Returns:
            The sample (see the class docstring for its keys).

        Raises:
            IndexError: If *index* is outside the dataset.
        """
        sample: dict[str, Any] = dict(super().__getitem__(index))
        data = sample.pop('image')
        image = data[:-1]
        valid = (data[-1:] > 0.5) & torch.isfinite(image).all(dim=0, keepdim=True)
        x, y, _ = self._disambiguate_slice(index)
        latitude = (y.start + y.stop) / 2 if self.ground_units.geographic else None
        gsd = self.ground_units.gsd(x.step, y.step, latitude)
        sample['image'] = torch.where(valid, image, 0.0)
        sample['valid'] = valid
        sample['gsd'] = torch.tensor(gsd, dtype=torch.float32)
        sample['files'] = ';'.join(self._last_files)
        if self.sample_transforms is not None:
            sample = self.sample_transforms(sample)
        return sample


class GroupedGeoTIFFDataset(Dataset[dict[str, Any]]):
    """Several :class:`GeoTIFFDataset`, each on its own grid, indexed by ``(group, GeoSlice)``.

    TorchGeo's samplers yield GeoSlices of one dataset; this wrapper lets one sampler
    (:class:`~torchgeo_xscale.samplers.GroupedPatchSampler`) draw tiles from groups
    on different grids, like :class:`torch.utils.data.ConcatDataset` does for
    indexes. A sample is the group's sample plus ``group``: int64 ``()``, the index
    of the group.
    """

    def __init__(self, datasets: Sequence[GeoTIFFDataset]) -> None:
        """Initialize a new GroupedGeoTIFFDataset instance.

        Args:
            datasets: one dataset per group, all with the same band count.

        Raises:
            ValueError: If *datasets* is empty or their band counts differ.
        """
        if not datasets:
            raise ValueError('datasets is empty; expected one dataset per group')
        counts = {ds.num_bands for ds in datasets}
        if len(counts) != 1:
            msg = f'the groups have {sorted(counts)} bands; expected one band count'
            raise ValueError(msg)
        self.datasets = list(datasets)

    @property
    def num_bands(self) -> int:
        """Number of bands of every sample."""
        return self.datasets[0].num_bands

    @property
    def files(self) -> list[str]:
        """Every file of every group."""
        return [info.path for ds in self.datasets for info in ds.infos]

    def __len__(self) -> int:
        """Number of files indexed over all groups."""
        return sum(len(ds) for ds in self.datasets)

    def __getitem__(self, index: tuple[int, GeoSlice]) -> dict[str, Any]:
        """Read a tile of one group.

        Args:
            index: ``(group, GeoSlice)``.

        Returns:
            The group's sample with ``group`` added.

        Raises:
            IndexError: If the group does not exist or the slice is outside it.
        """
        group, where = index
        if not 0 <= group < len(self.datasets):
            msg = f'group {group} does not exist; expected 0..{len(self.datasets) - 1}'
            raise IndexError(msg)
        sample = self.datasets[group][where]
        sample['group'] = torch.tensor(group, dtype=torch.long)
        return sample


def describe_files(dataset: GeoTIFFDataset, limit: int = 3) -> str:
    """Name a dataset's files with their size in pixels, e.g. ``a.tif (40x30 px)``.

    Args:
        dataset: the dataset.
        limit: files named before ``and N more``.

    Returns:
        The description.
    """
    xres, yres = dataset.res
    parts = []
    for path, geom in zip(dataset.index.filepath, dataset.index.geometry):
        xmin, ymin, xmax, ymax = geom.bounds
        width, height = round((xmax - xmin) / xres), round((ymax - ymin) / yres)
        parts.append(f'{path} ({width}x{height} px)')
    more = f' and {len(parts) - limit} more' if len(parts) > limit else ''
    return ', '.join(parts[:limit]) + more
