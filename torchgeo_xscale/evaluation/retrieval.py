"""Cross-scale retrieval: find a tile's full-scale embedding from its low-scale one.

A label-free test of scale invariance on any GeoTIFFs. For N tiles, the keys are the
embeddings of the full-scale views (r = 1) and the queries those of the r-scale views
(area down-sampled by r, resized back: same ground, less detail). For each query the
N keys are ranked by cosine similarity; reported are top-1 and top-5 (the tile's own
key ranked first / in the first five), the mean rank (1 is perfect, ``(N + 1) / 2``
is chance) and the mean reciprocal rank. Ties count half (a constant encoder scores
chance, not 1.0). The mean cosine similarity to the own key and to the others tells
invariance (own high) from discrimination (others low) when a score disappoints.

Tiles of a multi-resolution folder come from several native grids
(:func:`~torchgeo_xscale.datasets.rasters.group_rasters`); then each scale has a row
for all tiles (``group`` ``all``) and one per group (its name and ``gsd``), whose
scores are those of the group's queries, ranked among all keys.
"""

import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .datasets import TileSet, group_members, load_geotiff_tiles, overall_rows
from .encoders import FeatureEncoder, load_encoder
from .knn import DEFAULT_SCALES, embed_at_scale
from .report import plot_vs_scale, write_report

__all__ = (
    'evaluate_retrieval',
    'retrieval_ranks',
    'retrieval_scores',
    'retrieval_topk',
    'run_retrieval',
)


def retrieval_ranks(queries: Tensor, keys: Tensor) -> Tensor:
    """Rank of each query's own key among all keys, by cosine similarity.

    Args:
        queries: ``(N, D)``; query i belongs to key i.
        keys: ``(N, D)``.

    Returns:
        Ranks ``(N,)`` starting at 1; keys tied with the own key count half each.

    Raises:
        ValueError: If the shapes differ.
    """
    if queries.shape != keys.shape:
        raise ValueError(
            f'queries {tuple(queries.shape)} and keys {tuple(keys.shape)}; expected equal shapes'
        )
    sims = F.normalize(queries.double(), dim=1) @ F.normalize(keys.double(), dim=1).T
    own = sims.diagonal().unsqueeze(1)
    others = ~torch.eye(sims.shape[0], dtype=torch.bool)
    better = ((sims > own) & others).sum(1).double()
    ties = ((sims == own) & others).sum(1).double()
    return 1.0 + better + 0.5 * ties


def retrieval_topk(queries: Tensor, keys: Tensor, k: int = 5) -> Tensor:
    """The *k* keys most similar to each query, by cosine similarity as ranked above.

    Args:
        queries: ``(N, D)``; query i belongs to key i.
        keys: ``(N, D)``.
        k: Keys per query (at most N).

    Returns:
        Key indices ``(N, k)``, most similar first.

    Raises:
        ValueError: If the shapes differ or *k* is not in ``[1, N]``.
    """
    if queries.shape != keys.shape:
        raise ValueError(
            f'queries {tuple(queries.shape)} and keys {tuple(keys.shape)}; expected equal shapes'
        )
    if not 1 <= k <= keys.shape[0]:
        raise ValueError(f'k={k}; expected 1 <= k <= {keys.shape[0]} (the keys)')
    sims = F.normalize(queries.double(), dim=1) @ F.normalize(keys.double(), dim=1).T
    return sims.topk(k, dim=1).indices


def retrieval_scores(
    queries: Tensor, keys: Tensor, subset: Tensor | None = None
) -> dict[str, float]:
    """Top-1, top-5, mean rank and MRR of cross-scale retrieval.

    Args:
        queries: ``(N, D)``.
        keys: ``(N, D)``.
        subset: Boolean ``(N,)``: score only these queries (still ranked among all
            N keys); default all.

    Returns:
        ``top1``, ``top5``, ``mean_rank``, ``mrr``; the chance levels
        ``chance_top1`` (1/N) and ``chance_mean_rank`` ((N+1)/2); and, to tell scale
        invariance from discrimination, the mean cosine similarity of a query to its
        own key (``own_sim``) and to the other keys (``other_sim``).
    """
    ranks = retrieval_ranks(queries, keys)
    n = ranks.numel()
    sims = F.normalize(queries.double(), dim=1) @ F.normalize(keys.double(), dim=1).T
    own = sims.diagonal()
    if subset is not None:
        ranks, own, sims = ranks[subset], own[subset], sims[subset]
    other = (sims.sum() - own.sum()) / max(1, own.numel() * (n - 1))
    return {
        'top1': float((ranks == 1).double().mean()),
        'top5': float((ranks <= 5).double().mean()),
        'mean_rank': float(ranks.mean()),
        'mrr': float((1.0 / ranks).mean()),
        'chance_top1': 1.0 / n,
        'chance_mean_rank': (n + 1) / 2,
        'own_sim': float(own.mean()),
        'other_sim': float(other),
    }


