"""ViT encoder of Cross-Scale MAE: timm's VisionTransformer with pluggable attention.

The parameter names are timm's, so a state dict of :class:`CrossScaleViT` loads into
``timm.create_model('vit_base_patch16_224', ...)`` and back unchanged. Two additions:

* the attention of every block comes from :mod:`torchgeo_xscale.models.attention`;
* :meth:`CrossScaleViT.forward_encoder` runs the encoder on a subset of visible patch
  tokens (MAE), and positional embeddings can optionally encode each sample's GSD
  (Scale-MAE style).

**Positional embeddings.** MAE's fixed 2-D sin-cos embedding is a persistent *buffer*
named ``pos_embed`` (not a frozen ``nn.Parameter``): it has the same state-dict key as
timm's learned one, so state dicts load both ways, but it is not among the
parameters, so freezing and unfreezing an encoder (TorchGeo's ``freeze_backbone``,
SMP's ``freeze_encoder``/``unfreeze_encoder``) never makes it trainable. It is
generated for any ``(rows, cols)`` patch grid, and regenerated exactly (not
interpolated) when the grid changes. ``pos_embed='learn'`` gives timm's learned,
trainable embedding instead. The embeddings themselves are made and fitted by
:mod:`torchgeo_xscale.models.pos_embed` (imported here).

**Residual norm style.** :class:`PostNormBlock` computes ``x = LN(x + f(x))`` with
timm's parameter names: the blocks of the authors' xFormers encoder.
:func:`set_residual_norm_style` switches the blocks of a model between the two.
"""

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block as TimmBlock
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import build_attention
from .local_attention import set_grid_size
from .pos_embed import fit_pos_embed, sincos_pos_embed

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


class PostNormBlock(Block):
    """A transformer block with post-norm residuals, ``x = LN(x + f(x))``.

    The parameter names are timm's :class:`~timm.models.vision_transformer.Block`
    (``norm1``, ``attn``, ``norm2``, ``mlp``); only the order of operations differs.
    This is the block of the authors' xFormers encoder (``residual_norm_style='post'``):
    ``x = LN_att(x + Attn(x))``, then ``x = LN_ff(x + MLP(x))``.
    """

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        pos: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """Attention and MLP, each followed by residual addition and LayerNorm.

        Args:
            x: Tokens ``(B, N, D)``.
            pos: Grid positions ``(B, N, 2)``, -1 for prefix tokens.
            attn_mask: Optional attention mask/bias.
            is_causal: Unsupported; kept for timm's call signature.

        Returns:
            Tokens ``(B, N, D)``.
        """
        attn = self.attn(x, pos=pos, attn_mask=attn_mask)
        x = self.norm1(x + self.drop_path1(self.ls1(attn)))
        return self.norm2(x + self.drop_path2(self.ls2(self.mlp(x))))


def set_residual_norm_style(module: nn.Module, style: str) -> nn.Module:
    """Make every transformer block of *module* pre-norm (timm) or post-norm.

    Args:
        module: A :class:`CrossScaleViT` or :class:`CrossScaleMAE` (changed in place).
        style: ``pre`` or ``post``.

    Returns:
        *module*.

    Raises:
        ValueError: If *style* is not ``pre`` or ``post``.
    """
    if style not in ('pre', 'post'):
        msg = f"residual_norm_style={style!r}; expected 'pre' or 'post'"
        raise ValueError(msg)
    cls = PostNormBlock if style == 'post' else Block
    for m in module.modules():
        if isinstance(m, Block):
            m.__class__ = cls  # same parameters, different order of operations
    return module


def residual_norm_style(module: nn.Module) -> str:
    """``post`` if *module* has :class:`PostNormBlock` blocks, else ``pre``.

    Args:
        module: Any model.

    Returns:
        ``pre`` or ``post``.
    """
    post = any(isinstance(m, PostNormBlock) for m in module.modules())
    return 'post' if post else 'pre'


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


