"""Any frozen encoder as a function ``images -> one feature vector per image``.

:func:`load_encoder` accepts

* a name registered in :mod:`torchgeo.models` (e.g. ``scalemae_large_patch16``, or
  our ``crossscalemae_base_patch16``, registered by :mod:`torchgeo_xscale.checkpoints`),
  with ``weights`` a weights entry name (``ScaleMAELarge16_Weights.FMOW_RGB``) or a
  file;
* a size of :data:`~torchgeo_xscale.models.VIT_SIZES` or any :mod:`timm` ViT name,
  with ``weights`` a file (``'timm'`` asks timm for its own pretrained weights);
* a file: a Lightning checkpoint of :class:`~torchgeo_xscale.tasks.CrossScaleMAETask`
  (keys ``model.encoder.*``) or of :class:`torchgeo.tasks.MAE` (``backbone.vit.*``),
  one of our weights files, one of the authors' checkpoints, or an encoder state dict
  with timm names (architecture read from the shapes);
* an :class:`~torch.nn.Module`.

Files and entries are read by :func:`torchgeo_xscale.checkpoints.resolve` and loaded
by :func:`torchgeo_xscale.checkpoints.load_into`, as everywhere else. The feature is
the mean of the patch tokens (default) or the CLS token, after the encoder's final
norm (none for the authors' weights). GSD-aware encoders get the GSD of the scaled view:
:class:`~torchgeo_xscale.models.CrossScaleViT` with ``gsd_pos_embed`` and TorchGeo's
:class:`~torchgeo.models.scale_mae.ScaleMAE` (its ``res``), both as ``gsd / ratio``.
"""

import logging
import os
from typing import Any, Literal

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..checkpoints import (
    CrossScaleMAEWeightsEnum,
    build_encoder,
    checkpoint_encoder,
    load_into,
    resolve,
)
from ..models.timm_vit import register_timm_name, register_timm_vit
from ..models.vit import VIT_SIZES, CrossScaleViT, build_vit

__all__ = ('DEMO_TIMM_MODEL', 'FeatureEncoder', 'load_encoder')

logger = logging.getLogger(__name__)

Pool = Literal['mean', 'cls']

#: timm name of ``xscale demo``'s encoder shape (width 128, depth 4, 4 heads, 8 px, 64 px).
DEMO_TIMM_MODEL = register_timm_vit(128, 4, 4, 8, 64)


def _scale_mae_tokens(
    model: Any, images: Tensor, scale_ratio: float, gsd: Tensor | None
) -> Tensor:
    """TorchGeo Scale-MAE tokens with ``res = gsd / ratio`` (per distinct GSD)."""
    base_res = float(model.res)
    try:
        if gsd is None:
            model.res = base_res / scale_ratio
            return model.forward_features(images)  # type: ignore[no-any-return]
        out = None
        for value in gsd.unique().tolist():
            idx = (gsd == value).nonzero().squeeze(1)
            model.res = value / scale_ratio
            part = model.forward_features(images[idx])
            if out is None:
                out = part.new_empty((images.shape[0], *part.shape[1:]))
            out[idx] = part
        assert out is not None
        return out
    finally:
        model.res = base_res


