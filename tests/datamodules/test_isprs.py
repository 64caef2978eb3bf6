"""The ISPRS Potsdam/Vaihingen datamodules at a scale ratio (datamodules/isprs.py),
trained for two steps on generated archives."""

from pathlib import Path
from typing import Any

import pytest
import torch
from isprs_layout import (
    SIZES,
    make_potsdam,
    make_vaihingen,
    tiny_task,
)
from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import RunningStage

from torchgeo_xscale.datamodules.isprs import (
    ScaledPotsdam2DDataModule,
    ScaledVaihingen2DDataModule,
)
from torchgeo_xscale.transforms import scale_to_ratio

CONFIGS = Path(__file__).parents[2] / 'configs' / 'segmentation'


def _trainer(root: Path, **kwargs: Any) -> Trainer:
    args = {
        'max_epochs': 1,
        'accelerator': 'cpu',
        'default_root_dir': str(root),
        'enable_progress_bar': False,
        'enable_model_summary': False,
        'num_sanity_val_steps': 0,
        'log_every_n_steps': 1,
    }
    return Trainer(**{**args, **kwargs})


def test_datamodule_scale_protocol(vaihingen: Path) -> None:
    dm = ScaledVaihingen2DDataModule(
        root=str(vaihingen),
        batch_size=2,
        patch_size=64,
        val_split_pct=0.5,
        samples_per_tile=3,
        scale_ratio=0.25,
        mean=[10.0, 20.0, 30.0],
        std=[2.0],
    )
    dm.setup('fit')
    assert len(dm.train_dataset) == 2 * 3
    sample = dm.train_dataset[0]
    assert sample['image'].shape == (3, 64, 64) and sample['mask'].shape == (64, 64)
    assert set(sample['mask'].unique().tolist()) <= set(range(6))
    batch = next(iter(dm.val_dataloader()))
    assert (
        batch['image'].shape[0] == 1
        and batch['image'].shape[-2:] == batch['mask'].shape[-2:]
    )
    assert batch['image'].shape[-2:] in [torch.Size(s) for s in SIZES]  # a whole tile
    dm.trainer = Trainer(accelerator='cpu', logger=False)
    dm.trainer.state.stage = RunningStage.VALIDATING
    image = batch['image'].clone()
    out = dm.on_after_batch_transfer(dict(batch), 0)
    mean = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    expected = scale_to_ratio((image - mean) / 2.0, 0.25)
    torch.testing.assert_close(out['image'], expected)
    torch.testing.assert_close(out['mask'], batch['mask'])


@pytest.mark.parametrize(
    'scale',
    [
        pytest.param(0.25, marks=pytest.mark.slow),
        pytest.param(0.5, marks=pytest.mark.slow),
        1.0,
    ],
)
@pytest.mark.parametrize('dataset', ['potsdam', 'vaihingen'])
def test_two_training_steps(dataset: str, scale: float, tmp_path: Path) -> None:
    if dataset == 'potsdam':
        root = make_potsdam(tmp_path / 'potsdam')
        dm: Any = ScaledPotsdam2DDataModule
        bands = 4
    else:
        root = make_vaihingen(tmp_path / 'vaihingen')
        dm, bands = ScaledVaihingen2DDataModule, 3
    datamodule = dm(
        root=str(root),
        batch_size=2,
        patch_size=64,
        val_split_pct=0.5,
        samples_per_tile=2,
        scale_ratio=scale,
    )
    task = tiny_task(
        in_channels=bands, labels=['clutter', 'imp', 'bld', 'low', 'tree', 'car']
    )
    before = task.model.encoder.blocks[0].attn.qkv.weight.detach().clone()
    trainer = _trainer(tmp_path / 'run', limit_val_batches=1)
    trainer.fit(task, datamodule)
    assert trainer.global_step == 2
    assert not torch.equal(before, task.model.encoder.blocks[0].attn.qkv.weight)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics['train_loss']) and 'train_loss_aux' in metrics
    assert 0 <= float(metrics['val_AverageJaccardIndex']) <= 1
    assert 'val_ClasswiseJaccardIndex_car' in metrics
    assert (Path(trainer.log_dir) / 'predictions' / 'epoch_0000.png').exists()


def test_batch_size_one_is_a_clear_error(vaihingen: Path, tmp_path: Path) -> None:
    datamodule = ScaledVaihingen2DDataModule(
        root=str(vaihingen), batch_size=1, patch_size=64
    )
    with pytest.raises(ValueError, match='at least 2 samples'):
        _trainer(tmp_path / 'run').fit(tiny_task(), datamodule)
    task = tiny_task()
    with pytest.raises(ValueError, match='batch size is 1'):
        task.training_step(
            {
                'image': torch.randn(1, 3, 64, 64),
                'mask': torch.zeros(1, 64, 64, dtype=torch.long),
            },
            0,
        )


@pytest.mark.parametrize(
    ('make', 'module', 'extracted'),
    [
        (make_potsdam, ScaledPotsdam2DDataModule, '4_Ortho_RGBIR'),
        (make_vaihingen, ScaledVaihingen2DDataModule, 'top'),
    ],
)
def test_prepare_data_extracts_the_archives_once(
    make: Any, module: Any, extracted: str, tmp_path: Path
) -> None:
    """The archives are extracted in prepare_data (local rank 0, behind Lightning's
    barrier), so setup on every process finds the files and extracts nothing."""
    root = make(tmp_path / 'data')
    dm = module(root=str(root), batch_size=2, patch_size=64, val_split_pct=0.5)
    assert not (root / extracted).exists()
    dm.prepare_data()
    assert (root / extracted).is_dir()
    stamps = {p: p.stat().st_mtime_ns for p in (root / extracted).rglob('*.tif')}
    assert stamps
    dm.setup('fit')
    assert len(dm.train_dataset) > 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # not re-extracted
