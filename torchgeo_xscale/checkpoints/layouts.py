"""Checkpoint layouts: detected by their keys, converted to timm names, loudly.

The authors' code (aicip/Cross-Scale-MAE, CC-BY-NC 4.0) saves
``{'model': state_dict, 'optimizer', 'epoch', 'scaler', 'args'}`` (``args`` an
:class:`argparse.Namespace`) with one of three state-dict layouts
(``docs/guides/converting.md`` lists their keys):

* ``official-timm`` (trained without ``--use_xformers``): pre-norm timm blocks
  ``encoder.{i}.attn.qkv`` ...;
* ``official-xformers-post`` (``--use_xformers``, the authors' ``train.sh``; most
  likely the released files): post-norm xFormers blocks
  ``encoder.encoders.{i}.wrap_att.norm`` / ``wrap_att.sublayer.layer.in_proj_container
  .{q,k,v}_proj`` ... computing ``x = LN(x + f(x))``;
* ``official-xformers-pre``: pre-norm xFormers blocks ``wrap_att.layer.norm`` /
  ``wrap_att.layer.sublayer.*``; every block is mapped the same way (no extra norm
  after the last one).

All three share ``cls_token``, ``encoder_pos_embed`` (fixed sin-cos, 128 px grid),
``patch_embed.proj``, the decoder and ``encoder_norm``. The authors' encoder computes
``encoder_norm`` and discards it: their features are the last block's output, and
``encoder_norm`` is never trained (weight 1, bias 0). It is therefore not mapped to
timm's final ``norm``: the converted encoder has none (``final_norm=False``, ``norm``
the identity), and computes the authors' features.

Ours: ``encoder`` (a :class:`~torchgeo_xscale.models.vit.CrossScaleViT` state dict),
``mae`` (a :class:`~torchgeo_xscale.models.CrossScaleMAE` state dict, ``encoder.*``),
``lightning`` (a checkpoint of :class:`~torchgeo_xscale.tasks.CrossScaleMAETask`,
``model.*``) and ``torchgeo-mae`` (a checkpoint of :class:`torchgeo.tasks.MAE`,
``backbone.vit.*``).

TorchGeo's trainers: ``torchgeo-model`` (a checkpoint of a TorchGeo task whose ``model``
is our ViT, ``model.*``) and ``torchgeo-backbone`` (whose ``backbone`` is, as in
:class:`torchgeo.tasks.SemanticSegmentation`, ``model.backbone.model.*``): the keys
:func:`torchgeo.tasks.utils.extract_backbone` extracts.
"""

import argparse
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..models.timm_vit import TIMM_VIT_NAME
from ..models.vit import VIT_SIZES

__all__ = (
    'ENCODER_ARGS',
    'LAYOUTS',
    'OFFICIAL_LAYOUTS',
    'STRUCTURE_KEY',
    'Conversion',
    'convert_checkpoint',
    'detect_layout',
    'infer_model_args',
    'to_official',
    'unwrap',
)

logger = logging.getLogger(__name__)

#: The authors' layouts.
OFFICIAL_LAYOUTS = ('official-timm', 'official-xformers-post', 'official-xformers-pre')
#: Layout names that :func:`detect_layout` returns.
LAYOUTS = (
    'encoder',
    'mae',
    'lightning',
    'torchgeo-mae',
    'torchgeo-model',
    'torchgeo-backbone',
    *OFFICIAL_LAYOUTS,
)
#: Encoder key prefix of TorchGeo's trainers' checkpoints (torchgeo.tasks.utils).
_TORCHGEO_PREFIXES = {
    'torchgeo-model': 'model.',
    'torchgeo-backbone': 'model.backbone.model.',
}

