"""A TorchGeo raster dataset over any folder of GeoTIFFs, with validity masks and GSD.

:class:`GeoTIFFDataset` is a :class:`torchgeo.datasets.RasterDataset` that accepts any
band count and file layout, validates every file before indexing (RasterDataset skips
unreadable files silently), and returns per sample a normalised image, a valid-pixel
mask and the ground sample distance in metres.
"""

import glob
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.merge
import torch
from pyproj import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from torch import Tensor
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import GeoSlice

from ..gsd import GroundUnits

__all__ = (
    'DEFAULT_STATS_CACHE',
    'GeoTIFFDataset',
    'RasterInputError',
    'RasterNotFoundError',
    'compute_band_stats',
    'resolve_raster_paths',
)

logger = logging.getLogger(__name__)

#: Default folder for cached per-band statistics (one JSON file per file set).
DEFAULT_STATS_CACHE = Path.home() / '.cache' / 'torchgeo_xscale' / 'stats'

_EXTENSIONS = ('.tif', '.tiff')
_GLOB_CHARS = frozenset('*?[')
_STATS_MAX_SIDE = 1024


class RasterInputError(ValueError):
    """A raster input is unusable; the message names the file and what was expected."""


class RasterNotFoundError(RasterInputError, FileNotFoundError):
    """No raster was found where one was expected."""


def _one_line(err: BaseException) -> str:
    """Describe an exception (or its cause) in one line."""
    text = str(err.__cause__ or err) or type(err).__name__
    return ' '.join(text.split())


def resolve_raster_paths(paths: str | os.PathLike[str] | Iterable[Any]) -> list[str]:
    """Expand folders, globs and files into a sorted list of raster files.

    Args:
        paths: a folder (searched recursively for ``*.tif``/``*.tiff``), a glob
            pattern, a file, or a list of those.

    Returns:
        Sorted, de-duplicated file paths.

    Raises:
        RasterNotFoundError: If a path does not exist, or nothing is found.
    """
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    found: set[str] = set()
    for item in items:
        path = os.fspath(item)
        if os.path.isdir(path):
            hits = [
                f
                for f in glob.glob(os.path.join(path, '**', '*'), recursive=True)
                if f.lower().endswith(_EXTENSIONS) and os.path.isfile(f)
            ]
            if not hits:
                msg = f'{path}: no GeoTIFF files (*.tif, *.tiff) found in this folder'
                raise RasterNotFoundError(msg)
        elif _GLOB_CHARS & set(path):
            hits = [f for f in glob.glob(path, recursive=True) if os.path.isfile(f)]
            if not hits:
                raise RasterNotFoundError(f'{path}: glob pattern matches no files')
        elif os.path.isfile(path):
            hits = [path]
        else:
            msg = f'{path}: no such file or folder; expected a GeoTIFF, folder or glob'
            raise RasterNotFoundError(msg)
        found.update(hits)
    if not found:
        raise RasterNotFoundError(f'{paths!r}: no raster files given')
    return sorted(found)


def _error(path: object, problem: str, expected: str) -> RasterInputError:
    """The one-line error ``'<path>: <problem>; expected <expected>'``."""
    return RasterInputError(f'{path}: {problem}; expected {expected}')


def _resolve_bands(
    bands: Sequence[int | str] | None, path: str, count: int, names: Sequence[Any]
) -> list[int] | None:
    """Turn 1-based band numbers or band descriptions into 1-based band indexes."""
    if bands is None:
        return None
    indexes = []
    for band in bands:
        if isinstance(band, int) or (isinstance(band, str) and band.isdigit()):
            index = int(band)
        elif band in names:
            index = list(names).index(band) + 1
        else:
            raise _error(path, f'has no band {band!r}', f'one of {list(names)}')
        if not 1 <= index <= count:
            raise _error(path, f'has {count} bands', f'band {band!r} in 1..{count}')
        indexes.append(index)
    return indexes


def _check_grid(path: str, src: rasterio.DatasetReader) -> None:
    """Warn about rotated grids; refuse geographic rasters reaching a pole.

    A rotated or sheared transform is warped north-up by TorchGeo (the GSD is then
    that of the warped grid); a geographic raster beyond +-89.9 degrees has no
    meaningful metres-per-pixel there.
    """
    t = src.transform
    if t.b != 0 or t.d != 0:
        logger.warning(
            '%s: rotated/sheared geotransform (b=%g, d=%g); TorchGeo warps it north-up '
            'and the GSD is that of the warped grid',
            path,
            t.b,
            t.d,
        )
    if src.crs is not None and src.crs.is_geographic:
        top, bottom = src.bounds.top, src.bounds.bottom
        if max(abs(top), abs(bottom)) > 89.9:
            raise _error(
                path,
                f'geographic raster reaches latitude {max(top, bottom, key=abs):.4f}',
                'latitudes within +-89.9 degrees (reproject polar data to a polar '
                'projection such as EPSG:3413/3031)',
            )


