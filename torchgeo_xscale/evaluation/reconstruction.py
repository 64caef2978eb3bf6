"""Multi-scale reconstruction (the supplement's direct evaluation).

For every tile, several random crops are taken at each scale ratio and masked
(75 %); the model reconstructs them. Reported per scale: MSE over the masked
patches (normalised pixel units) and SSIM (torchmetrics) between the reconstruction
(visible patches pasted back) and its input, both scaled by the input's own range.

Two ways to take a crop at scale r:

* ``same_footprint`` (default; as the pretraining views and the retrieval): a
  random ``img_size`` crop of the tile, area down-sampled by r and resized back;
* ``crop`` (the supplement's figures): a random crop of side ``r * tile`` resized to
  ``img_size``, i.e. a zoom into a smaller footprint.

Masks and crops come from a generator seeded by (seed, scale, repeat), so different
models see exactly the same crops and masks. Models: :class:`CrossScaleMAE` (or a
checkpoint of :class:`~torchgeo_xscale.tasks.CrossScaleMAETask`) and
:class:`torchgeo.tasks.MAE` (or its checkpoint).
"""

import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from ..checkpoints import load_mae
from ..losses import patchify, unpatchify
from ..masks import MaskInfo, mask_from_scores, num_visible
from ..models.cross_scale_mae import CrossScaleMAE
from ..plotting import save_figure
from ..progress import progress_bar
from ..transforms import scale_to_ratio
from .datasets import TileSet, group_members, load_geotiff_tiles, overall_rows
from .knn import DEFAULT_SCALES
from .report import plot_reconstruction_scales, plot_vs_scale, write_report

__all__ = (
    'MAEReconstructor',
    'evaluate_reconstruction',
    'load_reconstructor',
    'reconstruction_metrics',
    'run_reconstruction',
)


class MAEReconstructor(nn.Module):
    """Uniform ``(images, masks) -> predicted patches`` over supported MAEs.

    Attributes:
        model: :class:`CrossScaleMAE` or :class:`torchgeo.tasks.MAE`.
        patch_size: P.
        img_size: Input side.
        norm_pix: Predictions are per-patch normalised (un-normalised here with the
            target patch statistics, as MAE's visualisations do).
    """

    def __init__(self, model: nn.Module, name: str = 'model') -> None:
        """Wrap *model*.

        Args:
            model: A :class:`CrossScaleMAE` (or a task holding one as ``.model``) or
                a :class:`torchgeo.tasks.MAE`.
            name: Label in reports.

        Raises:
            TypeError: If the model type is not supported.
        """
        super().__init__()
        from torchgeo.tasks import MAE

        if isinstance(getattr(model, 'model', None), CrossScaleMAE):
            model = model.model  # type: ignore[assignment]
        if isinstance(model, CrossScaleMAE):
            if model.decoder_pred is None:
                raise TypeError(
                    'CrossScaleMAE without pixel decoder (loss_re=False) cannot reconstruct'
                )
            self.patch_size = model.patch_size
            self.img_size = int(model.encoder.patch_embed.img_size[0])
            self.norm_pix = bool(model.norm_pix_loss)
        elif isinstance(model, MAE):
            self.patch_size = int(model.patch_size)
            self.img_size = int(model.backbone.vit.patch_embed.img_size[0])
            self.norm_pix = bool(model.hparams['norm_pix_loss'])
        else:
            raise TypeError(
                f'{type(model).__name__} is not a CrossScaleMAE or torchgeo.tasks.MAE'
            )
        self.model = model.eval()
        self.name = name

    def forward(
        self, images: Tensor, masks: MaskInfo, gsd: Tensor | None = None
    ) -> Tensor:
        """Predict every patch (masked ones from the decoder).

        Args:
            images: ``(B, C, H, W)``.
            masks: Masks (``ids_keep``, ``mask``) for the images.
            gsd: GSD per image ``(B,)`` for GSD-aware models.

        Returns:
            Predicted patches ``(B, N, P*P*C)`` in the images' units.
        """
        model = self.model
        with torch.no_grad():
            if isinstance(model, CrossScaleMAE):
                feats = model.forward_decoder(
                    model.forward_encoder(images, masks, gsd), masks, gsd
                )
                assert model.decoder_pred is not None
                pred = model.decoder_pred(feats)
            else:
                b, n = masks.mask.shape
                masked_ids = masks.mask.argsort(dim=1, stable=True)[
                    :, n - int(masks.mask[0].sum()) :
                ]
                cls = masks.ids_keep.new_zeros((b, 1))
                keep = torch.cat([cls, masks.ids_keep + 1], dim=1)
                out = model(images, keep, masked_ids + 1)
                pred = images.new_zeros((b, n, out.shape[-1]))
                pred.scatter_(1, masked_ids.unsqueeze(-1).expand_as(out), out)
        if self.norm_pix:
            target = patchify(images, self.patch_size)
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        return pred


