"""ViT encoder of Cross-Scale MAE: timm's VisionTransformer with pluggable attention.

The parameter names are timm's, so a state dict of :class:`CrossScaleViT` loads into
``timm.create_model('vit_base_patch16_224', ...)`` and back unchanged. Two additions:

* the attention of every block comes from :mod:`torchgeo_xscale.models.attention`;
* :meth:`CrossScaleViT.forward_encoder` runs the encoder on a subset of visible patch
  tokens (MAE), and positional embeddings can optionally encode each sample's GSD
  (Scale-MAE style), reusing TorchGeo's
  :func:`~torchgeo.models.scale_mae.get_2d_sincos_pos_embed_with_resolution`.
"""

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block as TimmBlock
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchgeo.models.scale_mae import get_2d_sincos_pos_embed_with_resolution

from .attention import build_attention
from .local_attention import set_grid_size

#: Encoder sizes: (embed_dim, depth, num_heads).
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    'tiny': (192, 12, 3),
    'small': (384, 12, 6),
    'base': (768, 12, 12),
    'large': (1024, 24, 16),
}


class Block(TimmBlock):
    """timm transformer block whose attention is a registered backend.

    Parameter names equal timm's ``Block``; ``forward`` also takes token grid
    positions for position-aware backends.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attention: str = 'sdpa',
        attention_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Initialise the block.

        Args:
            dim: Token dimension D.
            num_heads: Number of attention heads.
            attention: Attention backend name.
            attention_options: Extra backend options (e.g. ``window_size``).
            **kwargs: Passed to :class:`timm.models.vision_transformer.Block`.
        """
        super().__init__(dim, num_heads, **kwargs)
        self.attn = build_attention(
            attention,
            dim,
            num_heads=num_heads,
            qkv_bias=kwargs.get('qkv_bias', False),
            qk_norm=kwargs.get('qk_norm', False),
            proj_bias=kwargs.get('proj_bias', True),
            attn_drop=kwargs.get('attn_drop', 0.0),
            proj_drop=kwargs.get('proj_drop', 0.0),
            norm_layer=kwargs.get('norm_layer', nn.LayerNorm),
            **(attention_options or {}),
        )

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        pos: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """Pre-norm attention and MLP with residuals.

        Args:
            x: Tokens ``(B, N, D)``.
            pos: Grid positions ``(B, N, 2)`` of the tokens, -1 for prefix tokens.
            attn_mask: Optional attention mask/bias.
            is_causal: Unsupported; kept for timm's call signature.

        Returns:
            Tokens ``(B, N, D)``.
        """
        attn = self.attn(self.norm1(x), pos=pos, attn_mask=attn_mask)
        x = x + self.drop_path1(self.ls1(attn))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def run_blocks(
    blocks: nn.Sequential,
    x: Tensor,
    pos: Tensor | None,
    grad_checkpointing: bool,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """Run transformer blocks in sequence, optionally with activation checkpointing.

    Args:
        blocks: The blocks.
        x: Tokens ``(B, N, D)``.
        pos: Grid positions ``(B, N, 2)`` or None.
        grad_checkpointing: Recompute activations in the backward pass.
        attn_mask: Optional attention mask (bool, True = attend) for every block.

    Returns:
        Tokens ``(B, N, D)``.
    """
    for blk in blocks:
        if grad_checkpointing and x.requires_grad:
            x = checkpoint(blk, x, pos, attn_mask, use_reentrant=False)
        elif attn_mask is not None:
            x = blk(x, pos, attn_mask)
        else:
            x = blk(x, pos)
    return x


def group_attention_mask(groups: Tensor, num_prefix: int = 1) -> Tensor:
    """Attention mask that keeps each group of tokens to itself (LoMaR's windows).

    A patch token attends only to the tokens of its own group; the prefix (CLS)
    tokens attend to every token, so they summarise all groups without carrying
    information from one group to another.

    Args:
        groups: Group of each patch token ``(B, N)``.
        num_prefix: Prefix tokens before the patch tokens.

    Returns:
        Boolean mask ``(B, 1, P + N, P + N)``, True where attention is allowed.
    """
    g = F.pad(groups, (num_prefix, 0), value=-1)
    allowed = g[:, :, None] == g[:, None, :]
    allowed[:, :num_prefix, :] = True
    return allowed[:, None]


def grid_positions(ids: Tensor, grid_w: int, num_prefix: int = 0) -> Tensor:
    """Grid (row, col) positions of patch tokens from their flat indices.

    Args:
        ids: Flat patch indices ``(B, N)``.
        grid_w: Width of the patch grid.
        num_prefix: Number of prefix tokens (CLS) to prepend with position -1.

    Returns:
        Positions ``(B, num_prefix + N, 2)``.
    """
    pos = torch.stack([ids // grid_w, ids % grid_w], dim=-1)
    if num_prefix:
        prefix = pos.new_full((ids.shape[0], num_prefix, 2), -1)
        pos = torch.cat([prefix, pos], dim=1)
    return pos


def sincos_pos_embed(
    embed_dim: int, grid_size: int, gsd_ratio: Tensor | None = None
) -> Tensor:
    """Fixed 2-D sin-cos positional embeddings, optionally scaled by GSD.

    Args:
        embed_dim: Embedding dimension D.
        grid_size: Patch grid side (square grids).
        gsd_ratio: Per-sample ``gsd / reference_gsd`` ``(B,)``; None for ratio 1.

    Returns:
        ``(B, 1 + grid_size**2, D)`` embeddings (zeros for the CLS token), with
        ``B = 1`` when *gsd_ratio* is None.
    """
    if gsd_ratio is None:
        gsd_ratio = torch.ones(1)
    return get_2d_sincos_pos_embed_with_resolution(
        embed_dim, grid_size, gsd_ratio.float(), cls_token=True
    )


class CrossScaleViT(VisionTransformer):
    """Vision Transformer encoder of Cross-Scale MAE.

    A :class:`timm.models.vision_transformer.VisionTransformer` (``forward_features``,
    ``forward_head``, ``num_features``, any ``in_chans``) with fixed sin-cos positional
    embeddings (as MAE), pluggable attention, and a masked-token encoder pass.
    """

    def __init__(
        self,
        *args: Any,
        attention: str = 'sdpa',
        attention_options: dict[str, Any] | None = None,
        gsd_pos_embed: bool = False,
        reference_gsd: float = 1.0,
        **kwargs: Any,
    ) -> None:
        """Initialise the encoder.

        Args:
            *args: Passed to :class:`~timm.models.vision_transformer.VisionTransformer`.
            attention: Attention backend (see
                :func:`~torchgeo_xscale.models.attention.list_attention_backends`).
            attention_options: Backend options, e.g. ``{'window_size': 4}``.
            gsd_pos_embed: Scale positional embeddings by each sample's GSD divided by
                *reference_gsd* (Scale-MAE's GSD positional encoding).
            reference_gsd: GSD in metres at which positions are unscaled.
            **kwargs: Passed to :class:`~timm.models.vision_transformer.VisionTransformer`.
        """
        kwargs.setdefault('norm_layer', partial(nn.LayerNorm, eps=1e-6))
        kwargs.setdefault('qkv_bias', True)
        kwargs['block_fn'] = partial(
            Block, attention=attention, attention_options=attention_options
        )
        super().__init__(*args, **kwargs)
        self.attention = attention
        self.gsd_pos_embed = gsd_pos_embed
        self.reference_gsd = reference_gsd
        grid_h, grid_w = self.patch_embed.grid_size
        if self.pos_embed is not None and grid_h == grid_w:
            with torch.no_grad():
                self.pos_embed.copy_(sincos_pos_embed(self.embed_dim, grid_h))
            self.pos_embed.requires_grad_(False)
        # Local-window attention needs the patch grid for its fast partition path.
        set_grid_size(self, self.patch_embed.grid_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, cols) at the configured image size."""
        h, w = self.patch_embed.grid_size
        return int(h), int(w)

    def patch_pos_embed(self, batch_size: int, gsd: Tensor | None = None) -> Tensor:
        """Positional embeddings of the CLS and patch tokens.

        Args:
            batch_size: B.
            gsd: Per-sample GSD in metres ``(B,)``; used when ``gsd_pos_embed``.

        Returns:
            ``(B or 1, 1 + N, D)``.
        """
        if self.pos_embed is None:
            msg = 'CrossScaleViT needs absolute position embeddings (pos_embed)'
            raise ValueError(msg)
        if self.gsd_pos_embed:
            if gsd is None:
                msg = 'gsd_pos_embed=True needs the GSD of every sample (gsd=...)'
                raise ValueError(msg)
            pe = sincos_pos_embed(
                self.embed_dim, self.grid_size[0], gsd / self.reference_gsd
            )
            return pe.to(self.pos_embed.device, self.pos_embed.dtype)
        return self.pos_embed

    def forward_encoder(
        self,
        x: Tensor,
        ids_keep: Tensor | None = None,
        gsd: Tensor | None = None,
        groups: Tensor | None = None,
    ) -> Tensor:
        """Encode the visible patches of images (MAE encoder).

        Args:
            x: Images ``(B, C, H, W)`` at the configured ``img_size``.
            ids_keep: Flat indices of visible patches ``(B, N_vis)``; None keeps all.
            gsd: Per-sample GSD in metres ``(B,)``; used when ``gsd_pos_embed``.
            groups: Optional group of each kept patch ``(B, N_vis)`` (LoMaR's
                windows): patches then attend only within their group (see
                :func:`group_attention_mask`).

        Returns:
            Normalised tokens ``(B, 1 + N_vis, D)``, CLS first.
        """
        b = x.shape[0]
        tokens = self.patch_embed(x)  # (B, N, D)
        pe = self.patch_pos_embed(b, gsd)
        tokens = tokens + pe[:, 1:]
        grid_w = self.grid_size[1]
        if ids_keep is None:
            ids_keep = torch.arange(tokens.shape[1], device=x.device).expand(b, -1)
        else:
            index = ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, 1, index)
        assert self.cls_token is not None  # class_token=True is required
        cls = (self.cls_token + pe[:, :1]).expand(b, -1, -1)
        tokens = self.pos_drop(torch.cat([cls, tokens], dim=1))
        tokens = self.norm_pre(tokens)
        pos = grid_positions(ids_keep, grid_w, num_prefix=1)
        mask = None if groups is None else group_attention_mask(groups)
        tokens = run_blocks(self.blocks, tokens, pos, self.grad_checkpointing, mask)
        return self.norm(tokens)

    def forward_features(  # type: ignore[override]
        self, x: Tensor, gsd: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        """All tokens of images through the encoder (timm's API).

        Args:
            x: Images ``(B, C, H, W)``.
            gsd: Per-sample GSD ``(B,)``, used when ``gsd_pos_embed``.
            **kwargs: timm's ``attn_mask``/``is_causal``; unsupported when set.

        Returns:
            Tokens ``(B, 1 + N, D)``.

        Raises:
            ValueError: If an attention mask or causal attention is requested.
        """
        if kwargs.get('attn_mask') is not None or kwargs.get('is_causal'):
            msg = 'CrossScaleViT does not take attn_mask/is_causal'
            raise ValueError(msg)
        return self.forward_encoder(x, None, gsd)


def resize_pos_embed(
    state_dict: dict[str, Tensor], model: VisionTransformer
) -> dict[str, Tensor]:
    """Resample ``pos_embed`` in *state_dict* to *model*'s patch grid (if it differs).

    Args:
        state_dict: An encoder state dict (timm names).
        model: The model it will be loaded into.

    Returns:
        The state dict, with ``pos_embed`` resampled when needed.
    """
    pe = state_dict.get('pos_embed')
    if pe is None or model.pos_embed is None or pe.shape == model.pos_embed.shape:
        return state_dict
    state_dict = dict(state_dict)
    state_dict['pos_embed'] = resample_abs_pos_embed(
        pe, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=1
    )
    return state_dict


def build_vit(size: str = 'base', **kwargs: Any) -> CrossScaleViT:
    """Build a :class:`CrossScaleViT` encoder of a named size.

    Args:
        size: One of ``tiny``, ``small``, ``base``, ``large``.
        **kwargs: Passed to :class:`CrossScaleViT` (``img_size``, ``patch_size``,
            ``in_chans``, ``attention``...).

    Returns:
        The encoder, without classification head (``num_classes=0``) unless given.

    Raises:
        ValueError: If *size* is unknown.
    """
    if size not in VIT_SIZES:
        msg = f'size={size!r} is not a ViT size; expected one of {list(VIT_SIZES)}'
        raise ValueError(msg)
    embed_dim, depth, num_heads = VIT_SIZES[size]
    kwargs.setdefault('embed_dim', embed_dim)
    kwargs.setdefault('depth', depth)
    kwargs.setdefault('num_heads', num_heads)
    kwargs.setdefault('num_classes', 0)
    return CrossScaleViT(**kwargs)
