"""``xscale demo``: the shipped config's model, an honest summary, its config saved."""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from torchgeo_xscale.cli import lightning_cli, main
from torchgeo_xscale.config import TINY_CONFIG
from torchgeo_xscale.demo import demo_config


@pytest.fixture(scope='module')
def capped(
    example_rgb: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """``xscale demo`` as shipped, with a 1 s cap that 1000 steps cannot meet."""
    out = tmp_path_factory.mktemp('demo')
    args = ['demo', '--data', str(example_rgb.parent), '--output', str(out)]
    args += ['--steps', '1000', '--max-minutes', '0.01', '--batch-size', '4']
    assert main(args) == 0
    summary = json.loads((out / 'summary.json').read_text())
    return {'out': out, 'summary': summary}


@pytest.mark.slow
def test_summary_says_the_time_cap_stopped_it(capped: dict[str, Any]) -> None:
    """Today the demo stops at its cap silently and still claims ``loss_fell``."""
    summary = capped['summary']
    assert summary['stopped'] == 'time cap'
    assert summary['time_cap'] == '00:00:00:01'
    assert 1 <= summary['steps_done'] < summary['steps_planned'] == 1000
    assert summary['loss_fell'] is None  # not claimed for a run cut short
    assert 'stopped at the time cap' in summary['verdict']
    assert f'after {summary["steps_done"]} of 1000 steps' in summary['verdict']
    markdown = (capped['out'] / 'summary.md').read_text()
    assert summary['verdict'] in markdown and '| stopped | time cap |' in markdown


@pytest.mark.slow
def test_figures_and_retrieval_of_both_encoders(capped: dict[str, Any]) -> None:
    out, summary = capped['out'], capped['summary']
    for name in ('reconstruction', 'reconstruction_scene', 'retrieval', 'loss_curve'):
        path = Path(summary['files'][name])
        assert path == out / f'{name}.png'
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    retrieval = summary['retrieval']
    assert retrieval['scale'] == 0.25 and retrieval['tiles'] >= 20
    assert retrieval['chance_top1'] == round(1 / retrieval['tiles'], 4)
    for name in ('trained', 'untrained'):
        assert 0 <= retrieval[f'{name}_top1'] <= 1
        assert 1 <= retrieval[f'{name}_mean_rank'] <= retrieval['tiles']
    # two scenes at two GSDs, scored within each (the other's tiles are easy)
    groups = retrieval['groups']
    assert (
        len(groups) == 2
        and sum(g['tiles'] for g in groups.values()) == retrieval['tiles']
    )
    assert [name.split()[-2] for name in groups] == ['26.1', '146']
    for g in groups.values():
        assert g['chance_top1'] == round(1 / g['tiles'], 4)
        assert 0 <= g['trained_top1'] <= 1 and 0 <= g['untrained_top1'] <= 1
    scene = summary['scene_reconstruction']  # the held-out strips, non-overlapping
    assert 1 <= scene['tiles'] < retrieval['tiles']
    assert scene['model_masked_mse'] > 0 and scene['baseline_masked_mse'] > 0
    assert list(scene['groups']) == list(groups)
    assert sum(g['tiles'] for g in scene['groups'].values()) == scene['tiles']
    markdown = (out / 'summary.md').read_text()
    assert '| baseline_masked_mse |' in markdown and 'Per scene' in markdown
    assert (
        yaml.safe_load((out / 'config.yaml').read_text())['data']['init_args'][
            'group_sampling'
        ]
        == 'equal'
    )


@pytest.mark.slow
def test_saved_config_recreates_the_model(capped: dict[str, Any]) -> None:
    """``config.yaml`` is a LightningCLI config of the run: the same model, its
    weights load strictly, and its model section is the shipped config's."""
    out = capped['out']
    saved = yaml.safe_load((out / 'config.yaml').read_text())
    shipped = yaml.safe_load(TINY_CONFIG.read_text())
    assert saved['model'] == shipped['model']
    cli = lightning_cli(['--config', str(out / 'config.yaml')], run=False)
    ckpt = torch.load(
        out / 'checkpoints' / 'last.ckpt', map_location='cpu', weights_only=False
    )
    assert ckpt['global_step'] == capped['summary']['steps_done']
    # LightningCLI adds its own _class_path / _instantiator entries, and gives
    # sequences as lists where the demo's task kept its tuple defaults
    hparams = {k: v for k, v in cli.model.hparams.items() if not k.startswith('_')}
    assert json.loads(json.dumps(hparams)) == json.loads(
        json.dumps(dict(ckpt['hyper_parameters']))
    )
    cli.model.load_state_dict(ckpt['state_dict'], strict=True)
    assert cli.datamodule.img_size == cli.model.hparams['img_size']
    assert cli.trainer.max_steps == 1000


def test_demo_config_plans_epochs_for_the_warmup(tmp_path: Path) -> None:
    """The task's warm-up is in epochs: the demo sets ``max_epochs`` so that one
    warm-up epoch is one data epoch (today the whole run was warm-up)."""
    config = demo_config('a.tif', tmp_path, steps=120, max_minutes=2.5, batch_size=16)
    data, trainer = config['data']['init_args'], config['trainer']
    assert data['paths'] == ['a.tif'] and data['batch_size'] == 16
    assert data['img_size'] == config['model']['init_args']['img_size']
    per_epoch = data['length'] // 16
    assert trainer['max_epochs'] == math.ceil(120 / per_epoch)
    assert (trainer['max_steps'], trainer['max_time']) == (120, '00:00:02:30')
    (checkpoint,) = trainer['callbacks']
    assert checkpoint['init_args']['dirpath'] == str(tmp_path / 'checkpoints')


def test_demo_config_draws_several_scenes_equally(tmp_path: Path) -> None:
    """With several rasters the small scene is drawn as often as the large one,
    unless the config says otherwise."""
    config = demo_config([Path('a.tif'), 'b.tif'], tmp_path)
    data = config['data']['init_args']
    assert data['paths'] == ['a.tif', 'b.tif'] and data['group_sampling'] == 'equal'
    assert 'group_sampling' not in demo_config('a.tif', tmp_path)['data']['init_args']
    shipped = yaml.safe_load(TINY_CONFIG.read_text())
    shipped['data']['init_args']['group_sampling'] = 'area'
    path = tmp_path / 'area.yaml'
    path.write_text(yaml.safe_dump(shipped))
    config = demo_config(['a.tif', 'b.tif'], tmp_path, path)
    assert config['data']['init_args']['group_sampling'] == 'area'


def test_demo_config_refuses_a_drifted_view_size(tmp_path: Path) -> None:
    shipped = yaml.safe_load(TINY_CONFIG.read_text())
    shipped['data']['init_args']['img_size'] = 32
    path = tmp_path / 'drift.yaml'
    path.write_text(yaml.safe_dump(shipped))
    with pytest.raises(ValueError, match=r'data.init_args.img_size=32 but model'):
        demo_config('a.tif', tmp_path, path)
    with pytest.raises(ValueError, match=r'^steps=0; expected >= 1$'):
        demo_config('a.tif', tmp_path, steps=0)


def test_demo_help_is_plain_text_with_defaults(capsys: pytest.CaptureFixture) -> None:
    """Today ``xscale demo --help`` prints the module's reStructuredText."""
    with pytest.raises(SystemExit) as exit_info:
        main(['demo', '--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert 'usage: xscale demo' in text and 'earthpy' in text
    assert '``' not in text and ':func:' not in text and ':data:' not in text
    assert '(default: 560)' in text and '(default: 7.0)' in text
