"""Segmenting a GeoTIFF at another GSD than its own: the model's training GSD.

A model fine-tuned on 0.5 m pixels sees the objects of a 0.1 m raster five times too
large. :func:`plan_gsd` decides the GSD to segment at (``--gsd auto``: the median of
the checkpoint's ``xscale_gsd``; ``native``: the input's own; or a number of metres)
and :func:`segment_at_gsd` does it with rasterio only, chunk by chunk:

1. the input is read through a :class:`~rasterio.vrt.WarpedVRT` on a grid of the
   target GSD (same CRS and origin, pixel size scaled by ``target / input``;
   ``average`` resampling when down-sampling, ``bilinear`` when up-sampling), which
   GDAL's warper reads window by window;
2. :func:`~torchgeo_xscale.inference.segment_geotiff` runs the sliding window over
   that grid and writes the classes (and probabilities) there, into a temporary folder
   (``tempfile``'s: ``$TMPDIR``);
3. each output chunk on the input's own grid is read through a second ``WarpedVRT``
   of those rasters (``nearest`` for classes, ``bilinear`` for probabilities) and
   written, with nodata (255) where the input has no valid pixel.

Memory depends on the chunk and window sizes (and GDAL's warp memory, 64 MB), not on
the raster's size. The input's GSD is the one the datasets use
(:func:`~torchgeo_xscale.datasets.rasters.validate_rasters`: pixel size times the
CRS unit, geographic CRS at the raster's centre latitude).
"""

import contextlib
import dataclasses
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from .datasets.rasters import RasterInputError, validate_rasters
from .inference import (
    BLOCK_SIZE,
    Model,
    SegmentStats,
    _gdal_cache,
    chunk_windows,
    segment_geotiff,
)
from .io import atomic_path

__all__ = (
    'GSD_TOLERANCE',
    'TIMES',
    'GSDPlan',
    'format_gsd',
    'parse_gsd',
    'plan_gsd',
    'raster_gsd',
    'segment_at_gsd',
)

#: Relative GSD difference under which the input is segmented on its own grid.
GSD_TOLERANCE = 0.01

#: The multiplication sign of the messages (U+00D7, as in "5.0x down").
TIMES = '\N{MULTIPLICATION SIGN}'

#: GDAL's warp memory per WarpedVRT read, in bytes.
WARP_MEMORY = 64 * 2**20


def parse_gsd(value: str | float) -> str | float:
    """Parse a ``--gsd`` value.

    Args:
        value: ``auto``, ``native`` or metres per pixel (``0.5``).

    Returns:
        ``'auto'``, ``'native'`` or the GSD as a float.

    Raises:
        ValueError: If *value* is none of these, or not a finite number > 0.
    """
    if isinstance(value, str) and value.strip().lower() in ('auto', 'native'):
        return value.strip().lower()
    try:
        gsd = float(value)
    except (TypeError, ValueError):
        gsd = math.nan
    if not (math.isfinite(gsd) and gsd > 0):
        msg = f'--gsd {value}: expected auto, native or metres per pixel > 0 (e.g. 0.5)'
        raise ValueError(msg)
    return gsd


def format_gsd(gsd: float) -> str:
    """A GSD for messages: ``0.10 m``, ``0.09 m``, ``0.025 m``, ``1.1e+03 m``.

    Args:
        gsd: Metres per pixel.

    Returns:
        Two decimals from 0.1 m to 1000 m, two significant digits otherwise.
    """
    return f'{gsd:.2f} m' if 0.1 <= gsd < 1000 else f'{gsd:.2g} m'


def raster_gsd(path: str | os.PathLike[str]) -> float | None:
    """GSD of a raster file as the datasets compute it.

    Args:
        path: The raster.

    Returns:
        Metres per pixel at the raster's centre, or None if it has no CRS (or one
        without a ground unit).
    """
    with rasterio.open(path) as src:
        if src.crs is None:
            return None
    try:
        return validate_rasters([os.fspath(path)])[2][0].gsd
    except RasterInputError:
        return None


