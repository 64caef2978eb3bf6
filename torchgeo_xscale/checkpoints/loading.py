"""The one way weights are found and loaded: :func:`resolve` and :func:`load_into`.

* :func:`resolve` turns a weights entry, an entry name or a file of any known layout
  (:mod:`~torchgeo_xscale.checkpoints.layouts`) into an encoder state dict with timm
  names and its metadata;
* :func:`load_into` loads such a state dict into a model: it makes the model compute
  what the weights computed (post-norm blocks, no final norm), fits the positional
  embedding to the model's grid (:func:`~torchgeo_xscale.models.vit.fit_pos_embed`),
  adapts the patch embedding to the model's bands (timm's ``adapt_input_conv``), and
  raises one "does not fit" error listing every mismatched key and shape.

The pretraining task, the segmentation encoder and task, the evaluation loaders and
``xscale weights`` all go through these two functions.
"""

import inspect
import logging
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from timm.models import adapt_input_conv
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys
from torchvision.models._api import WeightsEnum

from ..models.cross_scale_mae import CrossScaleMAE
from ..models.pos_embed import fit_pos_embed, is_sincos
from ..models.timm_vit import register_timm_name
from ..models.vit import CrossScaleViT, residual_norm_style, set_residual_norm_style
from .entries import CrossScaleMAEWeightsEnum
from .files import (
    _FORMAT_1,
    check_finite,
    is_weights_file,
    read_sidecar,
    safe_load,
    save_weights,
)
from .layouts import STRUCTURE_KEY, Conversion, convert_checkpoint

__all__ = (
    'ResolvedWeights',
    'WeightsMismatchError',
    'apply_structure',
    'export_lightning_checkpoint',
    'export_weights',
    'load_cross_scale_mae',
    'load_into',
    'load_mae',
    'load_torchgeo_mae',
    'model_structure',
    'read_checkpoint',
    'resolve',
)

logger = logging.getLogger(__name__)


class ResolvedWeights(NamedTuple):
    """An encoder ``state_dict`` (timm names) and its ``metadata``.

    The metadata always has ``layout``, ``residual_norm_style`` (``pre``/``post``),
    ``final_norm`` (bool), ``model`` (encoder arguments) and ``source``; ``gsd``
    (``{'min', 'max', 'median'}`` metres per pixel of the training data) when known.
    """

    state_dict: dict[str, Tensor]
    metadata: dict[str, Any]


class WeightsMismatchError(ValueError):
    """Weights that do not fit a model (the message lists keys and shapes)."""


def _complete(
    metadata: dict[str, Any], state_dict: dict[str, Tensor]
) -> dict[str, Any]:
    """Fill the keys every metadata has."""
    metadata.setdefault('residual_norm_style', 'pre')
    metadata.setdefault('final_norm', 'norm.weight' in state_dict)
    metadata.setdefault('model', {})
    metadata.setdefault('source', {})
    return metadata


def read_checkpoint(path: str | os.PathLike[str]) -> ResolvedWeights:
    """Read a file of any known layout as an encoder state dict and metadata.

    Our weights files carry their metadata; for the first format (a plain state
    dict) the ``.json`` beside it is read; any other layout is converted, its
    metadata read off the keys, shapes and hyper-parameters.

    Args:
        path: The file (loaded tensors-only).

    Returns:
        The state dict and metadata (``source['file']`` is *path*).

    Raises:
        FileNotFoundError: If *path* does not exist.
        ValueError: If the file cannot be read or mapped, or has non-finite tensors.
    """
    source = os.fspath(path)
    obj = safe_load(source)
    if is_weights_file(obj):
        state_dict = dict(obj['state_dict'])
        metadata = dict(obj['metadata'])
        metadata['source'] = {**metadata.get('source', {}), 'file': source}
    else:
        conv = convert_checkpoint(obj, source=source)
        state_dict = conv.encoder
        metadata = conv.metadata()
        side = read_sidecar(source) if conv.layout == 'encoder' else {}
        if side.get('format') == _FORMAT_1:  # the first format: metadata beside it
            conv.model_args.update(side.get('model', {}))
            metadata.update(
                {k: v for k, v in side.items() if k not in ('format', 'model')}
            )
            metadata['model'] = dict(conv.model_args)
            metadata['final_norm'] = 'norm.weight' in state_dict
        metadata['source'] = {**metadata.get('source', {}), 'file': source}
    check_finite(state_dict, source)
    return ResolvedWeights(state_dict, _complete(metadata, state_dict))


