"""The embedding GeoTIFF of ``xscale embed``: patch tokens on the input's grid.

One output pixel per encoder patch (``cell`` input pixels a side), same CRS and
origin as the input; one float32 band per channel or per principal component
(:func:`fit_pca`). Tiles arrive in row-major order; :class:`EmbeddingRasterWriter`
holds one tile-row of patches, averages overlapping tiles, and writes finished rows
strip by strip, so memory grows with the raster's width only. Patches without a
valid input pixel, and patches no kept tile covers, are NaN.
"""

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.windows import Window
from torch import Tensor

from ..io import atomic_path

__all__ = (
    'EmbeddingRasterWriter',
    'fit_pca',
    'open_embedding_raster',
    'patch_valid',
)


def fit_pca(tokens: Tensor, components: int) -> dict[str, Tensor]:
    """Principal components of token vectors (eigenvectors of their covariance).

    Args:
        tokens: ``(N, D)`` vectors.
        components: K, 1 <= K <= D.

    Returns:
        ``mean`` ``(D,)``, ``components`` ``(K, D)`` (unit rows, largest variance
        first, each row's largest-magnitude entry positive) and
        ``explained_variance_ratio`` ``(K,)``.

    Raises:
        ValueError: If K is not in ``[1, D]`` or there are fewer than 2 vectors.
    """
    n, d = tokens.shape
    if not 1 <= components <= d:
        raise ValueError(f'pca={components}; expected 1 to {d} (the embedding size)')
    if n < 2:
        raise ValueError(f'{n} token(s) to fit the PCA on; expected at least 2')
    x = tokens.double()
    mean = x.mean(dim=0)
    cov = (x - mean).T @ (x - mean) / (n - 1)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    variance = values.flip(0)[:components].clamp_min(0)
    rows = vectors.flip(1)[:, :components].T
    sign = rows.gather(1, rows.abs().argmax(dim=1, keepdim=True)).sign()
    rows = rows * torch.where(sign == 0, 1.0, sign)
    total = values.clamp_min(0).sum().clamp_min(1e-12)
    return {
        'mean': mean.float(),
        'components': rows.float(),
        'explained_variance_ratio': (variance / total).float(),
    }


def patch_valid(valid: Tensor, grid: int) -> Tensor:
    """Which patches hold a valid pixel.

    Args:
        valid: ``(B, T, T)`` valid pixels of tiles.
        grid: Patches per tile side.

    Returns:
        ``(B, grid, grid)`` bool.
    """
    return F.adaptive_max_pool2d(valid[:, None].float(), grid)[:, 0] > 0


