"""Pretrained Cross-Scale MAE weights as TorchGeo weights entries.

``CrossScaleMAEBase16_Weights.FMOW_RGB`` and ``CrossScaleMAELarge16_Weights.FMOW_RGB``
are the authors' released checkpoints (aicip/Cross-Scale-MAE, ViT-B/16 and ViT-L/16,
400 epochs on fMoW-RGB at 128 px; licence CC-BY-NC 4.0). Their files are training
checkpoints, so an entry's :meth:`~CrossScaleMAEWeightsEnum.get_state_dict` does not
return the download as is: it downloads the release once, checks its published MD5,
converts it (:mod:`torchgeo_xscale.checkpoints.layouts`) to timm names and caches our
weights file under ``torch.hub.get_dir()/checkpoints/xscale/``. Offline,
``xscale weights import <downloaded .pth>`` does the same from a local file.

An entry's ``transforms`` is built as TorchGeo's own entries are (an ``nn.Sequential``
of torchvision ``v2.Normalize``): it takes an image tensor ``(C, H, W)`` /
``(B, C, H, W)`` or a sample dict with an ``image`` key, RGB in [0, 255].
"""

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2 as T
from torch import Tensor, nn
from torchvision.models._api import Weights, WeightsEnum

from ..models.pos_embed import fit_pos_embed
from ..models.vit import VIT_SIZES
from .files import check_finite, is_weights_file, md5sum, safe_load, save_weights
from .layouts import convert_checkpoint

__all__ = (
    'FMOW_RGB_MEAN',
    'FMOW_RGB_STD',
    'CrossScaleMAEBase16_Weights',
    'CrossScaleMAELarge16_Weights',
    'CrossScaleMAEWeightsEnum',
    'WeightsNotAvailableError',
    'find_entry',
    'register_weights',
    'registered_entries',
)

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
            The path of our weights file.
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
        whatever *check_hash* and *weights_only* say (TorchGeo passes both). The
        state dict has no final ``norm`` (the authors' encoder has none).

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
        state_dict, metadata = self.load(progress, url=url, model_dir=model_dir)
        if metadata.get('residual_norm_style') == 'post':
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
        """State dict and metadata (architecture, norm style, final norm) of this entry.

        Args:
            progress: Show a download progress bar.
            url: Download URL override.
            model_dir: Cache folder override.

        Returns:
            ``(state_dict, metadata)``.

        Raises:
            ValueError: If the cached file is not one of our weights files, or has
                non-finite tensors.
        """
        path = self.cache_path(model_dir)
        if not path.is_file():
            self.download(url, model_dir, progress)
        obj = safe_load(path)
        if not is_weights_file(obj):
            msg = f'{path} (cache of {self}) is not a weights file of ours; delete it and import the release again'
            raise ValueError(msg)
        check_finite(obj['state_dict'], str(path))
        return dict(obj['state_dict']), dict(obj['metadata'])

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
        check_md5: bool = True,
    ) -> Path:
        """Check a local copy of the original file, convert it and cache the result.

        Args:
            path: The original checkpoint (as downloaded, or of your own run of the
                authors' code when *check_md5* is False).
            model_dir: Cache folder override.
            source: Where it came from (recorded; default *path*).
            check_md5: Refuse a file whose MD5 is not the release's.

        Returns:
            The cached converted file.

        Raises:
            ValueError: If the MD5 differs from the published one (and is checked),
                the file is not a tensors-only checkpoint, its layout cannot be
                mapped, or a tensor is not finite.
            WeightsWriteError: If the cache cannot be written.
        """
        digest = md5sum(path)
        if check_md5 and digest != self.meta['md5']:
            msg = (
                f'{path} has md5 {digest}, not the published {self.meta["md5"]} of '
                f'{self}: an incomplete or different download (Google Drive may serve a '
                f'web page instead); download it again from {self.meta["release"]} '
                '(or pass --no-check-md5 for a checkpoint of your own run of the '
                "authors' code)"
            )
            raise ValueError(msg)
        conv = convert_checkpoint(safe_load(path), source=os.fspath(path))
        check_finite(conv.encoder, os.fspath(path))
        img_size = int(self.meta['img_size'])
        grid = img_size // int(conv.model_args['patch_size'])
        encoder = dict(conv.encoder)
        encoder['pos_embed'] = fit_pos_embed(encoder['pos_embed'], (grid, grid))
        metadata = conv.metadata()
        metadata['model'].update(img_size=img_size, num_heads=self.meta['num_heads'])
        metadata['source'] = {
            'entry': str(self),
            'md5': digest,
            'md5_is_release': digest == self.meta['md5'],
            'file': source or os.fspath(path),
        }
        target = save_weights(encoder, self.cache_path(model_dir), metadata)
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


def register_weights(name: str, builder: Any, weights_enum: type[WeightsEnum]) -> None:
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


def find_entry(name_or_md5: str) -> CrossScaleMAEWeightsEnum | None:
    """The registered entry called *name_or_md5*, or whose original file has that MD5.

    Args:
        name_or_md5: ``CrossScaleMAEBase16_Weights.FMOW_RGB`` or an MD5 hex digest.

    Returns:
        The entry, or None.
    """
    return next(
        (e for e in registered_entries() if name_or_md5 in (str(e), e.meta.get('md5'))),
        None,
    )
