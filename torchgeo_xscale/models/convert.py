"""Checkpoint layouts: the authors' Cross-Scale MAE checkpoints and ours, to timm names.

The authors' code (aicip/Cross-Scale-MAE, CC-BY-NC 4.0) saves
``{'model': state_dict, 'optimizer', 'epoch', 'scaler', 'args'}`` with one of three
state-dict layouts, detected here by their keys:

* ``official-timm`` (``use_xformers=False``): timm blocks as ``encoder.{i}.attn.qkv``,
  ``encoder_pos_embed``, ``encoder_norm``, decoder ``decoder.{i}.*``;
* ``official-xformers-post`` (``--use_xformers``, the published ``train.sh``, default
  ``residual_norm_style='post'``): ``encoder.encoders.{i}.wrap_att.norm`` and
  ``wrap_att.sublayer.layer.in_proj_container.{q,k,v}_proj`` (``x = LN(x + f(x))``);
* ``official-xformers-pre``: ``wrap_att.layer.norm`` / ``wrap_att.layer.sublayer.*``,
  the last block ending in a final norm ``wrap_ff.norm``.

Ours: ``encoder`` (a :class:`~torchgeo_xscale.models.vit.CrossScaleViT` state dict),
``mae`` (a :class:`~torchgeo_xscale.models.CrossScaleMAE` state dict, ``encoder.*``)
and ``lightning`` (a checkpoint of
:class:`~torchgeo_xscale.tasks.CrossScaleMAETask`, ``state_dict`` of ``model.*``).

Post-norm blocks cannot be expressed by timm's pre-norm ``Block``: their weights load
under the same names, and :func:`set_residual_norm_style` switches the blocks of a
model to :class:`PostNormBlock` so that it computes what the authors' model computed.
The authors' forward computed ``encoder_norm`` and discarded it (never trained, so
weight 1, bias 0); it becomes the final ``norm`` that timm's ``forward_features``
applies.
"""

import argparse
import json
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from ..io import atomic_path, atomic_torch_save
from .vit import VIT_SIZES, Block, sincos_pos_embed

logger = logging.getLogger(__name__)

#: Layout names that :func:`detect_layout` returns.
LAYOUTS = tuple(
    'encoder mae lightning official-timm official-xformers-post official-xformers-pre'.split()
)

_QKV = 'in_proj_container.'
#: Official block sub-keys -> timm block sub-keys, per xFormers residual style.
_XF_POST = {
    'wrap_att.norm.': 'norm1.',
    'wrap_att.sublayer.layer.proj.': 'attn.proj.',
    'wrap_ff.norm.': 'norm2.',
    'wrap_ff.sublayer.layer.mlp.0.': 'mlp.fc1.',
    'wrap_ff.sublayer.layer.mlp.3.': 'mlp.fc2.',
}
_XF_PRE = {
    'wrap_att.layer.norm.': 'norm1.',
    'wrap_att.layer.sublayer.proj.': 'attn.proj.',
    'wrap_ff.layer.norm.': 'norm2.',
    'wrap_ff.layer.sublayer.mlp.0.': 'mlp.fc1.',
    'wrap_ff.layer.sublayer.mlp.3.': 'mlp.fc2.',
}
#: The last pre-norm block: wrap_ff = PostNorm(Residual(PreNorm(ff))); '' = final norm.
_XF_PRE_LAST = {
    'wrap_ff.sublayer.layer.norm.': 'norm2.',
    'wrap_ff.sublayer.layer.sublayer.mlp.0.': 'mlp.fc1.',
    'wrap_ff.sublayer.layer.sublayer.mlp.3.': 'mlp.fc2.',
    'wrap_ff.norm.': '',
}
_QKV_PREFIX = {
    'official-xformers-post': 'wrap_att.sublayer.layer.' + _QKV,
    'official-xformers-pre': 'wrap_att.layer.sublayer.' + _QKV,
}
_TOP = {  # official top-level names -> ours (encoder), for every official layout
    'cls_token': 'cls_token',
    'encoder_pos_embed': 'pos_embed',
    'patch_embed.proj.weight': 'patch_embed.proj.weight',
    'patch_embed.proj.bias': 'patch_embed.proj.bias',
}
#: Format tag written into the description beside a weights file.
WEIGHTS_FORMAT = 'torchgeo_xscale.weights/1'
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


