"""Sliding-window segmentation: in-memory tensors and GeoTIFFs of any size.

Windows of ``window`` pixels step by ``stride = window * (1 - overlap)``; the last
window of a row/column is aligned to the raster's edge, so the grid covers every
pixel for any raster size. Overlapping class probabilities are blended with a tent
weight (highest at a window's centre, positive up to its edge).

:func:`segment_geotiff` reads and writes a GeoTIFF chunk by chunk (``chunk_size``
pixels square, aligned to the output's 256-pixel tiles): for each chunk it runs the
windows that overlap it, blends them into a chunk-sized buffer and writes the chunk.
Memory therefore depends on ``chunk_size`` and ``window``, not on the raster's size.
Windows that straddle a vertical chunk boundary are kept for the next chunk; those
straddling a horizontal boundary are run again (about ``window / chunk_size`` extra
work). The outputs are written under temporary names and renamed when complete.
With ``progress=True`` a progress bar of the grid's windows goes to stderr.
"""

import contextlib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.io import DatasetReaderBase
from rasterio.windows import Window
from torch import Tensor
from tqdm.auto import tqdm

from .io import atomic_path
from .progress import progress_bar

__all__ = (
    'SegmentStats',
    'blend_weights',
    'chunk_windows',
    'segment_geotiff',
    'sliding_window_probs',
    'window_starts',
)

#: Tile size of the GeoTIFFs written here.
BLOCK_SIZE = 256

Model = Callable[[Tensor], Tensor]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering ``[0, length)``.

    Args:
        length: Raster size along one axis.
        window: Window size.
        stride: Step between windows (``1 <= stride <= window``).

    Returns:
        ``0, stride, 2 * stride, ...`` and a last start ``length - window`` aligned
        to the edge; ``[0]`` when ``length <= window``.

    Raises:
        ValueError: If *stride* is not in ``[1, window]``.
    """
    if not 1 <= stride <= window:
        raise ValueError(f'stride={stride}; expected 1 <= stride <= window={window}')
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def chunk_windows(height: int, width: int, chunk_size: int) -> list[Window]:
    """Output chunks of :func:`segment_geotiff`, row by row: a partition of the raster.

    Args:
        height: Raster rows.
        width: Raster columns.
        chunk_size: Chunk side.

    Returns:
        ``chunk_size`` square windows (smaller at the right and bottom edges).
    """
    return [
        Window(cx, cy, min(chunk_size, width - cx), min(chunk_size, height - cy))  # type: ignore[call-arg]
        for cy in range(0, height, chunk_size)
        for cx in range(0, width, chunk_size)
    ]


def blend_weights(size: int, device: torch.device | str | None = None) -> Tensor:
    """Tent weights of a window axis: ``min(i + 1, size - i)`` normalised to peak 1.

    Args:
        size: Window size.
        device: Device of the result.

    Returns:
        ``(size,)`` positive weights.
    """
    i = torch.arange(size, device=device, dtype=torch.float32)
    return torch.minimum(i + 1, size - i) / math.ceil(size / 2)


def _stride(window: int, overlap: float) -> int:
    if not 0 <= overlap < 1:
        raise ValueError(f'overlap={overlap}; expected 0 <= overlap < 1')
    return max(1, round(window * (1 - overlap)))


def _run(model: Model, batch: Tensor) -> Tensor:
    """Class probabilities ``(B, K, h, w)`` of a batch of windows."""
    return model(batch).float().softmax(dim=1)


@torch.no_grad()
def sliding_window_probs(
    model: Model,
    images: Tensor,
    window: int,
    overlap: float = 0.25,
    batch_size: int = 8,
) -> Tensor:
    """Blended class probabilities of images larger (or smaller) than a window.

    Images smaller than *window* are zero-padded to it and cropped back.

    Args:
        model: Maps ``(N, C, window, window)`` to logits ``(N, K, window, window)``.
        images: ``(B, C, H, W)``.
        window: Window size.
        overlap: Fraction of a window shared with its neighbour.
        batch_size: Windows per model call.

    Returns:
        Probabilities ``(B, K, H, W)``.
    """
    b, _, h, w = images.shape
    pad_h, pad_w = max(0, window - h), max(0, window - w)
    x = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
    stride = _stride(window, overlap)
    boxes = [
        (r, c)
        for r in window_starts(x.shape[-2], window, stride)
        for c in window_starts(x.shape[-1], window, stride)
    ]
    ramp = blend_weights(window, x.device)
    weight = ramp[:, None] * ramp[None, :]
    acc: Tensor | None = None
    norm = x.new_zeros((1, 1, *x.shape[-2:]), dtype=torch.float32)
    for i in range(0, len(boxes), max(1, batch_size // b)):
        chunk = boxes[i : i + max(1, batch_size // b)]
        crops = torch.cat([x[..., r : r + window, c : c + window] for r, c in chunk])
        probs = _run(model, crops).split(b)
        if acc is None:
            acc = x.new_zeros(
                (b, probs[0].shape[1], *x.shape[-2:]), dtype=torch.float32
            )
        for (r, c), p in zip(chunk, probs):
            acc[..., r : r + window, c : c + window] += p * weight
            norm[..., r : r + window, c : c + window] += weight
    assert acc is not None
    return (acc / norm)[..., :h, :w]


@dataclass
class SegmentStats:
    """What :func:`segment_geotiff` did.

    Attributes:
        height: Raster rows.
        width: Raster columns.
        num_classes: Classes K.
        windows: Windows in the grid.
        windows_run: Windows run through the model (windows of nodata only are
            skipped; some straddling a chunk boundary run twice).
        chunks: Chunks written.
    """

    height: int
    width: int
    num_classes: int
    windows: int
    windows_run: int
    chunks: int


def _read_window(
    src: rasterio.DatasetReader, bands: Sequence[int], row: int, col: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``size`` square window (zero-padded past the edge) and its validity."""
    h, w = min(size, src.height - row), min(size, src.width - col)
    win = Window(col, row, w, h)  # type: ignore[call-arg]
    data = np.zeros((len(bands), size, size), dtype=np.float32)
    valid = np.zeros((size, size), dtype=bool)
    data[:, :h, :w] = src.read(list(bands), window=win, out_dtype='float32')
    valid[:h, :w] = src.dataset_mask(window=win) > 0
    valid &= np.isfinite(data).all(0)
    return data, valid


