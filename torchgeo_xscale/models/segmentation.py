"""Our ViTs as segmentation-models-pytorch encoders, for UPerNet.

:class:`XScaleViTEncoder` is a :class:`~torchgeo_xscale.models.vit.CrossScaleViT` and an
SMP :class:`~segmentation_models_pytorch.encoders._base.EncoderMixin`: it returns the
tokens of four blocks (4/6/8/12 of 12, scaled to the depth) turned into a pyramid at
strides 4/8/16/32 by :class:`Feature2Pyramid` (deconvolutions / identity / max-pool).
Importing this module registers ``xscale_vit_tiny|small|base|large`` in SMP's encoder
registry, so that both of these build::

    smp.UPerNet(encoder_name='xscale_vit_base', encoder_weights=None, classes=6)
    torchgeo.tasks.SemanticSegmentation(model='upernet', backbone='xscale_vit_base')

Pretrained weights are an encoder state dict with timm names (what
:class:`~torchgeo_xscale.models.CrossScaleMAE` ``.encoder`` saves): loading one into
the encoder (:meth:`XScaleViTEncoder.load_state_dict`, which TorchGeo's
``SemanticSegmentation(weights=...)`` calls) fits the positional embeddings
(:func:`~torchgeo_xscale.models.vit.fit_pos_embed`) and adapts the patch embedding to
the input channels (timm's :func:`~timm.models.adapt_input_conv`, as TorchGeo does).
UPerNet with weights (an entry, its name, a file) is
:func:`torchgeo_xscale.checkpoints.upernet`; :func:`build_upernet` here builds it
without.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders._base import EncoderMixin
from timm.models import adapt_input_conv
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys
from torch.utils.checkpoint import checkpoint

from .pos_embed import fit_pos_embed
from .vit import VIT_SIZES, CrossScaleViT, grid_positions

__all__ = (
    'FCNHead',
    'Feature2Pyramid',
    'XScaleViTEncoder',
    'build_upernet',
    'pyramid_block_indices',
    'register_encoder',
)

#: Prefix of the SMP encoder names registered here.
ENCODER_PREFIX = 'xscale_vit_'

#: Output strides of the four pyramid levels.
PYRAMID_STRIDES = (4, 8, 16, 32)


def pyramid_block_indices(num_blocks: int) -> tuple[int, int, int, int]:
    """Blocks whose outputs feed the pyramid: 4/6/8/12 of 12, scaled to the depth.

    Args:
        num_blocks: Transformer depth.

    Returns:
        Four 0-based block indices, e.g. ``(3, 5, 7, 11)`` for 12 and
        ``(7, 11, 15, 23)`` for 24 blocks.
    """
    return tuple(max(0, round(num_blocks * k / 12) - 1) for k in (4, 6, 8, 12))  # type: ignore[return-value]


class Feature2Pyramid(nn.Module):
    """Token maps of one stride to a 4-level pyramid (strides 4/8/16/32).

    Each level rescales its ``(B, D, H/P, W/P)`` map by ``P / stride``: 2x transposed
    convolutions (BatchNorm + GELU between two) to go finer, identity, or max-pooling
    to go coarser, as in BEiT/MAE's UPerNet.
    """

    def __init__(
        self,
        embed_dim: int,
        patch_size: int = 16,
        strides: Sequence[int] = PYRAMID_STRIDES,
    ) -> None:
        """Initialise the neck.

        Args:
            embed_dim: Channels D of every level.
            patch_size: Stride P of the token maps.
            strides: Output stride of each level.

        Raises:
            ValueError: If a stride is not P times a power of two.
        """
        super().__init__()
        self.levels = nn.ModuleList()
        for stride in strides:
            factor = math.log2(patch_size / stride)
            if factor != int(factor):
                msg = f'stride {stride} with patch_size={patch_size}: expected ratios that are powers of two'
                raise ValueError(msg)
            steps = int(factor)
            layers: list[nn.Module] = []
            for i in range(steps):
                if i:
                    layers += [nn.BatchNorm2d(embed_dim), nn.GELU()]
                layers.append(nn.ConvTranspose2d(embed_dim, embed_dim, 2, stride=2))
            if steps < 0:
                layers.append(nn.MaxPool2d(2**-steps, stride=2**-steps))
            self.levels.append(nn.Sequential(*layers) if layers else nn.Identity())

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Rescale one token map per level.

        Args:
            features: Four maps ``(B, D, H/P, W/P)``.

        Returns:
            Four maps ``(B, D, H/s, W/s)`` for the strides s.
        """
        return [level(x) for level, x in zip(self.levels, features, strict=True)]