class PostNormBlock(Block):
    """A transformer block with post-norm residuals, ``x = LN(x + f(x))``.

    The parameter names are timm's :class:`~timm.models.vision_transformer.Block`
    (``norm1``, ``attn``, ``norm2``, ``mlp``); only the order of operations differs.
    This is the block of the authors' xFormers encoder (``residual_norm_style='post'``).
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


def safe_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` a checkpoint with ``weights_only=True``, failing clearly.

    Only tensors, plain containers and :class:`argparse.Namespace` (the ``args`` of
    the authors' checkpoints) are unpickled; nothing that could run code.

    Args:
        path: The file.

    Returns:
        The loaded object.

    Raises:
        FileNotFoundError: If *path* does not exist.
        ValueError: If the file is truncated, not a PyTorch file, or needs more than
            tensors to unpickle.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        msg = f'checkpoint {path!r} does not exist'
        raise FileNotFoundError(msg)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = [ln for ln in lines if 'GLOBAL' in ln or 'Unsupported' in ln]
        reason = (why or lines[-1:] or ['?'])[0]
        msg = (
            f'{path} is not a tensors-only checkpoint; refusing to unpickle it with '
            f'weights_only=True ({reason}). Re-save its state dict from a trusted '
            'environment, or check that the download is not a web page.'
        )
        raise ValueError(msg) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        msg = f'{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {err}'
        raise ValueError(msg) from err


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
            predictor, a discarded ``encoder_norm``).
    """

    encoder: dict[str, Tensor]
    decoder: dict[str, Tensor] = field(default_factory=dict)
    layout: str = 'encoder'
    residual_norm_style: str = 'pre'
    model_args: dict[str, Any] = field(default_factory=dict)
    unexpected_keys: list[str] = field(default_factory=list)

    def mae_state_dict(self) -> dict[str, Tensor]:
        """Encoder and decoder as one :class:`CrossScaleMAE` state dict (``encoder.*``).

        Returns:
            The state dict (load with ``strict=False``: the authors' checkpoints have
            no heads of ours).
        """
        return {**{f'encoder.{k}': v for k, v in self.encoder.items()}, **self.decoder}

    def info(self) -> dict[str, Any]:
        """JSON-serialisable description, as recorded beside a weights file.

        Returns:
            Layout, residual norm style, model arguments and unexpected keys.
        """
        return {
            'layout': self.layout,
            'residual_norm_style': self.residual_norm_style,
            'model': dict(self.model_args),
            'unexpected_keys': list(self.unexpected_keys),
        }