@contextlib.contextmanager
def _gdal_cache(megabytes: int) -> Iterator[None]:
    """Set GDAL's block cache size (process-wide) for a while, then restore it."""
    from rasterio.env import get_gdal_config, set_gdal_config

    previous = get_gdal_config('GDAL_CACHEMAX')
    set_gdal_config('GDAL_CACHEMAX', megabytes * 2**20)
    try:
        yield
    finally:
        set_gdal_config('GDAL_CACHEMAX', previous)


def _window_probs(
    model: Model,
    src: rasterio.DatasetReader,
    bands: Sequence[int],
    boxes: Sequence[tuple[int, int]],
    window: int,
    prep: Callable[[np.ndarray, np.ndarray], Tensor],
    batch_size: int,
    stats: 'SegmentStats',
    on_read: Callable[[int, int], None] = lambda r, c: None,
) -> Iterator[tuple[tuple[int, int], Tensor]]:
    """Read windows at *boxes* (row, col) and yield their probabilities, batch by batch.

    Windows without a valid pixel are skipped; at most *batch_size* windows are held.
    *on_read* is called with each window's (row, col) once it is read.
    """
    batch: list[tuple[tuple[int, int], Tensor]] = []
    for i, (r, c) in enumerate(boxes):
        data, valid = _read_window(src, bands, r, c, window)
        on_read(r, c)
        if valid.any():
            batch.append(((r, c), prep(data, valid)))
        if batch and (len(batch) == batch_size or i == len(boxes) - 1):
            probs = _run(model, torch.stack([x for _, x in batch])).half()
            stats.windows_run += len(batch)
            yield from ((key, p) for (key, _), p in zip(batch, probs))
            batch = []


def _counter(bar: tqdm, chunk: Window) -> Callable[[int, int], None]:
    """Advance *bar* once per window: when it is read in the chunk holding its corner.

    Windows straddling a horizontal chunk boundary are read twice; each window's
    top-left pixel lies in exactly one chunk, so the bar ends at the grid's size.
    """
    y0, x0, h, w = chunk.row_off, chunk.col_off, chunk.height, chunk.width

    def on_read(r: int, c: int) -> None:
        if y0 <= r < y0 + h and x0 <= c < x0 + w:
            bar.update(1)

    return on_read