def resolve(
    weights: WeightsEnum | str | os.PathLike[str] | ResolvedWeights,
) -> ResolvedWeights:
    """Encoder state dict and metadata from an entry, an entry name or a file.

    Args:
        weights: A weights entry (ours or TorchGeo's); its name, e.g.
            ``'CrossScaleMAEBase16_Weights.FMOW_RGB'``; a file: one of our weights
            files (``xscale weights export``), a Lightning checkpoint of our
            pretraining task or of :class:`torchgeo.tasks.MAE`, one of the authors'
            checkpoints, or an encoder state dict; or an already resolved pair.

    Returns:
        :class:`ResolvedWeights`.

    Raises:
        FileNotFoundError: If *weights* is neither a file nor a known entry.
        ValueError: If the file cannot be read or mapped, or has non-finite tensors.
    """
    if isinstance(weights, ResolvedWeights):
        return weights
    if isinstance(weights, CrossScaleMAEWeightsEnum):
        state_dict, metadata = weights.load()
        metadata['source'] = {**metadata.get('source', {}), 'entry': str(weights)}
        return ResolvedWeights(state_dict, _complete(metadata, state_dict))
    if isinstance(weights, WeightsEnum):
        obj = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
        conv = convert_checkpoint(obj, source=str(weights))
        check_finite(conv.encoder, str(weights))
        metadata = {**conv.metadata(), 'source': {'entry': str(weights)}}
        return ResolvedWeights(conv.encoder, _complete(metadata, conv.encoder))
    if os.path.isfile(weights):
        return read_checkpoint(weights)
    from torchgeo.models import get_weight

    try:
        entry = get_weight(os.fspath(weights))
    except (ValueError, KeyError) as err:
        msg = f'weights={os.fspath(weights)!r} is neither a file nor a known weights entry'
        raise FileNotFoundError(msg) from err
    return resolve(entry)


def model_structure(model: nn.Module) -> dict[str, Any]:
    """What a model computes besides its tensors: residual norm style, final norm.

    Args:
        model: An encoder, a :class:`~torchgeo_xscale.models.CrossScaleMAE` or a
            model holding one.

    Returns:
        ``{'residual_norm_style': 'pre' | 'post', 'final_norm': bool}``.
    """
    norms = [m.norm for m in model.modules() if isinstance(m, CrossScaleViT)]
    return {
        'residual_norm_style': residual_norm_style(model),
        'final_norm': not any(isinstance(n, nn.Identity) for n in norms),
    }


def apply_structure(
    model: nn.Module, metadata: dict[str, Any], final_norm: bool | None = None
) -> None:
    """Make *model* compute what weights with *metadata* computed.

    Args:
        model: The encoder (changed in place).
        metadata: Weights metadata (``residual_norm_style``, ``final_norm``).
        final_norm: True keeps timm's final LayerNorm even for weights without one
            (it starts at weight 1, bias 0); None follows the metadata.

    Raises:
        WeightsMismatchError: For post-norm weights and a model whose blocks cannot
            be post-norm (e.g. timm's own ViT).
    """
    style = metadata.get('residual_norm_style', 'pre')
    set_residual_norm_style(model, style)
    if style != residual_norm_style(model):
        msg = (
            f'post-norm weights ({metadata.get("source") or "weights"}) do not fit '
            f'{type(model).__name__}: its blocks are pre-norm; expected a CrossScaleViT '
            '(a crossscalemae_* builder), whose blocks can be post-norm'
        )
        raise WeightsMismatchError(msg)
    keep = metadata.get('final_norm', True) if final_norm is None else final_norm
    if not keep and isinstance(getattr(model, 'norm', None), nn.LayerNorm):
        model.norm = nn.Identity()  # the authors' encoder has no final norm


def _describe(
    own: dict[str, Tensor], state_dict: dict[str, Tensor], optional: tuple[str, ...]
) -> str:
    """Every missing/unexpected key and shape mismatch, in one line ('' if none)."""
    missing = [k for k in own if k not in state_dict and not k.startswith(optional)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f'{k} has shape {tuple(state_dict[k].shape)}, the model {tuple(own[k].shape)}'
        for k in own
        if k in state_dict and own[k].shape != state_dict[k].shape
    ]
    parts = []
    for what, items in (
        ('shape mismatches', shapes),
        ('missing keys', missing),
        ('unexpected keys', unexpected),
    ):
        if items:
            shown = ', '.join(items[:8]) + (', ...' if len(items) > 8 else '')
            parts.append(f'{len(items)} {what} [{shown}]')
    return '; '.join(parts)