def unwrap(obj: Any) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """The state dict inside a loaded checkpoint, and Lightning hyper-parameters.

    Args:
        obj: What :func:`safe_load` returned.

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


def _block_table(layout: str, last: bool) -> dict[str, str]:
    """Official block sub-key prefixes -> ours ('' = a final norm after the block)."""
    table = dict(_XF_POST if layout == 'official-xformers-post' else _XF_PRE)
    if layout == 'official-xformers-pre' and last:
        table = {s: d for s, d in table.items() if s.startswith('wrap_att.')}
        table.update(_XF_PRE_LAST)
    return dict(sorted(table.items(), key=lambda kv: -len(kv[0])))


def _map_blocks(
    sd: dict[str, Tensor], src: str, dst: str, layout: str, used: set[str]
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Official blocks under prefix *src* as timm blocks under prefix *dst*.

    Args:
        sd: Official state dict.
        src: Prefix of its blocks (``encoder.`` or ``encoder.encoders.``).
        dst: Our prefix (``blocks.`` or ``decoder_blocks.``).
        layout: An official layout.
        used: Source keys consumed (updated).

    Returns:
        The mapped blocks, and the source keys of a final norm after the last block
        (pre-norm xFormers; ``{'weight': key, 'bias': key}``, not marked used).
    """
    out: dict[str, Tensor] = {}
    final: dict[str, str] = {}
    pattern = re.compile(re.escape(src) + r'(\d+)\.(.+)')
    depth = 1 + max(
        (int(m.group(1)) for k in sd if (m := pattern.match(k))), default=-1
    )
    qkv = _QKV_PREFIX.get(layout, '')
    for k, v in sd.items():
        m = pattern.match(k)
        if not m:
            continue
        i, rest = int(m.group(1)), m.group(2)
        if layout == 'official-timm':
            out[f'{dst}{i}.{rest}'] = v
            used.add(k)
            continue
        if rest.startswith(('mha.', 'feedforward.')):
            used.add(k)  # older xFormers also registered the wrapped modules here
            continue
        table = _block_table(layout, i == depth - 1)
        s = next((s for s in table if rest.startswith(s)), '')
        d = table.get(s)
        if d:
            out[f'{dst}{i}.{d}{rest[len(s) :]}'] = v
            used.add(k)
        elif d == '':
            final[rest[len(s) :]] = k
        if rest.startswith(qkv) and rest.endswith(('.weight', '.bias')):
            p = rest.rsplit('.', 1)[1]
            names = [f'{src}{i}.{qkv}{n}_proj.{p}' for n in 'qkv']
            if all(n in sd for n in names):  # heads are contiguous in q, k, v alike
                out[f'{dst}{i}.attn.qkv.{p}'] = torch.cat([sd[n] for n in names], 0)
                used.update(names)
    return out, final


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
        'depth': 1
        + max(int(k.split('.')[1]) for k in encoder if k.startswith('blocks.')),
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


def is_sincos(pos_embed: Tensor) -> bool:
    """Whether *pos_embed* is MAE's fixed 2-D sin-cos embedding of a square grid.

    Args:
        pos_embed: ``(1, 1 + N, D)``.

    Returns:
        True if so (then it can be regenerated exactly for any grid).
    """
    side = round((pos_embed.shape[1] - 1) ** 0.5)
    if side * side != pos_embed.shape[1] - 1 or pos_embed.shape[-1] % 4:
        return False
    ref = sincos_pos_embed(pos_embed.shape[-1], side).to(pos_embed.dtype)
    return bool(torch.allclose(pos_embed.cpu(), ref, atol=1e-4))


def fit_pos_embed(
    encoder: dict[str, Tensor], grid: tuple[int, int]
) -> dict[str, Tensor]:
    """``pos_embed`` of *encoder* for a patch grid: regenerated if sin-cos, else resampled.

    Args:
        encoder: Encoder state dict (timm names).
        grid: Target patch grid (rows, cols).

    Returns:
        The state dict (a copy when changed).
    """
    pe = encoder['pos_embed']
    if pe.shape[1] == 1 + grid[0] * grid[1]:
        return encoder
    encoder = dict(encoder)
    if grid[0] == grid[1] and is_sincos(pe):
        encoder['pos_embed'] = sincos_pos_embed(pe.shape[-1], grid[0]).to(pe.dtype)
    else:
        encoder['pos_embed'] = resample_abs_pos_embed(
            pe, list(grid), num_prefix_tokens=1
        )
    return encoder