def validate_rasters(
    files: Sequence[str],
    bands: Sequence[int | str] | None = None,
    in_chans: int | None = None,
) -> tuple[int, list[int] | None]:
    """Check every file is a readable, georeferenced raster with matching bands.

    Args:
        files: raster files.
        bands: 1-based band numbers or band descriptions to read (default all).
        in_chans: expected number of bands read, if known.

    Returns:
        The band count of the files and the 1-based band indexes to read (None: all).

    Raises:
        RasterInputError: On the first bad file, naming it and what was expected.
    """
    first: tuple[str, int] | None = None
    indexes: list[int] | None = None
    georeferenced = 'a georeferenced raster (e.g. gdal_edit.py -a_srs EPSG:32633)'
    for path in files:
        if os.path.getsize(path) == 0:
            raise _error(path, 'file is empty (0 bytes)', 'a GeoTIFF')
        try:
            src = rasterio.open(path)
        except RasterioIOError as err:
            problem = f'not a readable raster ({_one_line(err)})'
            raise _error(path, problem, 'a GeoTIFF') from err
        with src:
            gcps, gcp_crs = src.gcps
            if src.crs is None and not (gcps and gcp_crs is not None):
                raise _error(path, 'has no CRS', georeferenced)
            if src.transform.is_identity and not gcps:
                raise _error(path, 'has no geotransform', georeferenced)
            _check_grid(path, src)
            if first is None:
                first = (path, src.count)
                indexes = _resolve_bands(bands, path, src.count, src.descriptions)
            elif src.count != first[1]:
                raise _error(
                    path, f'has {src.count} bands', f'{first[1]} like {first[0]}'
                )
            n_read = len(indexes) if indexes else src.count
            if in_chans is not None and n_read != in_chans:
                raise _error(
                    path, f'has {n_read} bands to read', f'in_chans={in_chans}'
                )
            try:  # the first and last blocks reveal truncated or corrupt files
                src.read(indexes, window=Window(0, 0, 1, 1))
                src.read(indexes, window=Window(src.width - 1, src.height - 1, 1, 1))
            except RasterioIOError as err:
                problem = f'pixel data cannot be read ({_one_line(err)})'
                expected = 'a complete GeoTIFF (truncated or corrupt file?)'
                raise _error(path, problem, expected) from err
    assert first is not None
    return first[1], indexes