class EmbeddingRasterWriter:
    """Average tiles' patch maps into output rows and write them in order.

    Attributes:
        grid: Patches per tile side.
        step: Output pixels between tiles (``stride / cell``).
        pca: Projection (see :func:`fit_pca`), or None for every channel.
    """

    def __init__(
        self,
        dst: Any,
        grid: int,
        step: int,
        pca: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Start writing into the open dataset *dst*.

        Args:
            dst: A rasterio dataset open for writing (float32, one band per value).
            grid: Patches per tile side.
            step: Output pixels between neighbouring tiles.
            pca: Projection of the D channels onto ``dst.count`` components.
        """
        self.dst = dst
        self.grid = grid
        self.step = step
        self.pca = pca
        self._base = 0  # output row held in buffer row 0
        self._sum = np.zeros((dst.count, grid, dst.width), dtype=np.float64)
        self._count = np.zeros((grid, dst.width), dtype=np.int32)

    def _flush(self, stop: int) -> None:
        """Write output rows ``[base, stop)``; the buffer then starts at *stop*."""
        stop = min(stop, self.dst.height)
        if stop <= self._base:
            return
        n = stop - self._base
        held = min(n, self.grid)
        out = np.full((self._sum.shape[0], n, self.dst.width), np.nan, np.float32)
        count = self._count[:held]
        with np.errstate(invalid='ignore', divide='ignore'):
            out[:, :held] = np.where(count > 0, self._sum[:, :held] / count, np.nan)
        window = Window(0, self._base, self.dst.width, n)  # type: ignore[call-arg]
        self.dst.write(out, window=window)
        rest = self.grid - held
        self._sum[:, :rest] = self._sum[:, held:]
        self._count[:rest] = self._count[held:]
        self._sum[:, rest:] = 0
        self._count[rest:] = 0
        self._base = stop

    def add(
        self, rows: Sequence[int], cols: Sequence[int], maps: Tensor, valid: Tensor
    ) -> None:
        """Add a batch of tiles, in row-major order of the grid.

        Args:
            rows: Grid row of each tile.
            cols: Grid column of each tile.
            maps: ``(B, D, grid, grid)`` patch tokens.
            valid: ``(B, T, T)`` valid input pixels.
        """
        values = maps.float().cpu()
        if self.pca is not None:
            centred = values - self.pca['mean'].view(1, -1, 1, 1)
            values = torch.einsum('kd,bdhw->bkhw', self.pca['components'], centred)
        ok = patch_valid(valid.cpu(), self.grid).numpy()
        for row, col, value, good in zip(rows, cols, values.numpy(), ok):
            top, left = row * self.step, col * self.step
            if top > self._base:
                self._flush(top)
            h = min(self.grid, self.dst.height - top)
            w = min(self.grid, self.dst.width - left)
            if h <= 0 or w <= 0:
                continue
            r0 = top - self._base
            v = good[:h, :w]
            self._sum[:, r0 : r0 + h, left : left + w] += np.where(
                v, value[:, :h, :w], 0.0
            )
            self._count[r0 : r0 + h, left : left + w] += v

    def close(self) -> None:
        """Write the rows still held, and NaN rows below the last tile."""
        self._flush(self.dst.height)


@contextlib.contextmanager
def open_embedding_raster(
    path: str | os.PathLike[str],
    source: str | os.PathLike[str],
    count: int,
    grid: int,
    cell: int,
    stride: int,
    pca: Mapping[str, Tensor] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[EmbeddingRasterWriter]:
    """Create the embedding GeoTIFF of *source*, written atomically.

    The file appears under *path* only when the ``with`` block ends without error.

    Args:
        path: Output GeoTIFF.
        source: The input GeoTIFF whose grid it follows.
        count: Bands (D channels, or K components).
        grid: Patches per tile side.
        cell: Input pixels per patch side.
        stride: Tile grid step in input pixels (a multiple of *cell*).
        pca: Projection from :func:`fit_pca` (stored in the tags), or None.
        tags: Extra metadata, stored as JSON under the ``xscale_embedding`` tag.

    Yields:
        The writer; call :meth:`EmbeddingRasterWriter.add` per batch.

    Raises:
        ValueError: If *stride* is not a multiple of *cell*.
    """
    if cell < 1 or stride % cell:
        raise ValueError(
            f'stride={stride}; expected a multiple of the patch cell {cell}'
        )
    with rasterio.open(source) as src:
        height, width = math.ceil(src.height / cell), math.ceil(src.width / cell)
        profile = {
            'driver': 'GTiff',
            'height': height,
            'width': width,
            'count': count,
            'dtype': 'float32',
            'crs': src.crs,
            'transform': src.transform @ Affine.scale(cell),
            'nodata': float('nan'),
            'compress': 'deflate',
            'tiled': False,
            'blockysize': min(16, height),
            'BIGTIFF': 'IF_SAFER',
        }
    meta = {'xscale_embedding': json.dumps({**(tags or {}), 'patch_cell_px': cell})}
    if pca is not None:
        meta['xscale_pca'] = json.dumps({k: v.tolist() for k, v in pca.items()})
    with atomic_path(path, '.tif') as tmp, rasterio.open(tmp, 'w', **profile) as dst:
        dst.update_tags(**meta)
        for i in range(count):
            dst.set_band_description(
                i + 1, f'pc{i + 1}' if pca is not None else f'dim{i}'
            )
        writer = EmbeddingRasterWriter(dst, grid, stride // cell, pca)
        yield writer
        writer.close()
