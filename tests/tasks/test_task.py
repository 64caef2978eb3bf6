import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_MODEL
from lightning.pytorch import Trainer

from torchgeo_xscale.checkpoints import resolve
from torchgeo_xscale.cli import main
from torchgeo_xscale.tasks import CrossScaleMAETask
from torchgeo_xscale.tasks.pretrain import warmup_cosine

TINY = TINY_MODEL


def write_config(path: Path, rasters: Path, **model) -> Path:
    config = {
        'model': {
            'class_path': 'torchgeo_xscale.tasks.CrossScaleMAETask',
            'init_args': {
                **TINY,
                'warmup_epochs': 1,
                'log_image_every_n_steps': 2,
                **model,
            },
        },
        'data': {
            'class_path': 'torchgeo_xscale.datamodules.GeoTIFFDataModule',
            'init_args': {
                'paths': str(rasters),
                'img_size': 32,
                'patch_size': 32,
                'batch_size': 4,
                'length': 8,
            },
        },
        'trainer': {
            'accelerator': 'cpu',
            'devices': 1,
            'max_epochs': 2,
            'log_every_n_steps': 1,
            'limit_val_batches': 1,
            'enable_progress_bar': False,
            'callbacks': [
                {
                    'class_path': 'lightning.pytorch.callbacks.ModelCheckpoint',
                    'init_args': {'save_last': True, 'save_top_k': 1},
                }
            ],
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_warmup_cosine() -> None:
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.5))
    )
    assert warmup_cosine(200, 10, 100) == pytest.approx(0.0)


def test_xscale_fit_then_resume(tmp_path: Path, make_geotiff) -> None:
    """End to end through the CLI on a generated GeoTIFF, then resume from its checkpoint."""
    make_geotiff(tmp_path / 'rasters' / 'a.tif', width=96, height=96)
    config = write_config(tmp_path / 'config.yaml', tmp_path / 'rasters')
    root = tmp_path / 'run'
    main(['fit', '--config', str(config), '--trainer.default_root_dir', str(root)])
    ckpt = next(root.rglob('last.ckpt'))
    state = torch.load(ckpt, weights_only=False)
    assert state['global_step'] == 4
    assert any(
        k.startswith('model.encoder.blocks.0.attn.qkv') for k in state['state_dict']
    )
    assert list(root.rglob('reconstructions/step_*.png'))
    main(
        [
            'fit',
            '--config',
            str(config),
            '--trainer.default_root_dir',
            str(root),
            '--trainer.max_epochs',
            '3',
            '--ckpt_path',
            str(ckpt),
        ]
    )
    steps = sorted(
        torch.load(c, weights_only=False)['global_step']
        for c in root.rglob('last.ckpt')
    )
    assert steps == [4, 6]  # the resumed run continued from step 4 to 6


def test_plain_mae_config_trains(tmp_path: Path, make_geotiff) -> None:
    make_geotiff(
        tmp_path / 'r' / 'one_band.tif', bands=1, crs='EPSG:4326', width=80, height=80
    )
    config = write_config(
        tmp_path / 'c.yaml', tmp_path / 'r', in_channels=1, loss_cc=False, loss_cp=False
    )
    main(
        [
            'fit',
            '--config',
            str(config),
            '--data.init_args.num_views',
            '1',
            '--trainer.default_root_dir',
            str(tmp_path / 'run'),
            '--trainer.fast_dev_run',
            'true',
        ]
    )


def test_batch_without_views_names_the_datamodules() -> None:
    """The task never makes views: a plain TorchGeo batch stops with what to use."""
    task = CrossScaleMAETask(**TINY)
    batch = {'image': torch.randn(2, 3, 48, 48), 'gsd': torch.tensor([1.0, 2.0])}
    with pytest.raises(KeyError, match='GeoTIFFDataModule or FMoWDataModule') as err:
        task.shared_step(batch, 'val')
    assert 'PretrainDataModuleMixin' in str(err.value) and 'views' not in batch


def test_nonfinite_loss_names_files_and_bounds() -> None:
    task = CrossScaleMAETask(**TINY)
    batch = {'files': ['x.tif;y.tif'], 'bounds': torch.tensor([[0.0, 1.0, 2.0, 3.0]])}
    with pytest.raises(FloatingPointError, match=r'x\.tif;y\.tif.*0\.0, 1\.0'):
        task.check_finite(torch.tensor(float('nan')), batch)
    skipping = CrossScaleMAETask(**TINY, nonfinite='skip', max_nonfinite_skips=1)
    assert skipping.check_finite(torch.tensor(1.0), batch)
    assert not skipping.check_finite(torch.tensor(float('inf')), batch)
    with pytest.raises(FloatingPointError, match='nonfinite'):
        skipping.check_finite(torch.tensor(float('inf')), batch)
    with pytest.raises(ValueError, match='nonfinite'):
        CrossScaleMAETask(**TINY, nonfinite='ignore')


def test_deferred_nonfinite_check_runs_before_a_checkpoint() -> None:
    # On an accelerator, raise mode keeps the loss and checks it later (no sync).
    task = CrossScaleMAETask(**TINY)
    task._pending = (torch.tensor(2.0), {'files': ['a.tif']}, 3)
    task.on_save_checkpoint({})
    assert task._pending is None
    task._pending = (torch.tensor(float('nan')), {'files': ['b.tif']}, 4)
    with pytest.raises(FloatingPointError, match=r'step 4 .*b\.tif'):
        task.on_save_checkpoint({})
    task._pending = (torch.tensor(float('inf')), {'files': ['c.tif']}, 5)
    with pytest.raises(FloatingPointError, match=r'c\.tif'):
        task.on_train_end()


def test_lr_follows_linear_scaling_rule(tmp_path: Path, make_geotiff) -> None:
    from torchgeo_xscale.datamodules import GeoTIFFDataModule

    make_geotiff(tmp_path / 'a.tif', width=64, height=64)
    dm = GeoTIFFDataModule(
        paths=tmp_path / 'a.tif', img_size=32, batch_size=4, length=4
    )
    task = CrossScaleMAETask(**TINY, base_lr=1e-3)
    trainer = Trainer(
        default_root_dir=tmp_path,
        accelerator='cpu',
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accumulate_grad_batches=2,
        limit_val_batches=0,
    )
    trainer.fit(task, datamodule=dm)
    opt = trainer.optimizers[0]
    assert opt.param_groups[0]['initial_lr'] == pytest.approx(1e-3 * 8 / 256)
    # no weight decay on biases, norms, tokens
    assert {g['weight_decay'] for g in opt.param_groups} == {0.0, 0.05}


def test_weights_path_initialises_encoder(tmp_path: Path) -> None:
    src = CrossScaleMAETask(**TINY)
    path = tmp_path / 'enc.pth'
    torch.save(src.model.encoder.state_dict(), path)
    task = CrossScaleMAETask(**TINY, weights=str(path))
    for k, v in src.model.encoder.state_dict().items():
        assert torch.equal(v, task.model.encoder.state_dict()[k])
    with pytest.raises(FileNotFoundError, match='neither a file'):
        resolve(str(tmp_path / 'missing.pth'))
    # a Lightning checkpoint of the task works too
    assert resolve(str(path))[0].keys() == src.model.encoder.state_dict().keys()