@dataclass(frozen=True)
class GSDPlan:
    """Where :func:`segment_at_gsd` segments a raster.

    Attributes:
        input_gsd: The input's GSD in metres (None if it has no CRS).
        target_gsd: The GSD the model runs at (equal to *input_gsd* when native).
        message: One line saying what is done: e.g. the input at 0.10 m, the model
            at 0.50 m reads ``input 0.10 m → model 0.50 m, 5.0`` + :data:`TIMES` +
            `` down``.
    """

    input_gsd: float | None
    target_gsd: float | None
    message: str

    @property
    def factor(self) -> float:
        """``target_gsd / input_gsd``: > 1 down-samples, < 1 up-samples, 1 native."""
        if self.input_gsd is None or self.target_gsd is None:
            return 1.0
        ratio = self.target_gsd / self.input_gsd
        return 1.0 if abs(ratio - 1) <= GSD_TOLERANCE else ratio

    @property
    def resamples(self) -> bool:
        """Whether the input is resampled."""
        return self.factor != 1.0

    def shape(self, height: int, width: int) -> tuple[int, int]:
        """Rows and columns of the grid the model runs on.

        Args:
            height: Input rows.
            width: Input columns.

        Returns:
            ``(ceil(height / factor), ceil(width / factor))``, at least 1 each.
        """
        f = self.factor
        return max(1, math.ceil(height / f - 1e-9)), max(1, math.ceil(width / f - 1e-9))


def plan_gsd(
    mode: str | float,
    input_path: str | os.PathLike[str],
    training_gsd: Mapping[str, float] | None,
) -> GSDPlan:
    """Decide the GSD to segment a raster at.

    Args:
        mode: ``'auto'`` (the model's training GSD, the median of *training_gsd*,
            when known, else native), ``'native'``, or metres per pixel (anything
            :func:`parse_gsd` accepts).
        input_path: The input raster.
        training_gsd: The checkpoint's ``xscale_gsd`` (``{'min', 'median', 'max'}``)
            or None.

    Returns:
        The plan, with its one-line message.

    Raises:
        ValueError: If *mode* is invalid, or a number while the input has no CRS.
    """
    mode = parse_gsd(mode)
    source = raster_gsd(input_path)
    model = None
    if training_gsd is not None and float(training_gsd.get('median', 0)) > 0:
        model = float(training_gsd['median'])
    have = f'input {format_gsd(source)}' if source is not None else 'input (no CRS)'
    trained = f'the model was trained at {format_gsd(model)}' if model else ''
    if mode == 'native':
        why = f' ({trained})' if trained else ''
        return GSDPlan(source, source, f'{have}, native: --gsd native{why}')
    if source is None:
        if isinstance(mode, float):
            msg = (
                f'--gsd {mode:g}: {input_path} has no CRS, so its GSD is unknown; '
                'expected a georeferenced raster (or --gsd native)'
            )
            raise ValueError(msg)
        note = f'{trained}, ' if trained else ''
        return GSDPlan(None, None, f'{have}, native: {note}its GSD is unknown')
    if mode == 'auto' and model is None:
        msg = (
            f'{have}, native: the checkpoint records no training GSD (xscale_gsd); '
            '--gsd <metres> sets one'
        )
        return GSDPlan(source, source, msg)
    target = float(mode) if isinstance(mode, float) else model
    assert target is not None
    to = f'model {format_gsd(target)}' if mode == 'auto' else format_gsd(target)
    plan = GSDPlan(source, target, '')
    if not plan.resamples:
        return dataclasses.replace(plan, message=f'{have} → {to}, native')
    f = plan.factor
    way = f'{f:.1f}{TIMES} down' if f > 1 else f'{1 / f:.1f}{TIMES} up'
    explicit = ' (--gsd)' if isinstance(mode, float) else ''
    return dataclasses.replace(plan, message=f'{have} → {to}{explicit}, {way}')


def _copy_description(src: Any, dst: Any) -> None:
    """Colour table, band descriptions, tags and scales of *src* onto *dst*."""
    with contextlib.suppress(ValueError):
        dst.write_colormap(1, src.colormap(1))
    for i in range(1, src.count + 1):
        if src.descriptions[i - 1]:
            dst.set_band_description(i, src.descriptions[i - 1])
        dst.update_tags(i, **src.tags(i))
    dst.scales = src.scales


