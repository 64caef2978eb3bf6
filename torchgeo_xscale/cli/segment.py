"""``xscale segment`` (GeoTIFF inference) and ``xscale scale-study`` (Table 4).

``xscale segment --checkpoint seg.ckpt --input big.tif --output mask.tif`` runs a
fine-tuned :class:`~torchgeo_xscale.tasks.segmentation.XScaleSegmentationTask`
checkpoint over a GeoTIFF of any size (:func:`~torchgeo_xscale.inference.
segment_geotiff`), with the normalisation and bands stored in the checkpoint.

``xscale scale-study --config configs/segmentation/potsdam.yaml --data.root DIR``
fine-tunes and tests at each scale ratio (default 25 / 50 / 100 %), or only tests a
given ``--checkpoint`` at each, and writes ``scale_study.csv``, ``scale_study.md``
(mIoU / OA beside the paper's Table 4, per-class IoU) and a prediction figure per scale.
Arguments it does not know go to the LightningCLI (``--trainer.max_epochs 50``...).
"""

import argparse
import csv
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import torch

from ..io import atomic_path

__all__ = (
    'TABLE4_MIOU',
    'choose_window',
    'scale_study_main',
    'segment_main',
    'write_scale_table',
)

#: The paper's Table 4: UPerNet mIoU of Cross-Scale MAE at 25 / 50 / 100 % scale.
TABLE4_MIOU: dict[str, dict[float, float]] = {
    'potsdam': {0.25: 0.7082, 0.5: 0.7225, 1.0: 0.7617},
    'vaihingen': {0.25: 0.7163, 0.5: 0.7354, 1.0: 0.7603},
}


def _load_task(checkpoint: str, device: torch.device) -> Any:
    """A fine-tuned segmentation task from a checkpoint, in eval mode on *device*.

    Raises:
        ValueError: If the file is not a checkpoint of
            :class:`~torchgeo_xscale.tasks.segmentation.XScaleSegmentationTask`
            (e.g. a pretraining checkpoint), naming what it is.
    """
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