class XScaleViTEncoder(CrossScaleViT, EncoderMixin):
    """SMP encoder: a :class:`CrossScaleViT` returning a 4-level feature pyramid.

    ``forward`` returns SMP's 6 features ``[x, empty (stride 2), s4, s8, s16, s32]``
    (truncated to ``depth + 1``), the last four ``(B, D, H/s, W/s)``. Inputs may have
    any size divisible by the patch size; positional embeddings are resampled to the
    patch grid when it differs from ``img_size``'s.
    """

    _is_torch_scriptable = False

    def __init__(
        self,
        size: str = 'base',
        depth: int = 5,
        output_stride: int = 32,
        out_indices: Sequence[int] | None = None,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int | None = None,
        vit_depth: int | None = None,
        num_heads: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Initialise the encoder.

        Args:
            size: ViT size (``tiny``, ``small``, ``base``, ``large``).
            depth: SMP encoder depth: number of features after the input (1-5).
            output_stride: Must be 32 (dilation is not supported).
            out_indices: Four block indices for the pyramid (default
                :func:`pyramid_block_indices`).
            img_size: Image size for the stored positional embeddings.
            patch_size: Patch size P.
            in_chans: Input bands.
            embed_dim: Width override.
            vit_depth: Number of transformer blocks override.
            num_heads: Heads override.
            **kwargs: Passed to :class:`CrossScaleViT` (``attention``,
                ``drop_path_rate``...).

        Raises:
            ValueError: If *size*, *depth*, *output_stride* or *out_indices* is invalid.
        """
        if size not in VIT_SIZES:
            msg = f'size={size!r} is not a ViT size; expected one of {list(VIT_SIZES)}'
            raise ValueError(msg)
        if not 1 <= depth <= 5:
            raise ValueError(f'depth={depth}; expected 1 to 5 pyramid levels')
        if output_stride != 32:
            msg = f'output_stride={output_stride}; XScaleViTEncoder only supports 32'
            raise ValueError(msg)
        dim, blocks, heads = VIT_SIZES[size]
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim or dim,
            depth=vit_depth or blocks,
            num_heads=num_heads or heads,
            num_classes=0,
            **kwargs,
        )
        self.patch_embed.strict_img_size = False
        num_blocks = len(self.blocks)
        indices = tuple(out_indices or pyramid_block_indices(num_blocks))
        if len(indices) != 4 or not all(0 <= i < num_blocks for i in indices):
            msg = (
                f'out_indices={indices}; expected 4 block indices in [0, {num_blocks})'
            )
            raise ValueError(msg)
        self.out_indices = indices
        self.neck = Feature2Pyramid(self.embed_dim, patch_size)
        self._depth = depth
        self._in_channels = in_chans
        self._output_stride = output_stride
        self._out_channels = [in_chans, 0] + [self.embed_dim] * 4

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """Rebuild the patch embedding for *in_channels* bands.

        Args:
            in_channels: New number of input bands.
            pretrained: Adapt the current weights (repeat and rescale, timm's
                :func:`~timm.models.adapt_input_conv`) instead of a fresh init.
        """
        proj = self.patch_embed.proj
        if in_channels == proj.in_channels:
            return
        new = nn.Conv2d(
            in_channels,
            proj.out_channels,
            proj.kernel_size,
            stride=proj.stride,
            bias=proj.bias is not None,
        ).to(proj.weight.device, proj.weight.dtype)
        if pretrained:
            with torch.no_grad():
                weight = adapt_input_conv(in_channels, proj.weight, proj.in_channels)
                new.weight.copy_(weight)
                if proj.bias is not None and new.bias is not None:
                    new.bias.copy_(proj.bias)
        self.patch_embed.proj = new
        self._in_channels = in_channels
        self._out_channels[0] = in_channels

    def get_stages(self) -> dict[int, Sequence[nn.Module]]:
        """Not supported: a ViT has no strided stages to dilate.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError('XScaleViTEncoder does not support dilation')

    def grid_pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """Positional embeddings for a ``grid_h x grid_w`` patch grid.

        Args:
            grid_h: Patch rows.
            grid_w: Patch columns.

        Returns:
            ``(1, 1 + grid_h * grid_w, D)``: the fixed sin-cos embedding generated for
            the grid, or the learned one resampled (bicubic) when the grid differs.
        """
        return self.pos_embed_for_grid((grid_h, grid_w))

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        """Feature pyramid of images.

        Args:
            x: Images ``(B, C, H, W)``, H and W divisible by the patch size.

        Returns:
            ``depth + 1`` features: ``x``, an empty ``(B, 0, H/2, W/2)``, then
            ``(B, D, H/s, W/s)`` for s = 4, 8, 16, 32.

        Raises:
            ValueError: If H or W is not divisible by the patch size.
        """
        b, _, h, w = x.shape
        p = self.patch_embed.patch_size[0]
        if h % p or w % p:
            msg = f'input of {h}x{w} px; expected sides divisible by the patch size {p}'
            raise ValueError(msg)
        grid_h, grid_w = h // p, w // p
        tokens = self.patch_embed(x)  # (B, N, D)
        pe = self.grid_pos_embed(grid_h, grid_w)
        assert self.cls_token is not None, 'XScaleViTEncoder needs a class token'
        cls = (self.cls_token + pe[:, :1]).expand(b, -1, -1)
        tokens = torch.cat([cls, tokens + pe[:, 1:]], dim=1)
        tokens = self.norm_pre(self.pos_drop(tokens))
        ids = torch.arange(grid_h * grid_w, device=x.device).expand(b, -1)
        pos = grid_positions(ids, grid_w, num_prefix=1)
        maps: dict[int, Tensor] = {}
        last = max(self.out_indices)
        for i, blk in enumerate(self.blocks[: last + 1]):
            if self.grad_checkpointing and tokens.requires_grad:
                tokens = checkpoint(blk, tokens, pos, use_reentrant=False)
            else:
                tokens = blk(tokens, pos)
            if i in self.out_indices:
                out = self.norm(tokens) if i == len(self.blocks) - 1 else tokens
                maps[i] = out[:, 1:].transpose(1, 2).reshape(b, -1, grid_h, grid_w)
        pyramid = self.neck([maps[i] for i in self.out_indices])
        empty = x.new_empty((b, 0, h // 2, w // 2))
        return [x, empty, *pyramid][: self._depth + 1]

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> _IncompatibleKeys:
        """Load a full encoder state dict, or a pretrained ViT one (timm names).

        A state dict without ``neck.*`` keys is a pretrained ViT (TorchGeo's
        ``SemanticSegmentation(weights=...)`` passes one): its positional embeddings
        are fitted to this encoder's grid, its patch embedding adapted to the input
        channels, a classifier (``head.*``) dropped, and the neck keeps its
        initialisation. With *strict*, a state dict without a final ``norm`` (the
        authors' weights) makes ``norm`` the identity, as their encoder had none.

        Args:
            state_dict: The state dict.
            strict: Fail on missing (other than the neck) or unexpected keys.
            assign: Passed to :meth:`torch.nn.Module.load_state_dict`.

        Returns:
            Missing and unexpected keys.

        Raises:
            RuntimeError: If *strict* and keys do not match.
        """
        state = dict(state_dict)
        if any(k.startswith('neck.') for k in state):
            return super().load_state_dict(state, strict=strict, assign=assign)
        if 'pos_embed' in state:
            state['pos_embed'] = fit_pos_embed(state['pos_embed'], self.grid_size)
        weight = state.get('patch_embed.proj.weight')
        if weight is not None and weight.shape[1] != self._in_channels:
            state['patch_embed.proj.weight'] = adapt_input_conv(
                self._in_channels, weight, weight.shape[1]
            )
        if (
            strict
            and 'norm.weight' not in state
            and isinstance(self.norm, nn.LayerNorm)
        ):
            self.norm = nn.Identity()
        own = self.state_dict()
        state = {
            k: v for k, v in state.items() if k in own or not k.startswith('head.')
        }
        result = super().load_state_dict(state, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith('neck.')]
        if strict and (missing or result.unexpected_keys):
            msg = (
                f'pretrained ViT state dict does not match {type(self).__name__}: '
                f'missing {missing}, unexpected {result.unexpected_keys}'
            )
            raise RuntimeError(msg)
        return result


class FCNHead(nn.Sequential):
    """Auxiliary FCN head: 3x3 conv-BN-ReLU, dropout, 1x1 conv to class logits."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        """Initialise the head.

        Args:
            in_channels: Channels of the feature map it reads.
            num_classes: Output classes K.
            channels: Hidden channels.
            dropout: Dropout before the classifier.
        """
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )


def register_encoder(name: str, size: str = 'base', **params: Any) -> str:
    """Register an :class:`XScaleViTEncoder` configuration in SMP's encoder registry.

    Args:
        name: Encoder name for ``smp.*(encoder_name=name)``.
        size: ViT size.
        **params: Further :class:`XScaleViTEncoder` arguments (``img_size``,
            ``patch_size``, ``embed_dim``, ``vit_depth``, ``drop_path_rate``...).

    Returns:
        *name*.
    """
    smp.encoders.encoders[name] = {
        'encoder': XScaleViTEncoder,
        'pretrained_settings': {},
        'params': {'size': size, **params},
    }
    return name


for _size in VIT_SIZES:
    register_encoder(f'{ENCODER_PREFIX}{_size}', _size)


def encoder_with_options(backbone: str, options: Mapping[str, Any]) -> str:
    """Name of a registered encoder: *backbone* with *options* overriding its params.

    Args:
        backbone: A registered ``xscale_vit_*`` encoder name.
        options: Parameter overrides, e.g. ``{'img_size': 512, 'drop_path_rate': 0.1}``.

    Returns:
        *backbone* if *options* is empty, else ``backbone[k=v,...]`` (registered).

    Raises:
        ValueError: If *backbone* is not an :class:`XScaleViTEncoder` entry.
    """
    entry = smp.encoders.encoders.get(backbone)
    if entry is None or entry['encoder'] is not XScaleViTEncoder:
        names = [
            k
            for k, v in smp.encoders.encoders.items()
            if v['encoder'] is XScaleViTEncoder
        ]
        raise ValueError(f'backbone={backbone!r}; expected one of {names}')
    if not options:
        return backbone
    args = ','.join(f'{k}={options[k]!r}' for k in sorted(options))
    return register_encoder(f'{backbone}[{args}]', **{**entry['params'], **options})


def build_upernet(
    backbone: str = 'xscale_vit_base',
    num_classes: int = 6,
    in_channels: int = 3,
    decoder_channels: int = 512,
    **encoder_options: Any,
) -> smp.UPerNet:
    """SMP's UPerNet on one of our ViTs, randomly initialised.

    With pretrained weights: :func:`torchgeo_xscale.checkpoints.upernet`.

    Args:
        backbone: Registered encoder name (``xscale_vit_base``...).
        num_classes: Output classes K.
        in_channels: Input bands.
        decoder_channels: UPerNet decoder width.
        **encoder_options: Overrides of the encoder's params (``img_size``,
            ``drop_path_rate``, ``embed_dim``, ``vit_depth``...).

    Returns:
        The model; ``model(x)`` maps ``(B, C, H, W)`` to logits ``(B, K, H, W)`` for H,
        W divisible by 32.
    """
    name = encoder_with_options(backbone, encoder_options)
    return smp.UPerNet(
        encoder_name=name,
        encoder_weights=None,
        in_channels=in_channels,
        classes=num_classes,
        decoder_channels=decoder_channels,
    )
