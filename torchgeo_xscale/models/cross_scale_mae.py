"""Cross-Scale MAE (Tang et al., NeurIPS 2023), the whole method in one file.

Reading order, as MAE's reference ``models_mae.py``: masks per view, the shared ViT
encoder on visible patches, the light decoder with mask tokens, then the three
losses, then :meth:`CrossScaleMAE.forward` which ties them together.

Views are stacked as ``(B, V, C, H, W)``: view 0 is the full-scale view (r_h = 1),
view 1 the down-scaled view (r_l < 1) covering the same footprint at the same size
(see :class:`torchgeo_xscale.transforms.ScaleViews`), so token i of both views lies
over the same ground. With ``V = 1`` the model is a plain MAE (set ``loss_cc`` and
``loss_cp`` off).

Where the paper is silent or the public code departs from it, the choice made here
is named at the argument (``temperature``, ``projection_dim``, ``predictor``...).
L_cp departs from the paper by default: read literally (:data:`PAPER_LITERAL`) it
collapses at small scale, so the default compares instance-normalised features at the
positions masked in the low-scale view, with a stop-gradient on the full-scale target
(``cp_target``, ``cp_positions``, ``cp_stop_grad``; evidence in docs/evaluation.md).

Partial reconstruction (``decoder_keep``, off by default): in training the decoder
sees the visible tokens and only a fixed number of mask tokens per view, see
:meth:`CrossScaleMAE.forward_decoder`; L_re and L_cp then count the decoded tokens.
"""

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import (
    cross_prediction_loss,
    info_nce,
    patchify,
    reconstruction_loss,
)
from ..masks import (
    MaskInfo,
    build_mask_strategy,
    choose_targets,
    num_kept_targets,
    num_targets,
)
from .local_attention import set_grid_size
from .vit import (
    VIT_SIZES,
    Block,
    CrossScaleViT,
    grid_positions,
    run_blocks,
    sincos_pos_embed,
)


@dataclass
class CrossScaleMAEOutput:
    """What one forward pass returns.

    Attributes:
        loss: Total loss (weighted sum of the enabled parts), scalar with gradient.
        parts: Each enabled loss, detached: ``re``, ``cc``, ``cp``.
        pred: Predicted patches ``(B, V, N, P*P*C)`` (None without a pixel head);
            with partial reconstruction 0 where ``decoded`` is 0.
        mask: ``(B, V, N)``, 1 on masked patches.
        target: Target patches ``(B, V, N, P*P*C)``.
        stats: Detached diagnostics, e.g. ``cp_target_std`` and ``cp_pred_std``
            (see :meth:`CrossScaleMAE.loss_cp`): the collapse signal of L_cp.
        decoded: ``(B, V, N)``, 1 on the masked patches the decoder reconstructed
            in this pass (partial reconstruction); None when it predicted every
            patch.
    """

    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    pred: Tensor | None = None
    mask: Tensor | None = None
    target: Tensor | None = None
    stats: dict[str, Tensor] = field(default_factory=dict)
    decoded: Tensor | None = None


#: The paper's losses read literally (Eqs. 1-6 with the public code's tau): L_cp as
#: the MSE between g_p(f_d,l) and f_d,h, the decoder's final (``decoder_norm``)
#: features of every token, both sides with gradient; InfoNCE with negatives and
#: tau = 0.5 for L_cc; the three losses summed. Pass as keyword arguments to
#: :class:`CrossScaleMAE` or :class:`~torchgeo_xscale.tasks.CrossScaleMAETask`
#: (``configs/pretrain/xscale_paper_literal_tiny.yaml`` sets the same).
PAPER_LITERAL: dict[str, Any] = {
    'cp_target': 'decoder_norm',
    'cp_positions': 'all',
    'cp_stop_grad': False,
    'cp_negatives': False,
    'cc_negatives': True,
    'temperature': 0.5,
    'loss_weights': (1.0, 1.0, 1.0),
}

#: Features compared by L_cp (``cp_target``).
CP_TARGETS = (
    'decoder_norm',
    'block',
    'standardized',
    'instance_norm',
    'batch_centered',
)
#: Token positions where L_cp counts (``cp_positions``).
CP_POSITIONS = ('all', 'masked', 'visible')


def feature_spread(x: Tensor, token_weight: Tensor | None = None) -> Tensor:
    """Collapse signal: per-channel std across tokens and samples, channel mean.

    0 when every token of every sample has the same feature vector (a collapsed
    target), about 1 for standardised features that vary freely.

    Args:
        x: Features ``(B, N, D)``.
        token_weight: Optional ``(B, N)``; only tokens with weight > 0 count.

    Returns:
        Scalar (detached, float32).
    """
    flat = x.detach().float().reshape(-1, x.shape[-1])
    if token_weight is None:
        w = flat.new_ones(flat.shape[0], 1)
    else:
        w = (token_weight.detach().reshape(-1, 1) > 0).to(flat.dtype)
    # Weighted, not indexed: no data-dependent shape, no host-device sync.
    count = w.sum()
    mean = (flat * w).sum(0) / count.clamp_min(1.0)
    var = ((flat - mean).pow(2) * w).sum(0) / (count - 1.0).clamp_min(1.0)
    return var.sqrt().mean()


