"""``--ckpt_path`` that contradicts the command line stops in one line (never trains
the checkpoint's model instead of the requested one); checkpoints of another task or
size are refused when loaded."""

from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, write_geotiff
from lightning.pytorch import Trainer

from torchgeo_xscale.cli import main as xscale
from torchgeo_xscale.datamodules import GeoTIFFDataModule
from torchgeo_xscale.tasks import CrossScaleMAETask

CONFIG = Path(__file__).parents[2] / 'configs' / 'pretrain' / 'xscale_tiny_geotiff.yaml'
TINY = [arg for k, v in TINY_MODEL.items() for arg in (f'--model.{k}', str(v))]


def _fit_args(data: Path, run: Path, steps: int, *extra: str) -> list[str]:
    """The shipped tiny config, at test size (model, tiles, steps)."""
    return [
        'fit',
        '--config',
        str(CONFIG),
        '--data.paths',
        str(data),
        '--data.img_size',
        '32',
        '--data.patch_size',
        '32',
        '--data.batch_size',
        '2',
        '--data.length',
        '4',
        '--data.stats_cache',
        str(data.parent / 'stats'),
        '--trainer.max_steps',
        str(steps),
        '--trainer.limit_val_batches',
        '0',
        '--trainer.enable_progress_bar',
        'false',
        '--trainer.accelerator',
        'cpu',
        '--trainer.default_root_dir',
        str(run),
        *TINY,
        *extra,
    ]


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder, last.ckpt) of one step of ``xscale fit`` with the tiny config."""
    root = tmp_path_factory.mktemp('pretrain')
    write_geotiff(root / 'data' / 'a.tif', width=96, height=96)
    assert xscale(_fit_args(root / 'data', root / 'run', 1)) == 0
    return root / 'data', next((root / 'run').rglob('last.ckpt'))


def _resume(pretrained: tuple[Path, Path], run: Path, ckpt: Path, *extra: str) -> int:
    data, _ = pretrained
    return xscale([*_fit_args(data, run, 2, *extra), '--ckpt_path', str(ckpt)])


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines, 'no error printed'
    return lines[-1]


def test_other_model_size_is_refused(pretrained, tmp_path: Path, capsys) -> None:
    ckpt = pretrained[1]
    code = _resume(pretrained, tmp_path / 'run', ckpt, '--model.embed_dim', '48')
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith(f'xscale: error: --ckpt_path {ckpt}: ')
    assert 'embed_dim=32 in the checkpoint, 48 requested' in line
    assert f'--model.init_args.weights {ckpt} instead of --ckpt_path' in line
    assert not list((tmp_path / 'run').rglob('*.ckpt'))  # nothing was trained


def test_other_band_count_is_refused(pretrained, tmp_path: Path, capsys) -> None:
    code = _resume(
        pretrained, tmp_path / 'run', pretrained[1], '--model.in_channels', '4'
    )
    assert code == 2
    assert 'in_channels=3 in the checkpoint, 4 requested' in _error_line(capsys)


def test_other_task_class_is_refused(
    pretrained, segmentation_ckpt: Path, tmp_path: Path, capsys
) -> None:
    """A segmentation checkpoint given to pretraining (Lightning would build the
    segmentation task from its hyper-parameters)."""
    assert _resume(pretrained, tmp_path / 'run', segmentation_ckpt) == 2
    line = _error_line(capsys)
    assert line == (
        f'xscale: error: --ckpt_path {segmentation_ckpt} is a checkpoint of '
        'torchgeo_xscale.tasks.XScaleSegmentationTask; the command line '
        'asks for torchgeo_xscale.tasks.CrossScaleMAETask: use the checkpoint with '
        'the config of its own run (the config.yaml saved in its log folder), or give '
        'a checkpoint of CrossScaleMAETask'
    )


def test_matching_resume_keeps_requested_run_settings(
    pretrained, tmp_path: Path
) -> None:
    """Same model: resumes; a run setting given on the command line is kept."""
    run = tmp_path / 'run'
    extra = ('--model.log_image_every_n_steps', '1')
    assert _resume(pretrained, run, pretrained[1], *extra) == 0
    state = torch.load(next(run.rglob('last.ckpt')), weights_only=False)
    assert state['global_step'] == 2
    assert state['hyper_parameters']['log_image_every_n_steps'] == 1
    assert state['hyper_parameters']['embed_dim'] == 32
    assert list(run.rglob('reconstructions/step_0000001.png'))


def test_python_resume_of_other_size_or_task_is_one_line(
    pretrained, segmentation_ckpt: Path, tmp_path: Path
) -> None:
    """``Trainer.fit(task, ckpt_path=...)`` outside the CLI: the task's
    on_load_checkpoint names the checkpoint and the differing hyper-parameters."""
    data, ckpt = pretrained
    datamodule = GeoTIFFDataModule(
        data, img_size=32, batch_size=2, length=4, stats_cache=None
    )
    trainer = Trainer(
        max_steps=2,
        accelerator='cpu',
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    bigger = CrossScaleMAETask(**{**TINY_MODEL, 'embed_dim': 48})
    with pytest.raises(ValueError) as info:
        trainer.fit(bigger, datamodule=datamodule, ckpt_path=str(ckpt))
    message = str(info.value)
    assert '\n' not in message
    assert message.startswith(
        f'--ckpt_path {ckpt} does not fit this CrossScaleMAETask: '
    )
    assert 'embed_dim=32 in the checkpoint, 48 requested' in message
    with pytest.raises(
        ValueError, match=r'is a checkpoint of .*XScaleSegmentationTask'
    ):
        trainer.fit(
            CrossScaleMAETask(**TINY_MODEL),
            datamodule=datamodule,
            ckpt_path=str(segmentation_ckpt),
        )
