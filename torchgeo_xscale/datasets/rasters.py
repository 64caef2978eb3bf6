"""Raster files on disk: finding them, checking them, grouping them by native grid.

* :func:`resolve_raster_paths` expands folders (recursively, following directory
  links without ever entering a folder twice), globs and files into a sorted list in
  which every file appears once (de-duplicated by real path).
* :func:`validate_rasters` opens every file and stops at the first unusable one with a
  one-line :class:`RasterInputError` naming it; it returns a :class:`RasterInfo` per
  file (CRS, resolution, bounds, band count, GSD).
* :func:`group_rasters` groups files by native grid, ``(CRS, resolution)`` within a
  relative tolerance: a :class:`RasterGroup` per grid, whose
  :meth:`RasterGroup.dataset` reads its files on their own grid, without resampling.
  :class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule` trains on every group at
  once; evaluations per GSD group can use the same groups.
"""

import fnmatch
import logging
import math
import os
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import rasterio
from rasterio.crs import CRS as RioCRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from ..gsd import GroundUnits
from ..renames import refuse_renamed

if TYPE_CHECKING:  # only for the annotation: geotiff.py imports this module
    from .geotiff import GeoTIFFDataset

__all__ = (
    'RasterGroup',
    'RasterInfo',
    'RasterInputError',
    'RasterNotFoundError',
    'group_rasters',
    'resolve_raster_paths',
    'validate_rasters',
)

logger = logging.getLogger(__name__)

_EXTENSIONS = ('.tif', '.tiff')
_GLOB_CHARS = frozenset('*?[')

#: Default relative tolerance on the pixel size for two files to share a grid.
DEFAULT_RES_TOLERANCE = 0.01


class RasterInputError(ValueError):
    """A raster input is unusable; the message names the file and what was expected."""


class RasterNotFoundError(RasterInputError, FileNotFoundError):
    """No raster was found where one was expected."""


def _one_line(err: BaseException) -> str:
    """Describe an exception (or its cause) in one line."""
    text = str(err.__cause__ or err) or type(err).__name__
    return ' '.join(text.split())


def _error(path: object, problem: str, expected: str) -> RasterInputError:
    """The one-line error ``'<path>: <problem>; expected <expected>'``."""
    return RasterInputError(f'{path}: {problem}; expected {expected}')


# --------------------------------------------------------------------- discovery
def _walk_files(root: str, max_depth: int | None = None) -> Iterator[tuple[str, ...]]:
    """Files below *root* as path components relative to it, links followed.

    A folder is entered once, whatever the path reaching it (identified by device
    and inode), so directory links looping back into a visited folder end the walk
    instead of repeating it. Unreadable folders are skipped with a warning.
    """
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[str, tuple[str, ...]]] = [(root, ())]
    while stack:
        folder, parts = stack.pop()
        try:
            info = os.stat(folder)
        except OSError:
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen:
            continue
        seen.add(key)
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name, reverse=True)
        except OSError as err:
            logger.warning('%s: cannot list this folder (%s); skipped', folder, err)
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            if is_dir and (max_depth is None or len(parts) + 1 < max_depth):
                stack.append((entry.path, (*parts, entry.name)))
            elif is_file:
                yield (*parts, entry.name)


def _match(parts: Sequence[str], patterns: Sequence[str]) -> bool:
    """Whether path components match glob components (``**``: any depth)."""
    if not patterns:
        return not parts
    head, rest = patterns[0], patterns[1:]
    if head == '**':
        return any(_match(parts[i:], rest) for i in range(len(parts) + 1))
    if not parts:
        return False
    name = parts[0]
    if name.startswith('.') and not head.startswith('.'):
        return False  # as glob: wildcards do not match hidden names
    return fnmatch.fnmatchcase(name, head) and _match(parts[1:], rest)


def _glob_files(pattern: str) -> list[str]:
    """Files matching a glob pattern (``**`` recursive), each folder walked once."""
    head = os.sep if pattern.startswith(os.sep) else ''
    parts = [p for p in pattern.split(os.sep) if p]
    fixed = 0  # leading components without wildcards: the folder to walk
    while fixed < len(parts) - 1 and not _GLOB_CHARS & set(parts[fixed]):
        fixed += 1
    prefix = os.path.join(head, *parts[:fixed]) if head or fixed else ''
    patterns = parts[fixed:]
    depth = None if '**' in patterns else len(patterns)
    if not os.path.isdir(prefix or '.'):
        return []
    return [
        os.path.join(prefix, *rel)
        for rel in _walk_files(prefix or '.', depth)
        if _match(rel, patterns)
    ]


