"""``xscale scale-study``: fine-tune and test at each scale ratio (Table 4).

``xscale scale-study --config configs/segmentation/potsdam.yaml --data.root DIR``
fine-tunes and tests at each scale ratio (default 25 / 50 / 100 %), or only tests a
given ``--checkpoint`` at each, and writes ``scale_study.csv``, ``scale_study.md``
(mIoU / OA beside the paper's Table 4, per-class IoU), ``scale_study.json`` and a
prediction figure per scale.

With a datamodule of several native-GSD groups
(:class:`~torchgeo_xscale.datamodules.GeoTIFFSegmentationDataModule`,
``configs/segmentation/geotiff_folder.yaml``) the test runs once per group (the
datamodule's ``test_group``) and once over all groups pooled: the CSV and JSON have
a row per (group, scale) with the group's name and GSD (``all``: pooled), the
Markdown a section per group.
Arguments it does not know go to the LightningCLI (``--trainer.max_epochs 50``...).
"""

import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from ..evaluation.report import markdown_table, write_csv
from ..io import atomic_path
from .common import command_parser

__all__ = ('TABLE4_MIOU', 'main', 'write_scale_table')

#: The paper's Table 4: UPerNet mIoU of Cross-Scale MAE at 25 / 50 / 100 % scale.
TABLE4_MIOU: dict[str, dict[float, float]] = {
    'potsdam': {0.25: 0.7082, 0.5: 0.7225, 1.0: 0.7617},
    'vaihingen': {0.25: 0.7163, 0.5: 0.7354, 1.0: 0.7603},
}


def _tables(
    rows: Sequence[dict[str, Any]],
    names: Sequence[str],
    dataset: str | None,
    ignore_index: int | None,
    level: str = '##',
) -> list[str]:
    """The mIoU / OA table (with Table 4 for ISPRS) and the per-class IoU table."""
    published = TABLE4_MIOU.get(dataset or '', {})
    heads = [f'{100 * row["scale"]:g} %' for row in rows]

    def line(label: str, cells: Sequence[str]) -> dict[str, str]:
        return {'': label, **dict(zip(heads, cells))}

    miou = [
        line('this run mIoU', [f'{r["miou"]:.4f}' for r in rows]),
        line('this run OA', [f'{r["overall_accuracy"]:.4f}' for r in rows]),
    ]
    if dataset in TABLE4_MIOU:
        miou.append(
            line(
                'paper mIoU (Cross-Scale MAE, Table 4)',
                [
                    f'{published[r["scale"]]:.4f}' if r['scale'] in published else '-'
                    for r in rows
                ],
            )
        )
    iou = [
        line(name, ['-' if i == ignore_index else f'{r["iou"][i]:.4f}' for r in rows])
        for i, name in enumerate(names)
    ]
    title = '(Table 4)' if dataset in TABLE4_MIOU or level == '##' else ''
    return [
        f'{level} mIoU {title}'.rstrip(),
        '',
        markdown_table(miou, ['', *heads]),
        f'{level} IoU per class',
        '',
        markdown_table(iou, ['', *heads]),
    ]