#: The authors' xFormers block sub-keys -> timm block sub-keys, per residual style.
_XF_BLOCK = {
    'official-xformers-post': {
        'wrap_att.norm.': 'norm1.',
        'wrap_att.sublayer.layer.proj.': 'attn.proj.',
        'wrap_ff.norm.': 'norm2.',
        'wrap_ff.sublayer.layer.mlp.0.': 'mlp.fc1.',
        'wrap_ff.sublayer.layer.mlp.3.': 'mlp.fc2.',
    },
    'official-xformers-pre': {
        'wrap_att.layer.norm.': 'norm1.',
        'wrap_att.layer.sublayer.proj.': 'attn.proj.',
        'wrap_ff.layer.norm.': 'norm2.',
        'wrap_ff.layer.sublayer.mlp.0.': 'mlp.fc1.',
        'wrap_ff.layer.sublayer.mlp.3.': 'mlp.fc2.',
    },
}
#: Prefix of the separate q/k/v projections in an xFormers block.
_QKV = {
    'official-xformers-post': 'wrap_att.sublayer.layer.in_proj_container.',
    'official-xformers-pre': 'wrap_att.layer.sublayer.in_proj_container.',
}
#: The authors' top-level encoder names -> ours, for every official layout.
_TOP = {
    'cls_token': 'cls_token',
    'encoder_pos_embed': 'pos_embed',
    'patch_embed.proj.weight': 'patch_embed.proj.weight',
    'patch_embed.proj.bias': 'patch_embed.proj.bias',
}
#: The authors' encoder norm, computed and discarded by their forward.
_DISCARDED = ('encoder_norm.weight', 'encoder_norm.bias')
#: Parameters every timm block has (checked after a conversion).
_BLOCK_PARAMS = ('norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1', 'mlp.fc2')
#: Encoder arguments a weights file records (hyper-parameters of our task too).
ENCODER_ARGS = tuple(
    'embed_dim depth num_heads mlp_ratio patch_size in_chans img_size attention '
    'attention_options gsd_pos_embed reference_gsd'.split()
)
_DECODER_TOP = tuple(
    'decoder_embed. mask_token decoder_pos_embed decoder_norm. decoder_pred.'.split()
)
#: Checkpoint key where our tasks record what their encoder computes
#: (``residual_norm_style``, ``final_norm``; see ``checkpoints.model_structure``).
STRUCTURE_KEY = 'xscale_structure'
#: Key prefix of the encoder in a ``torchgeo.tasks.MAE`` checkpoint.
_PEER_PREFIX = 'backbone.vit.'