class CrossScaleViT(VisionTransformer):
    """Vision Transformer encoder of Cross-Scale MAE.

    A :class:`timm.models.vision_transformer.VisionTransformer` (``forward_features``,
    ``forward_head``, ``num_features``, any ``in_chans``) with fixed sin-cos positional
    embeddings (as MAE) held in a buffer (see the module docstring), pluggable
    attention, and a masked-token encoder pass.

    Attributes:
        fixed_pos_embed: ``pos_embed`` is the fixed sin-cos buffer (else timm's
            learned parameter).
    """

    def __init__(
        self,
        *args: Any,
        attention: str = 'sdpa',
        attention_options: dict[str, Any] | None = None,
        gsd_pos_embed: bool = False,
        reference_gsd: float = 1.0,
        pos_embed: str = 'sincos',
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
            pos_embed: ``sincos`` (default): MAE's fixed 2-D sin-cos embedding, a
                buffer; ``learn``: timm's learned embedding, a parameter.
            **kwargs: Passed to :class:`~timm.models.vision_transformer.VisionTransformer`
                (``final_norm=False`` builds ``norm`` as the identity, as the
                authors' encoder).

        Raises:
            ValueError: If *pos_embed* is not ``sincos`` or ``learn``.
        """
        if pos_embed not in ('sincos', 'learn'):
            msg = f"pos_embed={pos_embed!r}; expected 'sincos' or 'learn'"
            raise ValueError(msg)
        kwargs.setdefault('norm_layer', partial(nn.LayerNorm, eps=1e-6))
        kwargs.setdefault('qkv_bias', True)
        kwargs['block_fn'] = partial(
            Block, attention=attention, attention_options=attention_options
        )
        kwargs['pos_embed'] = 'learn'  # replaced by the buffer below when fixed
        super().__init__(*args, **kwargs)
        self.attention = attention
        self.gsd_pos_embed = gsd_pos_embed
        self.reference_gsd = reference_gsd
        self.fixed_pos_embed = pos_embed == 'sincos'
        if self.fixed_pos_embed:
            self._register_sincos()
        # Local-window attention needs the patch grid for its fast partition path.
        set_grid_size(self, self.patch_embed.grid_size)

    def _register_sincos(self) -> None:
        """(Re)make ``pos_embed`` the fixed sin-cos buffer of the current grid."""
        ref = (
            self.cls_token
            if self.cls_token is not None
            else self.patch_embed.proj.weight
        )
        pe = sincos_pos_embed(self.embed_dim, self.grid_size).to(ref.device, ref.dtype)
        self._parameters.pop('pos_embed', None)
        self.register_buffer('pos_embed', pe, persistent=True)

    def use_learned_pos_embed(self) -> None:
        """Turn the fixed sin-cos buffer into timm's learned (trainable) parameter.

        Done when weights with a learned embedding (e.g. timm's or TorchGeo's MAE)
        are loaded, so that fine-tuning trains it as its authors did.
        """
        if self.fixed_pos_embed:
            pe = self._buffers.pop('pos_embed')
            assert pe is not None
            self.pos_embed = nn.Parameter(pe.clone())
            self.fixed_pos_embed = False

    def init_weights(self, mode: str = '', needs_reset: bool = True) -> None:
        """Initialise as timm does; the fixed sin-cos embedding stays what it is.

        Args:
            mode: timm's weight initialisation mode.
            needs_reset: Passed to timm.
        """
        super().init_weights(mode, needs_reset)
        if getattr(self, 'fixed_pos_embed', False):
            self._register_sincos()

    def set_input_size(
        self,
        img_size: int | tuple[int, int] | None = None,
        patch_size: int | tuple[int, int] | None = None,
    ) -> None:
        """Change the input size (timm's API); a fixed embedding is regenerated.

        Args:
            img_size: New input size.
            patch_size: New patch size.
        """
        super().set_input_size(img_size, patch_size)  # type: ignore[arg-type]
        if self.fixed_pos_embed:
            self._register_sincos()

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, cols) at the configured image size."""
        h, w = self.patch_embed.grid_size
        return int(h), int(w)

    def pos_embed_for_grid(self, grid_size: tuple[int, int]) -> Tensor:
        """Positional embeddings (CLS first) for a patch grid, fitted if it differs.

        Args:
            grid_size: Patch grid ``(rows, cols)``.

        Returns:
            ``(1, 1 + rows * cols, D)``: generated exactly for a fixed sin-cos
            embedding, resampled from the stored one for a learned embedding.

        Raises:
            ValueError: Without absolute positional embeddings.
        """
        pe = self.pos_embed
        if pe is None:
            msg = 'CrossScaleViT needs absolute position embeddings (pos_embed)'
            raise ValueError(msg)
        grid = (int(grid_size[0]), int(grid_size[1]))
        if grid == self.grid_size:
            return pe
        if self.fixed_pos_embed:
            return sincos_pos_embed(self.embed_dim, grid).to(pe.device, pe.dtype)
        return fit_pos_embed(pe, grid, self.grid_size)

    def _pos_embed(self, x: Tensor) -> Tensor:
        """Add positional embeddings and prepend CLS (timm's hook; any grid if dynamic).

        Args:
            x: Patch tokens ``(B, N, D)``, or ``(B, H, W, D)`` with ``dynamic_img_size``.

        Returns:
            Tokens ``(B, 1 + N, D)``.
        """
        if x.ndim == 4:
            grid = (int(x.shape[1]), int(x.shape[2]))
            x = x.flatten(1, 2)
        else:
            grid = self.grid_size
        pe = self.pos_embed_for_grid(grid)
        assert self.cls_token is not None  # class_token=True is required
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return self.pos_drop(torch.cat([cls, x], dim=1) + pe)

    def patch_pos_embed(
        self,
        batch_size: int,
        gsd: Tensor | None = None,
        grid_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Positional embeddings of the CLS and patch tokens.

        Args:
            batch_size: B.
            gsd: Per-sample GSD in metres ``(B,)``; used when ``gsd_pos_embed``.
            grid_size: Patch grid; default the configured one.

        Returns:
            ``(B or 1, 1 + N, D)``.

        Raises:
            ValueError: Without absolute positional embeddings, or without *gsd*
                when ``gsd_pos_embed``.
        """
        grid = grid_size or self.grid_size
        pe = self.pos_embed_for_grid(grid)
        if self.gsd_pos_embed:
            if gsd is None:
                msg = 'gsd_pos_embed=True needs the GSD of every sample (gsd=...)'
                raise ValueError(msg)
            ratio = gsd / self.reference_gsd
            return sincos_pos_embed(self.embed_dim, grid, ratio).to(pe.device, pe.dtype)
        return pe

    def forward_encoder(
        self,
        x: Tensor,
        ids_keep: Tensor | None = None,
        gsd: Tensor | None = None,
        groups: Tensor | None = None,
    ) -> Tensor:
        """Encode the visible patches of images (MAE encoder).

        Args:
            x: Images ``(B, C, H, W)`` at the configured ``img_size`` (any size
                divisible by the patch size with ``dynamic_img_size=True``).
            ids_keep: Flat indices of visible patches ``(B, N_vis)``; None keeps all.
            gsd: Per-sample GSD in metres ``(B,)``; used when ``gsd_pos_embed``.
            groups: Optional group of each kept patch ``(B, N_vis)`` (LoMaR's
                windows): patches then attend only within their group (see
                :func:`group_attention_mask`).

        Returns:
            Tokens ``(B, 1 + N_vis, D)``, CLS first, after the final ``norm`` (the
            identity for weights without one, e.g. the authors').
        """
        b = x.shape[0]
        tokens = self.patch_embed(x)  # (B, N, D), or (B, H, W, D) if dynamic
        if tokens.ndim == 4:
            grid = (int(tokens.shape[1]), int(tokens.shape[2]))
            tokens = tokens.flatten(1, 2)
        else:
            grid = self.grid_size
        pe = self.patch_pos_embed(b, gsd, grid)
        tokens = tokens + pe[:, 1:]
        if ids_keep is None:
            ids_keep = torch.arange(tokens.shape[1], device=x.device).expand(b, -1)
        else:
            index = ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, 1, index)
        assert self.cls_token is not None  # class_token=True is required
        cls = (self.cls_token + pe[:, :1]).expand(b, -1, -1)
        tokens = self.pos_drop(torch.cat([cls, tokens], dim=1))
        tokens = self.norm_pre(tokens)
        pos = grid_positions(ids_keep, grid[1], num_prefix=1)
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
