"""Reports of the evaluations: one CSV, one Markdown table and one plot per run.

Rows are flat dicts (one per model x scale x ...). Every file is written under a
temporary name and renamed into place (:func:`torchgeo_xscale.io.atomic_path`), so an
interrupted run never leaves a half-written report.
"""

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from ..io import atomic_path
from ..plotting import save_figure, to_display

__all__ = (
    'aggregate',
    'format_value',
    'markdown_table',
    'plot_reconstruction_scales',
    'plot_vs_scale',
    'write_csv',
    'write_report',
)

Row = Mapping[str, Any]


def format_value(value: Any, digits: int = 4) -> str:
    """Format one table cell (floats with *digits* significant digits).

    Args:
        value: The value.
        digits: Significant digits of floats.

    Returns:
        The text.
    """
    if isinstance(value, float):
        return 'nan' if math.isnan(value) else f'{value:.{digits}g}'
    return str(value)


def _columns(rows: Sequence[Row], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def write_csv(
    rows: Sequence[Row],
    path: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
) -> str:
    """Write rows as CSV, atomically.

    Args:
        rows: The rows.
        path: Destination.
        columns: Column order (default: order of first appearance).

    Returns:
        The path.
    """
    cols = _columns(rows, columns)
    with atomic_path(path) as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, '') for k in cols})
    return os.fspath(path)


def markdown_table(
    rows: Sequence[Row], columns: Sequence[str] | None = None, digits: int = 4
) -> str:
    """A GitHub Markdown table of the rows.

    Args:
        rows: The rows.
        columns: Column order (default: order of first appearance).
        digits: Significant digits of floats.

    Returns:
        The table, one line per row, ending in a newline.
    """
    cols = _columns(rows, columns)
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '|'.join('---' for _ in cols) + '|']
    for row in rows:
        lines.append(
            '| ' + ' | '.join(format_value(row.get(c, ''), digits) for c in cols) + ' |'
        )
    return '\n'.join(lines) + '\n'


def aggregate(
    rows: Iterable[Row], group_keys: Sequence[str], metric_keys: Sequence[str]
) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of metrics over rows sharing group keys.

    Args:
        rows: Rows (e.g. one per seed).
        group_keys: Keys identifying a group (e.g. ``model``, ``scale``).
        metric_keys: Numeric keys to summarise.

    Returns:
        One row per group, in order of first appearance, with ``<metric>`` (mean),
        ``<metric>_std`` (0 for a single row) and ``n``.
    """
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in group_keys), []).append(row)
    out = []
    for key, members in groups.items():
        summary: dict[str, Any] = dict(zip(group_keys, key))
        for metric in metric_keys:
            values = [float(r[metric]) for r in members if metric in r]
            mean = sum(values) / len(values) if values else math.nan
            var = (
                sum((v - mean) ** 2 for v in values) / (len(values) - 1)
                if len(values) > 1
                else 0.0
            )
            summary[metric] = mean
            summary[f'{metric}_std'] = math.sqrt(var)
        summary['n'] = len(members)
        out.append(summary)
    return out


def plot_vs_scale(
    rows: Sequence[Row],
    metric: str,
    group_key: str = 'model',
    scale_key: str = 'scale',
    ylabel: str | None = None,
    title: str | None = None,
) -> Figure:
    """A metric against scale ratio, one line per group (error bars from ``<metric>_std``).

    Args:
        rows: Rows with *scale_key*, *metric* and *group_key*.
        metric: Y values.
        group_key: One line per value of this key.
        scale_key: X values (scale ratio; drawn in percent on a log axis).
        ylabel: Y-axis label (default *metric*).
        title: Figure title.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    groups: dict[Any, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.get(group_key, ''), []).append(row)
    for name, members in groups.items():
        members = sorted(members, key=lambda r: float(r[scale_key]))
        xs = [100 * float(r[scale_key]) for r in members]
        ys = [float(r[metric]) for r in members]
        errs = [float(r.get(f'{metric}_std', 0.0)) for r in members]
        ax.errorbar(
            xs,
            ys,
            yerr=errs if any(errs) else None,
            marker='o',
            capsize=3,
            label=str(name),
        )
    ax.set_xscale('log', base=2)
    ticks = sorted({100 * float(r[scale_key]) for r in rows})
    ax.set_xticks(ticks, [f'{t:g}%' for t in ticks])
    ax.set_xlabel('scale ratio')
    ax.set_ylabel(ylabel or metric)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_reconstruction_scales(examples: Mapping[str, Mapping[float, Any]]) -> Figure:
    """Grid: one row per scale; input, masked input, then each model's reconstruction.

    Args:
        examples: ``{model: {scale: (3, C, S, S)}}`` from
            :func:`~.reconstruction.evaluate_reconstruction`.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    names = list(examples)
    scales = sorted(next(iter(examples.values())), reverse=True)
    cols = 2 + len(names)
    fig, axes = plt.subplots(
        len(scales), cols, figsize=(2.1 * cols, 2.1 * len(scales)), squeeze=False
    )
    for i, ratio in enumerate(scales):
        first = examples[names[0]][ratio]
        panels = [(first[0], f'input {100 * ratio:g}%'), (first[1], 'masked')]
        panels += [(examples[n][ratio][2], n) for n in names]
        for j, (image, title) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(to_display(image), cmap='gray')
            ax.set_axis_off()
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def write_report(
    rows: Sequence[Row],
    output: str | os.PathLike[str],
    name: str,
    title: str,
    figure: Figure | None = None,
    columns: Sequence[str] | None = None,
    notes: str = '',
    command: str = '',
) -> dict[str, str]:
    """Write ``<name>.csv``, ``<name>.md`` and ``<name>.png`` into *output*.

    Args:
        rows: Result rows.
        output: Folder (created).
        name: Base file name.
        title: Markdown heading.
        figure: Plot to save (closed afterwards); None writes no PNG.
        columns: Column order of CSV and table.
        notes: Markdown text placed under the table (settings...).
        command: Command line that made the results, shown under the notes.

    Returns:
        Paths written, keyed ``csv``, ``md`` and ``png``.
    """
    os.makedirs(output, exist_ok=True)
    paths = {'csv': write_csv(rows, os.path.join(output, f'{name}.csv'), columns)}
    text = f'# {title}\n\n' + markdown_table(rows, columns)
    if figure is not None:
        paths['png'] = save_figure(figure, os.path.join(output, f'{name}.png'))
        text += f'\n![{title}]({name}.png)\n'
    if command:
        notes = f'{notes.strip()}\n\n```\n{command}\n```'
    if notes:
        text += '\n' + notes.strip() + '\n'
    md = os.path.join(output, f'{name}.md')
    with atomic_path(md) as tmp, open(tmp, 'w') as f:
        f.write(text)
    paths['md'] = md
    return paths
