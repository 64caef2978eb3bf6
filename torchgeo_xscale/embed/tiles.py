"""The tile grid of ``xscale embed``, read window by window.

The grid is TorchGeo's :class:`~torchgeo.samplers.GriddedPatchSampler`'s: tiles
start at multiples of ``stride`` from the top-left corner, and the last row and
column of tiles reach past the raster's edge. Each tile is read on its own (GDAL's
block cache bounds the memory); pixels outside the raster, nodata (the files' masks)
and NaN/Inf are invalid.
"""

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import Tensor

from ..gsd import GroundUnits

__all__ = ('Tile', 'grid_shape', 'kept', 'tile_batches', 'tile_starts')


def tile_starts(length: int, tile_size: int, stride: int) -> list[int]:
    """Tile offsets along one axis, placed as TorchGeo's gridded sampler places them.

    Args:
        length: Raster size along the axis.
        tile_size: Tile side.
        stride: Step between tiles.

    Returns:
        ``0, stride, ...``: ``ceil((length - tile_size) / stride) + 1`` offsets (one
        if ``length <= tile_size``); the last tile may reach past the edge. Offsets at
        or past *length* (possible when ``stride > tile_size``) hold no pixel and are
        left out.

    Raises:
        ValueError: If *tile_size* or *stride* is below 1.
    """
    if tile_size < 1 or stride < 1:
        raise ValueError(f'tile_size={tile_size}, stride={stride}; expected >= 1')
    count = max(0, math.ceil((length - tile_size) / stride)) + 1
    return [i * stride for i in range(count) if i == 0 or i * stride < length]


def grid_shape(path: str, tile_size: int, stride: int) -> tuple[int, int]:
    """Rows and columns of the tile grid of a raster.

    Args:
        path: The raster.
        tile_size: Tile side in pixels.
        stride: Grid step in pixels.

    Returns:
        ``(rows, cols)``.
    """
    with rasterio.open(path) as src:
        return (
            len(tile_starts(src.height, tile_size, stride)),
            len(tile_starts(src.width, tile_size, stride)),
        )


@dataclass
class Tile:
    """One grid tile as read.

    Attributes:
        row: Grid row.
        col: Grid column.
        row_off: First pixel row in the file.
        col_off: First pixel column in the file.
        image: Raw values ``(C, T, T)`` float32 (0 past the edge).
        valid: Valid pixels ``(T, T)``.
        gsd: Metres per pixel (geographic CRS: at the tile centre).
        corners: The four corners in the file's CRS (top-left, clockwise).
        centre: Centre ``(x, y)`` in the file's CRS.
    """

    row: int
    col: int
    row_off: int
    col_off: int
    image: Tensor
    valid: Tensor
    gsd: float
    corners: list[tuple[float, float]]
    centre: tuple[float, float]

    @property
    def valid_fraction(self) -> float:
        """Share of valid pixels."""
        return float(self.valid.float().mean())


def kept(tiles: Sequence[Tile], min_valid_fraction: float) -> list[Tile]:
    """The tiles with some valid pixels and a valid fraction >= *min_valid_fraction*.

    Args:
        tiles: Tiles.
        min_valid_fraction: Threshold.

    Returns:
        The tiles kept, in order.
    """
    return [
        t for t in tiles if t.valid_fraction >= min_valid_fraction and t.valid.any()
    ]


def _read(
    src: Any, bands: Sequence[int], row: int, col: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A *size* square window (zeros past the edge) and its valid pixels."""
    h, w = max(0, min(size, src.height - row)), max(0, min(size, src.width - col))
    data = np.zeros((len(bands), size, size), dtype=np.float32)
    valid = np.zeros((size, size), dtype=bool)
    if h and w:
        window = Window(col, row, w, h)  # type: ignore[call-arg]
        data[:, :h, :w] = src.read(list(bands), window=window, out_dtype='float32')
        valid[:h, :w] = (src.read_masks(list(bands), window=window) > 0).all(axis=0)
    valid &= np.isfinite(data).all(axis=0)
    return data, valid


def tile_batches(
    path: str,
    bands: Sequence[int],
    tile_size: int,
    stride: int,
    batch_size: int,
    picks: set[int] | None = None,
) -> Iterator[tuple[int, list[Tile]]]:
    """Batches of the grid tiles of a raster, in row-major order.

    Args:
        path: The raster.
        bands: 1-based bands to read.
        tile_size: Tile side in pixels.
        stride: Grid step in pixels.
        batch_size: Tiles per batch.
        picks: Read only these tiles (row-major indices; default all).

    Yields:
        The number of grid cells passed since the previous batch (for progress),
        and the batch.
    """
    with rasterio.open(path) as src:
        units = GroundUnits.from_crs(src.crs)
        t = src.transform
        xres, yres = src.res
        rows = tile_starts(src.height, tile_size, stride)
        cols = tile_starts(src.width, tile_size, stride)
        batch: list[Tile] = []
        seen = 0
        for index in range(len(rows) * len(cols)):
            seen += 1
            if picks is not None and index not in picks:
                continue
            i, j = divmod(index, len(cols))
            r, c, s = rows[i], cols[j], tile_size
            data, valid = _read(src, bands, r, c, s)
            x, y = t @ (c + s / 2, r + s / 2)
            corners = [t @ (c, r), t @ (c + s, r), t @ (c + s, r + s), t @ (c, r + s)]
            gsd = units.gsd(xres, yres, y if units.geographic else None)
            image, mask = torch.from_numpy(data), torch.from_numpy(valid)
            batch.append(Tile(i, j, r, c, image, mask, gsd, corners, (x, y)))
            if len(batch) == batch_size:
                yield seen, batch
                batch, seen = [], 0
        if batch or seen:
            yield seen, batch