def resolve_raster_paths(paths: str | os.PathLike[str] | Iterable[Any]) -> list[str]:
    """Expand folders, globs and files into a sorted list of raster files.

    Folders are searched recursively for ``*.tif``/``*.tiff`` (any letter case),
    following directory links but entering each folder once, so a link back into a
    visited folder neither loops nor lists a file twice. A file reached by several
    paths (links, overlapping arguments) is listed once, under the first path found.

    Args:
        paths: a folder, a glob pattern (``**`` matches any depth), a file, or a
            list of those.

    Returns:
        Sorted file paths, one per real file.

    Raises:
        RasterNotFoundError: If a path does not exist, or nothing is found.
    """
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    found: dict[str, str] = {}  # real path -> path as found
    for item in items:
        path = os.fspath(item)
        if os.path.isdir(path):
            hits = [
                os.path.join(path, *rel)
                for rel in _walk_files(path)
                if rel[-1].lower().endswith(_EXTENSIONS)
            ]
            if not hits:
                msg = f'{path}: no GeoTIFF files (*.tif, *.tiff) found in this folder'
                raise RasterNotFoundError(msg)
        elif _GLOB_CHARS & set(path):
            hits = _glob_files(path)
            if not hits:
                raise RasterNotFoundError(f'{path}: glob pattern matches no files')
        elif os.path.isfile(path):
            hits = [path]
        else:
            msg = f'{path}: no such file or folder; expected a GeoTIFF, folder or glob'
            raise RasterNotFoundError(msg)
        for hit in sorted(hits):
            found.setdefault(os.path.realpath(hit), hit)
    if not found:
        raise RasterNotFoundError(f'{paths!r}: no raster files given')
    return sorted(found.values())


# -------------------------------------------------------------------- validation
@dataclass(frozen=True)
class RasterInfo:
    """What :func:`validate_rasters` read from one file's header.

    Attributes:
        path: the file.
        crs: its CRS.
        res: ``(xres, yres)`` pixel size in CRS units.
        bounds: ``(left, bottom, right, top)`` in CRS units.
        width: width in pixels.
        height: height in pixels.
        count: number of bands.
        gsd: metres per pixel at the raster's centre.
    """

    path: str
    crs: RioCRS
    res: tuple[float, float]
    bounds: tuple[float, float, float, float]
    width: int
    height: int
    count: int
    gsd: float


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


def _north_up_res(src: rasterio.DatasetReader) -> tuple[float, float]:
    """Pixel size of the north-up grid TorchGeo reads a file on."""
    t = src.transform
    if t.b == 0 and t.d == 0:
        return abs(t.a), abs(t.e)
    # A rotated grid is warped north-up: GDAL's default output pixel keeps the
    # diagonal of the source pixel, i.e. the source pixel's extent along each axis.
    return abs(t.a) + abs(t.b), abs(t.d) + abs(t.e)


def _info(path: str, src: rasterio.DatasetReader) -> RasterInfo:
    res = _north_up_res(src)
    left, bottom, right, top = src.bounds
    units = GroundUnits.from_crs(src.crs)
    gsd = units.gsd(*res, (bottom + top) / 2 if units.geographic else None)
    return RasterInfo(
        path=path,
        crs=src.crs,
        res=res,
        bounds=(left, bottom, right, top),
        width=src.width,
        height=src.height,
        count=src.count,
        gsd=gsd,
    )


def validate_rasters(
    files: Sequence[str],
    bands: Sequence[int | str] | None = None,
    in_channels: int | None = None,
    *,
    in_chans: int | None = None,
) -> tuple[int, list[int] | None, list[RasterInfo]]:
    """Check every file is a readable, georeferenced raster with matching bands.

    Args:
        files: raster files.
        bands: 1-based band numbers or band descriptions to read (default all).
        in_channels: expected number of bands read, if known (TorchGeo's name,
            :mod:`torchgeo_xscale.renames`).
        in_chans: renamed *in_channels*; giving it raises.

    Returns:
        The band count of the files, the 1-based band indexes to read (None: all)
        and a :class:`RasterInfo` per file.

    Raises:
        RasterInputError: On the first bad file, naming it and what was expected.
        ValueError: If *in_chans* is given.
    """
    refuse_renamed('in_chans', in_chans)
    first: tuple[str, int] | None = None
    indexes: list[int] | None = None
    infos: list[RasterInfo] = []
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
            if src.crs is None and gcps:
                crs = f' in {gcp_crs}' if gcp_crs else ''
                raise _error(
                    path,
                    f'is georeferenced by {len(gcps)} ground control points{crs} only '
                    '(no geotransform, no CRS)',
                    'a raster with a CRS and a geotransform (warp it first, e.g. '
                    'gdalwarp -t_srs EPSG:32633 in.tif out.tif)',
                )
            if src.crs is None:
                raise _error(path, 'has no CRS', georeferenced)
            if src.transform.is_identity:
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
            if in_channels is not None and n_read != in_channels:
                raise _error(
                    path, f'has {n_read} bands to read', f'in_channels={in_channels}'
                )
            try:  # the first and last blocks reveal truncated or corrupt files
                src.read(indexes, window=Window(0, 0, 1, 1))
                src.read(indexes, window=Window(src.width - 1, src.height - 1, 1, 1))
            except RasterioIOError as err:
                problem = f'pixel data cannot be read ({_one_line(err)})'
                expected = 'a complete GeoTIFF (truncated or corrupt file?)'
                raise _error(path, problem, expected) from err
            try:
                infos.append(_info(path, src))
            except ValueError as err:
                raise _error(path, _one_line(err), georeferenced) from err
    assert first is not None
    return first[1], indexes, infos