def batch_center(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """Centre each token position over the batch, then scale each channel to unit std.

    What every sample has at a position (a positional pattern, a component shared
    by all tokens) is removed; what is left is how the samples differ.

    Args:
        x: Features ``(B, N, D)``.
        weight: Per-sample weight ``(B,)``; samples with weight 0 do not enter the
            statistics.
        eps: Added to the variance.

    Returns:
        ``(B, N, D)`` float32.
    """
    x = x.float()
    w = (weight.float() > 0).float().view(-1, 1, 1)
    count = w.sum().clamp_min(1.0)
    centred = x - (x * w).sum(0, keepdim=True) / count
    var = (centred.pow(2) * w).sum((0, 1), keepdim=True) / (count * x.shape[1])
    return centred / (var + eps).sqrt()


def instance_normalize(
    x: Tensor, valid: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """Normalise each channel over the tokens of its sample (zero mean, unit variance).

    Args:
        x: Features ``(B, N, D)``.
        valid: Optional ``(B, N)``; only tokens where it is True enter the
            statistics (the others are normalised with them but should not count).
        eps: Added to the variance.

    Returns:
        ``(B, N, D)`` float32.
    """
    x = x.float()
    if valid is None:
        return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)
    w = valid.to(x.dtype).unsqueeze(-1)
    count = w.sum(1, keepdim=True).clamp_min(1.0)
    mean = (x * w).sum(1, keepdim=True) / count
    var = ((x - mean).pow(2) * w).sum(1, keepdim=True) / count
    return (x - mean) / (var + eps).sqrt()


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Two-layer MLP with LayerNorm and GELU (no cross-sample statistics).

    Args:
        in_dim: Input features.
        hidden_dim: Hidden features.
        out_dim: Output features.

    Returns:
        ``Linear -> LayerNorm -> GELU -> Linear``.
    """
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.LayerNorm(hidden_dim),
        nn.GELU(),
        nn.Linear(hidden_dim, out_dim),
    )


class CrossScaleMAE(nn.Module):
    """Cross-Scale MAE: one shared MAE over two scale views, three losses.

    Attributes:
        encoder: The ViT encoder (timm names; export this one).
        projection_head: g_f for L_cc (None when ``loss_cc`` is off).
        predictor: g_p for L_cp (None when ``loss_cp`` is off).
        decoder_pos_embed: The decoder's fixed sin-cos embedding (a buffer).
    """

    decoder_pos_embed: Tensor

    def __init__(
        self,
        size: str = 'base',
        img_size: int = 128,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        decoder_keep: float = 1.0,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        mask_strategy: str = 'random',
        mask_options: dict[str, Any] | None = None,
        view_masks: str = 'independent',
        norm_pix_loss: bool = False,
        loss_re: bool = True,
        loss_cc: bool = True,
        loss_cp: bool = True,
        loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        cc_negatives: bool = True,
        cp_negatives: bool = False,
        cp_stop_grad: bool = True,
        cp_target: str = 'instance_norm',
        cp_positions: str = 'masked',
        temperature: float = 0.2,
        cc_pool: str = 'mean',
        projection_dim: int = 256,
        projection_hidden_dim: int = 2048,
        predictor_hidden_dim: int = 2048,
        gsd_pos_embed: bool = False,
        reference_gsd: float = 1.0,
        attention: str = 'sdpa',
        attention_options: dict[str, Any] | None = None,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        """Initialise Cross-Scale MAE.

        Args:
            size: Encoder size ``tiny|small|base|large``; *embed_dim*, *depth* and
                *num_heads* override it.
            img_size: View size in pixels (paper: 128).
            patch_size: Patch size (paper: 16).
            in_chans: Input bands.
            embed_dim: Encoder width D (default from *size*).
            depth: Encoder blocks (default from *size*).
            num_heads: Encoder heads (default from *size*).
            decoder_embed_dim: Decoder width (paper: 512).
            decoder_depth: Decoder blocks (paper: 8).
            decoder_num_heads: Decoder heads.
            decoder_keep: Partial reconstruction: the fraction, in (0, 1], of each
                view's reconstruction targets (masked patches with a positive
                ``loss_weight``) that the decoder reconstructs in a training step,
                ``round(decoder_keep * T)`` per sample, a fixed number (static
                shapes). The decoder then runs on the visible tokens plus those
                mask tokens only, L_re counts them and L_cp the patches both views
                decode (CrossMAE-style partial reconstruction, Fu et al. 2024;
                see :meth:`forward_decoder`). 1.0 (default) decodes every masked
                patch as MAE does, except that zero-weight targets (``easy-first``'s
                dropped hardest patches, masked patches outside ``lomar``'s
                windows) are left out of the decoder input in training (Efficient
                MAE's decoder masking). In eval mode every patch is decoded.
            mlp_ratio: MLP hidden ratio of all blocks.
            mask_ratio: Fraction of patches masked per view (paper: 0.75).
            mask_strategy: Name of a :mod:`torchgeo_xscale.masks` strategy.
            mask_options: Options of the strategy.
            view_masks: ``independent`` (a mask per view, the paper's default and
                better per its supplement) or ``consistent`` (one mask for both views).
            norm_pix_loss: Normalise target patches (MAE's option; public code: off).
            loss_re: Enable L_re (off = pure contrastive, paper Table 7).
            loss_cc: Enable L_cc, the encoder cross-scale consistency.
            loss_cp: Enable L_cp, the decoder cross-scale prediction.
            loss_weights: Weights of (L_re, L_cc, L_cp); the paper sums them (1, 1, 1).
            cc_negatives: Negatives in the encoder loss (InfoNCE); False pulls
                positives together only (Table 6 ablation).
            cp_negatives: Negatives in the decoder loss: InfoNCE on token-averaged
                decoder features instead of MSE (Table 6 shows they hurt; off).
            cp_stop_grad: Stop the gradient through the full-scale decoder target of
                L_cp (SimSiam style; on by default: with gradient on both sides the
                network makes both views' features trivially predictable; the paper
                and the public code do not stop it, :data:`PAPER_LITERAL`).
            cp_target: Decoder features L_cp compares (see :meth:`loss_cp`):
                ``decoder_norm`` (output of the decoder's final LayerNorm, the public
                code's "final decoder features"), ``block`` (output of the last decoder
                block, before that norm: the paper's "last self-attention block's
                decoder output"), ``standardized`` (that block output and the
                prediction each standardised per token) or ``instance_norm`` (each
                channel of target and prediction normalised over the tokens of its
                sample, data2vec's target normalisation: what is shared by all
                tokens is removed, so it cannot satisfy the loss; the default) or
                ``batch_centered`` (each token position centred over the batch and
                each channel scaled to unit std: what all samples share at a
                position, e.g. a positional pattern, is removed too; the loss of a
                sample then depends on the others in its process's batch).
            cp_positions: Tokens L_cp counts: ``all`` (paper), ``masked`` (the
                positions masked in the low-scale view, where its decoder has to
                predict the full-scale view's features from context; the default)
                or ``visible``
                (the positions visible in the full-scale view, where its decoder
                features carry the encoding of a real full-detail patch rather than
                a mask token's guess).
            temperature: tau of L_cc. The paper does not state it; the public code
                uses 0.5 (:data:`PAPER_LITERAL` keeps it). Default 0.2: in the
                equal-budget study's tau x head sweep (3 seeds, docs/evaluation.md)
                tau 0.2 gave higher cross-scale retrieval than 0.5 and 0.1 in the
                mean at 12.5 / 25 / 50 %, reconstruction unchanged.
            cc_pool: Encoder feature for L_cc: ``mean`` of visible tokens (public
                code) or ``cls``.
            projection_dim: Output of the projection head g_f. The paper names a
                non-linear head without sizes (the public code has none): a
                SimCLR-style MLP ``D -> 2048 -> 256`` is used; 0 disables it.
            projection_hidden_dim: Hidden width of g_f.
            predictor_hidden_dim: Hidden width of g_p (public code: 2048). LayerNorm
                replaces the public code's BatchNorm so that the loss of a sample does
                not depend on the others in its process (exact DDP equivalence).
            gsd_pos_embed: GSD-scaled positional embeddings (Scale-MAE style; the
                paper finds them redundant; off).
            reference_gsd: GSD in metres at which positions are unscaled.
            attention: Attention backend of encoder and decoder blocks.
            attention_options: Backend options.
            drop_path_rate: Stochastic depth of the encoder.
            grad_checkpointing: Activation checkpointing in encoder and decoder.

        Raises:
            ValueError: On an invalid combination of options.
        """
        super().__init__()
        if view_masks not in ('independent', 'consistent'):
            msg = f"view_masks={view_masks!r}; expected 'independent' or 'consistent'"
            raise ValueError(msg)
        if cp_target not in CP_TARGETS:
            msg = f'cp_target={cp_target!r}; expected one of {list(CP_TARGETS)}'
            raise ValueError(msg)
        if cp_positions not in CP_POSITIONS:
            msg = f'cp_positions={cp_positions!r}; expected one of {list(CP_POSITIONS)}'
            raise ValueError(msg)
        if cc_pool not in ('mean', 'cls'):
            msg = f"cc_pool={cc_pool!r}; expected 'mean' or 'cls'"
            raise ValueError(msg)
        if not (loss_re or loss_cc or loss_cp):
            msg = 'at least one of loss_re, loss_cc, loss_cp must be enabled'
            raise ValueError(msg)
        if size not in VIT_SIZES:
            msg = f'size={size!r} is not a ViT size; expected one of {list(VIT_SIZES)}'
            raise ValueError(msg)
        if img_size % patch_size:
            msg = f'img_size={img_size} must be a multiple of patch_size={patch_size}'
            raise ValueError(msg)
        if not 0.0 <= mask_ratio < 1.0:
            msg = f'mask_ratio={mask_ratio}; expected 0 <= mask_ratio < 1 (paper: 0.75)'
            raise ValueError(msg)
        if loss_re and mask_ratio == 0:
            msg = (
                'mask_ratio=0 with loss_re=True: L_re is computed on masked patches '
                'only and would always be 0; expected 0 < mask_ratio < 1 (paper: '
                '0.75), or loss_re=False'
            )
            raise ValueError(msg)
        if decoder_keep < 1 and loss_cp and cp_target == 'batch_centered':
            msg = (
                f"decoder_keep={decoder_keep} with cp_target='batch_centered': with "
                'partial reconstruction the decoded tokens are not at the same patches '
                'in every sample; expected decoder_keep=1 or another cp_target'
            )
            raise ValueError(msg)
        default_dim, default_depth, default_heads = VIT_SIZES[size]
        self.mask_ratio = mask_ratio
        self.view_masks = view_masks
        self.mask_strategy = build_mask_strategy(mask_strategy, **(mask_options or {}))
        self.decoder_keep = decoder_keep
        self.norm_pix_loss = norm_pix_loss
        self.use_re, self.use_cc, self.use_cp = loss_re, loss_cc, loss_cp
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.cc_negatives, self.cp_negatives = cc_negatives, cp_negatives
        self.cp_stop_grad = cp_stop_grad
        self.cp_target, self.cp_positions = cp_target, cp_positions
        self.temperature = temperature
        self.cc_pool = cc_pool
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grad_checkpointing = grad_checkpointing

        # --- shared encoder E (timm names) ---
        self.encoder = CrossScaleViT(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim or default_dim,
            depth=depth or default_depth,
            num_heads=num_heads or default_heads,
            mlp_ratio=mlp_ratio,
            num_classes=0,
            drop_path_rate=drop_path_rate,
            attention=attention,
            attention_options=attention_options,
            gsd_pos_embed=gsd_pos_embed,
            reference_gsd=reference_gsd,
        )
        self.encoder.set_grad_checkpointing(grad_checkpointing)
        dim = self.encoder.embed_dim
        self.grid = self.encoder.grid_size
        num_patches = self.grid[0] * self.grid[1]
        #: Reconstruction targets per sample, and how many the decoder computes.
        self.num_targets = num_targets(self.mask_strategy, *self.grid, mask_ratio)
        self.num_decoded_targets = num_kept_targets(decoder_keep, self.num_targets)

        # --- light decoder, shared by both views (needed by L_re and L_cp) ---
        self.has_decoder = loss_re or loss_cp
        if self.has_decoder:
            self.decoder_embed = nn.Linear(dim, decoder_embed_dim)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
            # fixed sin-cos: a buffer, as the encoder's pos_embed (models/vit.py)
            self.register_buffer(
                'decoder_pos_embed',
                sincos_pos_embed(decoder_embed_dim, self.grid),
                persistent=True,
            )
            norm = partial(nn.LayerNorm, eps=1e-6)
            self.decoder_blocks = nn.Sequential(
                *[
                    Block(
                        decoder_embed_dim,
                        decoder_num_heads,
                        attention=attention,
                        attention_options=attention_options,
                        mlp_ratio=mlp_ratio,
                        qkv_bias=True,
                        norm_layer=norm,
                    )
                    for _ in range(decoder_depth)
                ]
            )
            self.decoder_norm = norm(decoder_embed_dim)
            self.decoder_pred = (
                nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
                if loss_re
                else None
            )
            nn.init.normal_(self.mask_token, std=0.02)
        # --- heads of the cross-scale losses ---
        self.projection_head: nn.Module | None = None
        if loss_cc:
            self.projection_head = (
                mlp(dim, projection_hidden_dim, projection_dim)
                if projection_dim
                else nn.Identity()
            )
        self.predictor = (
            mlp(decoder_embed_dim, predictor_hidden_dim, decoder_embed_dim)
            if loss_cp
            else None
        )
        self.num_patches = num_patches
        set_grid_size(self, self.grid)

    # ------------------------------------------------------------------ masking
    def draw_masks(
        self,
        batch_size: int,
        num_views: int,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> MaskInfo:
        """Masks for every view of every sample, flattened view-major ``(V*B, N)``.

        In training with partial reconstruction (see :meth:`partial_decoding`) the
        targets the decoder computes are drawn next, from the same *generator*
        (:func:`~torchgeo_xscale.masks.base.choose_targets`), into ``ids_target``; the
        masks themselves are those drawn without it.

        Args:
            batch_size: B.
            num_views: V.
            device: Device of the masks.
            generator: Optional random generator.

        Returns:
            :class:`MaskInfo` with leading dim ``V * B`` (view 0's samples first).
        """
        gh, gw = self.grid
        if self.view_masks == 'consistent':
            m = self.mask_strategy(
                batch_size, gh, gw, self.mask_ratio, generator, device
            )
            lw, groups = m.loss_weight, m.groups
            masks = MaskInfo(
                ids_keep=m.ids_keep.repeat(num_views, 1),
                ids_restore=m.ids_restore.repeat(num_views, 1),
                mask=m.mask.repeat(num_views, 1),
                loss_weight=None if lw is None else lw.repeat(num_views, 1),
                groups=None if groups is None else groups.repeat(num_views, 1),
            )
        else:
            masks = self.mask_strategy(
                batch_size * num_views, gh, gw, self.mask_ratio, generator, device
            )
        return self.with_targets(masks, num_views, generator)

    def partial_decoding(self, masks: MaskInfo) -> bool:
        """Whether this pass decodes a subset of the masked patches.

        True in training when fewer targets are decoded than patches are masked:
        ``decoder_keep < 1``, or a strategy with zero-weight targets.

        Args:
            masks: The masks (only their shape is read: no host-device sync).

        Returns:
            The decision, a fixed function of the configuration and mode.
        """
        masked = self.num_patches - masks.num_visible
        return self.training and self.has_decoder and self.num_decoded_targets < masked

    def with_targets(
        self,
        masks: MaskInfo,
        num_views: int,
        generator: torch.Generator | None = None,
    ) -> MaskInfo:
        """Add the decoded targets to *masks* if this pass decodes partially.

        Args:
            masks: View-major masks ``(V*B, N)``.
            num_views: V.
            generator: Random generator (drawn after the masks).

        Returns:
            *masks* (unchanged when decoding fully, or when ``ids_target`` is set).
        """
        if masks.ids_target is not None or not self.partial_decoding(masks):
            return masks
        ids = choose_targets(masks, num_views, self.num_decoded_targets, generator)
        return replace(masks, ids_target=ids)

    # ------------------------------------------------------------------ encoder
    def forward_encoder(
        self, images: Tensor, masks: MaskInfo, gsd: Tensor | None = None
    ) -> Tensor:
        """Shared encoder E on the visible patches.

        Args:
            images: ``(M, C, H, W)`` (views flattened into the batch).
            masks: Their masks (leading dim M).
            gsd: GSD per image ``(M,)``.

        Returns:
            Latent tokens ``(M, 1 + N_vis, D)``; with ``masks.groups`` (LoMaR) each
            patch attends only within its window.
        """
        return self.encoder.forward_encoder(images, masks.ids_keep, gsd, masks.groups)

    # ------------------------------------------------------------------ decoder
    def forward_decoder(
        self,
        latent: Tensor,
        masks: MaskInfo,
        gsd: Tensor | None = None,
        prenorm: bool = False,
    ) -> Tensor:
        """Light decoder: visible latents plus mask tokens.

        Without ``masks.ids_target`` every patch is decoded, in patch order (MAE).
        With it (partial reconstruction) the decoder's tokens are the CLS token, the
        visible latents in ``ids_keep`` order and one mask token per index of
        ``ids_target``, each given the decoder positional embedding of its patch;
        attention (any backend: the grid positions of exactly these tokens reach
        position-aware ones) sees only these ``1 + N_vis + K`` tokens.

        Args:
            latent: Encoder output ``(M, 1 + N_vis, D)``.
            masks: The masks used by the encoder.
            gsd: GSD per image ``(M,)`` (for GSD positional embeddings).
            prenorm: Return the last block's output, before ``decoder_norm``.

        A model trained with partial reconstruction (``decoder_keep < 1``) decodes
        every patch outside training in groups (:meth:`forward_decoder_grouped`),
        so that each mask token meets the context it was trained in (the visible
        tokens and ``K`` mask tokens), not ``N - N_vis`` mask tokens at once.

        Returns:
            Final decoder features of the patch tokens: ``(M, N, D_dec)`` in patch
            order, or ``(M, N_vis + K, D_dec)`` at the patches
            :meth:`decoded_ids` lists.
        """
        if masks.ids_target is None and self.grouped_decoding(masks):
            return self.forward_decoder_grouped(latent, masks, gsd, prenorm)
        x = self.decoder_embed(latent)
        m, n_vis1, d = x.shape
        n = self.num_patches
        if self.encoder.gsd_pos_embed and gsd is not None:
            ratio = gsd / self.encoder.reference_gsd
            pe = sincos_pos_embed(d, self.grid[0], ratio).to(x.device, x.dtype)
        else:
            pe = self.decoder_pos_embed
        if masks.ids_target is None:
            mask_tokens = self.mask_token.expand(m, n + 1 - n_vis1, -1)
            patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
            index = masks.ids_restore.unsqueeze(-1).expand(-1, -1, d)
            patches = torch.gather(patches, 1, index)
            x = torch.cat([x[:, :1], patches], dim=1)
            x = x + pe
            ids = torch.arange(n, device=x.device).expand(m, -1)
        else:
            ids = self.decoded_ids(masks)
            k = masks.ids_target.shape[1]
            patch_pe = torch.gather(
                pe[:, 1:].expand(m, -1, -1), 1, ids.unsqueeze(-1).expand(-1, -1, d)
            )
            patches = torch.cat([x[:, 1:], self.mask_token.expand(m, k, -1)], dim=1)
            x = torch.cat([x[:, :1] + pe[:, :1], patches + patch_pe], dim=1)
        pos = grid_positions(ids, self.grid[1], num_prefix=1)
        x = run_blocks(self.decoder_blocks, x, pos, self.grad_checkpointing)
        return x[:, 1:] if prenorm else self.decoder_norm(x)[:, 1:]

    def grouped_decoding(self, masks: MaskInfo) -> bool:
        """Whether a full decoding runs in groups of the trained size.

        True outside training for a model with ``decoder_keep < 1`` when more
        patches are masked than it decodes per pass in training.

        Args:
            masks: The masks (only their shape is read).

        Returns:
            The decision.
        """
        masked = self.num_patches - masks.num_visible
        return (
            not self.training
            and self.decoder_keep < 1
            and 0 < self.num_decoded_targets < masked
        )

    def forward_decoder_grouped(
        self,
        latent: Tensor,
        masks: MaskInfo,
        gsd: Tensor | None = None,
        prenorm: bool = False,
    ) -> Tensor:
        """Decode every patch in passes of ``K`` mask tokens, as in training.

        With partial reconstruction the decoder is trained on the visible tokens
        plus ``K`` mask tokens (``K = num_decoded_targets``); decoding all
        ``N - N_vis`` mask tokens at once puts it outside that distribution (at
        ``decoder_keep`` 0.25 the study's masked-patch MSE rose from 0.312 to 0.348
        at 25 % scale, seed 0: docs/evaluation.md). Here the masked patches, in
        patch order, are decoded ``K`` at a time (the last pass takes the last
        ``K``, overlapping the one before), each pass with every visible token;
        the visible tokens' features are those of the last pass.

        Args:
            latent: Encoder output ``(M, 1 + N_vis, D)``.
            masks: The masks used by the encoder (without ``ids_target``).
            gsd: GSD per image ``(M,)``.
            prenorm: As :meth:`forward_decoder`.

        Returns:
            ``(M, N, D_dec)`` in patch order.
        """
        k = self.num_decoded_targets
        masked = self.num_patches - masks.num_visible
        # masked patches first, each sample's in patch order (stable sort)
        order = masks.mask.float().argsort(dim=1, descending=True, stable=True)
        order = order[:, :masked]
        out: Tensor | None = None
        for start in range(0, masked, k):
            stop = min(start + k, masked)
            group = replace(masks, ids_target=order[:, stop - k : stop])
            feats = self.forward_decoder(latent, group, gsd, prenorm)
            if out is None:
                out = feats.new_zeros(feats.shape[0], self.num_patches, feats.shape[-1])
            index = self.decoded_ids(group).unsqueeze(-1).expand_as(feats)
            out = out.scatter(1, index, feats)
        assert out is not None
        return out

    def decoded_ids(self, masks: MaskInfo) -> Tensor:
        """Patch of each token :meth:`forward_decoder` returns.

        Args:
            masks: The masks.

        Returns:
            ``(M, N_vis + K)``: ``ids_keep`` then ``ids_target``; ``(M, N)`` patch
            order without ``ids_target``.
        """
        if masks.ids_target is None:
            m = masks.mask.shape[0]
            return torch.arange(self.num_patches, device=masks.mask.device).expand(
                m, -1
            )
        return torch.cat([masks.ids_keep, masks.ids_target], dim=1)

    def cp_pairs(self, feats: Tensor, masks: MaskInfo, b: int) -> tuple[Tensor, Tensor]:
        """Pair the two views' decoder tokens by patch for L_cp (partial decoding).

        L_cp compares token i of one view with token i of the other, so with partial
        reconstruction it counts the patches that *both* views decode. The
        low-scale view's decoded tokens are taken as they are, and each is paired
        with the full-scale view's token of the same patch where that view decoded
        it (token weight 1); the other pairs get weight 0 (shapes stay static).
        Patches visible in both views are always decoded by both while a target is
        decoded with probability K / T (:func:`~torchgeo_xscale.masks.base.choose_targets`
        keeps a uniform subset of each view's targets, shared between the views as
        far as possible), so visible-visible pairs get weight K / T: every kind of
        pair (visible or masked in each view) then enters L_cp with about the share
        it has with full decoding.

        Args:
            feats: Decoder features of both views ``(2B, N_vis + K, D_dec)``,
                view-major, at :meth:`decoded_ids`.
            masks: Their masks (with ``ids_target``).
            b: B.

        Returns:
            Paired features ``(2B, N_vis + K, D_dec)`` (full-scale target first,
            then the low-scale view's tokens, token i of each at the same patch) and
            token weights ``(B, N_vis + K)``.
        """
        ids = self.decoded_ids(masks)
        ids_h, ids_l = ids[:b], ids[b : 2 * b]
        f_h, f_l = feats[:b], feats[b : 2 * b]
        d = f_h.shape[-1]
        grid = f_h.new_zeros(b, self.num_patches, d)
        grid = grid.scatter(1, ids_h.unsqueeze(-1).expand(-1, -1, d), f_h)
        target = torch.gather(grid, 1, ids_l.unsqueeze(-1).expand(-1, -1, d))
        decoded_h = masks.mask.new_zeros(b, self.num_patches)
        decoded_h = decoded_h.scatter(1, ids_h, 1.0).gather(1, ids_l)
        visible = (1 - masks.mask[:b]) * (1 - masks.mask[b : 2 * b])
        share = self.num_decoded_targets / self.num_targets
        pair_weight = 1.0 - (1.0 - share) * visible.gather(1, ids_l)
        return torch.cat([target, f_l], dim=0), decoded_h * pair_weight

    # ------------------------------------------------------------------ losses
    def pool_encoder(self, latent: Tensor) -> Tensor:
        """Encoder feature E(p) for L_cc: mean of visible tokens, or CLS.

        Args:
            latent: ``(M, 1 + N_vis, D)``, already normalised by the encoder.

        Returns:
            ``(M, D)``.
        """
        if self.cc_pool == 'cls':
            return latent[:, 0]
        return latent[:, 1:].mean(dim=1)

    def loss_cc(self, latent: Tensor, b: int, weight: Tensor) -> Tensor:
        """L_cc: InfoNCE between g_f(E(p_l)) and g_f(E(p_h)).

        Args:
            latent: Encoder tokens of both views ``(2B, 1 + N_vis, D)``, view-major.
            b: B.
            weight: Per-sample weight ``(B,)``.

        Returns:
            Scalar loss.
        """
        assert self.projection_head is not None
        z = self.projection_head(self.pool_encoder(latent))
        z_h, z_l = z[:b], z[b : 2 * b]
        return info_nce(z_l, z_h, self.temperature, weight, negatives=self.cc_negatives)

    def loss_cp(
        self,
        feats: Tensor,
        b: int,
        weight: Tensor,
        token_weight: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """L_cp: g_p(low-scale decoder features) predicts the full-scale ones.

        ``feats`` are the last decoder block's outputs (before ``decoder_norm``) of
        both views, token-aligned: token ``j`` of ``feats[k]`` and of
        ``feats[b + k]`` lie over the same ground (same-footprint views). Which
        features are compared is ``cp_target``:

        * ``decoder_norm``: ``decoder_norm(x)``, the paper/public code read literally.
          Degenerate at small scale: the decoder grows a component shared by all
          tokens, the normalised features of all tokens become nearly the same
          vector and L_cp falls to ~0.01 in a few dozen steps (the collapse signal
          ``cp_target_std`` drops to ~0.1), without the low view predicting much;
        * ``block``: ``x`` itself;
        * ``standardized``: ``x`` and the prediction each standardised per token
          (zero mean, unit variance over channels), so the loss is
          ``2 (1 - Pearson correlation)`` per token. Scale-free, but it collapses
          like ``decoder_norm``: a component shared by all tokens survives the
          per-token standardisation;
        * ``instance_norm``: each channel of ``x`` and of the prediction normalised
          over the tokens of its sample (zero mean, unit variance; data2vec's target
          normalisation). A component shared by all tokens is removed and the
          token-to-token variation is rescaled to 1, so neither growing a shared
          component nor shrinking the features lowers the loss; what is left is
          predicting how the full-scale view's tokens differ from each other.

        * ``batch_centered``: target and prediction each through
          :func:`batch_center`: positional patterns, which both views share token
          for token and which make ``instance_norm``'s loss fall to ~0.01, are
          removed; what is left is how the samples of the batch differ.

        The collapse signal ``cp_target_std`` is comparable between the forms: the
        spread (:func:`feature_spread`) over the counted tokens of the full-scale
        view's features before any normalisation over tokens, ``decoder_norm(x)``
        for the literal form, ``x`` standardised per token for the others (about
        0.5 at initialisation, 0.3-0.4 after training without L_cp, about 0.1 when
        collapsed); ``cp_pred_std`` that of the prediction, standardised per token.

        Args:
            feats: Last-block decoder features ``(2B, N, D_dec)``, view-major (full
                scale first), token-aligned between the views.
            b: B.
            weight: Per-sample weight ``(B,)``.
            token_weight: Optional ``(B, N)`` weight of each token pair (e.g. 1 on
                the positions masked in the low-scale view, ``cp_positions``, and 0
                on tokens one view did not decode with partial reconstruction, see
                :meth:`cp_pairs`); None counts all.
            valid: Optional ``(B, N)``, True on the token pairs that hold features of
                both views (partial reconstruction); ``instance_norm`` takes its
                statistics over these only. None: all.

        Returns:
            The scalar loss and detached diagnostics: ``cp_target_std`` and
            ``cp_pred_std``, the per-channel std of target and prediction across the
            counted tokens of the batch (see :func:`feature_spread`), the collapse
            signal: near 0 when all tokens share one feature vector.
        """
        assert self.predictor is not None
        d = feats.shape[-1]
        with torch.no_grad():
            high = feats[:b]
            high = (
                self.decoder_norm(high)
                if self.cp_target == 'decoder_norm'
                else F.layer_norm(high.float(), (d,))
            )
            spread = feature_spread(high, token_weight)
        if self.cp_target == 'decoder_norm':
            feats = self.decoder_norm(feats)
        target, low = feats[:b], feats[b : 2 * b]
        if self.cp_stop_grad:
            target = target.detach()
        pred = self.predictor(low)
        stats = {
            'cp_target_std': spread,
            'cp_pred_std': feature_spread(
                F.layer_norm(pred.detach().float(), (d,)), token_weight
            ),
        }
        if self.cp_negatives:  # token-averaged features, before any normalisation
            if token_weight is None:
                pooled_pred, pooled_target = pred.mean(1), target.mean(1)
            else:
                tw = token_weight.unsqueeze(-1)
                tw = tw / tw.sum(1, keepdim=True).clamp_min(1e-6)
                pooled_pred, pooled_target = (pred * tw).sum(1), (target * tw).sum(1)
            loss = info_nce(pooled_pred, pooled_target, self.temperature, weight)
            return loss, stats
        if self.cp_target == 'standardized':
            pred = F.layer_norm(pred.float(), (d,), eps=1e-6)
            target = F.layer_norm(target.float(), (d,), eps=1e-6)
        elif self.cp_target == 'batch_centered':
            pred, target = batch_center(pred, weight), batch_center(target, weight)
        elif self.cp_target == 'instance_norm':
            # per sample and channel, over the sample's (decoded) tokens
            pred = instance_normalize(pred, valid)
            target = instance_normalize(target, valid)
        return cross_prediction_loss(pred, target, weight, token_weight), stats

    def loss_re(
        self, pred: Tensor, images: Tensor, masks: MaskInfo, pixel_valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """L_re: reconstruction of the masked patches of all views.

        Args:
            pred: Predicted patches ``(M, N, P*P*C)``, or ``(M, K, P*P*C)`` at
                ``masks.ids_target`` (partial reconstruction: L_re counts those
                targets only).
            images: Views ``(M, C, H, W)``.
            masks: Their masks.
            pixel_valid: ``(M, 1, H, W)`` validity (0 also for skipped samples).

        Returns:
            The loss and the target patches ``(M, N, P*P*C)``.
        """
        target = patchify(images, self.patch_size)
        valid = patchify(
            pixel_valid.expand_as(images).to(images.dtype), self.patch_size
        )
        if masks.ids_target is None:
            loss = reconstruction_loss(
                pred, target, masks.mask, valid, self.norm_pix_loss, masks.loss_weight
            )
            return loss, target
        ids = masks.ids_target

        def at(x: Tensor) -> Tensor:
            return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

        lw = masks.loss_weight
        loss = reconstruction_loss(
            pred,
            at(target),
            masks.mask.gather(1, ids),
            at(valid),
            self.norm_pix_loss,
            None if lw is None else lw.gather(1, ids),
        )
        return loss, target

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        views: Tensor,
        gsd: Tensor | None = None,
        valid: Tensor | None = None,
        sample_weight: Tensor | None = None,
        generator: torch.Generator | None = None,
        masks: MaskInfo | None = None,
    ) -> CrossScaleMAEOutput:
        """Mask both views, encode, decode, and compute the losses.

        Args:
            views: ``(B, V, C, H, W)``; view 0 full scale, view 1 down-scaled.
            gsd: GSD of each view in metres ``(B, V)``.
            valid: Pixel validity ``(B, V, 1, H, W)`` (nodata/NaN excluded from L_re).
            sample_weight: ``(B,)``; 0 drops a sample from every loss (e.g. a tile
                with too many invalid pixels).
            generator: Optional random generator for the masks.
            masks: Optional precomputed masks, view-major ``(V*B, ...)`` as
                :meth:`draw_masks` returns them (default: drawn here).

        Returns:
            A :class:`CrossScaleMAEOutput`.

        Raises:
            ValueError: If the input shape does not match the model.
        """
        if views.ndim != 5:
            msg = f'views must be (B, V, C, H, W), got shape {tuple(views.shape)}'
            raise ValueError(msg)
        b, v, c, h, w = views.shape
        expected = self.encoder.patch_embed.img_size
        if c != self.in_chans or (h, w) != tuple(expected):
            msg = (
                f'views have {c} bands of {h}x{w} px; the model expects {self.in_chans} '
                f'bands of {expected[0]}x{expected[1]} px (in_chans/img_size)'
            )
            raise ValueError(msg)
        if v < 2 and (self.use_cc or self.use_cp):
            msg = f'loss_cc/loss_cp need 2 views, got {v}; disable them for plain MAE'
            raise ValueError(msg)
        v = 2 if (self.use_cc or self.use_cp) else v
        images = views[:, :v].transpose(0, 1).reshape(v * b, c, h, w)
        flat_gsd = None if gsd is None else gsd[:, :v].transpose(0, 1).reshape(-1)
        weight = (
            torch.ones(b, device=views.device)
            if sample_weight is None
            else sample_weight.to(views.device, torch.float32)
        )
        if valid is None:
            pixel_valid = torch.ones(v * b, 1, h, w, device=views.device)
        else:
            pixel_valid = valid[:, :v].transpose(0, 1).reshape(v * b, 1, h, w).float()
        pixel_valid = pixel_valid * weight.repeat(v).view(-1, 1, 1, 1)

        if masks is None:
            masks = self.draw_masks(b, v, views.device, generator)
        else:
            masks = self.with_targets(masks, v, generator)
        latent = self.forward_encoder(images, masks, flat_gsd)

        parts: dict[str, Tensor] = {}
        total = views.new_zeros(())
        pred = target = decoded = None
        w_re, w_cc, w_cp = self.loss_weights
        if self.use_cc:
            parts['cc'] = self.loss_cc(latent, b, weight)
            total = total + w_cc * parts['cc']
        stats: dict[str, Tensor] = {}
        if self.has_decoder:
            block_out = self.forward_decoder(latent, masks, flat_gsd, prenorm=True)
            ids_target = masks.ids_target
            if self.use_re:
                assert self.decoder_pred is not None
                feats = self.decoder_norm(block_out)
                if ids_target is None:
                    pred = self.decoder_pred(feats)
                    parts['re'], target = self.loss_re(pred, images, masks, pixel_valid)
                else:  # only the mask tokens (after the visible ones) are predicted
                    kept = self.decoder_pred(feats[:, masks.num_visible :])
                    parts['re'], target = self.loss_re(kept, images, masks, pixel_valid)
                    index = ids_target.unsqueeze(-1).expand_as(kept)
                    pred = kept.new_zeros(*target.shape).scatter(1, index, kept)
                total = total + w_re * parts['re']
            if self.use_cp:
                # Token pairs L_cp counts (None: all), in patch order; see cp_positions.
                positions = {
                    'all': None,
                    'masked': masks.mask[b : 2 * b],  # masked in the low-scale view
                    'visible': 1.0 - masks.mask[:b],  # visible in the full-scale view
                }[self.cp_positions]
                if ids_target is None:
                    parts['cp'], stats = self.loss_cp(block_out, b, weight, positions)
                else:
                    pairs, pair_weight = self.cp_pairs(block_out, masks, b)
                    both = pair_weight > 0  # tokens with features of both views
                    if positions is not None:  # at the low view's decoded patches
                        ids_low = self.decoded_ids(masks)[b : 2 * b]
                        pair_weight = pair_weight * positions.gather(1, ids_low)
                    parts['cp'], stats = self.loss_cp(
                        pairs, b, weight, pair_weight, valid=both
                    )
                total = total + w_cp * parts['cp']
            if ids_target is not None:
                decoded = masks.mask.new_zeros(masks.mask.shape)
                decoded = decoded.scatter(1, ids_target, 1.0) * masks.mask

        def by_view(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.reshape(v, b, *x.shape[1:]).transpose(0, 1)

        return CrossScaleMAEOutput(
            loss=total,
            parts={k: p.detach() for k, p in parts.items()},
            pred=by_view(pred),
            mask=by_view(masks.mask),
            target=by_view(target),
            stats=stats,
            decoded=by_view(decoded),
        )
