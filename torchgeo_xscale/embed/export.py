""":func:`embed_geotiffs`: encoder, normalisation, tiles, GeoParquet and GeoTIFF.

See :mod:`torchgeo_xscale.embed` for the file layout and the choices made.
"""

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import rasterio
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..datasets.rasters import (
    RasterInputError,
    resolve_raster_paths,
    validate_rasters,
)
from ..datasets.stats import compute_band_stats
from ..evaluation.encoders import FeatureEncoder, Pool, load_encoder
from ..io import atomic_path
from ..progress import progress_bar
from .geoparquet import GeoParquetWriter
from .raster import EmbeddingRasterWriter, fit_pca, open_embedding_raster, patch_valid
from .tiles import Tile, grid_shape, kept, tile_batches

__all__ = ('FORMAT_VERSION', 'EmbedResult', 'embed_geotiffs', 'load_embedding_encoder')

#: Version of the ``xscale`` metadata of the GeoParquet file.
FORMAT_VERSION = 1


@dataclass
class EmbedResult:
    """What :func:`embed_geotiffs` wrote.

    Attributes:
        output: The GeoParquet file.
        raster: The embedding GeoTIFF, or None.
        tiles: Tiles in the grids of all inputs.
        written: Rows written (tiles kept).
        skipped: Tiles skipped for their valid fraction.
        dim: Embedding length D.
        normalization: ``mean/std``, ``weights transforms`` or ``input statistics``.
        files: The input files, in order.
    """

    output: str
    raster: str | None
    tiles: int
    written: int
    skipped: int
    dim: int
    normalization: str
    files: list[str] = field(default_factory=list)


def _entry(name: str | None) -> Any:
    """The TorchGeo weights entry called *name*, or None (files, model names)."""
    if not name or os.path.isfile(name) or '.' not in name:
        return None
    from torchgeo.models import get_weight

    try:
        return get_weight(name)
    except (KeyError, ValueError):
        return None


def _model_for_entry(entry: Any) -> str:
    """The registered TorchGeo model whose weights enum holds *entry*."""
    from torchgeo.models import get_model_weights, list_models

    for name in list_models():
        try:
            if get_model_weights(name) is type(entry):
                return name
        except (KeyError, ValueError):
            continue
    raise ValueError(f'weights entry {entry} belongs to no registered model')


