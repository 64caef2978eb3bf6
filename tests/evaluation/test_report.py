"""Reports (evaluation/report.py): CSV, Markdown, aggregation."""

import math
import os
from pathlib import Path

import pytest

from torchgeo_xscale.evaluation.report import aggregate, markdown_table, write_report


def test_report_files_and_aggregate(tmp_path) -> None:
    rows = [
        {'model': 'a', 'scale': s, 'top1': t, 'seed': i}
        for i, (s, t) in enumerate([(0.5, 0.2), (1.0, 0.4), (0.5, 0.4), (1.0, 0.6)])
    ]
    summary = aggregate(rows, ('model', 'scale'), ('top1',))
    assert summary[0]['top1'] == pytest.approx(0.3) and summary[0][
        'top1_std'
    ] == pytest.approx(math.sqrt(0.02))
    assert summary[0]['n'] == 2
    from torchgeo_xscale.evaluation.report import plot_vs_scale

    paths = write_report(
        summary,
        tmp_path / 'out',
        'knn_x',
        'Title',
        plot_vs_scale(summary, 'top1'),
        notes='cmd',
    )
    assert set(paths) == {'csv', 'md', 'png'} and all(
        os.path.getsize(p) > 0 for p in paths.values()
    )
    text = Path(paths['md']).read_text()
    assert (
        text.startswith('# Title')
        and '| model | scale | top1 |' in text
        and 'knn_x.png' in text
    )
    assert markdown_table([{'a': 1.23456789}]).splitlines()[2] == '| 1.235 |'
    assert not [
        f for f in os.listdir(tmp_path / 'out') if f.startswith('.')
    ]  # no temporaries