def write_scale_table(
    rows: list[dict[str, Any]],
    output_dir: str | os.PathLike[str],
    dataset: str | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = None,
) -> tuple[str, str]:
    """Write the scale study's ``scale_study.csv`` and ``scale_study.md``.

    Built on :mod:`torchgeo_xscale.evaluation.report`: the CSV has one row per scale
    (per group and scale when the rows have a ``group``), the Markdown one column
    per scale (mIoU and OA beside the paper's Table 4, then the IoU of each class),
    in a section per group when the rows have one (``all``: every group pooled).

    Args:
        rows: One per scale (or per group and scale): ``scale``, ``miou``,
            ``overall_accuracy``, ``iou`` (per-class list), optionally ``group``
            (a name, ``all`` for every group pooled) and ``gsd`` (metres per pixel).
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
    published = TABLE4_MIOU.get(dataset or '', {})
    grouped = any('group' in row for row in rows)
    csv_rows = [
        {
            **(
                {
                    'group': row.get('group', 'all'),
                    'gsd': f'{row["gsd"]:.6g}' if row.get('gsd') else '',
                }
                if grouped
                else {}
            ),
            'scale': row['scale'],
            'miou': f'{row["miou"]:.4f}',
            'overall_accuracy': f'{row["overall_accuracy"]:.4f}',
            **{f'iou_{n}': f'{v:.4f}' for n, v in zip(names, row['iou'])},
            'paper_miou': published.get(row['scale'], ''),
        }
        for row in rows
    ]
    columns = ['scale', 'miou', 'overall_accuracy', *[f'iou_{n}' for n in names]]
    if grouped:
        columns = ['group', 'gsd', *columns]
    csv_path = write_csv(
        csv_rows, os.path.join(output_dir, 'scale_study.csv'), [*columns, 'paper_miou']
    )
    text = [f'# Scale study{f" ({dataset})" if dataset else ""}', '']
    if not grouped:
        text += _tables(rows, names, dataset, ignore_index)
    for group in dict.fromkeys(row.get('group', 'all') for row in rows if grouped):
        members = [r for r in rows if r.get('group', 'all') == group]
        gsd = members[0].get('gsd')
        if group == 'all':
            text += ['## All groups pooled', '']
        else:
            text += [f'## Group {group}' + (f' (GSD {gsd:.3g} m)' if gsd else ''), '']
        text += _tables(members, names, dataset, ignore_index, '###')
    if ignore_index is not None:
        text.append(
            f'Class {names[ignore_index]!r} (index {ignore_index}) is ignored in loss, '
            'mIoU and OA.\n'
        )
    md_path = os.path.join(output_dir, 'scale_study.md')
    with atomic_path(md_path) as tmp, open(tmp, 'w') as f:
        f.write('\n'.join(text))
    return csv_path, md_path


def _dataset_name(datamodule: Any) -> str | None:
    name = type(datamodule).__name__.lower()
    return next((d for d in TABLE4_MIOU if d in name), None)


def _test_per_group(
    trainer: Any, task: Any, datamodule: Any, ckpt_path: str | None
) -> list[tuple[str | None, float | None, dict[str, float]]]:
    """Test metrics over all test tiles, and per GSD group when the datamodule has groups.

    A datamodule with groups (``group_info()`` and ``test_group``, e.g.
    :class:`~torchgeo_xscale.datamodules.GeoTIFFSegmentationDataModule`) is tested
    once per group with its test set restricted to that group (``test_group = i``),
    then once with every group pooled (``test_group = None``; with one group its
    metrics are that group's): each ``trainer.test`` computes the task's metrics
    as usual, so nothing in the task depends on groups. The pooled test runs last,
    so the task's last figure is of the pooled test tiles.

    Args:
        trainer: The Lightning trainer.
        task: The segmentation task.
        datamodule: The datamodule.
        ckpt_path: Checkpoint to test (None: the task's weights).

    Returns:
        ``(group, gsd, metrics)``: ``('all', None, ...)`` first and then one per group
        (finest first), or only ``(None, None, ...)`` for a datamodule without groups.
    """
    if not (hasattr(datamodule, 'group_info') and hasattr(datamodule, 'test_group')):
        metrics = trainer.test(task, datamodule=datamodule, ckpt_path=ckpt_path)[0]
        return [(None, None, metrics)]
    per_group: list[tuple[str | None, float | None, dict[str, float]]] = []
    groups = datamodule.group_info()
    for index, (name, gsd) in enumerate(groups):
        if len(groups) > 1:
            datamodule.test_group = index
        metrics = trainer.test(task, datamodule=datamodule, ckpt_path=ckpt_path)[0]
        per_group.append((name, gsd, metrics))
    datamodule.test_group = None
    pooled = per_group[0][2]
    if len(groups) > 1:
        pooled = trainer.test(task, datamodule=datamodule, ckpt_path=ckpt_path)[0]
    return [('all', None, pooled), *per_group]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xscale scale-study``: fine-tune/test at several scales, write Table 4.

    Args:
        argv: Arguments after ``scale-study`` (default ``sys.argv[2:]``).

    Returns:
        Exit status 0.
    """
    parser = command_parser(
        'xscale scale-study',
        'Fine-tune and test (or only test --checkpoint) at each scale ratio; '
        'other arguments go to the LightningCLI (e.g. --data.root DIR).',
    )
    parser.add_argument('--config', required=True, help='segmentation config YAML')
    parser.add_argument('--scales', type=float, nargs='+', default=[0.25, 0.5, 1.0])
    parser.add_argument('--output', default='results/scale_study', help='output folder')
    parser.add_argument('--checkpoint', help='only test this checkpoint at each scale')
    args, rest = parser.parse_known_args(list(sys.argv[2:] if argv is None else argv))
    for scale in args.scales:
        if not 0 < scale <= 1:
            parser.error(f'--scales {scale}: expected 0 < scale <= 1')

    # deferred: `xscale --help` imports every command module, so each
    # command imports what it runs only when it runs
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
        labels = task.hparams['labels'] or [
            str(i) for i in range(task.hparams['num_classes'])
        ]
        dataset, names, ignore = (
            _dataset_name(datamodule),
            labels,
            task.hparams['ignore_index'],
        )
        for group, gsd, metrics in _test_per_group(
            trainer, task, datamodule, ckpt_path
        ):
            rows.append(
                {
                    **({} if group is None else {'group': group, 'gsd': gsd}),
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
