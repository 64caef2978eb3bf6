"""``xscale segment``: sliding-window inference of a GeoTIFF of any size.

``xscale segment --checkpoint seg.ckpt --input big.tif --output mask.tif`` runs a
fine-tuned :class:`~torchgeo_xscale.tasks.segmentation.XScaleSegmentationTask`
checkpoint over a GeoTIFF (:func:`~torchgeo_xscale.inference.segment_geotiff`),
with the normalisation and bands stored in the checkpoint, and shows a progress
bar of the windows on stderr (``--quiet``: none).
"""

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from .common import add_quiet, command_parser

__all__ = ('choose_window', 'main', 'segment_parser')


def _load_task(checkpoint: str, device: torch.device) -> Any:
    """A fine-tuned segmentation task from a checkpoint, in eval mode on *device*.

    Raises:
        ValueError: If the file is not a checkpoint of
            :class:`~torchgeo_xscale.tasks.segmentation.XScaleSegmentationTask`
            (e.g. a pretraining checkpoint), naming what it is.
    """
    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    from ..tasks import CrossScaleMAETask
    from ..tasks.checkpoint import load_checkpoint, same_class, task_class_path
    from ..tasks.segmentation import XScaleSegmentationTask

    state = load_checkpoint(checkpoint)
    if 'state_dict' not in state or 'hyper_parameters' not in state:
        msg = (
            f'--checkpoint {checkpoint}: not a Lightning checkpoint (no state_dict / '
            'hyper_parameters, e.g. a weights file); expected a checkpoint of '
            'XScaleSegmentationTask (xscale fit --config configs/segmentation/...)'
        )
        raise ValueError(msg)
    written_by = task_class_path(state, (XScaleSegmentationTask, CrossScaleMAETask))
    if written_by is None or not same_class(written_by, XScaleSegmentationTask):
        what = written_by or 'another task'
        if written_by and same_class(written_by, CrossScaleMAETask):
            what += ' (Cross-Scale MAE pretraining)'
        msg = (
            f'--checkpoint {checkpoint}: a checkpoint of {what}; expected a checkpoint '
            'of XScaleSegmentationTask (fine-tune one with xscale fit --config '
            'configs/segmentation/<dataset>.yaml)'
        )
        raise ValueError(msg)
    del state
    task = XScaleSegmentationTask.load_from_checkpoint(
        checkpoint, map_location=device, weights_only=True
    )
    return task.eval().to(device)