def load_reconstructor(
    model: str | os.PathLike[str] | nn.Module, name: str | None = None
) -> MAEReconstructor:
    """A :class:`MAEReconstructor` from a module or a checkpoint file of either task.

    Args:
        model: Module or ``.ckpt`` file.
        name: Label (default: file name or class name).

    Returns:
        The reconstructor.
    """
    if isinstance(model, nn.Module):
        return MAEReconstructor(model, name or type(model).__name__)
    return MAEReconstructor(load_mae(model), name or os.path.basename(os.fspath(model)))


def reconstruction_metrics(
    images: Tensor, pred: Tensor, mask: Tensor, patch_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image MSE on masked patches and SSIM of the pasted reconstruction.

    Args:
        images: Inputs ``(B, C, H, W)``.
        pred: Predicted patches ``(B, N, P*P*C)``.
        mask: ``(B, N)``, 1 on masked patches.
        patch_size: P.

    Returns:
        ``mse`` ``(B,)``, ``ssim`` ``(B,)`` and the reconstruction ``(B, C, H, W)``.
    """
    b, c, h, w = images.shape
    target = patchify(images, patch_size)
    m = mask.float().unsqueeze(-1)
    per_patch = ((pred - target) ** 2).mean(-1, keepdim=True)
    mse = (per_patch * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)
    recon = unpatchify(
        target * (1 - m) + pred * m, patch_size, c, (h // patch_size, w // patch_size)
    )
    lo = images.flatten(1).min(1).values.view(-1, 1, 1, 1)
    span = (images.flatten(1).max(1).values.view(-1, 1, 1, 1) - lo).clamp_min(1e-6)
    ssim = structural_similarity_index_measure(
        (recon - lo) / span, (images - lo) / span, data_range=1.0, reduction='none'
    )
    assert isinstance(ssim, Tensor)
    return mse, ssim.reshape(b), recon


def _crops(
    tiles: Tensor, ratio: float, size: int, mode: str, generator: torch.Generator
) -> Tensor:
    """Random crops of ``(B, C, T, T)`` tiles at scale *ratio*, each ``(C, size, size)``."""
    b, _, t, _ = tiles.shape
    side = size if mode == 'same_footprint' else max(1, round(ratio * t))
    side = min(side, t)
    offsets = torch.randint(0, t - side + 1, (b, 2), generator=generator)
    crops = torch.stack(
        [
            tiles[i, :, y : y + side, x : x + side]
            for i, (y, x) in enumerate(offsets.tolist())
        ]
    )
    if side != size:
        crops = F.interpolate(
            crops,
            size=(size, size),
            mode='bilinear',
            align_corners=False,
            antialias=True,
        )
    return scale_to_ratio(crops, ratio) if mode == 'same_footprint' else crops


def evaluate_reconstruction(
    models: Sequence[MAEReconstructor],
    tiles: TileSet,
    scales: Sequence[float] = DEFAULT_SCALES,
    repeats: int = 2,
    mask_ratio: float = 0.75,
    mode: Literal['same_footprint', 'crop'] = 'same_footprint',
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = 'cpu',
) -> tuple[list[dict[str, Any]], dict[str, dict[float, Tensor]]]:
    """MSE and SSIM of each model's reconstructions at each scale.

    Args:
        models: Reconstructors of one input size and patch size.
        tiles: Evaluation tiles (side >= the models' input size).
        scales: Scale ratios r.
        repeats: Random crops (and masks) per tile and scale.
        mask_ratio: Masked fraction.
        mode: ``same_footprint`` or ``crop`` (see the module docstring).
        batch_size: Tiles per batch.
        seed: Seed of crops and masks.
        device: Device of the models.

    Returns:
        Rows (``model``, ``scale``, ``mse``, ``mse_std``, ``ssim``, ``ssim_std``, ``n``)
        and, per model and scale, example images ``(3, C, S, S)`` (input, masked,
        reconstruction) of the first tile. For tiles of several native-grid groups
        the rows also have ``group`` (``all``) and ``gsd``, followed by one row per
        group (its name and median GSD) for each model and scale.

    Raises:
        ValueError: If models disagree in sizes or tiles are smaller than the input.
    """
    if mode not in ('same_footprint', 'crop'):
        raise ValueError(f"mode={mode!r}; expected 'same_footprint' or 'crop'")
    sizes = {(m.img_size, m.patch_size) for m in models}
    if len(sizes) != 1:
        raise ValueError(
            f'models have different (img_size, patch_size) {sorted(sizes)}; expected one'
        )
    size, patch = sizes.pop()
    if tiles.images.shape[-1] < size:
        raise ValueError(
            f'tiles of {tiles.images.shape[-1]} px are smaller than the models input {size} px'
        )
    grid = size // patch
    results: dict[tuple[str, float], list[Tensor]] = {}
    groups = group_members(tiles)
    group_of = torch.zeros(len(tiles), dtype=torch.long)
    for index, (_, _, members) in enumerate(groups):
        group_of[members] = index
    tile_groups: dict[tuple[str, float], list[Tensor]] = {}
    examples: dict[str, dict[float, Tensor]] = {m.name: {} for m in models}
    for model in models:
        model.to(device)
    starts = range(0, len(tiles), batch_size)
    bar = progress_bar(
        total=len(scales) * repeats * len(starts), desc='reconstruct', unit='batch'
    )
    for si, ratio in enumerate(scales):
        for rep in range(repeats):
            generator = torch.Generator().manual_seed(
                seed * 1_000_003 + si * 1009 + rep
            )
            for start in starts:
                images = _crops(
                    tiles.images[start : start + batch_size],
                    ratio,
                    size,
                    mode,
                    generator,
                )
                noise = torch.rand(images.shape[0], grid * grid, generator=generator)
                masks = mask_from_scores(noise, num_visible(grid * grid, mask_ratio))
                images = images.to(device)
                masks = MaskInfo(
                    *(
                        t.to(device)
                        for t in (masks.ids_keep, masks.ids_restore, masks.mask)
                    )
                )
                gsd = tiles.gsd[start : start + batch_size].to(device) / ratio
                for model in models:
                    pred = model(images, masks, gsd)
                    mse, ssim, recon = reconstruction_metrics(
                        images, pred, masks.mask, patch
                    )
                    results.setdefault((model.name, ratio), []).append(
                        torch.stack([mse, ssim], 1).cpu()
                    )
                    tile_groups.setdefault((model.name, ratio), []).append(
                        group_of[start : start + batch_size]
                    )
                    if start == 0 and rep == 0:
                        visible = unpatchify(
                            patchify(images[:1], patch) * (1 - masks.mask[:1, :, None]),
                            patch,
                            images.shape[1],
                            (grid, grid),
                        )
                        examples[model.name][float(ratio)] = torch.cat(
                            [images[:1], visible, recon[:1]]
                        ).cpu()
                bar.update(1)
    bar.close()
    rows = []
    for (name, ratio), parts in results.items():
        values = torch.cat(parts)
        head = {'model': name, 'scale': float(ratio), 'mode': mode}
        if not groups:
            rows.append({**head, **_summary(values)})
            continue
        rows.append({**head, 'group': 'all', 'gsd': '', **_summary(values)})
        of_tile = torch.cat(tile_groups[(name, ratio)])
        for g, (group, gsd_m, _) in enumerate(groups):
            rows.append(
                {**head, 'group': group, 'gsd': gsd_m, **_summary(values[of_tile == g])}
            )
    return rows, examples


def _summary(values: Tensor) -> dict[str, Any]:
    """Mean and std of per-tile ``(N, 2)`` MSE and SSIM, and N."""
    return {
        'mse': float(values[:, 0].mean()),
        'mse_std': float(values[:, 0].std()) if len(values) > 1 else 0.0,
        'ssim': float(values[:, 1].mean()),
        'ssim_std': float(values[:, 1].std()) if len(values) > 1 else 0.0,
        'n': int(values.shape[0]),
    }


def run_reconstruction(
    models: Sequence[str | os.PathLike[str] | nn.Module],
    data: str | os.PathLike[str] | Sequence[str],
    output: str | os.PathLike[str] = 'outputs/eval/reconstruction',
    scales: Sequence[float] = DEFAULT_SCALES,
    tile_size: int | None = None,
    stride: int | None = None,
    holdout_fraction: float = 0.0,
    repeats: int = 2,
    mask_ratio: float = 0.75,
    mode: Literal['same_footprint', 'crop'] = 'same_footprint',
    max_tiles: int | None = None,
    min_valid_fraction: float = 1.0,
    seed: int = 0,
    device: str = 'cpu',
    names: Sequence[str] | None = None,
    command: str = '',
) -> list[dict[str, Any]]:
    """Evaluate reconstructions on tiles of GeoTIFFs and write the report.

    Writes ``reconstruction.csv``/``.md``/``.png`` (SSIM vs scale) and
    ``reconstruction_grid.png`` into *output*.

    Args:
        models: Checkpoints (either task) or modules.
        data: GeoTIFF folder, glob, file or list.
        output: Report folder.
        scales: Scale ratios.
        tile_size: Tile side (default: the models' input size).
        stride: Tile grid step (default *tile_size*).
        holdout_fraction: Tile only the region held out from training (see
            :func:`~.datasets.load_geotiff_tiles`).
        repeats: Crops and masks per tile and scale.
        mask_ratio: Masked fraction.
        mode: ``same_footprint`` or ``crop``.
        max_tiles: Cap on tiles.
        min_valid_fraction: Drop tiles with fewer valid pixels.
        seed: Seed of crops and masks.
        device: Device.
        names: Labels of the models.
        command: Command line recorded in the Markdown report.

    Returns:
        The result rows.
    """
    recons = [
        load_reconstructor(m, names[i] if names else None) for i, m in enumerate(models)
    ]
    size = tile_size or recons[0].img_size
    tiles = load_geotiff_tiles(
        data,
        size,
        stride,
        holdout_fraction,
        min_valid_fraction=min_valid_fraction,
        max_tiles=max_tiles,
    )
    rows, examples = evaluate_reconstruction(
        recons, tiles, scales, repeats, mask_ratio, mode, seed=seed, device=device
    )
    fig = plot_vs_scale(
        overall_rows(rows),
        'ssim',
        ylabel='SSIM (higher is better)',
        title='Multi-scale reconstruction',
    )
    notes = f'{len(tiles)} tiles of {size} px, {repeats} crops+masks each, mask ratio {mask_ratio}, mode {mode}.'
    write_report(
        rows,
        output,
        'reconstruction',
        'Multi-scale reconstruction',
        fig,
        notes=notes,
        command=command,
    )
    save_figure(
        plot_reconstruction_scales(examples),
        os.path.join(output, 'reconstruction_grid.png'),
    )
    return rows
