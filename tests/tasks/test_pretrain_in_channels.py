"""``CrossScaleMAETask`` takes the band count as ``in_channels`` (TorchGeo's name,
as ``torchgeo.tasks.MAE`` and our segmentation task); ``in_chans`` is refused in one
line naming the new key; checkpoints written before the rename still load."""

from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_MODEL, tiny_fit_args, write_geotiff

from torchgeo_xscale.cli import lightning_cli, main
from torchgeo_xscale.datamodules import GeoTIFFDataModule
from torchgeo_xscale.tasks import CrossScaleMAETask

CONFIGS = Path(__file__).parents[2] / 'configs'


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert '\n' not in text
    return text


def test_in_chans_is_refused_in_python() -> None:
    with pytest.raises(ValueError, match='in_chans was renamed in_channels') as err:
        CrossScaleMAETask(**TINY_MODEL, in_chans=4)
    assert 'in_channels=4' in _one_line(err)
    assert CrossScaleMAETask(**TINY_MODEL, in_channels=4).model.in_chans == 4


def test_shipped_configs_use_in_channels() -> None:
    for path in sorted(CONFIGS.rglob('*.yaml')):
        model = yaml.safe_load(path.read_text()).get('model') or {}
        args = model.get('init_args') or {}
        assert 'in_chans' not in args, path
        if model.get('class_path', '').endswith('CrossScaleMAETask'):
            assert 'in_channels' in args, path


def test_in_chans_is_refused_on_the_command_line_and_in_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_geotiff(tmp_path / 'data' / 'a.tif', width=64, height=64)
    args = tiny_fit_args(tmp_path / 'data', tmp_path / 'run', TINY_MODEL)[1:]
    with pytest.raises(ValueError, match='in_chans was renamed in_channels') as err:
        lightning_cli([*args, '--model.init_args.in_chans', '3'], run=False)
    assert '--model.init_args.in_channels 3' in _one_line(err)
    config = yaml.safe_load(
        (CONFIGS / 'pretrain' / 'xscale_tiny_geotiff.yaml').read_text()
    )
    init = config['model']['init_args']
    init['in_chans'] = init.pop('in_channels')
    path = tmp_path / 'old.yaml'
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match='in_chans was renamed in_channels'):
        lightning_cli(['--config', str(path), *args], run=False)
    # as a user runs it: one line on stderr, exit status 2
    assert main(['fit', '--config', str(path), *args]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith('xscale: error: in_chans was renamed in_channels')
    )


def test_checkpoint_from_before_the_rename(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    """A checkpoint storing ``in_chans``: ``--ckpt_path`` maps it with a warning;
    ``load_from_checkpoint`` says what to pass and loads with it."""
    write_geotiff(tmp_path / 'data' / 'a.tif', width=64, height=64)
    fit = tiny_fit_args(
        tmp_path / 'data',
        tmp_path / 'run',
        TINY_MODEL,
        '--trainer.enable_checkpointing',
        'true',
    )
    assert main(fit) == 0
    new = next((tmp_path / 'run').rglob('*.ckpt'))
    checkpoint = torch.load(new, weights_only=True)
    hparams = checkpoint['hyper_parameters']
    assert hparams['in_channels'] == 3 and hparams['in_chans'] is None
    hparams['in_chans'] = hparams.pop('in_channels')  # as written before the rename
    # Our datamodules save no hyper-parameters (Lightning writes none for them);
    # a datamodule that did, before the rename, stored in_chans too
    assert 'datamodule_hyper_parameters' not in checkpoint
    checkpoint['datamodule_hyper_parameters'] = {
        'paths': str(tmp_path / 'data'),
        'img_size': 32,
        'stats_cache': None,
        'in_chans': 3,
    }
    old = tmp_path / 'old.ckpt'
    torch.save(checkpoint, old)

    with pytest.raises(ValueError, match='in_chans=None, in_channels=3'):
        CrossScaleMAETask.load_from_checkpoint(old)
    task = CrossScaleMAETask.load_from_checkpoint(old, in_chans=None, in_channels=3)
    assert task.hparams['in_channels'] == 3

    resume = tiny_fit_args(tmp_path / 'data', tmp_path / 'resumed', TINY_MODEL)
    assert main([*resume, '--ckpt_path', str(old)]) == 0  # at max_steps already
    assert any('in_chans=3' in str(w.message) for w in recwarn)
    # Lightning's CLI builds the datamodule from the command line, never from the
    # checkpoint's datamodule_hyper_parameters; load_from_checkpoint reads them
    recwarn.clear()
    datamodule = GeoTIFFDataModule.load_from_checkpoint(old)
    assert datamodule.kwargs['in_channels'] == 3 and datamodule.img_size == 32
    assert [
        str(w.message) for w in recwarn if 'GeoTIFFDataModule' in str(w.message)
    ] == [
        'GeoTIFFDataModule.load_from_checkpoint: the checkpoint stores in_chans=3 '
        '(written before in_chans was renamed in_channels); read as in_channels=3'
    ]
    recwarn.clear()
    with old.open('rb') as f:  # a file object too, with an override (no warning)
        datamodule = GeoTIFFDataModule.load_from_checkpoint(f, in_channels=4)
    assert datamodule.kwargs['in_channels'] == 4
    assert not [w for w in recwarn if 'in_chans' in str(w.message)]
