"""The three Cross-Scale MAE losses as pure functions.

* :func:`reconstruction_loss` (L_re): MSE of predicted pixels on masked patches, only
  over valid pixels.
* :func:`info_nce` (L_cc): NT-Xent between two views' projections, negatives gathered
  from every process with gradients flowing back to the process that owns them.
* :func:`cross_prediction_loss` (L_cp): MSE of the predictor's output to the target
  features, positives only.
"""

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for the local slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> tuple[Tensor, ...]:
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Tensor:
        stacked = torch.stack(grads).contiguous()
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate *x* from every process along dim 0, differentiably.

    The gradient reaching each process's *x* is the sum over processes of the
    gradients of their losses with respect to it, so DDP's gradient averaging gives
    the gradient of the mean loss over the global batch. Without an initialised
    process group (one process) *x* is returned unchanged.

    Args:
        x: Local tensor ``(B, ...)``; equal ``B`` on every process.

    Returns:
        ``(world_size * B, ...)``, this process's part at ``rank * B``.
    """
    if (
        not (dist.is_available() and dist.is_initialized())
        or dist.get_world_size() == 1
    ):
        return x
    return torch.cat(_GatherWithGrad.apply(x), dim=0)


def _rank_offset(batch_size: int) -> int:
    """Offset of this process's samples in the gathered batch."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() * batch_size
    return 0


def info_nce(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float = 0.1,
    weight: Tensor | None = None,
    negatives: bool = True,
) -> Tensor:
    """NT-Xent (SimCLR) contrastive loss between two views, across all processes.

    For each local sample ``k`` and each view, the positive is the other view of
    ``k`` and the negatives are both views of every other sample in the global batch
    (gathered from all processes). Cosine similarity divided by *temperature*.

    Args:
        z_a: Projections of view a ``(B, E)``.
        z_b: Projections of view b ``(B, E)``.
        temperature: Softmax temperature tau.
        weight: Optional per-sample weight ``(B,)``; samples with weight 0 are neither
            anchors nor negatives.
        negatives: If False, only pull positives together (``1 - cos``), the
            "no negatives in the encoder" ablation.

    Returns:
        Scalar loss: this process's weighted sum over its anchors of both views,
        divided by the global anchor count per process, so that the mean over
        processes equals the loss of the whole global batch.
    """
    b = z_a.shape[0]
    z_a = F.normalize(z_a.float(), dim=-1)
    z_b = F.normalize(z_b.float(), dim=-1)
    w = torch.ones(b, device=z_a.device) if weight is None else weight.float()
    if not negatives:
        per_sample = 1.0 - (z_a * z_b).sum(-1)
        return (per_sample * w).sum() / w.sum().clamp_min(1.0)

    all_a, all_b, all_w = (
        gather_with_grad(z_a),
        gather_with_grad(z_b),
        gather_with_grad(w),
    )
    n = all_a.shape[0]
    candidates = torch.cat([all_a, all_b], dim=0)  # (2N, E)
    cand_valid = torch.cat([all_w, all_w]) > 0
    anchors = torch.cat([z_a, z_b], dim=0)  # (2B, E)
    logits = anchors @ candidates.t() / temperature  # (2B, 2N)

    offset = _rank_offset(b)
    local = torch.arange(b, device=z_a.device) + offset
    self_idx = torch.cat([local, local + n])
    pos_idx = torch.cat([local + n, local])
    rows = torch.arange(2 * b, device=z_a.device)
    excluded = ~cand_valid.unsqueeze(0).expand(2 * b, -1).clone()
    excluded[rows, self_idx] = True
    logits = logits.masked_fill(excluded, float('-inf'))
    w2 = torch.cat([w, w])
    # Anchors that are not trained on get finite dummy logits (no NaN gradients).
    logits = torch.where((w2 > 0).unsqueeze(1), logits, torch.zeros_like(logits))
    per_anchor = F.cross_entropy(logits, pos_idx, reduction='none')
    # Normalise by the global anchor count over processes: the mean of the
    # processes' losses (DDP's gradient average) is then the loss of the global batch.
    world = n // b
    return (per_anchor * w2).sum() * world / (2 * all_w.sum()).clamp_min(1.0)