def load_into(
    model: nn.Module,
    state_dict: dict[str, Tensor],
    metadata: dict[str, Any] | None = None,
    *,
    source: str | None = None,
    final_norm: bool | None = None,
    optional: tuple[str, ...] = ('head.',),
    adapt_channels: bool = True,
) -> _IncompatibleKeys:
    """Load an encoder state dict into *model* as the weights were computed.

    The blocks become post-norm for post-norm weights, the final ``norm`` the
    identity for weights without one (unless *final_norm* is True), ``pos_embed``
    is fitted to the model's patch grid (regenerated when fixed sin-cos, else
    resampled; a learned one makes a fixed model's embedding learned too), the
    patch embedding adapted to the model's bands (timm's ``adapt_input_conv``), and
    a classifier ``head`` the model does not have is dropped.

    Args:
        model: A timm-style ViT encoder (ours or timm's), changed in place.
        state_dict: Encoder state dict (timm names), e.g. from :func:`resolve`.
        metadata: Its metadata (``residual_norm_style``, ``final_norm``); None for
            a plain pre-norm state dict (with a final norm if it has ``norm.*``).
        source: Where the weights come from, for the error message.
        final_norm: Keep timm's final LayerNorm even when the weights have none.
        optional: Key prefixes of the model that may be missing from the weights
            (e.g. ``neck.`` for the segmentation encoder).
        adapt_channels: Adapt the patch embedding to another band count (else a
            band-count difference is a mismatch).

    Returns:
        Missing and unexpected keys (only *optional* ones can be missing).

    Raises:
        WeightsMismatchError: If the weights do not fit: every missing or unexpected
            key and shape mismatch in one message.
    """
    metadata = {'final_norm': 'norm.weight' in state_dict, **(metadata or {})}
    source = source or str(
        metadata.get('source', {}).get('file')
        or metadata.get('source', {}).get('entry')
        or 'weights'
    )
    apply_structure(model, metadata, final_norm)
    sd = dict(state_dict)
    own = model.state_dict()
    grid = getattr(getattr(model, 'patch_embed', None), 'grid_size', None)
    pe = sd.get('pos_embed')
    if pe is not None and grid is not None and 'pos_embed' in own:
        grid = (int(grid[0]), int(grid[1]))
        old = grid if pe.shape[1] == 1 + grid[0] * grid[1] else None  # else square
        sd['pos_embed'] = fit_pos_embed(pe, grid, old)
        fixed = getattr(model, 'fixed_pos_embed', False)
        if fixed and not is_sincos(pe, old) and isinstance(model, CrossScaleViT):
            model.use_learned_pos_embed()  # learned weights stay learned
    weight = sd.get('patch_embed.proj.weight')
    target = own.get('patch_embed.proj.weight')
    if (
        adapt_channels
        and weight is not None
        and target is not None
        and weight.shape[1] != target.shape[1]
    ):
        sd['patch_embed.proj.weight'] = adapt_input_conv(
            int(target.shape[1]), weight, int(weight.shape[1])
        )
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith('head.')}
    if 'norm.weight' not in sd and isinstance(
        getattr(model, 'norm', None), nn.LayerNorm
    ):
        optional = (*optional, 'norm.')  # timm's final norm kept at weight 1, bias 0
    problem = _describe(own, sd, optional)
    if problem:
        arch = metadata.get('model') or 'architecture not recorded'
        msg = (
            f'weights {source} ({arch}) do not fit {type(model).__name__}: {problem}; '
            'expected weights of the same architecture (size/embed_dim/depth/patch_size)'
        )
        raise WeightsMismatchError(msg)
    return model.load_state_dict(sd, strict=False)


def export_weights(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    lightning_only: bool = False,
) -> Conversion:
    """Convert any supported checkpoint into our weights file (loaded by path).

    Args:
        src: A Lightning checkpoint of our pretraining task, one of the authors'
            checkpoints, a ``torchgeo.tasks.MAE`` checkpoint, or an encoder /
            CrossScaleMAE state dict.
        out: Destination ``.pth`` (plus ``<out>.json``, the same metadata for people).
        lightning_only: Refuse anything but a checkpoint of our pretraining task.

    Returns:
        The conversion (layout, model arguments, keys not exported).

    Raises:
        ValueError: If *src* cannot be read or mapped, has non-finite tensors, or is
            not a Lightning checkpoint when *lightning_only*.
        WeightsWriteError: If *out* cannot be written (nothing is left half-written).
    """
    source = os.fspath(src)
    obj = safe_load(source)
    if is_weights_file(obj):
        conv = Conversion(dict(obj['state_dict']), layout='encoder')
        conv.model_args = dict(obj['metadata'].get('model', {}))
        metadata = dict(obj['metadata'])
    else:
        conv = convert_checkpoint(obj, source=source)
        metadata = conv.metadata()
    if lightning_only and conv.layout != 'lightning':
        msg = f'{source} is not a Lightning checkpoint of CrossScaleMAETask (layout {conv.layout!r})'
        raise ValueError(msg)
    check_finite(conv.encoder, source)
    metadata['source'] = {**metadata.get('source', {}), 'file': source}
    save_weights(conv.encoder, out, metadata)
    return conv