def convert_checkpoint(obj: Any, source: str = 'checkpoint') -> Conversion:
    """Convert a loaded checkpoint of any known layout to our names.

    Args:
        obj: What :func:`safe_load` returned (a state dict or a checkpoint dict).
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
    if layout in ('encoder', 'mae', 'lightning'):
        outer = {'encoder': '', 'mae': '', 'lightning': 'model.'}[layout]
        prefix = outer + ('' if layout == 'encoder' else 'encoder.')
        encoder = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        used.update(prefix + k for k in encoder)
        rest = ('decoder', 'mask_token', 'projection_head.', 'predictor.')
        decoder = {
            k[len(outer) :]: v
            for k, v in sd.items()
            if layout != 'encoder'
            and k.startswith(outer)
            and k[len(outer) :].startswith(rest)
        }
        used.update(outer + k for k in decoder)
    else:
        encoder = {d: sd[s] for s, d in _TOP.items() if s in sd}
        used.update(s for s in _TOP if s in sd)
        enc_src = 'encoder.' if layout == 'official-timm' else 'encoder.encoders.'
        blocks, final = _map_blocks(sd, enc_src, 'blocks.', layout, used)
        encoder.update(blocks)
        # The authors' forward discards encoder_norm; pre-norm xFormers ends in its own.
        norm = final or {p: f'encoder_norm.{p}' for p in ('weight', 'bias')}
        if all(n in sd for n in norm.values()):
            encoder.update({f'norm.{p}': sd[n] for p, n in norm.items()})
            used.update(norm.values())
        dec_src = 'decoder.' if layout == 'official-timm' else 'decoder.encoders.'
        decoder, _ = _map_blocks(sd, dec_src, 'decoder_blocks.', layout, used)
        decoder.update({k: v for k, v in sd.items() if k.startswith(_DECODER_TOP)})
        used.update(k for k in sd if k.startswith(_DECODER_TOP))
    unexpected = sorted(k for k in sd if k not in used)
    depth = 1 + max(
        (int(k.split('.')[1]) for k in encoder if k.startswith('blocks.')), default=0
    )
    required = ['cls_token', 'pos_embed', 'patch_embed.proj.weight', 'norm.weight']
    required += [f'blocks.{i}.{n}.weight' for i in range(depth) for n in _BLOCK_PARAMS]
    missing = [k for k in required if k not in encoder]
    if missing:
        msg = (
            f'{source}: layout {layout!r} detected, but its encoder could not be mapped: '
            f'missing {missing[:8]}; unmapped source keys {unexpected[:8]}'
        )
        raise ValueError(msg)
    args = infer_model_args(encoder)
    if hparams:
        size = VIT_SIZES.get(str(hparams.get('size')))
        if size is not None:
            args['num_heads'] = size[2]
        args.update({k: hparams[k] for k in ENCODER_ARGS if hparams.get(k) is not None})
    if unexpected:
        logger.info('%s (%s): keys not mapped: %s', source, layout, unexpected)
    style = 'post' if layout == 'official-xformers-post' else 'pre'
    return Conversion(encoder, decoder, layout, style, args, unexpected)


def to_official(state_dict: dict[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Write our encoder (or CrossScaleMAE) state dict in one of the authors' layouts.

    The inverse of :func:`convert_checkpoint` for tests and comparisons; our heads
    (projection head, predictor) are left out, as the authors' differ.

    Args:
        state_dict: Encoder state dict (timm names) or CrossScaleMAE state dict.
        layout: ``official-timm``, ``official-xformers-post`` or ``official-xformers-pre``.

    Returns:
        The state dict in that layout (put it under ``'model'`` as the authors did).

    Raises:
        ValueError: If *layout* is not an official layout.
    """
    if layout not in _QKV_PREFIX and layout != 'official-timm':
        msg = f'layout={layout!r}; expected one of {list(LAYOUTS[3:])}'
        raise ValueError(msg)
    sd = dict(state_dict)
    if any(k.startswith('encoder.') for k in sd):
        sd = {k.removeprefix('encoder.'): v for k, v in sd.items()}
    out = {s: sd[d] for s, d in _TOP.items() if d in sd}
    for ours, theirs, final in (
        ('blocks.', 'encoder.', 'norm.'),
        ('decoder_blocks.', 'decoder.', ''),
    ):
        if layout != 'official-timm':
            theirs += 'encoders.'
        idx = [int(k.split('.')[1]) for k in sd if k.startswith(ours)]
        depth = 1 + max(idx, default=-1)
        for k, v in sd.items():
            if not k.startswith(ours):
                continue
            i, rest = k[len(ours) :].split('.', 1)
            if layout == 'official-timm':
                out[f'{theirs}{i}.{rest}'] = v
            elif rest.startswith('attn.qkv.'):
                for n, part in zip('qkv', v.chunk(3, 0)):
                    out[f'{theirs}{i}.{_QKV_PREFIX[layout]}{n}_proj.{rest[9:]}'] = part
            else:
                inverse = {
                    d: s
                    for s, d in _block_table(layout, int(i) == depth - 1).items()
                    if d
                }
                d = next(d for d in inverse if rest.startswith(d))
                out[f'{theirs}{i}.{inverse[d]}{rest[len(d) :]}'] = v
        if layout == 'official-xformers-pre' and depth:
            w = sd.get(f'{final}weight', torch.ones(sd[f'{ours}0.norm1.weight'].shape))
            b = sd.get(f'{final}bias', torch.zeros(w.shape))
            out[f'{theirs}{depth - 1}.wrap_ff.norm.weight'] = w
            out[f'{theirs}{depth - 1}.wrap_ff.norm.bias'] = b
    norm = (sd['norm.weight'], sd['norm.bias'])
    if layout == 'official-xformers-pre':  # the authors' extra, discarded encoder norm
        norm = (torch.ones_like(norm[0]), torch.zeros_like(norm[1]))
    out['encoder_norm.weight'], out['encoder_norm.bias'] = norm
    out.update({k: v for k, v in sd.items() if k.startswith(_DECODER_TOP)})
    return out