def cross_prediction_loss(
    prediction: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    token_weight: Tensor | None = None,
) -> Tensor:
    """MSE between predicted and target token features (positives only).

    Args:
        prediction: ``g_p(f_low)`` ``(B, N, D)``.
        target: ``f_high`` ``(B, N, D)``.
        weight: Optional per-sample weight ``(B,)``.
        token_weight: Optional per-token weight ``(B, N)``; the tokens of a sample
            are then averaged with these weights (0 leaves a token out).

    Returns:
        Scalar loss: weighted mean over samples of the per-token squared error
        averaged over tokens and channels.
    """
    if token_weight is None:
        per_sample = (prediction.float() - target.float()).pow(2).mean(dim=(1, 2))
    else:
        per_token = (prediction.float() - target.float()).pow(2).mean(dim=-1)
        tw = token_weight.float()
        per_sample = (per_token * tw).sum(1) / tw.sum(1).clamp_min(1e-6)
    if weight is None:
        return per_sample.mean()
    return (per_sample * weight).sum() / weight.sum().clamp_min(1.0)


def reconstruction_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    pixel_valid: Tensor | None = None,
    norm_pix: bool = False,
    patch_weight: Tensor | None = None,
) -> Tensor:
    """MAE pixel loss on masked patches, counting valid pixels only.

    Args:
        pred: Predicted patches ``(B, N, P*P*C)``.
        target: Target patches ``(B, N, P*P*C)`` (see :func:`patchify`).
        mask: ``(B, N)``, 1 on masked patches (the targets).
        pixel_valid: Optional validity of each target value ``(B, N, P*P*C)``
            (0 for nodata/NaN pixels and for samples that are not trained on).
        norm_pix: Normalise each target patch by its mean/std over valid values.
        patch_weight: Optional extra per-patch weight ``(B, N)``.

    Returns:
        Scalar: sum of squared errors over counted values / number of counted values.
    """
    valid = (
        torch.ones_like(target) if pixel_valid is None else pixel_valid.to(target.dtype)
    )
    if norm_pix:
        count = valid.sum(-1, keepdim=True).clamp_min(1.0)
        mean = (target * valid).sum(-1, keepdim=True) / count
        var = ((target - mean).pow(2) * valid).sum(-1, keepdim=True) / count
        target = (target - mean) / (var + 1e-6).sqrt()
    weight = mask if patch_weight is None else mask * patch_weight
    weight = valid * weight.unsqueeze(-1)
    err = (pred.float() - target.float()).pow(2) * weight
    return err.sum() / weight.sum().clamp_min(1.0)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Split images into flattened patches (MAE's layout).

    Args:
        images: ``(B, C, H, W)``, H and W multiples of *patch_size*.
        patch_size: P.

    Returns:
        ``(B, N, P*P*C)`` with N = (H/P)(W/P), row-major over the grid, and each
        patch flattened as (p_row, p_col, channel).
    """
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum('bchpwq->bhwpqc', x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(
    patches: Tensor, patch_size: int, channels: int, grid: tuple[int, int]
) -> Tensor:
    """Inverse of :func:`patchify`.

    Args:
        patches: ``(B, N, P*P*C)``.
        patch_size: P.
        channels: C.
        grid: Patch grid ``(rows, cols)``.

    Returns:
        Images ``(B, C, rows*P, cols*P)``.
    """
    b = patches.shape[0]
    gh, gw = grid
    p = patch_size
    x = patches.reshape(b, gh, gw, p, p, channels)
    x = torch.einsum('bhwpqc->bchpwq', x)
    return x.reshape(b, channels, gh * p, gw * p)