@dataclass
class Conversion:
    """A checkpoint converted to our names.

    Attributes:
        encoder: Encoder state dict (timm names; loads into :class:`CrossScaleViT`).
        decoder: The rest of a :class:`CrossScaleMAE` state dict: decoder
            (``decoder_embed``, ``decoder_blocks.{i}`` ...) and, for our own
            checkpoints, the heads of L_cc/L_cp; empty when there is none.
        layout: The detected layout (one of :data:`LAYOUTS`).
        residual_norm_style: ``pre`` (timm) or ``post`` (the authors' xFormers).
        model_args: Encoder arguments (``embed_dim``, ``depth``, ``num_heads``,
            ``patch_size``, ``in_chans``, ``img_size``, ``mlp_ratio`` ...).
        unexpected_keys: Source keys not mapped (e.g. the authors' BatchNorm
            predictor, their discarded ``encoder_norm``).
        extra: Further metadata found in the file: ``gsd`` (a Lightning checkpoint's
            ``xscale_gsd``), ``args`` (the authors' arguments), ``timm_model``.
    """

    encoder: dict[str, Tensor]
    decoder: dict[str, Tensor] = field(default_factory=dict)
    layout: str = 'encoder'
    residual_norm_style: str = 'pre'
    model_args: dict[str, Any] = field(default_factory=dict)
    unexpected_keys: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final_norm(self) -> bool:
        """Whether the encoder has timm's final ``norm`` (the authors' has none)."""
        return 'norm.weight' in self.encoder

    def mae_state_dict(self) -> dict[str, Tensor]:
        """Encoder and decoder as one :class:`CrossScaleMAE` state dict (``encoder.*``).

        Returns:
            The state dict (load with ``strict=False``: the authors' checkpoints have
            no heads of ours, and their encoder no final norm).
        """
        return {**{f'encoder.{k}': v for k, v in self.encoder.items()}, **self.decoder}

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description, as recorded in a weights file.

        Returns:
            ``layout``, ``residual_norm_style``, ``final_norm``, ``model`` (encoder
            arguments), ``unexpected_keys`` and the :attr:`extra` entries.
        """
        return {
            **self.extra,
            'layout': self.layout,
            'residual_norm_style': self.residual_norm_style,
            'final_norm': self.final_norm,
            'model': dict(self.model_args),
            'unexpected_keys': list(self.unexpected_keys),
        }


def unwrap(obj: Any) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """The state dict inside a loaded checkpoint, and Lightning hyper-parameters.

    Args:
        obj: What :func:`~torchgeo_xscale.checkpoints.files.safe_load` returned.

    Returns:
        ``(state_dict, hyper_parameters or None)``; a DDP ``module.`` prefix removed.

    Raises:
        ValueError: If *obj* holds no state dict of tensors.
    """
    hparams = None
    if isinstance(obj, dict) and isinstance(obj.get('state_dict'), dict):
        hparams = dict(obj.get('hyper_parameters') or {})
        obj = obj['state_dict']
    elif isinstance(obj, dict) and isinstance(obj.get('model'), dict):
        obj = obj['model']
    if not isinstance(obj, dict) or not all(
        isinstance(v, Tensor) for v in obj.values()
    ):
        msg = f'checkpoint holds no state dict of tensors (top level: {type(obj).__name__})'
        raise ValueError(msg)
    if obj and all(k.startswith('module.') for k in obj):
        obj = {k[len('module.') :]: v for k, v in obj.items()}
    return obj, hparams


def detect_layout(state_dict: dict[str, Tensor]) -> str:
    """Which layout a state dict has.

    Args:
        state_dict: The state dict (unwrapped).

    Returns:
        One of :data:`LAYOUTS`.

    Raises:
        ValueError: If no known layout matches; the message shows the first keys.
    """
    keys = list(state_dict)

    def has(pattern: str) -> bool:
        return any(re.match(pattern, k) for k in keys)

    if has(r'model\.encoder\.blocks\.'):
        return 'lightning'
    if has(re.escape(_PEER_PREFIX) + r'blocks\.'):
        return 'torchgeo-mae'
    for layout, prefix in reversed(_TORCHGEO_PREFIXES.items()):  # longest first
        if f'{prefix}patch_embed.proj.weight' in keys and has(
            re.escape(prefix) + r'blocks\.'
        ):
            return layout
    if has(r'encoder\.encoders\.\d+\.wrap_att\.sublayer\.layer\.'):
        return 'official-xformers-post'
    if has(r'encoder\.encoders\.\d+\.wrap_att\.layer\.'):
        return 'official-xformers-pre'
    if has(r'encoder\.\d+\.attn\.qkv\.'):
        return 'official-timm'
    if has(r'encoder\.blocks\.'):
        return 'mae'
    if has(r'blocks\.') and 'patch_embed.proj.weight' in keys:
        return 'encoder'
    msg = (
        f'cannot map this checkpoint layout (first keys {keys[:6]}); expected one of '
        f'{list(LAYOUTS)}: timm ViT names (blocks.0.attn.qkv), official timm '
        '(encoder.0.attn.qkv) or official xFormers (encoder.encoders.0.wrap_att...)'
    )
    raise ValueError(msg)


def _depth(keys: Any, prefix: str) -> int:
    """Number of blocks ``<prefix>{i}.`` among *keys*."""
    pattern = re.compile(re.escape(prefix) + r'(\d+)\.')
    return 1 + max(
        (int(m.group(1)) for k in keys if (m := pattern.match(k))), default=-1
    )


def _map_blocks(
    sd: dict[str, Tensor], src: str, dst: str, layout: str, used: set[str]
) -> dict[str, Tensor]:
    """The authors' blocks under prefix *src* as timm blocks under prefix *dst*.

    Args:
        sd: The authors' state dict.
        src: Prefix of its blocks (``encoder.`` or ``encoder.encoders.``).
        dst: Our prefix (``blocks.`` or ``decoder_blocks.``).
        layout: An official layout.
        used: Source keys consumed (updated).

    Returns:
        The mapped blocks (keys not recognised stay out of *used*).
    """
    out: dict[str, Tensor] = {}
    pattern = re.compile(re.escape(src) + r'(\d+)\.(.+)')
    table = _XF_BLOCK.get(layout, {})
    qkv = _QKV.get(layout, '')
    for k, v in sd.items():
        m = pattern.match(k)
        if not m:
            continue
        i, rest = int(m.group(1)), m.group(2)
        if layout == 'official-timm':
            out[f'{dst}{i}.{rest}'] = v
            used.add(k)
            continue
        s = next((s for s in table if rest.startswith(s)), None)
        if s is not None:
            out[f'{dst}{i}.{table[s]}{rest[len(s) :]}'] = v
            used.add(k)
        elif rest.startswith(qkv + 'q_proj.') and rest.endswith(('.weight', '.bias')):
            p = rest.rsplit('.', 1)[1]
            names = [f'{src}{i}.{qkv}{n}_proj.{p}' for n in 'qkv']
            if all(n in sd for n in names):  # timm's qkv is their concatenation
                out[f'{dst}{i}.attn.qkv.{p}'] = torch.cat([sd[n] for n in names], 0)
                used.update(names)
    return out


def infer_model_args(encoder: dict[str, Tensor]) -> dict[str, Any]:
    """Encoder arguments read off the shapes of an encoder state dict.

    ``num_heads`` is not in the shapes: it is the standard ViT value for the width
    (192: 3, 384: 6, 768: 12, 1024: 16), otherwise left out.

    Args:
        encoder: Encoder state dict (timm names).

    Returns:
        ``embed_dim``, ``depth``, ``patch_size``, ``in_chans``, ``mlp_ratio``,
        ``img_size`` (square ``pos_embed``) and ``num_heads`` (when known).
    """
    w = encoder['patch_embed.proj.weight']
    dim = int(w.shape[0])
    args: dict[str, Any] = {
        'embed_dim': dim,
        'depth': _depth(encoder, 'blocks.'),
        'patch_size': int(w.shape[-1]),
        'in_chans': int(w.shape[1]),
        'mlp_ratio': encoder['blocks.0.mlp.fc1.weight'].shape[0] / dim,
    }
    heads = {d: h for d, _, h in VIT_SIZES.values()}
    if dim in heads:
        args['num_heads'] = heads[dim]
    side = round((encoder['pos_embed'].shape[1] - 1) ** 0.5)
    if side * side == encoder['pos_embed'].shape[1] - 1:
        args['img_size'] = side * args['patch_size']
    return args


def _plain(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON-able scalars of the authors' ``args``."""
    return {
        k: v
        for k, v in vars(args).items()
        if v is None or isinstance(v, str | int | float | bool)
    }


