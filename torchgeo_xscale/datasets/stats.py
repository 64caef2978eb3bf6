"""Per-band statistics and valid fractions of raster files, computed once and cached.

The datamodule normalises batches with one per-band mean and standard deviation over
all training files (TorchGeo's convention: the dataset returns raw pixels). Each file
is read decimated (at most 1024 px a side; overviews are used when present) and its
count, mean and sum of squared deviations per band, and its valid fraction, are
kept, so that the statistics of any set of files combine exactly (Chan et al.'s
parallel variance) and the valid area of each file is known for sampling.
"""

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio

from .rasters import RasterInputError

__all__ = (
    'DEFAULT_STATS_CACHE',
    'FileStats',
    'band_stats',
    'combine_band_stats',
    'compute_band_stats',
    'file_stats',
)

logger = logging.getLogger(__name__)

#: Default folder for cached per-file statistics (one JSON file per file set).
DEFAULT_STATS_CACHE = Path.home() / '.cache' / 'torchgeo_xscale' / 'stats'

_STATS_MAX_SIDE = 1024
_CACHE_VERSION = 2


@dataclass(frozen=True)
class FileStats:
    """Statistics of one file's valid pixels (of a decimated read).

    Attributes:
        path: the file.
        n: number of valid pixels read.
        mean: per-band mean.
        m2: per-band sum of squared deviations from the mean.
        valid_fraction: valid pixels / pixels read (a pixel is valid where every
            band is not nodata, not NaN and not +-Inf).
    """

    path: str
    n: float
    mean: tuple[float, ...]
    m2: tuple[float, ...]
    valid_fraction: float


def file_stats(
    path: str | os.PathLike[str],
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
) -> FileStats:
    """Count, mean and sum of squared deviations per band of one file.

    Args:
        path: the raster.
        bands: 1-based band indexes (default all).
        nodata: extra nodata value to ignore, besides the file's own.

    Returns:
        The file's statistics.
    """
    path = os.fspath(path)
    with rasterio.open(path) as src:
        count = len(bands) if bands else src.count
        scale = min(1.0, _STATS_MAX_SIDE / max(src.width, src.height))
        height, width = round(src.height * scale) or 1, round(src.width * scale) or 1
        data = src.read(bands, out_shape=(count, height, width), masked=True)
    values = np.ma.getdata(data).astype(np.float64).reshape(count, -1)
    invalid = np.ma.getmaskarray(data).reshape(count, -1) | ~np.isfinite(values)
    if nodata is not None:
        invalid |= values == nodata
    keep = ~invalid.any(axis=0)
    values = values[:, keep]
    n = float(values.shape[1])
    fraction = n / max(1, keep.size)
    if values.shape[1] == 0:
        zeros = (0.0,) * count
        return FileStats(path, 0.0, zeros, zeros, 0.0)
    mean = values.mean(axis=1)
    m2 = ((values - mean[:, None]) ** 2).sum(axis=1)
    return FileStats(path, n, tuple(mean.tolist()), tuple(m2.tolist()), fraction)


def combine_band_stats(stats: Sequence[FileStats]) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of the valid pixels of several files.

    Args:
        stats: per-file statistics with the same band count.

    Returns:
        ``(mean, std)``, one float per band; a constant band gets std 1.

    Raises:
        RasterInputError: If no file has a single valid pixel.
    """
    total_n = 0.0
    total_mean: np.ndarray | None = None
    total_m2: np.ndarray | None = None
    for s in stats:
        mean, m2 = np.asarray(s.mean), np.asarray(s.m2)
        if total_mean is None or total_m2 is None:
            total_n, total_mean, total_m2 = s.n, mean, m2
            continue
        both = max(total_n + s.n, 1.0)
        delta = mean - total_mean
        total_m2 = total_m2 + m2 + delta**2 * total_n * s.n / both
        total_mean = total_mean + delta * s.n / both
        total_n += s.n
    if total_mean is None or total_m2 is None or total_n < 1:
        names = [s.path for s in stats]
        raise RasterInputError(f'{names}: no valid pixels; expected some data')
    std = np.sqrt(total_m2 / max(total_n - 1, 1))
    if (std == 0).any():
        logger.warning('constant band(s) %s: using std 1', np.flatnonzero(std == 0))
        std[std == 0] = 1.0
    return total_mean.tolist(), std.tolist()


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
    return combine_band_stats([file_stats(p, bands, nodata) for p in paths])


def band_stats(
    files: Sequence[str],
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    cache_dir: str | os.PathLike[str] | None = DEFAULT_STATS_CACHE,
) -> list[FileStats]:
    """:func:`file_stats` of every file, cached as JSON keyed by the files' sizes and mtimes.

    Args:
        files: raster files.
        bands: 1-based band indexes (default all).
        nodata: extra nodata value to ignore.
        cache_dir: folder of the cache (one JSON per file set); None: no cache.

    Returns:
        One :class:`FileStats` per file, in the order of *files*.
    """
    if cache_dir is None:
        return [file_stats(f, bands, nodata) for f in files]
    key = [
        [os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files
    ]
    blob = json.dumps(
        {'v': _CACHE_VERSION, 'files': key, 'bands': bands, 'nodata': nodata}
    )
    cache = Path(cache_dir) / f'{hashlib.sha256(blob.encode()).hexdigest()[:32]}.json'
    if cache.is_file():
        try:
            entries = json.loads(cache.read_text())['stats']
            stats = [
                FileStats(
                    e['path'],
                    float(e['n']),
                    tuple(e['mean']),
                    tuple(e['m2']),
                    float(e['valid_fraction']),
                )
                for e in entries
            ]
            if [s.path for s in stats] == list(files):
                return stats
            logger.warning('ignoring band-statistics cache %s of other files', cache)
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning('ignoring unreadable band-statistics cache %s', cache)
    stats = [file_stats(f, bands, nodata) for f in files]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f'.{os.getpid()}.tmp')
        tmp.write_text(json.dumps({'stats': [asdict(s) for s in stats], 'files': key}))
        os.replace(tmp, cache)
    except OSError as err:
        logger.warning('could not write band-statistics cache %s: %s', cache, err)
    return stats