def _profile(
    src: rasterio.DatasetReader, count: int, nodata: int, compress: str
) -> dict:
    return {
        'driver': 'GTiff',
        'height': src.height,
        'width': src.width,
        'count': count,
        'dtype': 'uint8',
        'crs': src.crs,
        'transform': src.transform,
        'nodata': nodata,
        'tiled': True,
        'blockxsize': BLOCK_SIZE,
        'blockysize': BLOCK_SIZE,
        'compress': compress,
        'BIGTIFF': 'IF_SAFER',
    }


@torch.no_grad()
def segment_geotiff(
    model: Model,
    input_path: 'str | os.PathLike[str] | DatasetReaderBase',
    output_path: str | os.PathLike[str],
    *,
    window: int = 512,
    overlap: float = 0.25,
    batch_size: int = 4,
    chunk_size: int = 2048,
    bands: Sequence[int] | None = None,
    mean: Sequence[float] | float = 0.0,
    std: Sequence[float] | float = 255.0,
    device: torch.device | str = 'cpu',
    probabilities_path: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    colormap: Sequence[Sequence[int]] | None = None,
    nodata: int = 255,
    compress: str = 'deflate',
    gdal_cache_mb: int = 64,
    progress: bool = False,
) -> SegmentStats:
    """Segment a GeoTIFF of any size into a georeferenced class raster.

    The output has the input's size, CRS and transform; one uint8 band of class
    indices, *nodata* where every input band is nodata, a colour table, tiled
    (256 px) and compressed. With *probabilities_path*, a K-band uint8 GeoTIFF of
    class probabilities (``round(p * 254)``, scale 1/254 in its metadata, 255 =
    nodata) is written too.

    Args:
        model: Maps normalised ``(N, C, window, window)`` to logits
            ``(N, K, window, window)`` on *device* (in eval mode).
        input_path: Input GeoTIFF, or an open rasterio dataset (e.g. a
            :class:`~rasterio.vrt.WarpedVRT` of it at another GSD, as
            :func:`~torchgeo_xscale.segment_gsd.segment_at_gsd` passes).
        output_path: Class raster to write.
        window: Window size in pixels (a multiple of the model's stride, e.g. 32).
        overlap: Fraction of a window shared with its neighbour, in ``[0, 1)``.
        batch_size: Windows per model call.
        chunk_size: Side of the output chunks processed at a time; a multiple of 256,
            at least *window*. Memory grows with its square.
        bands: 1-based input bands fed to the model (default: all).
        mean: Per-band (or one) mean subtracted from the raw values.
        std: Per-band (or one) divisor after subtracting the mean.
        device: Where the model runs.
        probabilities_path: Optional probabilities raster to write.
        class_names: Names stored in the output's metadata.
        colormap: RGB colour per class for the colour table.
        nodata: Output value for no data (not a class index).
        compress: GeoTIFF compression (``deflate``, ``lzw``...).
        gdal_cache_mb: GDAL's block cache while segmenting (its default, 5 % of the
            RAM, would otherwise fill with blocks of large rasters); restored after.
        progress: Show a progress bar of the windows on stderr.

    Returns:
        What was done.

    Raises:
        ValueError: If an argument is invalid or the raster lacks a band.
    """
    if window < 1 or chunk_size < window or chunk_size % BLOCK_SIZE:
        msg = f'chunk_size={chunk_size}, window={window}; expected a multiple of {BLOCK_SIZE} >= window'
        raise ValueError(msg)
    stride = _stride(window, overlap)
    opened = (
        contextlib.nullcontext(input_path)
        if isinstance(input_path, DatasetReaderBase)
        else rasterio.open(input_path)
    )
    with _gdal_cache(gdal_cache_mb), opened as src:
        bands = list(bands or range(1, src.count + 1))
        if not all(1 <= b <= src.count for b in bands):
            msg = f'bands={bands} for {input_path}; it has bands 1 to {src.count}'
            raise ValueError(msg)
        shift = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        scale = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        for name, value in (('mean', shift), ('std', scale)):
            if value.numel() not in (1, len(bands)):
                msg = f'{name} has {value.numel()} values; expected 1 or {len(bands)}'
                raise ValueError(msg)
        shift, scale = shift.to(device), scale.to(device)
        rows = window_starts(src.height, window, stride)
        cols = window_starts(src.width, window, stride)
        ramp = blend_weights(window, device)
        weight = ramp[:, None] * ramp[None, :]
        stats = SegmentStats(src.height, src.width, 0, len(rows) * len(cols), 0, 0)

        def prep(data: np.ndarray, valid: np.ndarray) -> Tensor:
            x = (torch.from_numpy(data).to(device) - shift) / scale
            return x * torch.from_numpy(valid).to(device)

        probe = torch.zeros((1, len(bands), window, window), device=device)
        stats.num_classes = num_classes = int(model(probe).shape[1])
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(
                progress_bar(
                    total=stats.windows,
                    desc=os.path.basename(output_path),
                    unit='window',
                    disable=not progress,
                    leave=True,
                )
            )
            tmp = stack.enter_context(atomic_path(output_path, suffix='.tif'))
            profile = _profile(src, 1, nodata, compress)
            dst = stack.enter_context(rasterio.open(tmp, 'w', **profile))
            _describe(dst, colormap, class_names)
            prob_dst = None
            if probabilities_path is not None:
                tmp = stack.enter_context(
                    atomic_path(probabilities_path, suffix='.tif')
                )
                profile = _profile(src, num_classes, 255, compress)
                prob_dst = stack.enter_context(rasterio.open(tmp, 'w', **profile))
                _describe_probabilities(prob_dst, num_classes, class_names)
            cache: dict[tuple[int, int], Tensor] = {}
            for chunk_win in chunk_windows(src.height, src.width, chunk_size):
                cx, cy = chunk_win.col_off, chunk_win.row_off
                ch, cw = chunk_win.height, chunk_win.width
                if cx == 0:  # a new row of chunks: nothing carries over vertically
                    cache = {}
                boxes = [
                    (r, c)
                    for r in rows
                    if r < cy + ch and r + window > cy
                    for c in cols
                    if c < cx + cw and c + window > cx
                ]
                acc = torch.zeros((num_classes, ch, cw), device=device)
                norm = torch.zeros((ch, cw), device=device)
                kept: dict[tuple[int, int], Tensor] = {}
                todo = [k for k in boxes if k not in cache]
                done = ((k, cache[k]) for k in boxes if k in cache)

                windows = _window_probs(
                    model,
                    src,
                    bands,
                    todo,
                    window,
                    prep,
                    batch_size,
                    stats,
                    _counter(bar, chunk_win),
                )
                for (r, c), p in itertools.chain(done, windows):
                    y0, y1 = max(r, cy), min(r + window, cy + ch)
                    x0, x1 = max(c, cx), min(c + window, cx + cw)
                    wgt = weight[y0 - r : y1 - r, x0 - c : x1 - c]
                    part = p[:, y0 - r : y1 - r, x0 - c : x1 - c].float()
                    acc[:, y0 - cy : y1 - cy, x0 - cx : x1 - cx] += part * wgt
                    norm[y0 - cy : y1 - cy, x0 - cx : x1 - cx] += wgt
                    if c + window > cx + cw:  # needed again by the next chunk
                        kept[(r, c)] = p
                cache = kept
                mask = torch.from_numpy(src.dataset_mask(window=chunk_win) > 0)
                valid = mask.to(device) & (norm > 0)
                acc /= norm.clamp_min_(1e-12)
                labels = torch.where(valid, acc.argmax(0).to(torch.uint8), nodata)
                dst.write(labels.cpu().numpy()[None], window=chunk_win)
                if prob_dst is not None:
                    q = torch.where(valid, acc.mul_(254).round_(), 255.0)
                    prob_dst.write(q.to(torch.uint8).cpu().numpy(), window=chunk_win)
                stats.chunks += 1
    return stats


def _describe(
    dst: rasterio.io.DatasetWriter,
    colormap: Sequence[Sequence[int]] | None,
    names: Sequence[str] | None,
) -> None:
    """Colour table, band description and class names of a class raster."""
    if colormap:
        table = {i: (*(int(v) for v in rgb[:3]), 255) for i, rgb in enumerate(colormap)}
        dst.write_colormap(1, table)
    dst.set_band_description(1, 'class')
    if names:
        dst.update_tags(1, CLASS_NAMES=json.dumps(list(names)))


def _describe_probabilities(
    dst: rasterio.io.DatasetWriter, count: int, names: Sequence[str] | None
) -> None:
    """Scale (1/254) and per-class descriptions of a probabilities raster."""
    dst.scales = (1 / 254,) * count
    for i in range(count):
        name = names[i] if names and i < len(names) else f'class_{i}'
        dst.set_band_description(i + 1, f'p({name})')