def segment_main(argv: Sequence[str]) -> int:
    """``xscale segment``: sliding-window inference over a GeoTIFF.

    Args:
        argv: Arguments after ``segment``.

    Returns:
        Exit status.
    """
    parser = argparse.ArgumentParser(
        prog='xscale segment',
        description='Segment a GeoTIFF with a fine-tuned checkpoint; writes a tiled, '
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
        '--quiet', action='store_true', help='no progress bar and no summary line'
    )
    args = parser.parse_args(argv)

    import rasterio

    from ..inference import segment_geotiff

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
        stats = segment_geotiff(
            task.model,
            args.input,
            args.output,
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


def write_scale_table(
    rows: list[dict[str, Any]],
    output_dir: str | os.PathLike[str],
    dataset: str | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = None,
) -> tuple[str, str]:
    """Write the scale study's ``scale_study.csv`` and ``scale_study.md``.

    Args:
        rows: One per scale: ``scale``, ``miou``, ``overall_accuracy``, ``iou``
            (per-class list).
        output_dir: Folder to write into.
        dataset: ``potsdam`` or ``vaihingen`` to print the paper's Table 4 beside.
        class_names: Class names (default: indices).
        ignore_index: Class left out of mIoU (shown as ``-``).

    Returns:
        Paths of the CSV and Markdown files.
    """
    os.makedirs(output_dir, exist_ok=True)
    k = len(rows[0]['iou']) if rows else 0
    names = list(class_names or [str(i) for i in range(k)])
    csv_path = os.path.join(output_dir, 'scale_study.csv')
    with atomic_path(csv_path) as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                'scale',
                'miou',
                'overall_accuracy',
                *[f'iou_{n}' for n in names],
                'paper_miou',
            ]
        )
        for row in rows:
            paper = TABLE4_MIOU.get(dataset or '', {}).get(row['scale'], '')
            writer.writerow(
                [
                    row['scale'],
                    f'{row["miou"]:.4f}',
                    f'{row["overall_accuracy"]:.4f}',
                    *[f'{v:.4f}' for v in row['iou']],
                    paper,
                ]
            )
    scales = [row['scale'] for row in rows]
    head = '| | ' + ' | '.join(f'{100 * s:g} %' for s in scales) + ' |'
    rule = '|---|' + '---:|' * len(scales)
    lines = [
        f'# Scale study{f" ({dataset})" if dataset else ""}',
        '',
        '## mIoU (Table 4)',
        '',
        head,
        rule,
    ]
    lines.append(
        '| this run mIoU | ' + ' | '.join(f'{r["miou"]:.4f}' for r in rows) + ' |'
    )
    lines.append(
        '| this run OA | '
        + ' | '.join(f'{r["overall_accuracy"]:.4f}' for r in rows)
        + ' |'
    )
    if dataset in TABLE4_MIOU:
        published = TABLE4_MIOU[dataset]
        lines.append(
            '| paper mIoU (Cross-Scale MAE, Table 4) | '
            + ' | '.join(
                f'{published[s]:.4f}' if s in published else '-' for s in scales
            )
            + ' |'
        )
    lines += ['', '## IoU per class', '', head, rule]
    for i, name in enumerate(names):
        cells = ['-' if i == ignore_index else f'{r["iou"][i]:.4f}' for r in rows]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    if ignore_index is not None:
        lines += [
            '',
            f'Class {names[ignore_index]!r} (index {ignore_index}) is ignored in loss, mIoU and OA.',
        ]
    md_path = os.path.join(output_dir, 'scale_study.md')
    with atomic_path(md_path) as tmp, open(tmp, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return csv_path, md_path


def _dataset_name(datamodule: Any) -> str | None:
    name = type(datamodule).__name__.lower()
    return next((d for d in TABLE4_MIOU if d in name), None)


def scale_study_main(argv: Sequence[str]) -> int:
    """``xscale scale-study``: fine-tune/test at several scales, write Table 4.

    Args:
        argv: Arguments after ``scale-study``.

    Returns:
        Exit status.
    """
    parser = argparse.ArgumentParser(
        prog='xscale scale-study',
        description='Fine-tune and test (or only test --checkpoint) at each scale ratio; '
        'other arguments go to the LightningCLI (e.g. --data.root DIR).',
    )
    parser.add_argument('--config', required=True, help='segmentation config YAML')
    parser.add_argument('--scales', type=float, nargs='+', default=[0.25, 0.5, 1.0])
    parser.add_argument('--output', default='results/scale_study', help='output folder')
    parser.add_argument('--checkpoint', help='only test this checkpoint at each scale')
    args, rest = parser.parse_known_args(argv)
    for scale in args.scales:
        if not 0 < scale <= 1:
            parser.error(f'--scales {scale}: expected 0 < scale <= 1')

    from .lightning import lightning_cli

    rows: list[dict[str, Any]] = []
    dataset, names, ignore = None, None, None
    for scale in args.scales:
        run_dir = os.path.join(args.output, f'scale_{100 * scale:g}')
        cli = lightning_cli(
            [
                '--config',
                args.config,
                *rest,
                '--data.init_args.scale_ratio',
                str(scale),
                '--trainer.default_root_dir',
                run_dir,
            ],
            run=False,
        )
        trainer, task, datamodule = cli.trainer, cli.model, cli.datamodule
        ckpt_path = args.checkpoint
        if ckpt_path is None:
            trainer.fit(task, datamodule=datamodule)
            best = getattr(trainer.checkpoint_callback, 'best_model_path', '')
            ckpt_path = best or None
        metrics = trainer.test(task, datamodule=datamodule, ckpt_path=ckpt_path)[0]
        labels = task.hparams['labels'] or [
            str(i) for i in range(task.hparams['num_classes'])
        ]
        dataset, names, ignore = (
            _dataset_name(datamodule),
            labels,
            task.hparams['ignore_index'],
        )
        rows.append(
            {
                'scale': scale,
                'miou': metrics['test_AverageJaccardIndex'],
                'overall_accuracy': metrics['test_OverallAccuracy'],
                'iou': [
                    metrics.get(f'test_ClasswiseJaccardIndex_{n}', float('nan'))
                    for n in labels
                ],
                'checkpoint': ckpt_path,
            }
        )
        if task.last_figure:
            shutil.copyfile(
                task.last_figure,
                os.path.join(args.output, f'predictions_{100 * scale:g}.png'),
            )
    csv_path, md_path = write_scale_table(rows, args.output, dataset, names, ignore)
    with (
        atomic_path(os.path.join(args.output, 'scale_study.json')) as tmp,
        open(tmp, 'w') as f,
    ):
        json.dump(
            {
                'dataset': dataset,
                'classes': names,
                'ignore_index': ignore,
                'rows': rows,
            },
            f,
            indent=2,
        )
    with open(md_path) as f:
        sys.stdout.write(f.read())
    print(f'wrote {csv_path} and {md_path}')
    return 0


main = segment_main