class FeatureEncoder(nn.Module):
    """A frozen encoder giving one feature vector per image.

    Attributes:
        model: The wrapped encoder (eval mode, no gradients).
        pool: ``mean`` of patch tokens or ``cls``.
        img_size: Input side in pixels the encoder expects.
        in_chans: Input bands (timm's name, as the wrapped model's; the dataset
            builders take it as ``in_channels``, TorchGeo's name:
            :mod:`torchgeo_xscale.renames`).
        name: Label used in reports.
    """

    def __init__(
        self,
        model: nn.Module,
        pool: Pool = 'mean',
        img_size: int | None = None,
        in_chans: int | None = None,
        name: str = 'encoder',
    ) -> None:
        """Wrap *model*.

        Args:
            model: A ViT (timm, ours, TorchGeo's Scale-MAE) or any module whose
                ``forward_features``/``forward`` returns ``(B, D)``, ``(B, T, D)`` or
                ``(B, D, h, w)``.
            pool: ``mean`` of the patch tokens or the ``cls`` token.
            img_size: Input size; default read from ``model.patch_embed``.
            in_chans: Input bands; default read from ``model.patch_embed``.
            name: Label used in reports.

        Raises:
            ValueError: If *pool* is unknown or the input size cannot be determined.
        """
        super().__init__()
        if pool not in ('mean', 'cls'):
            raise ValueError(f"pool={pool!r}; expected 'mean' or 'cls'")
        self.model = model.eval().requires_grad_(False)
        self.pool: Pool = pool
        patch_embed = getattr(model, 'patch_embed', None)
        if img_size is None and patch_embed is not None:
            img_size = int(patch_embed.img_size[0])
        if in_chans is None and patch_embed is not None:
            in_chans = int(patch_embed.proj.in_channels)
        if img_size is None:
            raise ValueError(f'img_size=None for {type(model).__name__}; pass img_size')
        self.img_size = int(img_size)
        self.in_chans = in_chans
        self.name = name

    def train(self, mode: bool = True) -> 'FeatureEncoder':
        """Keep the encoder frozen in eval mode (dropout, norms) whatever *mode*.

        Args:
            mode: Ignored.

        Returns:
            self.
        """
        super().train(False)
        return self

    def _tokens(self, images: Tensor, scale_ratio: float, gsd: Tensor | None) -> Tensor:
        """Encoder output for images that share one scale ratio."""
        model: Any = self.model
        if isinstance(model, CrossScaleViT):
            view_gsd = None
            if model.gsd_pos_embed:
                base = (
                    gsd
                    if gsd is not None
                    else images.new_full((images.shape[0],), model.reference_gsd)
                )
                view_gsd = base.to(images) / scale_ratio
            return model.forward_encoder(images, None, view_gsd)
        if hasattr(model, 'res') and isinstance(model, VisionTransformer):  # Scale-MAE
            return _scale_mae_tokens(self.model, images, scale_ratio, gsd)
        if hasattr(model, 'forward_features'):
            return model.forward_features(images)
        return model(images)

    def forward(
        self, images: Tensor, scale_ratio: float = 1.0, gsd: Tensor | None = None
    ) -> Tensor:
        """Features of images already brought to *scale_ratio* by the caller.

        Args:
            images: ``(B, C, S, S)`` normalised images at the encoder's input size.
            scale_ratio: The scale ratio r of the images (for GSD-aware encoders).
            gsd: Native GSD per image in metres ``(B,)`` (for GSD-aware encoders).

        Returns:
            ``(B, D)`` features (not normalised).

        Raises:
            ValueError: If the encoder output cannot be pooled as requested.
        """
        with torch.no_grad():
            out = self._tokens(images, scale_ratio, gsd)
        return self._pool(out)

    def _pool(self, out: Tensor | tuple[Tensor, ...] | list[Tensor]) -> Tensor:
        """``(B, D)`` features of an encoder output (see :meth:`forward`)."""
        if isinstance(out, tuple | list):
            out = out[0]
        if out.ndim == 4:
            return out.float().mean(dim=(2, 3))
        if out.ndim == 2:
            return out.float()
        prefix = int(getattr(self.model, 'num_prefix_tokens', 1))
        if self.pool == 'cls':
            if prefix == 0:
                raise ValueError(
                    f"pool='cls' but {type(self.model).__name__} has no CLS token"
                )
            return out[:, 0].float()
        return out[:, prefix:].float().mean(dim=1)

    def forward_with_maps(
        self, images: Tensor, scale_ratio: float = 1.0, gsd: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Features and the patch-token map of one forward pass.

        Args:
            images: ``(B, C, S, S)`` normalised images at the encoder's input size.
            scale_ratio: The scale ratio r of the images (for GSD-aware encoders).
            gsd: Native GSD per image in metres ``(B,)`` (for GSD-aware encoders).

        Returns:
            ``(B, D)`` features as :meth:`forward`, and the patch tokens as a map
            ``(B, D, h, w)`` (row-major patch grid; a CNN's ``(B, D, h, w)`` output
            as is), or None for an encoder that returns one vector per image.

        Raises:
            ValueError: If the patch tokens do not form the input's patch grid.
        """
        with torch.no_grad():
            out = self._tokens(images, scale_ratio, gsd)
        features = self._pool(out)
        tokens = out[0] if isinstance(out, tuple | list) else out
        if tokens.ndim == 4:
            return features, tokens.float()
        if tokens.ndim != 3:
            return features, None
        prefix = int(getattr(self.model, 'num_prefix_tokens', 1))
        patches = tokens[:, prefix:].float()
        patch_embed = getattr(self.model, 'patch_embed', None)
        size = getattr(patch_embed, 'patch_size', None)
        p = int(size[0]) if size is not None else 0
        h, w = (images.shape[-2] // p, images.shape[-1] // p) if p else (0, 0)
        if h * w != patches.shape[1]:
            msg = (
                f'{type(self.model).__name__} gave {patches.shape[1]} patch tokens for '
                f'a {tuple(images.shape[-2:])} input; expected a {h}x{w} patch grid'
            )
            raise ValueError(msg)
        return features, patches.transpose(1, 2).reshape(-1, patches.shape[2], h, w)


def _weights_entry(name: str) -> Any:
    """Resolve ``Enum_Weights.MEMBER`` through TorchGeo's registry."""
    from torchgeo.models import get_weight

    try:
        return get_weight(name)
    except ValueError as err:
        msg = f'weights={name!r} is neither a file nor a known weights entry'
        raise ValueError(msg) from err


def _model_from_name(
    name: str, weights: str | None, kwargs: dict[str, Any]
) -> nn.Module:
    """Build the model called *name*, with entry weights when *weights* is no file."""
    from torchgeo.models import get_model, get_model_weights, list_models

    weights_file = weights if weights and os.path.isfile(weights) else None
    entry = weights if weights and not weights_file and weights != 'timm' else None
    if name in list_models():
        if issubclass(get_model_weights(name), CrossScaleMAEWeightsEnum):
            # our builders take an entry, its name or any checkpoint file
            return get_model(name, weights=weights, **kwargs)
        model = get_model(
            name, weights=_weights_entry(entry) if entry else None, **kwargs
        )
    elif name in VIT_SIZES:
        if entry:
            raise ValueError(
                f'weights={entry!r} is not a file; expected a .pth/.ckpt for size {name!r}'
            )
        if weights_file:  # the architecture recorded with the weights wins
            return build_encoder(name, weights_file, **kwargs)
        model = build_vit(name, **kwargs)
    elif register_timm_name(name):
        if entry:
            raise ValueError(
                f"weights={entry!r} is not a file; expected a file or 'timm' for {name!r}"
            )
        model = timm.create_model(
            name, pretrained=weights == 'timm', num_classes=0, **kwargs
        )
    else:
        msg = (
            f'encoder={name!r} is not a file, a TorchGeo/torchgeo_xscale model, a ViT '
            f'size {list(VIT_SIZES)} or a timm model name'
        )
        raise ValueError(msg)
    if weights_file:
        load_into(model, *resolve(weights_file))
    return model


def load_encoder(
    encoder: str | os.PathLike[str] | nn.Module,
    weights: str | None = None,
    pool: Pool = 'mean',
    model_kwargs: dict[str, Any] | None = None,
    name: str | None = None,
) -> FeatureEncoder:
    """Load any supported encoder as a frozen :class:`FeatureEncoder`.

    Args:
        encoder: Model name, checkpoint/state-dict file, or module (see the module
            docstring).
        weights: Weights entry name, weights file, or ``'timm'``; None for the
            builder's default (random for a name, the file's own for a file).
        pool: ``mean`` of patch tokens or ``cls``.
        model_kwargs: Extra builder arguments (``img_size``, ``in_chans``,
            ``num_heads`` for a state dict...).
        name: Label in reports (default: derived from *encoder*).

    Returns:
        The frozen encoder on the CPU.

    Raises:
        ValueError: If *encoder* or *weights* cannot be resolved or do not fit.
    """
    kwargs = dict(model_kwargs or {})
    if isinstance(encoder, nn.Module):
        model = encoder
        label = name or type(encoder).__name__
    else:
        encoder = os.fspath(encoder)
        label = name or os.path.basename(encoder)
        if os.path.isfile(encoder):
            model = checkpoint_encoder(resolve(encoder), **kwargs)
            if weights:
                load_into(model, *resolve(weights))
        else:
            model = _model_from_name(encoder, weights, kwargs)
    return FeatureEncoder(model, pool=pool, in_chans=kwargs.get('in_chans'), name=label)
