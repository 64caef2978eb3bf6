"""Pretrained Cross-Scale MAE weights as TorchGeo weights entries, and their builders.

``CrossScaleMAEBase16_Weights.FMOW_RGB`` and ``CrossScaleMAELarge16_Weights.FMOW_RGB``
are the authors' released checkpoints (aicip/Cross-Scale-MAE, ViT-B/16 and ViT-L/16,
400 epochs on fMoW-RGB at 128 px; licence CC-BY-NC 4.0). Their files are undocumented
training checkpoints, so an entry's :meth:`~CrossScaleMAEWeightsEnum.get_state_dict`
does not return the download as is: it downloads the release once, checks its
published MD5, converts it (:mod:`torchgeo_xscale.models.convert`) to timm names and
caches the converted encoder under ``torch.hub.get_dir()/checkpoints/xscale/``. Offline,
``xscale weights import <downloaded .pth>`` does the same from a local file.

Importing this module registers the builders and entries in TorchGeo's model API
(:func:`torchgeo.models.get_model`, :func:`~torchgeo.models.get_weight`,
:func:`~torchgeo.models.get_model_weights`, :func:`~torchgeo.models.list_models`), so
``torchgeo.tasks.Classification(model='vit_base_patch16_224',
weights='CrossScaleMAEBase16_Weights.FMOW_RGB')`` works as with TorchGeo's own weights.
"""

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2 as T
from timm.models import adapt_input_conv
from torch import Tensor, nn
from torchvision.models._api import Weights, WeightsEnum

from .convert import (
    ENCODER_ARGS,
    convert_checkpoint,
    fit_pos_embed,
    load_checkpoint,
    read_weights_info,
    safe_load,
    save_weights,
    set_residual_norm_style,
)
from .vit import VIT_SIZES, CrossScaleViT, build_vit

logger = logging.getLogger(__name__)

#: fMoW-RGB statistics of the authors' pretraining, on [0, 1] inputs (METHOD.md).
FMOW_RGB_MEAN = (0.4339, 0.4358, 0.4074)
FMOW_RGB_STD = (0.1983, 0.1925, 0.1945)

# torchvision v2 transforms, as TorchGeo's own entries: they take a tensor (any
# leading dims) or TorchGeo's sample dict, and export without graph breaks.
_fmow_rgb_transforms = nn.Sequential(
    T.Normalize(mean=[0.0], std=[255.0]),
    T.Normalize(mean=list(FMOW_RGB_MEAN), std=list(FMOW_RGB_STD)),
)

_REPO = 'https://github.com/aicip/Cross-Scale-MAE'
_RELEASE = _REPO + '#model-weights'


def _drive(file_id: str) -> str:
    """Direct-download URL of a public Google Drive file (skips the virus-scan page)."""
    return f'https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t'


def _meta(size: str, drive_id: str, md5: str) -> dict[str, Any]:
    """TorchGeo meta of one of the authors' releases."""
    return {
        'dataset': 'fMoW-RGB',
        'in_chans': 3,
        'img_size': 224,  # the grid of the cached pos_embed (timm's vit_*_patch16_224)
        'pretrain_img_size': 128,
        'model': f'vit_{size}_patch16',
        'num_heads': VIT_SIZES[size][2],
        'publication': 'https://openreview.net/forum?id=5oEVdOd6TV',
        'repo': _REPO,
        'ssl_method': 'cross-scale-mae',
        'bands': ('R', 'G', 'B'),
        'license': "CC-BY-NC-4.0 (the authors' licence: non-commercial use only)",
        'epochs': 400,
        'release': _RELEASE,
        'drive_id': drive_id,
        'md5': md5,
        'filename': f'crossscalemae_vit_{size}_patch16_fmow_rgb-{md5[:8]}.pth',
    }


class WeightsNotAvailableError(FileNotFoundError):
    """The weights are neither cached nor downloadable (e.g. offline)."""


