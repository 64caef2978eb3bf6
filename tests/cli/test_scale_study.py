"""``xscale scale-study`` (cli/scale_study.py) per GSD group: the grouped tables, and
the shipped ``geotiff_folder.yaml`` end to end on labelled rasters at three GSDs."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from labelled_layout import GROUPS, NUM_CLASSES, make_labelled_folder

from torchgeo_xscale.cli import main as xscale
from torchgeo_xscale.cli.scale_study import write_scale_table

CONFIG = Path(__file__).parents[2] / 'configs' / 'segmentation' / 'geotiff_folder.yaml'


def test_write_scale_table_per_group(tmp_path: Path) -> None:
    rows = [
        {
            'group': group,
            'gsd': gsd,
            'scale': scale,
            'miou': 0.5 + scale / 10 + (gsd or 0) / 100,
            'overall_accuracy': 0.8,
            'iou': [0.1, 0.2],
        }
        for scale in (0.5, 1.0)
        for group, gsd in (('all', None), ('EPSG:32632 0.25 m', 0.25), ('X 10 m', 10.0))
    ]
    csv_path, md_path = write_scale_table(rows, tmp_path, None, ['a', 'b'])
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    assert [(r['group'], r['gsd'], r['scale']) for r in table[:3]] == [
        ('all', '', '0.5'),
        ('EPSG:32632 0.25 m', '0.25', '0.5'),
        ('X 10 m', '10', '0.5'),
    ]
    assert table[5]['miou'] == '0.7000' and table[5]['iou_b'] == '0.2000'
    text = Path(md_path).read_text()
    sections = [line for line in text.splitlines() if line.startswith('## ')]
    assert sections == [
        '## All groups pooled',
        '## Group EPSG:32632 0.25 m (GSD 0.25 m)',
        '## Group X 10 m (GSD 10 m)',
    ]
    assert text.count('| 50 % | 100 % |') == 6 and 'Table 4' not in text


@pytest.mark.slow
def test_scale_study_on_a_labelled_folder_reports_every_group(
    tmp_path: Path,
    encoder_weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shipped config; only sizes, epochs, the tiny backbone and offline weights."""
    folder = make_labelled_folder(tmp_path / 'labelled')
    monkeypatch.chdir(tmp_path)  # the config's statistics cache: data/stats
    out = tmp_path / 'study'
    args = ['scale-study', '--config', str(CONFIG), '--scales', '0.5', '1.0']
    args += ['--output', str(out)]
    args += ['--data.init_args.images', str(folder / 'images')]
    args += ['--data.init_args.masks', str(folder / 'masks')]
    args += ['--data.init_args.num_classes', str(NUM_CLASSES)]
    args += ['--model.init_args.num_classes', str(NUM_CLASSES)]
    args += ['--data.init_args.patch_size', '32', '--data.init_args.batch_size', '4']
    args += ['--data.init_args.num_workers', '1']
    args += ['--model.init_args.backbone', 'xscale_vit_tiny']
    args += [
        '--model.init_args.backbone_options',
        '{embed_dim: 32, vit_depth: 2, num_heads: 2, img_size: 32}',
    ]
    args += [
        '--model.init_args.decoder_channels',
        '32',
        '--model.init_args.plot_tiles',
        '1',
    ]
    args += ['--model.init_args.weights', str(encoder_weights)]
    args += ['--trainer.max_epochs', '1', '--trainer.precision', '32-true']
    args += ['--trainer.accelerator', 'cpu', '--trainer.enable_progress_bar', 'false']
    assert xscale(args) == 0
    with open(out / 'scale_study.csv') as f:
        rows = list(csv.DictReader(f))
    expected = [(g, s) for s in ('0.5', '1.0') for g in ('all', *GROUPS)]
    assert [(r['group'], r['scale']) for r in rows] == expected
    for row in rows:
        assert 0 <= float(row['miou']) <= 1 and math.isfinite(float(row['miou']))
        assert row['paper_miou'] == ''
    assert [float(r['gsd']) for r in rows[1:4]] == pytest.approx([0.25, 10, 940], 0.01)
    for at in (rows[:4], rows[4:]):  # 3 test tiles of 32 x 32 px in every group
        pooled, *groups = (float(r['overall_accuracy']) for r in at)
        assert pooled == pytest.approx(sum(groups) / 3, abs=2e-4)
    report = json.loads((out / 'scale_study.json').read_text())
    assert len(report['rows']) == 8 and report['dataset'] is None
    text = (out / 'scale_study.md').read_text()
    assert '## All groups pooled' in text and '## Group EPSG:4326 940 m' in text
    assert 'Table 4' not in text
    assert {p.name for p in out.glob('predictions_*.png')} == {
        'predictions_50.png',
        'predictions_100.png',
    }
    ckpt = next((out / 'scale_100').rglob('*.ckpt'))
    gsd = torch.load(ckpt, weights_only=False)['xscale_gsd']
    assert gsd['min'] == pytest.approx(0.25) and gsd['max'] > 900  # every group