def save_weights(
    state_dict: dict[str, Tensor], path: str | os.PathLike[str], info: dict[str, Any]
) -> str:
    """Write a weights file (a plain state dict) and its description beside it.

    The description (``<path>.json``: model arguments, residual norm style, source)
    is written first, then the state dict, each atomically: a weights file that
    exists always has its description.

    Args:
        state_dict: Encoder state dict (timm names).
        path: Destination ``.pth``.
        info: JSON-serialisable description (see :meth:`Conversion.info`).

    Returns:
        The destination path.
    """
    with atomic_path(os.fspath(path) + '.json') as tmp, open(tmp, 'w') as f:
        json.dump({'format': WEIGHTS_FORMAT, **info}, f, indent=1, sort_keys=True)
    return atomic_torch_save(state_dict, path)


def read_weights_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The description written beside a weights file by :func:`save_weights`.

    Args:
        path: The weights file.

    Returns:
        The description, or ``{}`` if there is none.
    """
    side = os.fspath(path) + '.json'
    if not os.path.isfile(side):
        return {}
    with open(side) as f:
        return dict(json.load(f))


def load_checkpoint(path: str | os.PathLike[str]) -> Conversion:
    """Load and convert a checkpoint file of any known layout.

    For a weights file written by :func:`save_weights`, the description beside it
    (architecture, residual norm style) completes what the shapes tell.

    Args:
        path: The file.

    Returns:
        The :class:`Conversion`.
    """
    conv = convert_checkpoint(safe_load(path), source=os.fspath(path))
    side = read_weights_info(path) if conv.layout == 'encoder' else {}
    conv.model_args.update(side.get('model', {}))
    conv.residual_norm_style = side.get('residual_norm_style', conv.residual_norm_style)
    return conv


def export_weights(
    src: str | os.PathLike[str], out: str | os.PathLike[str]
) -> Conversion:
    """Convert any supported checkpoint into a weights file the builders load by path.

    Args:
        src: A Lightning checkpoint of our pretraining task, one of the authors'
            checkpoints, or an encoder / CrossScaleMAE state dict.
        out: Destination ``.pth`` (plus ``<out>.json`` with the architecture).

    Returns:
        The conversion (layout, model arguments, keys not exported).
    """
    conv = load_checkpoint(src)
    save_weights(conv.encoder, out, {**conv.info(), 'source': {'file': os.fspath(src)}})
    return conv


def export_lightning_checkpoint(
    ckpt: str | os.PathLike[str], out: str | os.PathLike[str]
) -> Conversion:
    """Turn a Lightning checkpoint of :class:`CrossScaleMAETask` into a weights file.

    Args:
        ckpt: The ``.ckpt`` (its state dict has ``model.encoder.*``).
        out: Destination ``.pth`` (plus ``<out>.json`` with the architecture).

    Returns:
        The conversion.

    Raises:
        ValueError: If *ckpt* is not a Lightning checkpoint of our pretraining task.
    """
    conv = load_checkpoint(ckpt)
    if conv.layout != 'lightning':
        msg = f'{ckpt} is not a Lightning checkpoint of CrossScaleMAETask (layout {conv.layout!r})'
        raise ValueError(msg)
    save_weights(
        conv.encoder, out, {**conv.info(), 'source': {'file': os.fspath(ckpt)}}
    )
    return conv