def md5sum(path: str | os.PathLike[str]) -> str:
    """MD5 hex digest of a file, read in chunks.

    Args:
        path: The file.

    Returns:
        32 hex characters.
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


class CrossScaleMAEWeightsEnum(WeightsEnum):
    """Weights entries whose file is a foreign checkpoint, converted once and cached.

    An entry's ``meta`` needs ``md5`` (of the original file), ``filename`` (of the
    converted file in the cache), ``img_size`` (grid of the cached ``pos_embed``) and
    ``num_heads``; its ``url`` is where the original file is downloaded from.
    """

    def cache_path(self, model_dir: str | os.PathLike[str] | None = None) -> Path:
        """Where the converted weights of this entry are cached.

        Args:
            model_dir: Cache folder (default ``torch.hub.get_dir()/checkpoints/xscale``).

        Returns:
            The path of the converted ``.pth``.
        """
        root = model_dir or os.path.join(torch.hub.get_dir(), 'checkpoints', 'xscale')
        return Path(root) / self.meta['filename']

    def get_state_dict(  # type: ignore[override]
        self,
        progress: bool = True,
        check_hash: bool = True,
        weights_only: bool = True,
        *,
        url: str | None = None,
        model_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Tensor]:
        """The encoder state dict (timm names), from the cache or downloaded.

        The original file's MD5 is always checked and only tensors are unpickled,
        whatever *check_hash* and *weights_only* say (TorchGeo passes both).

        Args:
            progress: Show a download progress bar.
            check_hash: Accepted for TorchGeo's call; the MD5 is always checked.
            weights_only: Accepted for TorchGeo's call; always tensors only.
            url: Download from here instead of ``self.url`` (a mirror, ``file://``).
            model_dir: Cache folder instead of the torch hub one.
            **kwargs: Ignored (torch hub's other options).

        Returns:
            The state dict.
        """
        state_dict, info = self.load(progress, url=url, model_dir=model_dir)
        if info.get('residual_norm_style') == 'post':
            msg = (
                f"{self} has post-norm blocks (the authors' xFormers encoder); a timm "
                'ViT loads the state dict but computes other features. Build the '
                'encoder with the builder of the entry for the same network.'
            )
            warnings.warn(msg, UserWarning, stacklevel=2)
        return state_dict

    def load(
        self,
        progress: bool = True,
        url: str | None = None,
        model_dir: str | os.PathLike[str] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """State dict and description (architecture, norm style) of this entry.

        Args:
            progress: Show a download progress bar.
            url: Download URL override.
            model_dir: Cache folder override.

        Returns:
            ``(state_dict, info)``.
        """
        path = self.cache_path(model_dir)
        if not path.is_file():
            self.download(url, model_dir, progress)
        return safe_load(path), read_weights_info(path)

    def download(
        self,
        url: str | None = None,
        model_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> Path:
        """Download the original file, check, convert and cache it.

        The download goes to a temporary folder inside the cache, removed afterwards
        whatever happens: the cache never holds a partial file.

        Args:
            url: Download URL override.
            model_dir: Cache folder override.
            progress: Show a progress bar.

        Returns:
            The cached converted file.

        Raises:
            WeightsNotAvailableError: If the download fails (offline...).
        """
        url = url or self.url
        target = self.cache_path(model_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix='.download-') as tmp:
            raw = os.path.join(tmp, 'original.pth')
            try:
                if not url:
                    raise ValueError('the entry has no download URL')
                torch.hub.download_url_to_file(url, raw, progress=progress)
            except (OSError, ValueError) as err:
                msg = (
                    f'{self} is not available offline: download the checkpoint from '
                    f'{self.meta.get("release", url)} (md5 {self.meta["md5"]}) and run '
                    f'`xscale weights import <downloaded .pth>` ({url}: {err})'
                )
                raise WeightsNotAvailableError(msg) from err
            return self.import_file(raw, model_dir, source=url)

    def import_file(
        self,
        path: str | os.PathLike[str],
        model_dir: str | os.PathLike[str] | None = None,
        source: str | None = None,
    ) -> Path:
        """Check a local copy of the original file, convert it and cache the result.

        Args:
            path: The downloaded original checkpoint.
            model_dir: Cache folder override.
            source: Where it came from (recorded; default *path*).

        Returns:
            The cached converted file.

        Raises:
            ValueError: If the MD5 differs from the published one, the file is not a
                tensors-only checkpoint, or its layout cannot be mapped.
        """
        digest = md5sum(path)
        if digest != self.meta['md5']:
            msg = (
                f'{path} has md5 {digest}, not the published {self.meta["md5"]} of '
                f'{self}: an incomplete or different download (Google Drive may serve a '
                f'web page instead); download it again from {self.meta["release"]}'
            )
            raise ValueError(msg)
        conv = convert_checkpoint(safe_load(path), source=os.fspath(path))
        img_size = int(self.meta['img_size'])
        grid = img_size // int(conv.model_args['patch_size'])
        encoder = fit_pos_embed(conv.encoder, (grid, grid))
        info = conv.info()
        info['model'].update(img_size=img_size, num_heads=self.meta['num_heads'])
        info['source'] = {
            'entry': str(self),
            'md5': digest,
            'file': source or os.fspath(path),
        }
        target = save_weights(encoder, self.cache_path(model_dir), info)
        logger.info('%s: %s layout converted to %s', self, conv.layout, target)
        return Path(target)


class CrossScaleMAEBase16_Weights(CrossScaleMAEWeightsEnum):  # type: ignore[misc]
    """Cross-Scale MAE ViT-B/16 weights (the authors' release).

    Licence: CC-BY-NC 4.0 (non-commercial use only), as the authors' repository.
    """

    FMOW_RGB = Weights(
        url=_drive('17FePR5lAFNL45g7738JMofP2pyC_6hau'),
        transforms=_fmow_rgb_transforms,
        meta=_meta(
            'base',
            '17FePR5lAFNL45g7738JMofP2pyC_6hau',
            '0c33995da85c112d9602f89d5b186bbc',
        ),
    )


class CrossScaleMAELarge16_Weights(CrossScaleMAEWeightsEnum):  # type: ignore[misc]
    """Cross-Scale MAE ViT-L/16 weights (the authors' release).

    Licence: CC-BY-NC 4.0 (non-commercial use only), as the authors' repository.
    """

    FMOW_RGB = Weights(
        url=_drive('1FBJiQ8Z6J3P8Le7wFQXOicTDX9jTNGnT'),
        transforms=_fmow_rgb_transforms,
        meta=_meta(
            'large',
            '1FBJiQ8Z6J3P8Le7wFQXOicTDX9jTNGnT',
            'e6e4f58c07bbbc4c4dd63fa26c644dd4',
        ),
    )


def load_weights(
    weights: WeightsEnum | str | os.PathLike[str],
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Encoder state dict and description from an entry, an entry name or a file.

    Args:
        weights: A weights entry (ours or TorchGeo's); its name, e.g.
            ``'CrossScaleMAEBase16_Weights.FMOW_RGB'``; or a file: a weights file
            written by ``xscale weights export``, a Lightning checkpoint of our
            pretraining task, one of the authors' checkpoints, or an encoder state dict.

    Returns:
        ``(state_dict, info)`` with ``info['model']`` (architecture, when known) and
        ``info['residual_norm_style']``.

    Raises:
        FileNotFoundError: If *weights* is neither a file nor a known entry.
    """
    if isinstance(weights, CrossScaleMAEWeightsEnum):
        return weights.load()
    if isinstance(weights, WeightsEnum):
        return weights.get_state_dict(progress=True), {}
    if os.path.isfile(weights):
        conv = load_checkpoint(weights)
        return conv.encoder, conv.info()
    from torchgeo.models import get_weight

    try:
        entry = get_weight(os.fspath(weights))
    except ValueError as err:
        msg = f'weights={weights!r} is neither a file nor a known weights entry'
        raise FileNotFoundError(msg) from err
    return load_weights(entry)


def build_encoder(
    size: str,
    weights: WeightsEnum | str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> CrossScaleViT:
    """A :class:`CrossScaleViT` of *size*, with weights loaded if given.

    The architecture recorded with the weights (depth, width, heads, patch size...)
    wins over *size*, so that any of our checkpoints loads by path; *kwargs* win over
    both (``img_size``, ``in_chans``, ``num_classes``, ``attention``...). Positional
    embeddings are regenerated (fixed sin-cos) or resampled for ``img_size``; the
    patch embedding is adapted to ``in_chans`` (timm's ``adapt_input_conv``).

    Args:
        size: ``tiny``, ``small``, ``base`` or ``large``.
        weights: See :func:`load_weights`; None for random initialisation.
        **kwargs: Passed to :func:`~torchgeo_xscale.models.vit.build_vit`.

    Returns:
        The encoder (timm ``VisionTransformer``: ``forward_features``,
        ``num_features``...), ``num_classes=0`` unless given.

    Raises:
        ValueError: If the number of heads cannot be known, or the weights do not fit.
    """
    if weights is None:
        return build_vit(size, **{'patch_size': 16, **kwargs})
    state_dict, info = load_weights(weights)
    recorded = info.get('model', {})
    args = {
        'patch_size': 16,
        **{k: v for k, v in recorded.items() if k in ENCODER_ARGS},
    }
    args.update(kwargs)
    dim = args.get('embed_dim', VIT_SIZES[size][0])
    if 'num_heads' not in args and dim != VIT_SIZES[size][0]:
        msg = f'weights={weights!r} has width {dim} and no recorded num_heads; pass num_heads=...'
        raise ValueError(msg)
    model = build_vit(size, **args)
    set_residual_norm_style(model, info.get('residual_norm_style', 'pre'))
    state_dict = fit_pos_embed(state_dict, model.grid_size)
    weight = state_dict['patch_embed.proj.weight']
    if weight.shape[1] != model.patch_embed.proj.in_channels:
        state_dict = {
            **state_dict,
            'patch_embed.proj.weight': adapt_input_conv(
                model.patch_embed.proj.in_channels, weight, weight.shape[1]
            ),
        }
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches
        lines = [ln.strip() for ln in str(err).splitlines() if 'mismatch' in ln]
        first = lines[0] if lines else str(err)
        msg = f'weights={weights!r} do not fit a {size} ViT with {args}: {first} ({len(lines)} in all)'
        raise ValueError(msg) from err
    missing = [k for k in result.missing_keys if not k.startswith('head.')]
    if missing or result.unexpected_keys:
        msg = (
            f'weights={weights!r} do not fit a {size} ViT with {args}: missing '
            f'{missing[:6]}, unexpected {result.unexpected_keys[:6]}'
        )
        raise ValueError(msg)
    return model


def crossscalemae_base_patch16(
    weights: CrossScaleMAEBase16_Weights | str | os.PathLike[str] | None = None,
    *args: Any,
    **kwargs: Any,
) -> CrossScaleViT:
    """Cross-Scale MAE ViT-B/16 encoder.

    If you use this model in your research, please cite
    https://openreview.net/forum?id=5oEVdOd6TV (Tang et al., NeurIPS 2023).

    Args:
        weights: Pretrained weights: an entry, its name, or a file (any of our
            checkpoints, see :func:`load_weights`).
        *args: Unused (TorchGeo's builder signature).
        **kwargs: Passed to :class:`CrossScaleViT` (``img_size`` default 224, any
            ``in_chans``, ``num_classes``, ``attention``...).

    Returns:
        The encoder.
    """
    return build_encoder('base', weights, **kwargs)


def crossscalemae_large_patch16(
    weights: CrossScaleMAELarge16_Weights | str | os.PathLike[str] | None = None,
    *args: Any,
    **kwargs: Any,
) -> CrossScaleViT:
    """Cross-Scale MAE ViT-L/16 encoder.

    If you use this model in your research, please cite
    https://openreview.net/forum?id=5oEVdOd6TV (Tang et al., NeurIPS 2023).

    Args:
        weights: Pretrained weights: an entry, its name, or a file.
        *args: Unused (TorchGeo's builder signature).
        **kwargs: Passed to :class:`CrossScaleViT`.

    Returns:
        The encoder.
    """
    return build_encoder('large', weights, **kwargs)


def register_weights(
    name: str, builder: Callable[..., nn.Module], weights_enum: type[WeightsEnum]
) -> None:
    """Register a builder and its weights enum in TorchGeo's model API.

    Args:
        name: Model name for :func:`torchgeo.models.get_model`.
        builder: The builder, ``builder(weights=None, **kwargs)``.
        weights_enum: Its weights enum.
    """
    from torchgeo.models import api

    api._model[name] = builder
    api._model_weights[name] = weights_enum
    api._model_weights[builder] = weights_enum


def registered_entries() -> list[CrossScaleMAEWeightsEnum]:
    """All entries of :class:`CrossScaleMAEWeightsEnum` registered in TorchGeo.

    Returns:
        The entries, each once.
    """
    from torchgeo.models import api

    enums = {
        e
        for e in api._model_weights.values()
        if issubclass(e, CrossScaleMAEWeightsEnum)
    }
    ordered = sorted(enums, key=lambda e: e.__name__)
    return [entry for e in ordered for entry in e.__members__.values()]


register_weights(
    'crossscalemae_base_patch16',
    crossscalemae_base_patch16,
    CrossScaleMAEBase16_Weights,
)
register_weights(
    'crossscalemae_large_patch16',
    crossscalemae_large_patch16,
    CrossScaleMAELarge16_Weights,
)