def export_lightning_checkpoint(
    ckpt: str | os.PathLike[str], out: str | os.PathLike[str]
) -> Conversion:
    """Turn a Lightning checkpoint of :class:`CrossScaleMAETask` into a weights file.

    Args:
        ckpt: The ``.ckpt`` (its state dict has ``model.encoder.*``).
        out: Destination ``.pth`` (plus ``<out>.json``).

    Returns:
        The conversion.

    Raises:
        ValueError: If *ckpt* is not a Lightning checkpoint of our pretraining task.
    """
    return export_weights(ckpt, out, lightning_only=True)


def _checkpoint(
    source: str | os.PathLike[str] | Mapping[str, Any],
) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    return safe_load(source)  # type: ignore[no-any-return]


def load_cross_scale_mae(
    source: str | os.PathLike[str] | Mapping[str, Any],
) -> CrossScaleMAE:
    """The :class:`CrossScaleMAE` of a ``CrossScaleMAETask`` Lightning checkpoint.

    Args:
        source: Checkpoint file or loaded checkpoint dict.

    Returns:
        The model in eval mode.

    Raises:
        ValueError: If the checkpoint has no ``model.*`` weights or hyper-parameters.
    """
    ckpt = _checkpoint(source)
    hparams, state = ckpt.get('hyper_parameters'), ckpt.get('state_dict', {})
    if not hparams or not any(k.startswith('model.encoder.') for k in state):
        raise ValueError(
            'checkpoint has no hyper_parameters/model.encoder.*; expected a CrossScaleMAETask checkpoint'
        )
    accepted = inspect.signature(CrossScaleMAE.__init__).parameters
    # the task's in_channels (TorchGeo's name) is the model's in_chans (timm's); a
    # checkpoint from before the rename stores in_chans itself
    bands = hparams.get('in_channels') or hparams.get('in_chans') or 3
    hparams = {**hparams, 'in_chans': bands}
    model = CrossScaleMAE(**{k: v for k, v in hparams.items() if k in accepted})
    state = {k[len('model.') :]: v for k, v in state.items() if k.startswith('model.')}
    # what the encoder computed: post-norm blocks, no final norm (the authors' start)
    structure = dict(ckpt.get(STRUCTURE_KEY) or {})
    structure.setdefault('final_norm', 'encoder.norm.weight' in state)
    apply_structure(model.encoder, structure)
    model.load_state_dict(state)
    return model.eval()


def load_torchgeo_mae(source: str | os.PathLike[str] | Mapping[str, Any]) -> nn.Module:
    """The :class:`torchgeo.tasks.MAE` of its Lightning checkpoint.

    Args:
        source: Checkpoint file or loaded checkpoint dict.

    Returns:
        The task in eval mode.

    Raises:
        ValueError: If the checkpoint is not one of ``torchgeo.tasks.MAE``.
    """
    from torchgeo.tasks import MAE

    ckpt = _checkpoint(source)
    hparams, state = ckpt.get('hyper_parameters'), ckpt.get('state_dict', {})
    if not hparams or not any(k.startswith('backbone.vit.') for k in state):
        raise ValueError(
            'checkpoint has no hyper_parameters/backbone.vit.*; expected a torchgeo.tasks.MAE checkpoint'
        )
    register_timm_name(str(hparams.get('model', '')))
    accepted = inspect.signature(MAE.__init__).parameters
    task = MAE(
        **{
            k: v
            for k, v in hparams.items()
            if k in accepted and k not in ('weights', 'transform')
        }
    )
    task.load_state_dict(state)
    return task.eval()


def load_mae(source: str | os.PathLike[str] | Mapping[str, Any]) -> nn.Module:
    """The MAE of a Lightning checkpoint of either pretraining task.

    Args:
        source: Checkpoint file or loaded checkpoint dict.

    Returns:
        :func:`load_torchgeo_mae` for a ``torchgeo.tasks.MAE`` checkpoint
        (``backbone.vit.*`` weights), else :func:`load_cross_scale_mae`.
    """
    ckpt = _checkpoint(source)
    state = ckpt.get('state_dict', {})
    if any(k.startswith('backbone.vit.') for k in state):
        return load_torchgeo_mae(ckpt)
    return load_cross_scale_mae(ckpt)
