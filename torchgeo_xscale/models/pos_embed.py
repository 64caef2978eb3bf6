"""Positional embeddings: MAE's fixed 2-D sin-cos embedding and the one fitter.

* :func:`sincos_pos_embed`: the fixed embedding of any ``(rows, cols)`` patch grid,
  optionally scaled per sample by GSD (Scale-MAE), built on TorchGeo's
  :func:`~torchgeo.models.scale_mae.get_2d_sincos_pos_embed_from_grid_torch`;
* :func:`fit_pos_embed`: a stored embedding for another grid, regenerated exactly
  when it is the fixed sin-cos one, resampled (timm's
  :func:`~timm.layers.resample_abs_pos_embed`) when it is learned. Every loader
  (:func:`torchgeo_xscale.checkpoints.load_into`, the segmentation encoder, the
  ViT's own grid changes) fits embeddings with it.
"""

from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor
from torchgeo.models.scale_mae import get_2d_sincos_pos_embed_from_grid_torch

__all__ = ('fit_pos_embed', 'is_sincos', 'sincos_pos_embed')


def _grid(grid_size: int | tuple[int, int] | Any) -> tuple[int, int]:
    """``(rows, cols)`` of an int (square) or a pair."""
    if isinstance(grid_size, int):
        return grid_size, grid_size
    rows, cols = grid_size
    return int(rows), int(cols)


def sincos_pos_embed(
    embed_dim: int,
    grid_size: int | tuple[int, int],
    gsd_ratio: Tensor | None = None,
) -> Tensor:
    """Fixed 2-D sin-cos positional embeddings (MAE's), optionally scaled by GSD.

    Half of the channels encode the column, half the row, as MAE's
    ``get_2d_sincos_pos_embed`` (and TorchGeo's Scale-MAE helpers, reused here); any
    rectangular grid, patches in row-major order.

    Args:
        embed_dim: Embedding dimension D (a multiple of 4).
        grid_size: Patch grid ``(rows, cols)``, or one int for a square grid.
        gsd_ratio: Per-sample ``gsd / reference_gsd`` ``(B,)``; None for ratio 1.

    Returns:
        ``(B, 1 + rows * cols, D)`` embeddings (zeros for the CLS token), with
        ``B = 1`` when *gsd_ratio* is None.
    """
    rows, cols = _grid(grid_size)
    ratio = torch.ones(1) if gsd_ratio is None else gsd_ratio.float()
    r = torch.arange(rows, dtype=ratio.dtype, device=ratio.device)
    c = torch.arange(cols, dtype=ratio.dtype, device=ratio.device)
    grid = torch.stack(torch.meshgrid(c, r, indexing='xy'), dim=0)  # (2, rows, cols)
    grid = torch.einsum('chw,n->cnhw', grid, ratio)
    n = ratio.shape[0]
    pe = get_2d_sincos_pos_embed_from_grid_torch(embed_dim, grid)
    pe = pe.reshape(n, rows * cols, embed_dim)
    return torch.cat([pe.new_zeros(n, 1, embed_dim), pe], dim=1)


def is_sincos(pos_embed: Tensor, grid_size: tuple[int, int] | None = None) -> bool:
    """Whether *pos_embed* is MAE's fixed 2-D sin-cos embedding.

    Args:
        pos_embed: ``(1, 1 + N, D)``.
        grid_size: Its patch grid; default the square one of N patches.

    Returns:
        True if so (then it can be regenerated exactly for any grid).
    """
    n, dim = pos_embed.shape[1] - 1, pos_embed.shape[-1]
    if grid_size is None:
        side = round(n**0.5)
        grid_size = (side, side)
    if grid_size[0] * grid_size[1] != n or dim % 4 or pos_embed.shape[0] != 1:
        return False
    ref = sincos_pos_embed(dim, grid_size).to(pos_embed.dtype)
    return bool(torch.allclose(pos_embed.detach().cpu(), ref, atol=1e-4))


def fit_pos_embed(
    pos_embed: Tensor,
    grid_size: tuple[int, int],
    old_grid_size: tuple[int, int] | None = None,
) -> Tensor:
    """A stored positional embedding for another patch grid (the one fitter).

    MAE's fixed sin-cos embedding is regenerated exactly for the new grid; any other
    (learned) embedding is resampled with timm's
    :func:`~timm.layers.resample_abs_pos_embed` (bicubic). One prefix (CLS) token.

    Args:
        pos_embed: ``(1, 1 + N, D)``.
        grid_size: Target grid ``(rows, cols)``.
        old_grid_size: Grid of *pos_embed*; default the square one of N patches.

    Returns:
        ``(1, 1 + rows * cols, D)``; *pos_embed* itself when it already fits.
    """
    rows, cols = grid_size
    if old_grid_size is None:
        side = round((pos_embed.shape[1] - 1) ** 0.5)
        old_grid_size = (side, side)
    if tuple(old_grid_size) == (rows, cols) and pos_embed.shape[1] == 1 + rows * cols:
        return pos_embed
    if is_sincos(pos_embed, old_grid_size):
        pe = sincos_pos_embed(pos_embed.shape[-1], (rows, cols))
        return pe.to(pos_embed.device, pos_embed.dtype)
    return resample_abs_pos_embed(
        pos_embed, [rows, cols], list(old_grid_size), num_prefix_tokens=1
    )
