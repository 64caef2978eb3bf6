"""CrossScaleMAETask: the L_cp collapse signal is logged every step and checked."""

import csv
import logging
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from torchgeo_xscale.datamodules import GeoTIFFDataModule
from torchgeo_xscale.models.cross_scale_mae import PAPER_LITERAL
from torchgeo_xscale.tasks import CrossScaleMAETask


def fit(tmp_path: Path, rasters: Path, degenerate: bool, **options) -> list[dict]:
    """Fit a tiny task for 3 steps; with *degenerate*, decoder_norm's weight is 0."""
    task = CrossScaleMAETask(
        **TINY_MODEL, lr=1e-6, log_image_every_n_steps=0, **options
    )
    if degenerate:  # contrived: every token's decoder_norm output is its bias
        with torch.no_grad():
            task.model.decoder_norm.weight.zero_()
    datamodule = GeoTIFFDataModule(
        rasters, img_size=32, batch_size=4, length=12, stats_cache=None
    )
    trainer = Trainer(
        max_epochs=1,
        accelerator='cpu',
        logger=CSVLogger(tmp_path / 'log', name='', version=''),
        log_every_n_steps=1,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=datamodule)
    with open(tmp_path / 'log' / 'metrics.csv') as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ('options', 'degenerate', 'warns'),
    [
        (PAPER_LITERAL, True, True),  # collapsed literal target: warned
        ({'cp_target': 'standardized'}, True, False),  # scale-free: not collapsed
    ],
)
def test_collapse_signal_logged_and_degenerate_setting_warns(
    tmp_path: Path, make_geotiff, caplog, options, degenerate, warns
) -> None:
    make_geotiff(tmp_path / 'r' / 'a.tif', width=96, height=64)
    with caplog.at_level(logging.WARNING, logger='torchgeo_xscale.tasks.pretrain'):
        rows = fit(tmp_path, tmp_path / 'r', degenerate, **options)
    steps = [r for r in rows if r.get('train_cp_target_std_step')]
    assert len(steps) == 3  # every step
    assert all(r['train_cp_pred_std_step'] for r in steps)
    spread = [float(r['train_cp_target_std_step']) for r in steps]
    collapse = [r for r in caplog.records if 'L_cp collapse' in r.getMessage()]
    assert bool(collapse) == warns, spread
    if warns:
        assert max(spread) < 0.01 and 'cp_collapse_floor' in collapse[0].getMessage()


def test_collapse_check_can_be_disabled(tmp_path: Path, make_geotiff, caplog) -> None:
    make_geotiff(tmp_path / 'r' / 'a.tif', width=96, height=64)
    with caplog.at_level(logging.WARNING, logger='torchgeo_xscale.tasks.pretrain'):
        fit(tmp_path, tmp_path / 'r', True, cp_collapse_floor=0.0, **PAPER_LITERAL)
    assert not [r for r in caplog.records if 'L_cp collapse' in r.getMessage()]