def evaluate_retrieval(
    encoder: FeatureEncoder,
    tiles: TileSet | Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    batch_size: int = 64,
    device: str | torch.device = 'cpu',
) -> list[dict[str, Any]]:
    """Cross-scale retrieval scores of *encoder* at each scale ratio.

    Args:
        encoder: Frozen encoder.
        tiles: Normalised tiles (:class:`TileSet`, or images ``(N, C, H, W)``).
        scales: Scale ratios r of the queries.
        batch_size: Images per batch.
        device: Device of the encoder.

    Returns:
        One row per scale: ``model``, ``scale``, the scores of
        :func:`retrieval_scores` and ``n`` (the queries scored); for tiles of
        several native-grid groups, also ``group`` (``all``) and one row per group
        and scale with the group's name and median ``gsd``.
    """
    groups = group_members(tiles) if isinstance(tiles, TileSet) else []
    images = tiles.images if isinstance(tiles, TileSet) else tiles
    gsd = tiles.gsd if isinstance(tiles, TileSet) else None
    keys, _ = embed_at_scale(
        encoder, images, 1.0, gsd=gsd, batch_size=batch_size, device=device
    )
    rows = []
    for ratio in scales:
        queries, _ = embed_at_scale(
            encoder, images, ratio, gsd=gsd, batch_size=batch_size, device=device
        )
        head = {'model': encoder.name, 'scale': float(ratio)}
        if not groups:
            scores = retrieval_scores(queries, keys)
            rows.append({**head, **scores, 'n': int(images.shape[0])})
            continue
        rows.append(
            {
                **head,
                'group': 'all',
                'gsd': '',
                **retrieval_scores(queries, keys),
                'n': int(images.shape[0]),
            }
        )
        for name, gsd_m, members in groups:
            rows.append(
                {
                    **head,
                    'group': name,
                    'gsd': gsd_m,
                    **retrieval_scores(queries, keys, members),
                    'n': int(members.sum()),
                }
            )
    return rows


def run_retrieval(
    encoder: str | FeatureEncoder,
    data: str | os.PathLike[str] | Sequence[str],
    output: str | os.PathLike[str] = 'outputs/eval/retrieval',
    weights: str | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    pool: Literal['mean', 'cls'] = 'mean',
    tile_size: int | None = None,
    stride: int | None = None,
    holdout_fraction: float = 0.0,
    min_valid_fraction: float = 1.0,
    max_tiles: int | None = None,
    batch_size: int = 64,
    device: str = 'cpu',
    model_kwargs: dict[str, Any] | None = None,
    command: str = '',
) -> list[dict[str, Any]]:
    """Tile GeoTIFFs, run :func:`evaluate_retrieval`, write the report.

    Writes ``retrieval.csv``, ``.md`` and ``.png`` (top-1 vs scale) into *output*.

    Args:
        encoder: Encoder name/file or encoder.
        data: GeoTIFF folder, glob, file or list.
        output: Report folder.
        weights: Weights entry or file.
        scales: Scale ratios.
        pool: ``mean`` or ``cls`` feature.
        tile_size: Tile side (default: the encoder's input size).
        stride: Tile grid step (default *tile_size*).
        holdout_fraction: Tile only the region held out from training.
        min_valid_fraction: Drop tiles with fewer valid pixels (nodata borders would
            make tiles recognisable by their shape).
        max_tiles: Cap on tiles.
        batch_size: Images per batch.
        device: Device.
        model_kwargs: Extra encoder builder arguments.
        command: Command line recorded in the Markdown report.

    Returns:
        The result rows.
    """
    if not isinstance(encoder, FeatureEncoder):
        encoder = load_encoder(encoder, weights, pool, model_kwargs)
    size = tile_size or encoder.img_size
    tiles = load_geotiff_tiles(
        data,
        size,
        stride,
        holdout_fraction,
        min_valid_fraction=min_valid_fraction,
        max_tiles=max_tiles,
    )
    rows = evaluate_retrieval(encoder, tiles, scales, batch_size, device)
    fig = plot_vs_scale(
        overall_rows(rows),
        'top1',
        ylabel='retrieval top-1',
        title='Cross-scale retrieval',
    )
    notes = (
        f'{len(tiles)} tiles of {size} px (stride {stride or size}); chance top-1 = '
        f'{1 / len(tiles):.4f}, chance mean rank = {(len(tiles) + 1) / 2:.1f}; pool={pool}.'
    )
    write_report(
        rows,
        output,
        'retrieval',
        'Cross-scale retrieval',
        fig,
        notes=notes,
        command=command,
    )
    return rows