# ---------------------------------------------------------------------- grouping
@dataclass(frozen=True)
class RasterGroup:
    """Files sharing one native grid: the same CRS and pixel size (within tolerance).

    Attributes:
        crs: the group's CRS.
        res: ``(xres, yres)`` pixel size of the group's grid, in CRS units (that of
            its first file).
        files: the group's files, sorted.
        gsds: metres per pixel of each file at its centre.
    """

    crs: RioCRS
    res: tuple[float, float]
    files: tuple[str, ...]
    gsds: tuple[float, ...]

    @property
    def gsd(self) -> float:
        """Median GSD of the group's files in metres per pixel."""
        return float(statistics.median(self.gsds))

    @property
    def name(self) -> str:
        """A short label, e.g. ``'EPSG:32633 10 m'``."""
        code = self.crs.to_epsg()
        crs = f'EPSG:{code}' if code else self.crs.to_string()[:40]
        return f'{crs} {self.gsd:.3g} m'

    def dataset(self, **kwargs: Any) -> 'GeoTIFFDataset':
        """A :class:`~torchgeo_xscale.datasets.GeoTIFFDataset` reading the group on its own grid.

        Args:
            **kwargs: More arguments of the dataset (``bands``, ``nodata``...);
                ``crs`` and ``res`` are the group's.

        Returns:
            The dataset; its tiles are windows of the files, not resampled.
        """
        from .geotiff import GeoTIFFDataset  # geotiff.py imports this module

        return GeoTIFFDataset(list(self.files), crs=self.crs, res=self.res, **kwargs)


def _same_grid(info: RasterInfo, group: RasterGroup, rtol: float) -> bool:
    if info.crs != group.crs:
        return False
    return all(
        math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)
        for a, b in zip(info.res, group.res)
    )


def group_rasters(
    paths: str | os.PathLike[str] | Iterable[Any] | Sequence[RasterInfo],
    rtol: float = DEFAULT_RES_TOLERANCE,
    bands: Sequence[int | str] | None = None,
) -> list[RasterGroup]:
    """Group raster files by native grid: ``(CRS, resolution)`` within *rtol*.

    Files of one group can be read together on the group's grid with no resampling
    (a file whose pixel size differs by at most *rtol* is resampled by that little).
    Groups are sorted finest GSD first, files by path, so the grouping does not
    depend on the order the files were given in.

    Args:
        paths: anything :func:`resolve_raster_paths` accepts, or the
            :class:`RasterInfo` list of :func:`validate_rasters`.
        rtol: relative tolerance on each axis's pixel size.
        bands: bands to read, checked against every file (default all).

    Returns:
        One :class:`RasterGroup` per native grid.

    Raises:
        RasterInputError: If a file is unusable (see :func:`validate_rasters`).
        ValueError: If *rtol* is negative or not below 0.5.
    """
    if not 0 <= rtol < 0.5:
        raise ValueError(f'rtol={rtol} is invalid; expected 0 <= rtol < 0.5')
    if isinstance(paths, Sequence) and paths and isinstance(paths[0], RasterInfo):
        infos: Sequence[RasterInfo] = paths  # type: ignore[assignment]
    else:
        infos = validate_rasters(resolve_raster_paths(paths), bands)[2]
    groups: list[RasterGroup] = []
    for info in sorted(infos, key=lambda i: i.path):
        for i, group in enumerate(groups):
            if _same_grid(info, group, rtol):
                groups[i] = RasterGroup(
                    group.crs,
                    group.res,
                    (*group.files, info.path),
                    (*group.gsds, info.gsd),
                )
                break
        else:
            groups.append(RasterGroup(info.crs, info.res, (info.path,), (info.gsd,)))
    return sorted(groups, key=lambda g: (g.gsds[0], g.files[0]))
