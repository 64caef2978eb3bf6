"""The scale-transfer protocol: fit on one scale level, test on each, end to end."""

import csv
import json
from pathlib import Path

import pytest
from rsscn7_layout import write_rsscn7

from torchgeo_xscale.cli import main
from torchgeo_xscale.evaluation.encoders import load_encoder
from torchgeo_xscale.evaluation.scale_transfer import (
    prepare_level_splits,
    run_scale_transfer,
    transfer_matrix,
    transfer_summary,
)

VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


@pytest.fixture(scope='module')
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rsscn7(tmp_path_factory.mktemp('levels') / 'RSSCN7')


def test_matrix_and_gap() -> None:
    rows = [
        {'train_level': i, 'test_level': j, 'top1': 1.0 if i == j else 0.5}
        for i in (1, 2)
        for j in (1, 2, 3)
    ]
    assert transfer_matrix(rows) == [
        {'train level': 1, 'test 1': 1.0, 'test 2': 0.5, 'test 3': 0.5},
        {'train level': 2, 'test 1': 0.5, 'test 2': 1.0, 'test 3': 0.5},
    ]
    assert transfer_summary(rows) == {'same_level': 1.0, 'cross_level': 0.5, 'gap': 0.5}


def test_xscale_eval_knn_scale_transfer_writes_the_table(
    root: Path, tmp_path: Path
) -> None:
    out = tmp_path / 'report'
    argv = ['eval', 'knn', '--encoder', 'tiny', '--model-kwargs', json.dumps(VIT)]
    argv += ['--dataset', 'rsscn7', '--root', str(root), '--protocol', 'scale-transfer']
    argv += ['--output', str(out), '--k', '5']
    assert main(argv) == 0
    with open(out / 'knn_scale_transfer_rsscn7.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [(r['train_level'], r['test_level']) for r in rows] == [
        (str(i), str(j)) for i in range(1, 5) for j in range(1, 5)
    ]
    assert all(r['n_train'] == r['n_test'] == str(7 * 4) for r in rows)
    same = [float(r['top1']) for r in rows if r['same_level'] == 'True']
    assert len(same) == 4 and all(0.0 <= v <= 1.0 for v in same)
    # the classes have distinct colours: even a random encoder beats chance (1/7)
    assert sum(same) / 4 > 2 / 7
    text = (out / 'knn_scale_transfer_rsscn7.md').read_text()
    assert '| train level | test 1 | test 2 | test 3 | test 4 |' in text
    assert '**gap' in text and 'xscale eval knn' in text
    assert (out / 'knn_scale_transfer_rsscn7.png').stat().st_size > 0


def test_linear_probe_on_chosen_levels(root: Path, tmp_path: Path) -> None:
    encoder = load_encoder('tiny', model_kwargs=VIT)
    rows = run_scale_transfer(
        encoder,
        'rsscn7',
        root,
        tmp_path,
        classifier='linear',
        train_levels=[1],
        test_levels=[1, 4],
        epochs=5,
    )
    assert [(r['train_level'], r['test_level'], r['same_level']) for r in rows] == [
        (1, 1, True),
        (1, 4, False),
    ]
    assert (tmp_path / 'linear_scale_transfer_rsscn7.md').is_file()


def test_bad_levels_and_datasets_fail_clearly(root: Path) -> None:
    with pytest.raises(ValueError, match=r'test_levels=\[5\]; expected levels among'):
        prepare_level_splits('rsscn7', root, 32, test_levels=[5])
    with pytest.raises(ValueError, match="dataset='resisc45' has no scale levels"):
        prepare_level_splits('resisc45', root, 32)
    with pytest.raises(
        ValueError, match=r'gives 3 bands; the encoder expects 4 \(in_channels\)'
    ):
        prepare_level_splits('rsscn7', root, 32, in_channels=4)
    with pytest.raises(ValueError, match=r'^in_chans was renamed in_channels'):
        prepare_level_splits('rsscn7', root, 32, in_chans=3)
