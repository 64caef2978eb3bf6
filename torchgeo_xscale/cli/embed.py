r"""``xscale embed``: per-tile embeddings of GeoTIFFs as GeoParquet.

A thin command over :func:`torchgeo_xscale.embed.embed_geotiffs`. Examples::

    xscale embed --encoder outputs/demo/checkpoints/last.ckpt \\
        --input data/example/rmnp-rgb.tif --output rmnp.parquet
    xscale embed --encoder CrossScaleMAEBase16_Weights.FMOW_RGB --input tiles/ \\
        --output tiles.parquet --raster tiles_pca.tif --pca 3
"""

import argparse
import logging
import sys
from collections.abc import Sequence

from .common import add_encoder_options, add_quiet, command_parser

__all__ = ('embed_parser', 'main')


def embed_parser() -> argparse.ArgumentParser:
    """The parser of ``xscale embed``.

    Returns:
        The parser (defaults shown in ``--help``).
    """
    parser = command_parser(
        'xscale embed',
        'Per-tile embeddings of GeoTIFFs as GeoParquet (one row per '
        'tile: polygon in the input CRS, centre lon/lat, GSD, source, embedding), '
        'optionally an embedding GeoTIFF at patch resolution.',
    )
    parser.add_argument(
        '--encoder',
        required=True,
        help='weights entry (CrossScaleMAEBase16_Weights.FMOW_RGB), checkpoint or '
        'weights file, or a model name (with --weights)',
    )
    parser.add_argument(
        '--weights', default=None, help='weights entry or file for a model name'
    )
    parser.add_argument(
        '--input',
        required=True,
        nargs='+',
        help='GeoTIFF file(s), folder(s) or glob(s), one CRS',
    )
    parser.add_argument('--output', required=True, help='GeoParquet file to write')
    parser.add_argument(
        '--raster',
        default=None,
        help='also write an embedding GeoTIFF at patch resolution (one input)',
    )
    parser.add_argument(
        '--pca',
        type=int,
        default=None,
        help='GeoTIFF bands: this many principal components (default: every channel)',
    )
    parser.add_argument(
        '--pca-fit-tiles',
        type=int,
        default=64,
        help='evenly spaced tiles whose patch tokens fit the PCA',
    )
    parser.add_argument(
        '--tile-size',
        type=int,
        default=None,
        help='tile side in input pixels (default: the encoder input size)',
    )
    parser.add_argument(
        '--stride',
        type=int,
        default=None,
        help='tile grid step in pixels (default: the tile size)',
    )
    parser.add_argument(
        '--batch-size', type=int, default=16, help='tiles per encoder call'
    )
    parser.add_argument(
        '--min-valid-fraction',
        type=float,
        default=0.5,
        help='skip tiles with a smaller share of valid (not nodata) pixels',
    )
    parser.add_argument(
        '--bands', nargs='+', default=None, help='1-based bands or band names to read'
    )
    parser.add_argument(
        '--mean',
        type=float,
        nargs='+',
        default=None,
        help='per-band mean of the raw values (default: weights entry transforms, '
        'else the inputs statistics)',
    )
    parser.add_argument(
        '--std', type=float, nargs='+', default=None, help='per-band std (with --mean)'
    )
    add_encoder_options(parser, 'embedding')
    parser.add_argument(
        '--timestamp',
        default=None,
        help='acquisition time of the inputs (ISO 8601, e.g. 2021-06-30T10:20:00Z); '
        "TorchGeo's EarthEmbeddings needs one",
    )
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda', 'cuda:1'...")
    add_quiet(parser, 'no progress bar')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xscale embed ...``.

    Args:
        argv: Arguments after ``embed`` (default ``sys.argv[2:]``).

    Returns:
        Exit status 0.
    """
    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    from ..embed import embed_geotiffs

    args = embed_parser().parse_args(list(sys.argv[2:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    result = embed_geotiffs(
        args.input,
        args.output,
        args.encoder,
        args.weights,
        tile_size=args.tile_size,
        stride=args.stride,
        batch_size=args.batch_size,
        min_valid_fraction=args.min_valid_fraction,
        bands=args.bands,
        mean=args.mean,
        std=args.std,
        pool=args.pool,
        model_kwargs=args.model_kwargs,
        raster=args.raster,
        pca=args.pca,
        pca_fit_tiles=args.pca_fit_tiles,
        timestamp=args.timestamp,
        device=args.device,
        progress=not args.quiet,
    )
    print(
        f'{result.written} of {result.tiles} tiles embedded ({result.skipped} skipped '
        f'below valid fraction {args.min_valid_fraction}), D={result.dim}, '
        f'normalisation: {result.normalization}'
    )
    print(f'GeoParquet written to {result.output}')
    if result.raster:
        print(f'embedding GeoTIFF written to {result.raster}')
    return 0