def choose_window(
    requested: int | None,
    crop: int | Sequence[int] | None,
    stride: int,
    chunk_size: int,
    height: int,
    width: int,
    default: int = 512,
) -> tuple[int, str | None]:
    """The sliding window of ``xscale segment``, and why it differs from the crop.

    An explicit *requested* window is used as given. Otherwise the training crop
    (*crop*, from the checkpoint) is used when it fits; when it does not — not a
    multiple of the encoder's *stride*, larger than *chunk_size*, or larger than the
    raster — the largest window that fits is used instead and a one-line note says so.

    Args:
        requested: ``--window`` (None: not given).
        crop: The checkpoint's training crop (``patch_size``), or None.
        stride: The encoder's output stride (windows are multiples of it).
        chunk_size: ``--chunk-size``.
        height: Raster rows.
        width: Raster columns.
        default: Window when the checkpoint has no crop.

    Returns:
        The window and a note (None when the training crop is used unchanged).

    Raises:
        ValueError: If *requested* is not a multiple of *stride*.
    """
    if requested is not None:
        if requested % stride:
            raise ValueError(f'--window {requested}: expected a multiple of {stride}')
        return requested, None
    if isinstance(crop, Sequence):
        crop = min(crop)
    window = int(crop) if crop else default
    reasons = [] if crop else ['the checkpoint stores no training crop']
    if window % stride:
        window = max(stride, window // stride * stride)
        reasons.append(f'it is not a multiple of the encoder stride {stride}')
    if window > chunk_size:
        window = max(stride, chunk_size // stride * stride)
        reasons.append(f'it is larger than --chunk-size {chunk_size}')
    fit = -(-max(height, width) // stride) * stride
    if window > fit:
        window = fit
        reasons.append(f'it is larger than the raster ({width} x {height} px)')
    if not reasons:
        return window, None
    what = f'the training crop of {crop} px' if crop else f'the default {default} px'
    note = (
        f'{what} does not fit ({"; ".join(reasons)}): using a {window} px window '
        '(--window sets it)'
    )
    return window, note


def segment_parser() -> argparse.ArgumentParser:
    """The parser of ``xscale segment``.

    Returns:
        The parser (defaults shown in ``--help``).
    """
    parser = command_parser(
        'xscale segment',
        'Segment a GeoTIFF with a fine-tuned checkpoint; writes a tiled, '
        'compressed class GeoTIFF on the input grid (255 = no data).',
    )
    parser.add_argument('--checkpoint', required=True, help='segmentation .ckpt')
    parser.add_argument('--input', required=True, help='input GeoTIFF')
    parser.add_argument('--output', required=True, help='class GeoTIFF to write')
    parser.add_argument('--probabilities', help='optional K-band probability GeoTIFF')
    parser.add_argument(
        '--window', type=int, help='window size (default: training crop)'
    )
    parser.add_argument(
        '--overlap', type=float, default=0.25, help='window overlap fraction'
    )
    parser.add_argument('--batch-size', type=int, default=4, help='windows per batch')
    parser.add_argument(
        '--chunk-size', type=int, default=2048, help='pixels per chunk side'
    )
    parser.add_argument('--bands', type=int, nargs='+', help='1-based input bands')
    parser.add_argument(
        '--mean', type=float, nargs='+', help='per-band mean (raw units)'
    )
    parser.add_argument('--std', type=float, nargs='+', help='per-band std (raw units)')
    parser.add_argument(
        '--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:1'..."
    )
    parser.add_argument('--compress', default='deflate', help='GeoTIFF compression')
    parser.add_argument(
        '--gdal-cache-mb', type=int, default=64, help='GDAL block cache while running'
    )
    parser.add_argument(
        '--gsd',
        default='auto',
        help="GSD to segment at: 'auto' (the model's training GSD when the checkpoint "
        "records it, else native), 'native', or metres per pixel; the outputs are "
        "on the input's grid",
    )
    add_quiet(parser, 'no progress bar and no summary line')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xscale segment``: sliding-window inference over a GeoTIFF.

    Args:
        argv: Arguments after ``segment`` (default ``sys.argv[2:]``).

    Returns:
        Exit status 0 (argument errors exit with status 2, naming the argument).
    """
    parser = segment_parser()
    args = parser.parse_args(list(sys.argv[2:] if argv is None else argv))

    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    import rasterio

    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
    from ..segment_gsd import parse_gsd, plan_gsd, segment_at_gsd

    try:
        parse_gsd(args.gsd)
    except ValueError as err:
        parser.error(str(err))

    device = torch.device(
        ('cuda' if torch.cuda.is_available() else 'cpu')
        if args.device == 'auto'
        else args.device
    )
    for name in ('checkpoint', 'input'):
        if not os.path.isfile(getattr(args, name)):
            parser.error(f'--{name} {getattr(args, name)}: no such file')
    try:
        task = _load_task(args.checkpoint, device)
    except ValueError as err:
        parser.error(str(err))
    meta = task.segmentation_meta
    in_channels = int(task.hparams['in_channels'])
    bands = args.bands
    if bands is None and meta.get('bands') is not None:
        bands = [b + 1 for b in meta['bands']]
    with rasterio.open(args.input) as src:
        count, height, width = src.count, src.height, src.width
    try:
        plan = plan_gsd(args.gsd, args.input, task.checkpoint_gsd)
    except ValueError as err:
        parser.error(str(err))
    print(f'xscale segment: {plan.message}', file=sys.stderr)
    height, width = plan.shape(height, width)
    if bands is None:
        if count < in_channels:
            parser.error(
                f'--input {args.input} has {count} bands; the model needs {in_channels}'
            )
        bands = list(range(1, in_channels + 1))
    if len(bands) != in_channels:
        parser.error(f'--bands {bands}: the model needs {in_channels} bands')
    stride = getattr(getattr(task.model, 'encoder', None), 'output_stride', 32)
    try:
        window, note = choose_window(
            args.window,
            meta.get('patch_size'),
            stride,
            args.chunk_size,
            height,
            width,
        )
    except ValueError as err:
        parser.error(str(err))
    if note:
        print(f'xscale segment: {note}', file=sys.stderr)
    try:
        stats = segment_at_gsd(
            task.model,
            args.input,
            args.output,
            plan,
            window=int(window),
            overlap=args.overlap,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            bands=bands,
            mean=args.mean or meta.get('mean', 0.0),
            std=args.std or meta.get('std', 255.0),
            device=device,
            probabilities_path=args.probabilities,
            class_names=meta.get('classes') or task.hparams['labels'],
            colormap=meta.get('colormap') or task.colormap(),
            compress=args.compress,
            gdal_cache_mb=args.gdal_cache_mb,
            progress=not args.quiet,
        )
    except ValueError as err:
        parser.error(str(err))
    if not args.quiet:
        print(
            f'{args.output}: {stats.width}x{stats.height} px, {stats.num_classes} '
            f'classes, {stats.windows_run} windows run ({stats.windows} in the grid), '
            f'{stats.chunks} chunks'
        )
    return 0