def _file_stats(
    path: str, indexes: Sequence[int] | None, nodata: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and sum of squared deviations per band of a decimated read."""
    with rasterio.open(path) as src:
        count = len(indexes) if indexes else src.count
        scale = min(1.0, _STATS_MAX_SIDE / max(src.width, src.height))
        height, width = round(src.height * scale) or 1, round(src.width * scale) or 1
        data = src.read(indexes, out_shape=(count, height, width), masked=True)
    values = np.ma.getdata(data).astype(np.float64).reshape(count, -1)
    invalid = np.ma.getmaskarray(data).reshape(count, -1) | ~np.isfinite(values)
    if nodata is not None:
        invalid |= values == nodata
    keep = ~invalid.any(axis=0)
    values = values[:, keep]
    n = np.full(count, values.shape[1], dtype=np.float64)
    if values.shape[1] == 0:
        return n, np.zeros(count), np.zeros(count)
    mean = values.mean(axis=1)
    return n, mean, ((values - mean[:, None]) ** 2).sum(axis=1)


def compute_band_stats(
    paths: Sequence[str | os.PathLike[str]],
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation over the valid pixels of all files.

    Files are read decimated (at most 1024 px a side, overviews used when present);
    a pixel counts only where every band is valid (not nodata, not NaN/Inf).

    Args:
        paths: raster files with the same band count.
        bands: 1-based band indexes to use (default all).
        nodata: extra nodata value to ignore, besides each file's own.

    Returns:
        ``(mean, std)``, one float per band; a constant band gets std 1.

    Raises:
        RasterInputError: If no file has a single valid pixel.
    """
    total_n: np.ndarray | None = None
    for path in paths:
        n, mean, m2 = _file_stats(os.fspath(path), bands, nodata)
        if total_n is None:
            total_n, total_mean, total_m2 = n, mean, m2
            continue
        both = np.maximum(total_n + n, 1)
        delta = mean - total_mean
        total_m2 = total_m2 + m2 + delta**2 * total_n * n / both
        total_mean = total_mean + delta * n / both
        total_n = total_n + n
    if total_n is None or total_n.min() < 1:
        raise _error([os.fspath(p) for p in paths], 'no valid pixels', 'some data')
    std = np.sqrt(total_m2 / np.maximum(total_n - 1, 1))
    if (std == 0).any():
        logger.warning('constant band(s) %s: using std 1', np.flatnonzero(std == 0))
        std[std == 0] = 1.0
    return total_mean.tolist(), std.tolist()


def _cached_band_stats(
    files: Sequence[str],
    bands: Sequence[int] | None,
    nodata: float | None,
    cache_dir: str | os.PathLike[str] | None,
) -> tuple[list[float], list[float]]:
    """:func:`compute_band_stats`, cached as JSON keyed by file list, sizes and mtimes."""
    if cache_dir is None:
        return compute_band_stats(files, bands, nodata)
    key = [
        [os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files
    ]
    blob = json.dumps({'v': 1, 'files': key, 'bands': bands, 'nodata': nodata})
    cache = Path(cache_dir) / f'{hashlib.sha256(blob.encode()).hexdigest()[:32]}.json'
    if cache.is_file():
        try:
            stats = json.loads(cache.read_text())
            return stats['mean'], stats['std']
        except (OSError, ValueError, KeyError):
            logger.warning('ignoring unreadable band-statistics cache %s', cache)
    mean, std = compute_band_stats(files, bands, nodata)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f'.{os.getpid()}.tmp')
        tmp.write_text(json.dumps({'mean': mean, 'std': std, 'files': key}))
        os.replace(tmp, cache)
    except OSError as err:
        logger.warning('could not write band-statistics cache %s: %s', cache, err)
    return mean, std


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

    * ``image``: float32 ``(C, H, W)``, ``(x - mean) / std`` per band, 0 where invalid;
    * ``valid``: bool ``(1, H, W)``, False where any band is nodata (the file's nodata
      or mask, or outside every file's footprint), NaN or +-Inf;
    * ``gsd``: float32 ``()``, metres per pixel of the sample grid (for a geographic
      CRS at the tile-centre latitude);
    * ``bounds`` and ``transform`` as in TorchGeo, and ``files``: the files read for
      this tile, joined by ``';'``.

    Files in another CRS are warped by TorchGeo; their outside-footprint pixels are
    invalid too (GDAL's warped mask).
    """

    filename_glob = '*'

    def __init__(
        self,
        paths: Sequence[str | Path] | str | Path = 'data',
        crs: str | CRS | None = None,
        res: float | tuple[float, float] | None = None,
        bands: Sequence[int | str] | None = None,
        in_chans: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        nodata: float | None = None,
        stats_cache: str | Path | None = DEFAULT_STATS_CACHE,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        cache: bool = True,
    ) -> None:
        """Initialize a new GeoTIFFDataset instance.

        Args:
            paths: folder (recursive ``*.tif``/``*.tiff``), glob, file, or a list.
            crs: CRS to warp to, e.g. ``'EPSG:32633'`` (default: the first file's).
            res: resolution in CRS units (default: the first file's).
            bands: 1-based band numbers or band descriptions to read (default all).
            in_chans: expected number of bands read; a mismatch raises.
            mean: per-band mean; computed over the files (and cached) if None.
            std: per-band standard deviation; computed with *mean* if None.
            nodata: nodata value overriding the files' own.
            stats_cache: folder caching computed statistics; None disables caching.
            transforms: function applied to each finished sample.
            cache: if True, keep file handles open (TorchGeo's LRU cache).

        Raises:
            RasterInputError: If a file is unusable or *mean*/*std* have the wrong
                length; RasterNotFoundError if no file is found.
        """
        if crs is not None:
            try:
                crs = CRS.from_user_input(crs)
            except Exception as err:
                raise _error(
                    'crs', f'{crs!r} cannot be parsed', 'e.g. EPSG:32633'
                ) from err
        files = resolve_raster_paths(paths)
        self._count, band_indexes = validate_rasters(files, bands, in_chans)
        self.nodata = nodata
        super().__init__(files, crs=crs, res=res, transforms=None, cache=cache)
        missing = sorted(set(files) - set(self.index.filepath))
        if missing:  # RasterDataset skips files it cannot open; we do not
            raise _error(missing[0], 'TorchGeo could not index it', 'a readable raster')
        self.band_indexes = band_indexes
        self.bands = [str(i) for i in band_indexes or range(1, self._count + 1)]
        self.sample_transforms = transforms
        n_bands = len(self.bands)
        if mean is None or std is None:
            mean, std = _cached_band_stats(files, band_indexes, nodata, stats_cache)
        for name, value in (('mean', mean), ('std', std)):
            if len(value) != n_bands:
                raise _error(
                    name, f'has {len(value)} values', f'{n_bands} (one per band)'
                )
        if min(std) <= 0:
            raise _error('std', f'{list(std)} has values <= 0', 'values > 0')
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.ground_units = GroundUnits.from_crs(self.crs)
        self._last_files: list[str] = []

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
        """Read, mask and normalise one tile.

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
        image = torch.where(valid, (image - self.mean) / self.std, 0.0)
        x, y, _ = self._disambiguate_slice(index)
        latitude = (y.start + y.stop) / 2 if self.ground_units.geographic else None
        gsd = self.ground_units.gsd(x.step, y.step, latitude)
        sample['image'] = image
        sample['valid'] = valid
        sample['gsd'] = torch.tensor(gsd, dtype=torch.float32)
        sample['files'] = ';'.join(self._last_files)
        if self.sample_transforms is not None:
            sample = self.sample_transforms(sample)
        return sample