def load_embedding_encoder(
    encoder: str | os.PathLike[str] | nn.Module,
    weights: str | None = None,
    pool: Pool = 'mean',
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[FeatureEncoder, Any]:
    """The frozen encoder (:func:`~torchgeo_xscale.evaluation.load_encoder`) and its entry.

    Args:
        encoder: A weights entry name such as ``CrossScaleMAEBase16_Weights.FMOW_RGB``
            (built with the model TorchGeo registers for it), a checkpoint or
            weights file, a model name (with *weights*), or a module.
        weights: Weights entry name or file for a model name.
        pool: ``mean`` of patch tokens or ``cls``.
        model_kwargs: Extra builder arguments (``img_size``...).

    Returns:
        The encoder, and the TorchGeo weights entry it came from (or None).
    """
    entry = None
    if not isinstance(encoder, nn.Module):
        entry = _entry(os.fspath(encoder))
        if entry is not None:
            encoder, weights = _model_for_entry(entry), str(entry)
        else:
            entry = _entry(weights)
    feature_encoder = load_encoder(encoder, weights, pool, model_kwargs)
    if entry is not None:
        feature_encoder.name = str(entry)
    return feature_encoder, entry


def _normalization(
    files: Sequence[str],
    bands: Sequence[int],
    entry: Any,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> tuple[Callable[[Tensor], Tensor], str, dict[str, Any]]:
    """The normalisation of raw ``(B, C, H, W)`` tiles, its source, what to record."""
    if (mean is None) != (std is None):
        raise ValueError(f'mean={mean}, std={std}; expected both or neither')
    transforms = getattr(entry, 'transforms', None)
    if mean is None and transforms is not None:
        return transforms, 'weights transforms', {'entry': str(entry)}
    source = 'mean/std'
    if mean is None or std is None:
        mean, std = compute_band_stats(files, list(bands))
        source = 'input statistics'
    for name, value in (('mean', mean), ('std', std)):
        if len(value) != len(bands):
            msg = (
                f'{name} has {len(value)} values; expected {len(bands)} (one per band)'
            )
            raise ValueError(msg)
    if min(std) <= 0:
        raise ValueError(f'std={list(std)}; expected values > 0')
    shift = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    scale = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def normalize(x: Tensor) -> Tensor:
        return (x - shift.to(x)) / scale.to(x)

    return normalize, source, {'mean': list(mean), 'std': list(std)}


class _Encode:
    """Normalise, resize and encode batches of tiles."""

    def __init__(
        self,
        encoder: FeatureEncoder,
        normalize: Callable[[Tensor], Tensor],
        tile_size: int,
        device: str | torch.device,
    ) -> None:
        self.encoder = encoder
        self.normalize = normalize
        self.size = encoder.img_size
        self.ratio = encoder.img_size / tile_size
        self.device = device

    def __call__(
        self, tiles: Sequence[Tile], maps: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``(B, D)`` features and, if *maps*, the ``(B, D, g, g)`` patch maps."""
        x = self.normalize(torch.stack([t.image for t in tiles]).to(self.device))
        valid = torch.stack([t.valid for t in tiles]).to(self.device)
        x = torch.where(valid[:, None], x, 0.0)
        if x.shape[-1] != self.size:
            size = (self.size, self.size)
            x = F.interpolate(
                x, size=size, mode='bilinear', align_corners=False, antialias=True
            )
        gsd = torch.tensor([t.gsd for t in tiles], device=x.device)
        if maps:
            return self.encoder.forward_with_maps(x, self.ratio, gsd)
        return self.encoder(x, self.ratio, gsd), None


def _pca_tokens(
    source: str,
    encode: _Encode,
    bands: Sequence[int],
    size: int,
    stride: int,
    fit_tiles: int,
    min_valid_fraction: float,
    grid: int,
) -> Tensor:
    """Valid patch tokens ``(N, D)`` of up to *fit_tiles* evenly spaced grid tiles."""
    rows, cols = grid_shape(source, size, stride)
    n = rows * cols
    picks = {
        round(i * (n - 1) / max(1, fit_tiles - 1)) for i in range(min(n, fit_tiles))
    }
    tokens = []
    for _, batch in tile_batches(source, bands, size, stride, 16, picks):
        keep = kept(batch, min_valid_fraction)
        if keep:
            _, maps = encode(keep, True)
            assert maps is not None
            ok = patch_valid(torch.stack([t.valid for t in keep]), grid)
            tokens.append(maps.float().cpu().permute(0, 2, 3, 1)[ok])
    if not tokens:
        msg = f'{source}: no tile with valid fraction >= {min_valid_fraction} to fit the PCA on'
        raise RasterInputError(msg)
    return torch.cat(tokens)


@contextlib.contextmanager
def _raster(
    path: str | os.PathLike[str] | None,
    source: str,
    encode: _Encode,
    bands: Sequence[int],
    size: int,
    stride: int,
    pca: int | None,
    fit_tiles: int,
    min_valid_fraction: float,
    meta: dict[str, Any],
) -> Iterator[EmbeddingRasterWriter | None]:
    """The embedding GeoTIFF writer of *source* (the PCA fit first), or None."""
    if path is None:
        yield None
        return
    probe = torch.zeros(1, len(bands), encode.size, encode.size, device=encode.device)
    _, maps = encode.encoder.forward_with_maps(probe)
    name = os.fspath(path)
    if maps is None:
        msg = f'raster={name!r}: encoder {encode.encoder.name} gives one vector per image; expected patch tokens'
        raise ValueError(msg)
    grid, dim = int(maps.shape[-1]), int(maps.shape[1])
    cell = max(1, size // grid)
    if size % grid or stride % cell:
        msg = (
            f'raster={name!r}: tile_size={size} and stride={stride} must be multiples '
            f'of the patch cell (tile_size / {grid} patches); expected e.g. '
            f'tile_size={grid * cell} and a stride that is a multiple of {cell}'
        )
        raise ValueError(msg)
    projection = None
    if pca is not None:
        tokens = _pca_tokens(
            source, encode, bands, size, stride, fit_tiles, min_valid_fraction, grid
        )
        projection = fit_pca(tokens, pca)
    count = dim if pca is None else pca
    tags = {**meta, 'source': source, 'dim': dim}
    with open_embedding_raster(
        path, source, count, grid, cell, stride, projection, tags
    ) as writer:
        yield writer


def _check_inputs(files: Sequence[str], raster: Any, pca: int | None) -> Any:
    """The inputs' common CRS; raise if they differ or *raster* has several inputs."""
    crs_list = []
    for path in files:
        with rasterio.open(path) as src:
            crs_list.append(src.crs)
    for path, crs in zip(files, crs_list):
        if crs != crs_list[0]:
            msg = (
                f'{path}: CRS {crs} differs from {crs_list[0]} of {files[0]}; expected '
                'one CRS per output file (run xscale embed once per CRS)'
            )
            raise RasterInputError(msg)
    if raster is not None and len(files) != 1:
        msg = f'raster={os.fspath(raster)!r} with {len(files)} inputs; expected one input file (the GeoTIFF is on its grid)'
        raise ValueError(msg)
    if pca is not None and raster is None:
        raise ValueError(f'pca={pca} without raster; the PCA sets the GeoTIFF bands')
    return crs_list[0]


def _timestamp(value: str | None) -> Any:
    """*value* (ISO 8601; UTC if it has no zone) as an aware datetime, or None."""
    if value is None:
        return None
    import pandas as pd

    try:
        stamp = pd.Timestamp(value)
    except ValueError as err:
        msg = f'timestamp={value!r} cannot be parsed; expected ISO 8601, e.g. 2021-06-30T10:20:00Z'
        raise ValueError(msg) from err
    utc = stamp.tz_localize('UTC') if stamp.tzinfo is None else stamp.tz_convert('UTC')
    return utc.to_pydatetime()


def _embed_files(
    files: Sequence[str],
    bands: Sequence[int],
    size: int,
    stride: int,
    batch_size: int,
    min_valid_fraction: float,
    encode: _Encode,
    parquet: GeoParquetWriter,
    sink: EmbeddingRasterWriter | None,
    bar: Any,
) -> int:
    """Encode every kept tile of *files* into *parquet* (and *sink*); count skips."""
    skipped = 0
    for path in files:
        for seen, batch in tile_batches(path, bands, size, stride, batch_size):
            keep = kept(batch, min_valid_fraction)
            skipped += seen - len(keep)
            bar.update(seen)
            if not keep:
                continue
            features, maps = encode(keep, sink is not None)
            parquet.add(path, keep, features, size)
            if sink is not None and maps is not None:
                valid = torch.stack([t.valid for t in keep])
                sink.add([t.row for t in keep], [t.col for t in keep], maps, valid)
    if not parquet.rows and not parquet.written:
        where = files[0] if len(files) == 1 else list(files)
        msg = (
            f'{where}: no tile of {size} px has a valid fraction >= '
            f'{min_valid_fraction}; expected some data (lower min_valid_fraction?)'
        )
        raise RasterInputError(msg)
    return skipped


@torch.no_grad()
def embed_geotiffs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    encoder: str | os.PathLike[str] | nn.Module | FeatureEncoder,
    weights: str | None = None,
    *,
    tile_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    min_valid_fraction: float = 0.5,
    bands: Sequence[int | str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pool: Pool = 'mean',
    model_kwargs: dict[str, Any] | None = None,
    raster: str | os.PathLike[str] | None = None,
    pca: int | None = None,
    pca_fit_tiles: int = 64,
    timestamp: str | None = None,
    device: str | torch.device = 'cpu',
    progress: bool = True,
    gdal_cache_mb: int = 64,
) -> EmbedResult:
    """Embed every tile of GeoTIFFs into a GeoParquet file (see :mod:`torchgeo_xscale.embed`).

    Args:
        inputs: GeoTIFF file(s), folder(s) or glob(s), all in one CRS.
        output: GeoParquet file to write.
        encoder: Weights entry name, checkpoint/weights file, model name (with
            *weights*), module, or a loaded :class:`FeatureEncoder`.
        weights: Weights entry or file for a model name (for a loaded encoder, an
            entry name whose ``transforms`` normalise the tiles).
        tile_size: Tile side in input pixels (default: the encoder's input size).
        stride: Grid step in pixels (default *tile_size*: no overlap).
        batch_size: Tiles per encoder call.
        min_valid_fraction: Tiles with a smaller share of valid pixels are skipped.
        bands: 1-based band numbers or descriptions to read (default all).
        mean: Per-band mean of the raw values (with *std*; wins over the rest).
        std: Per-band standard deviation.
        pool: ``mean`` of patch tokens or ``cls`` (the ``embedding`` column).
        model_kwargs: Extra encoder builder arguments.
        raster: Also write the patch-resolution embedding GeoTIFF (one input only).
        pca: Bands of that GeoTIFF: K principal components (None: every channel).
        pca_fit_tiles: Tiles (evenly spaced over the grid) that fit the PCA.
        timestamp: Acquisition time of the inputs (ISO 8601; UTC if no zone).
        device: Where the encoder runs.
        progress: Show a progress bar (tqdm, on stderr).
        gdal_cache_mb: GDAL block cache while reading and writing.

    Returns:
        What was written.

    Raises:
        ValueError: If an argument is invalid (the message names it).
        RasterInputError: If an input is unusable or no tile has enough data.
    """
    if isinstance(encoder, FeatureEncoder):
        feature_encoder, entry = encoder, _entry(weights)
    else:
        feature_encoder, entry = load_embedding_encoder(
            encoder, weights, pool, model_kwargs
        )
    feature_encoder = feature_encoder.to(device)
    size = int(tile_size or feature_encoder.img_size)
    step = int(stride or size)
    problems = {
        'tile_size': (size, size >= 1, '>= 1'),
        'stride': (step, step >= 1, '>= 1'),
        'batch_size': (batch_size, batch_size >= 1, '>= 1'),
        'min_valid_fraction': (min_valid_fraction, 0 <= min_valid_fraction <= 1, 'in [0, 1]'),
        'pca': (pca, pca is None or pca >= 1, 'None or >= 1'),
        'pca_fit_tiles': (pca_fit_tiles, pca_fit_tiles >= 1, '>= 1'),
    }  # fmt: skip
    for name, (value, ok, expected) in problems.items():
        if not ok:
            raise ValueError(f'{name}={value!r}; expected {expected}')
    # one GDAL block cache bound for everything read and written, statistics too
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_mb * 2**20):
        stamp = _timestamp(timestamp)
        files = resolve_raster_paths(inputs)
        count, indexes, _ = validate_rasters(files, bands, feature_encoder.in_chans)
        band_list = list(indexes or range(1, count + 1))
        crs = _check_inputs(files, raster, pca)
        normalize, source, norm_info = _normalization(
            files, band_list, entry, mean, std
        )
        encode = _Encode(feature_encoder, normalize, size, device)
        total = sum(math.prod(grid_shape(f, size, step)) for f in files)
        meta = {
            'format_version': FORMAT_VERSION,
            'encoder': feature_encoder.name,
            'weights': weights if entry is None else str(entry),
            'pool': pool,
            'tile_size': size,
            'stride': step,
            'input_size': feature_encoder.img_size,
            'min_valid_fraction': min_valid_fraction,
            'bands': band_list,
            'normalization': {'source': source, **norm_info},
            'grid': 'TorchGeo GriddedPatchSampler: offsets i * stride from the top-left',
        }
        bar = progress_bar(
            total=total, unit='tile', desc='embed', disable=not progress, leave=True
        )
        with atomic_path(output, '.parquet') as tmp, bar:
            parquet = GeoParquetWriter(tmp, crs, meta, stamp)
            try:
                with _raster(
                    raster, files[0], encode, band_list, size, step, pca, pca_fit_tiles,
                    min_valid_fraction, meta,
                ) as sink:  # fmt: skip
                    skipped = _embed_files(
                        files, band_list, size, step, batch_size, min_valid_fraction,
                        encode, parquet, sink, bar,
                    )  # fmt: skip
            except BaseException:
                parquet.abort()
                raise
            parquet.close()
    return EmbedResult(
        output=os.fspath(output),
        raster=None if raster is None else os.fspath(raster),
        tiles=total,
        written=parquet.written,
        skipped=skipped,
        dim=parquet.dim,
        normalization=source,
        files=list(files),
    )