def _ours(sd: dict[str, Tensor], layout: str, used: set[str]) -> tuple[dict, dict]:
    """Encoder and the rest of one of our layouts."""
    outer = {'mae': '', 'lightning': 'model.'}.get(layout, '')
    prefix = {
        'encoder': '',
        'mae': 'encoder.',
        'lightning': 'model.encoder.',
        'torchgeo-mae': _PEER_PREFIX,
        **_TORCHGEO_PREFIXES,
    }[layout]
    encoder = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    used.update(prefix + k for k in encoder)
    rest = ('decoder', 'mask_token', 'projection_head.', 'predictor.')
    decoder = {}
    if layout in ('mae', 'lightning'):
        decoder = {
            k[len(outer) :]: v
            for k, v in sd.items()
            if k.startswith(outer) and k[len(outer) :].startswith(rest)
        }
        used.update(outer + k for k in decoder)
    return encoder, decoder


def convert_checkpoint(obj: Any, source: str = 'checkpoint') -> Conversion:
    """Convert a loaded checkpoint of any known layout to our names.

    Args:
        obj: What :func:`~torchgeo_xscale.checkpoints.files.safe_load` returned (a
            state dict or a checkpoint dict).
        source: Name of the file, for messages.

    Returns:
        The :class:`Conversion`.

    Raises:
        ValueError: If the layout is unknown, or known but its encoder could not be
            mapped completely (the message names the layout and the keys).
    """
    sd, hparams = unwrap(obj)
    layout = detect_layout(sd)
    used: set[str] = set()
    extra: dict[str, Any] = {}
    if isinstance(obj, dict):
        if isinstance(obj.get('xscale_gsd'), dict):
            extra['gsd'] = {k: float(v) for k, v in obj['xscale_gsd'].items()}
        if isinstance(obj.get('args'), argparse.Namespace):
            extra['args'] = _plain(obj['args'])
    if layout in OFFICIAL_LAYOUTS:
        encoder = {d: sd[s] for s, d in _TOP.items() if s in sd}
        used.update(s for s in _TOP if s in sd)
        enc_src = 'encoder.' if layout == 'official-timm' else 'encoder.encoders.'
        encoder.update(_map_blocks(sd, enc_src, 'blocks.', layout, used))
        # encoder_norm (_DISCARDED) stays unmapped: the authors never applied it
        dec_src = 'decoder.' if layout == 'official-timm' else 'decoder.encoders.'
        decoder = _map_blocks(sd, dec_src, 'decoder_blocks.', layout, used)
        decoder.update({k: v for k, v in sd.items() if k.startswith(_DECODER_TOP)})
        used.update(k for k in sd if k.startswith(_DECODER_TOP))
    else:
        encoder, decoder = _ours(sd, layout, used)
    unexpected = sorted(k for k in sd if k not in used)
    depth = _depth(encoder, 'blocks.')
    required = ['cls_token', 'pos_embed', 'patch_embed.proj.weight']
    required += [f'blocks.{i}.{n}.weight' for i in range(depth) for n in _BLOCK_PARAMS]
    missing = [k for k in required if k not in encoder]
    if missing or not depth:
        msg = (
            f'{source}: layout {layout!r} detected, but its encoder could not be mapped: '
            f'missing {missing[:8] or ["blocks.0..."]}; unmapped source keys {unexpected[:8]}'
        )
        raise ValueError(msg)
    unmapped = [
        k for k in unexpected if k.startswith(('encoder.encoders.', 'encoder.'))
    ]
    if layout in OFFICIAL_LAYOUTS and unmapped:  # they would change the features
        msg = (
            f'{source}: layout {layout!r} detected, but encoder keys are not part '
            f'of it: {unmapped[:8]} ({len(unmapped)} in all)'
        )
        raise ValueError(msg)
    args = infer_model_args(encoder)
    if hparams:
        size = VIT_SIZES.get(str(hparams.get('size')))
        if size is not None:
            args['num_heads'] = size[2]
        args.update({k: hparams[k] for k in ENCODER_ARGS if hparams.get(k) is not None})
        if layout == 'torchgeo-mae' and hparams.get('model'):
            extra['timm_model'] = str(hparams['model'])
            match = TIMM_VIT_NAME.match(extra['timm_model'])
            if match:
                args['num_heads'] = int(match.group(3))
            if hparams.get('in_channels'):
                args['in_chans'] = int(hparams['in_channels'])
    if unexpected:
        logger.info('%s (%s): keys not mapped: %s', source, layout, unexpected)
    style = 'post' if layout == 'official-xformers-post' else 'pre'
    structure = obj.get(STRUCTURE_KEY) if isinstance(obj, dict) else None
    if isinstance(structure, dict):  # recorded by our tasks (post-norm starts)
        style = str(structure.get('residual_norm_style', style))
    return Conversion(encoder, decoder, layout, style, args, unexpected, extra)