def _warp_back(
    model_grid: str,
    src: Any,
    output_path: str | os.PathLike[str],
    resampling: Resampling,
    chunk_size: int,
    compress: str,
) -> None:
    """Write *model_grid*'s raster onto *src*'s grid, chunk by chunk (nodata 255).

    Pixels with no valid input (*src*'s dataset mask) are nodata.
    """
    with rasterio.open(model_grid) as coarse, contextlib.ExitStack() as stack:
        vrt = stack.enter_context(
            WarpedVRT(
                coarse,
                crs=src.crs,
                transform=src.transform,
                width=src.width,
                height=src.height,
                resampling=resampling,
                nodata=255,
                warp_mem_limit=WARP_MEMORY // 2**20,
            )
        )
        profile = {
            **coarse.profile,
            'height': src.height,
            'width': src.width,
            'crs': src.crs,
            'transform': src.transform,
            'nodata': 255,
            'tiled': True,
            'blockxsize': BLOCK_SIZE,
            'blockysize': BLOCK_SIZE,
            'compress': compress,
            'BIGTIFF': 'IF_SAFER',
        }
        tmp = stack.enter_context(atomic_path(output_path, suffix='.tif'))
        dst = stack.enter_context(rasterio.open(tmp, 'w', **profile))
        _copy_description(coarse, dst)
        for chunk in chunk_windows(src.height, src.width, chunk_size):
            data = vrt.read(window=chunk)
            data[:, src.dataset_mask(window=chunk) == 0] = 255
            dst.write(data, window=chunk)


def segment_at_gsd(
    model: Model,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    plan: GSDPlan,
    *,
    probabilities_path: str | os.PathLike[str] | None = None,
    chunk_size: int = 2048,
    compress: str = 'deflate',
    **kwargs: Any,
) -> SegmentStats:
    """Segment a GeoTIFF at ``plan.target_gsd``; write the outputs on its own grid.

    Without resampling (``plan.resamples`` False) this is
    :func:`~torchgeo_xscale.inference.segment_geotiff`. Otherwise the steps of this
    module's docstring: the classes are brought back with ``nearest``, the
    probabilities with ``bilinear`` resampling (so a pixel's class is that of the
    model-grid pixel it lies in, its probabilities an interpolation; they can differ
    at class boundaries).

    Args:
        model: As :func:`~torchgeo_xscale.inference.segment_geotiff`.
        input_path: Input GeoTIFF.
        output_path: Class raster to write (the input's size, CRS and transform).
        plan: From :func:`plan_gsd`.
        probabilities_path: Optional probabilities raster (the input's grid too).
        chunk_size: Output chunk side (on both grids).
        compress: GeoTIFF compression.
        **kwargs: The other arguments of
            :func:`~torchgeo_xscale.inference.segment_geotiff` (``window``,
            ``bands``, ``mean``, ``std``, ``device``...).

    Returns:
        What was done; ``height`` and ``width`` are the output's, the window and
        chunk counts those of the model's grid.
    """
    common = {'chunk_size': chunk_size, 'compress': compress, **kwargs}
    if not plan.resamples:
        return segment_geotiff(
            model,
            input_path,
            output_path,
            probabilities_path=probabilities_path,
            **common,
        )
    f = plan.factor
    with contextlib.ExitStack() as stack:
        # GDAL's block cache bounded for the warps back too (its default is 5 % of RAM)
        stack.enter_context(_gdal_cache(int(kwargs.get('gdal_cache_mb', 64))))
        src = stack.enter_context(rasterio.open(input_path))
        height, width = plan.shape(src.height, src.width)
        vrt = stack.enter_context(
            WarpedVRT(
                src,
                crs=src.crs,
                transform=src.transform @ Affine.scale(f),
                width=width,
                height=height,
                resampling=Resampling.average if f > 1 else Resampling.bilinear,
                warp_mem_limit=WARP_MEMORY // 2**20,
            )
        )
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix='xscale-gsd-'))
        classes = os.path.join(work, 'classes.tif')
        probs = os.path.join(work, 'probabilities.tif') if probabilities_path else None
        stats = segment_geotiff(model, vrt, classes, probabilities_path=probs, **common)
        _warp_back(classes, src, output_path, Resampling.nearest, chunk_size, compress)
        if probs is not None and probabilities_path is not None:
            _warp_back(
                probs,
                src,
                probabilities_path,
                Resampling.bilinear,
                chunk_size,
                compress,
            )
        return dataclasses.replace(stats, height=src.height, width=src.width)
