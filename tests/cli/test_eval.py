import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgeo_xscale.cli import COMMANDS, main
from torchgeo_xscale.models import build_vit

VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


def fake_resisc45(root: Path) -> Path:
    names: dict[str, list[str]] = {'train': [], 'val': [], 'test': []}
    for c, cls in enumerate(('beach', 'forest')):
        (root / 'NWPU-RESISC45' / cls).mkdir(parents=True)
        for i in range(4):
            rng = np.random.default_rng(10 * c + i)
            image = np.clip(rng.normal(60 + 120 * c, 10, (40, 40, 3)), 0, 255).astype(
                np.uint8
            )
            Image.fromarray(image).save(
                root / 'NWPU-RESISC45' / cls / f'{cls}_{i:03d}.jpg'
            )
            names[('train', 'train', 'val', 'test')[i]].append(f'{cls}_{i:03d}.jpg')
    for split, files in names.items():
        (root / f'resisc45-{split}.txt').write_text('\n'.join(files))
    return root


def fake_ucmerced(root: Path) -> Path:
    folder_names: dict[str, list[str]] = {'train': [], 'val': [], 'test': []}
    for c, cls in enumerate(('agricultural', 'river')):
        folder = root / 'UCMerced_LandUse' / 'Images' / cls
        folder.mkdir(parents=True)
        for i in range(3):
            rng = np.random.default_rng(10 * c + i)
            image = np.clip(rng.normal(60 + 120 * c, 10, (32, 32, 3)), 0, 255).astype(
                np.uint8
            )
            Image.fromarray(image).save(folder / f'{cls}{i:02d}.tif')
            folder_names[('train', 'val', 'test')[i]].append(f'{cls}{i:02d}.tif')
    for split, files in folder_names.items():
        (root / f'uc_merced-{split}.txt').write_text('\n'.join(files))
    return root


@pytest.fixture
def checkpoints(trained):
    """The session's trained checkpoints (conftest.trained)."""
    return trained


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_subcommands_registered() -> None:
    assert COMMANDS['eval'][0] == 'torchgeo_xscale.cli.eval'
    assert COMMANDS['study'][0] == 'torchgeo_xscale.cli.study'


def test_eval_knn_with_builder_name_and_weights(checkpoints, tmp_path) -> None:
    root = fake_resisc45(tmp_path / 'resisc45')
    out = tmp_path / 'knn'
    argv = [
        'eval',
        'knn',
        '--encoder',
        'crossscalemae_base_patch16',
        '--weights',
        str(checkpoints['cross_scale_mae']),
        '--model-kwargs',
        json.dumps({'img_size': 32}),
        '--dataset',
        'resisc45',
        '--root',
        str(root),
        '--output',
        str(out),
        '--k',
        '3',
    ]
    assert main(argv) == 0
    rows = read_csv(out / 'knn_resisc45.csv')
    assert [float(r['scale']) for r in rows] == [0.125, 0.25, 0.5, 1.0]
    assert all(0.0 <= float(r['top1']) <= 1.0 and r['n_test'] == '2' for r in rows)
    text = (out / 'knn_resisc45.md').read_text()
    assert 'xscale eval knn --encoder crossscalemae_base_patch16' in text
    assert (out / 'knn_resisc45.png').stat().st_size > 0


def test_eval_linear_on_ucmerced(tmp_path) -> None:
    vit = build_vit('tiny', **VIT)
    torch.save(vit.state_dict(), tmp_path / 'enc.pth')
    out = tmp_path / 'linear'
    argv = [
        'eval',
        'linear',
        '--encoder',
        'tiny',
        '--weights',
        str(tmp_path / 'enc.pth'),
        '--model-kwargs',
        json.dumps(VIT),
        '--dataset',
        'ucmerced',
        '--root',
        str(fake_ucmerced(tmp_path / 'uc')),
        '--output',
        str(out),
        '--scales',
        '0.5',
        '1',
        '--epochs',
        '5',
        '--split',
        'val',
        '--pool',
        'cls',
    ]
    assert main(argv) == 0
    rows = read_csv(out / 'linear_ucmerced.csv')
    assert [float(r['scale']) for r in rows] == [0.5, 1.0] and all(
        'top5' in r for r in rows
    )


def test_eval_retrieval_and_reconstruction(checkpoints, tmp_path) -> None:
    out = tmp_path / 'retrieval'
    argv = [
        'eval',
        'retrieval',
        '--encoder',
        str(checkpoints['cross_scale_mae']),
        '--data',
        str(checkpoints['raster']),
        '--stride',
        '16',
        '--output',
        str(out),
    ]
    assert main(argv) == 0
    rows = read_csv(out / 'retrieval.csv')
    assert (
        len(rows) == 4 and rows[-1]['top1'] == '1.0' and rows[-1]['n'] == '25'
    )  # 5 x 5 tiles
    out = tmp_path / 'reconstruction'
    argv = [
        'eval',
        'reconstruction',
        '--model',
        str(checkpoints['cross_scale_mae']),
        '--model',
        str(checkpoints['torchgeo_mae']),
        '--data',
        str(checkpoints['raster']),
        '--output',
        str(out),
        '--scales',
        '0.25',
        '1',
        '--repeats',
        '1',
        '--mode',
        'crop',
    ]
    assert main(argv) == 0
    rows = read_csv(out / 'reconstruction.csv')
    assert {r['model'] for r in rows} == {'cross_scale_mae.ckpt', 'torchgeo_mae.ckpt'}
    assert all(float(r['mse']) >= 0 and -1 <= float(r['ssim']) <= 1 for r in rows)
    assert (out / 'reconstruction_grid.png').stat().st_size > 0


def test_eval_errors(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as err:
        main(
            [
                'eval',
                'knn',
                '--encoder',
                'tiny',
                '--dataset',
                'mnist',
                '--root',
                str(tmp_path),
            ]
        )
    assert err.value.code == 2 and 'mnist' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['eval', 'segmentation'])
    with pytest.raises(ValueError, match='not a file'):
        main(['eval', 'retrieval', '--encoder', 'nope_xyz', '--data', str(tmp_path)])


def test_study_help(capsys) -> None:
    with pytest.raises(SystemExit) as err:
        main(['study', '--help'])
    assert err.value.code == 0
    assert '--seeds' in capsys.readouterr().out


@pytest.mark.slow
def test_console_entry_runs_retrieval(checkpoints, tmp_path) -> None:
    out = tmp_path / 'r'
    command = [
        sys.executable,
        '-m',
        'torchgeo_xscale',
        'eval',
        'retrieval',
        '--encoder',
        'tiny',
        '--model-kwargs',
        json.dumps(VIT),
        '--data',
        str(checkpoints['raster']),
        '--output',
        str(out),
        '--scales',
        '1',
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        '| model | scale | top1 |' in result.stdout and (out / 'retrieval.md').exists()
    )