def to_official(state_dict: dict[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Write our encoder (or CrossScaleMAE) state dict in one of the authors' layouts.

    The inverse of :func:`convert_checkpoint`, with the real key names: q/k/v split
    from timm's packed ``qkv``, ``encoder_norm`` added as the authors' untrained one
    (weight 1, bias 0), our final ``norm`` and heads (projection head, predictor)
    left out, as the authors' differ.

    Args:
        state_dict: Encoder state dict (timm names) or CrossScaleMAE state dict.
        layout: One of :data:`OFFICIAL_LAYOUTS`.

    Returns:
        The state dict in that layout (put it under ``'model'`` as the authors did).

    Raises:
        ValueError: If *layout* is not an official layout.
    """
    if layout not in OFFICIAL_LAYOUTS:
        msg = f'layout={layout!r}; expected one of {list(OFFICIAL_LAYOUTS)}'
        raise ValueError(msg)
    sd = dict(state_dict)
    if any(k.startswith('encoder.') for k in sd):
        sd = {k.removeprefix('encoder.'): v for k, v in sd.items()}
    out = {s: sd[d] for s, d in _TOP.items() if d in sd}
    inverse = {d: s for s, d in _XF_BLOCK.get(layout, {}).items()}
    for ours, theirs in (('blocks.', 'encoder.'), ('decoder_blocks.', 'decoder.')):
        if layout != 'official-timm':
            theirs += 'encoders.'
        for k, v in sd.items():
            if not k.startswith(ours):
                continue
            i, rest = k[len(ours) :].split('.', 1)
            if layout == 'official-timm':
                out[f'{theirs}{i}.{rest}'] = v
            elif rest.startswith('attn.qkv.'):
                for n, part in zip('qkv', v.chunk(3, 0)):
                    out[f'{theirs}{i}.{_QKV[layout]}{n}_proj.{rest[9:]}'] = part
            else:
                d = next(d for d in inverse if rest.startswith(d))
                out[f'{theirs}{i}.{inverse[d]}{rest[len(d) :]}'] = v
    dim = out['cls_token'].shape[-1]
    out['encoder_norm.weight'] = torch.ones(dim)
    out['encoder_norm.bias'] = torch.zeros(dim)
    out.update({k: v for k, v in sd.items() if k.startswith(_DECODER_TOP)})
    return out
