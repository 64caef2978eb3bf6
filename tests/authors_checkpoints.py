"""The authors' Cross-Scale MAE checkpoint files, written from the documented facts.

Written independently of the package, from ``/work/shared/OFFICIAL_LAYOUTS.md`` (the
layouts measured on the authors' code; their code is not used): the exact key names,
shapes and tensor counts of the three variants (ViT-B: 263 timm / 343 xFormers
tensors; ViT-L: 407 / 535), in the authors' file structure (``torch.save`` of
``model / optimizer / epoch / scaler / args``, ``args`` an ``argparse.Namespace``),
and :func:`reference_features`, the authors' encoder forward written out by hand:
pre- or post-norm residuals, separate q/k/v, ``encoder_norm`` computed and discarded,
patch tokens shuffled by their random masking (ratio 0) and put back in grid order.
"""

import argparse
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

VARIANTS = ('official-timm', 'official-xformers-post', 'official-xformers-pre')
#: Encoder (width, depth, heads) of the authors' sizes; the decoder is the same for both.
SIZES = {'base': (768, 12, 12), 'large': (1024, 24, 16)}
DECODER = (512, 8, 16)
#: Tensors in ``model`` (OFFICIAL_LAYOUTS.md).
COUNTS = {
    ('base', 'official-timm'): 263,
    ('base', 'official-xformers-post'): 343,
    ('base', 'official-xformers-pre'): 343,
    ('large', 'official-timm'): 407,
    ('large', 'official-xformers-post'): 535,
    ('large', 'official-xformers-pre'): 535,
}
#: Their LayerNorm eps (xFormers' fused layer norm on CUDA).
EPS = 1e-6


def mae_sincos(dim: int, side: int) -> Tensor:
    """MAE's numpy formula for the fixed 2-D sin-cos embedding (CLS row of zeros)."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum('m,d->md', pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(
        np.meshgrid(
            np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32)
        )
    )
    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


def _block_shapes(variant: str, dim: int) -> dict[str, tuple[int, ...]]:
    """Sub-key -> shape of one block of a variant."""
    hidden = 4 * dim
    if variant == 'official-timm':
        return {
            'norm1.weight': (dim,),
            'norm1.bias': (dim,),
            'attn.qkv.weight': (3 * dim, dim),
            'attn.qkv.bias': (3 * dim,),
            'attn.proj.weight': (dim, dim),
            'attn.proj.bias': (dim,),
            'norm2.weight': (dim,),
            'norm2.bias': (dim,),
            'mlp.fc1.weight': (hidden, dim),
            'mlp.fc1.bias': (hidden,),
            'mlp.fc2.weight': (dim, hidden),
            'mlp.fc2.bias': (dim,),
        }
    post = variant == 'official-xformers-post'
    att = 'wrap_att.sublayer.layer.' if post else 'wrap_att.layer.sublayer.'
    ff = 'wrap_ff.sublayer.layer.' if post else 'wrap_ff.layer.sublayer.'
    n_att = 'wrap_att.norm.' if post else 'wrap_att.layer.norm.'
    n_ff = 'wrap_ff.norm.' if post else 'wrap_ff.layer.norm.'
    shapes = {n_att + 'weight': (dim,), n_att + 'bias': (dim,)}
    for n in 'qkv':
        shapes[f'{att}in_proj_container.{n}_proj.weight'] = (dim, dim)
        shapes[f'{att}in_proj_container.{n}_proj.bias'] = (dim,)
    shapes.update(
        {
            att + 'proj.weight': (dim, dim),
            att + 'proj.bias': (dim,),
            n_ff + 'weight': (dim,),
            n_ff + 'bias': (dim,),
            ff + 'mlp.0.weight': (hidden, dim),
            ff + 'mlp.0.bias': (hidden,),
            ff + 'mlp.3.weight': (dim, hidden),
            ff + 'mlp.3.bias': (dim,),
        }
    )
    return shapes


def _value(key: str, shape: tuple[int, ...], g: torch.Generator | None) -> Tensor:
    """A trained-looking random tensor for *key* (norms near 1, weights ~ 1/sqrt(fan in)).

    Without a generator: an empty tensor on the meta device (shapes only).
    """
    if g is None:
        return torch.empty(shape, device='meta')
    if key.endswith('.weight') and len(shape) == 1:  # a norm's scale
        return 1 + 0.2 * torch.randn(shape, generator=g)
    if len(shape) == 1:  # a bias
        return 0.05 * torch.randn(shape, generator=g)
    fan_in = int(np.prod(shape[1:]))
    return torch.randn(shape, generator=g) / fan_in**0.5


def official_state_dict(
    size: str | tuple[int, int, int],
    variant: str,
    seed: int = 0,
    img_size: int = 128,
    patch_size: int = 16,
    decoder: tuple[int, int, int] = DECODER,
    meta: bool = False,
) -> dict[str, Tensor]:
    """The authors' ``model`` state dict of *size* (``base``, ``large`` or dims).

    Args:
        size: ``base`` / ``large`` or ``(width, depth, heads)`` for a small stand-in.
        variant: One of :data:`VARIANTS`.
        seed: Seed of the random values.
        img_size: Input size (their pos-embeds are for 128 px).
        patch_size: Patch size (16).
        decoder: Decoder ``(width, depth, heads)``.
        meta: Shapes only: tensors on the meta device (but the sin-cos embeddings).

    Returns:
        The state dict, in the authors' key order (common keys, encoder, decoder).
    """
    dim, depth, _ = SIZES[size] if isinstance(size, str) else size
    ddim, ddepth, _ = decoder
    side = img_size // patch_size
    g = None if meta else torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {
        'cls_token': _value('cls_token', (1, 1, dim), g),
        'encoder_pos_embed': mae_sincos(dim, side),
        'patch_embed.proj.weight': _value('w', (dim, 3, patch_size, patch_size), g),
        'patch_embed.proj.bias': _value('b', (dim,), g),
    }
    enc = 'encoder.' if variant == 'official-timm' else 'encoder.encoders.'
    for i in range(depth):
        for k, shape in _block_shapes(variant, dim).items():
            sd[f'{enc}{i}.{k}'] = _value(k, shape, g)
    sd['encoder_norm.weight'] = torch.ones(dim)  # never trained: discarded
    sd['encoder_norm.bias'] = torch.zeros(dim)
    sd['mask_token'] = _value('mask_token', (1, 1, ddim), g)
    sd['decoder_pos_embed'] = mae_sincos(ddim, side)
    sd['decoder_embed.weight'] = _value('w', (ddim, dim), g)
    sd['decoder_embed.bias'] = _value('b', (ddim,), g)
    dec = 'decoder.' if variant == 'official-timm' else 'decoder.encoders.'
    for i in range(ddepth):
        for k, shape in _block_shapes(variant, ddim).items():
            sd[f'{dec}{i}.{k}'] = _value(k, shape, g)
    sd['decoder_norm.weight'] = _value('n.weight', (ddim,), g)
    sd['decoder_norm.bias'] = _value('b', (ddim,), g)
    sd['decoder_pred.weight'] = _value('w', (patch_size**2 * 3, ddim), g)
    sd['decoder_pred.bias'] = _value('b', (patch_size**2 * 3,), g)
    sd['predictor.0.weight'] = _value('w', (2048, ddim), g)
    sd['predictor.0.bias'] = _value('b', (2048,), g)
    sd['predictor.1.weight'] = _value('n.weight', (2048,), g)
    sd['predictor.1.bias'] = _value('b', (2048,), g)
    sd['predictor.1.running_mean'] = _value('b', (2048,), g)
    sd['predictor.1.running_var'] = _value('b', (2048,), g).abs() + 0.5
    sd['predictor.1.num_batches_tracked'] = torch.tensor(123456, dtype=torch.long)
    sd['predictor.3.weight'] = _value('w', (ddim, 2048), g)
    sd['predictor.3.bias'] = _value('b', (ddim,), g)
    return sd


def write_official(path: Path, sd: dict[str, Tensor], variant: str) -> Path:
    """Save *sd* as the authors' ``save_model`` did (with a little optimizer state)."""
    names = list(sd)[:2]
    optimizer = {
        'state': {
            i: {
                'step': torch.tensor(1000.0),
                'exp_avg': torch.zeros_like(sd[n]),
                'exp_avg_sq': torch.zeros_like(sd[n]),
            }
            for i, n in enumerate(names)
        },
        'param_groups': [
            {'lr': 1.5e-4, 'betas': (0.9, 0.95), 'weight_decay': 0.05, 'params': [0, 1]}
        ],
    }
    args = argparse.Namespace(
        model='mae_vit_base_MsLdCeCd',
        input_size=128,
        mask_ratio=0.75,
        use_xformers=variant != 'official-timm',
        epochs=400,
        output_dir='./output_dir',
    )
    scaler = {
        'scale': 65536.0,
        'growth_factor': 2.0,
        'backoff_factor': 0.5,
        'growth_interval': 2000,
        '_growth_tracker': 0,
    }
    torch.save(
        {
            'model': sd,
            'optimizer': optimizer,
            'epoch': 399,
            'scaler': scaler,
            'args': args,
        },
        path,
    )
    return path


def _ln(x: Tensor, sd: dict[str, Tensor], prefix: str) -> Tensor:
    return F.layer_norm(
        x, x.shape[-1:], sd[prefix + 'weight'], sd[prefix + 'bias'], EPS
    )


def _attention(
    h: Tensor, q: Tensor, k: Tensor, v: Tensor, proj: tuple[Tensor, Tensor], heads: int
) -> Tensor:
    """Multi-head attention from projected q, k, v ``(B, N, D)``, heads contiguous."""
    b, n, d = h.shape
    q, k, v = (t.view(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    att = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    return F.linear((att @ v).transpose(1, 2).reshape(b, n, d), *proj)


def _block(
    t: Tensor, sd: dict[str, Tensor], p: str, variant: str, heads: int
) -> Tensor:
    """One of the authors' encoder blocks."""
    if variant == 'official-timm':  # timm Block: pre-norm, packed qkv
        h = _ln(t, sd, p + 'norm1.')
        q, k, v = F.linear(h, sd[p + 'attn.qkv.weight'], sd[p + 'attn.qkv.bias']).chunk(
            3, dim=-1
        )
        proj = (sd[p + 'attn.proj.weight'], sd[p + 'attn.proj.bias'])
        t = t + _attention(h, q, k, v, proj, heads)
        h = _ln(t, sd, p + 'norm2.')
        h = F.gelu(F.linear(h, sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias']))
        return t + F.linear(h, sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])
    post = variant == 'official-xformers-post'
    att = p + ('wrap_att.sublayer.layer.' if post else 'wrap_att.layer.sublayer.')
    ff = p + ('wrap_ff.sublayer.layer.' if post else 'wrap_ff.layer.sublayer.')
    n_att = p + ('wrap_att.norm.' if post else 'wrap_att.layer.norm.')
    n_ff = p + ('wrap_ff.norm.' if post else 'wrap_ff.layer.norm.')

    def attn(h: Tensor) -> Tensor:
        q, k, v = (
            F.linear(
                h,
                sd[f'{att}in_proj_container.{n}_proj.weight'],
                sd[f'{att}in_proj_container.{n}_proj.bias'],
            )
            for n in 'qkv'
        )
        proj = (sd[att + 'proj.weight'], sd[att + 'proj.bias'])
        return _attention(h, q, k, v, proj, heads)

    def mlp(h: Tensor) -> Tensor:
        h = F.gelu(F.linear(h, sd[ff + 'mlp.0.weight'], sd[ff + 'mlp.0.bias']))
        return F.linear(h, sd[ff + 'mlp.3.weight'], sd[ff + 'mlp.3.bias'])

    if post:  # PostNorm(Residual(f)): x = LN(x + f(x))
        t = _ln(t + attn(t), sd, n_att)
        return _ln(t + mlp(t), sd, n_ff)
    t = t + attn(_ln(t, sd, n_att))  # Residual(PreNorm(f)): x = x + f(LN(x))
    return t + mlp(_ln(t, sd, n_ff))


def reference_features(
    sd: dict[str, Tensor], x: Tensor, variant: str, heads: int, seed: int = 0
) -> Tensor:
    """The authors' encoder output for images *x*: CLS then patch tokens in grid order.

    Their ``forward_encoder(x, mask_ratio=0)``: patch embedding plus positional
    embedding, random masking that keeps every token but shuffles them, CLS token
    prepended, the blocks, ``encoder_norm`` computed and discarded; here the patch
    tokens are put back in grid order with ``ids_restore``.

    Args:
        sd: The authors' state dict.
        x: Images ``(B, 3, H, W)``.
        variant: One of :data:`VARIANTS`.
        heads: Encoder heads.
        seed: Seed of the shuffle.

    Returns:
        ``(B, 1 + N, D)``.
    """
    w = sd['patch_embed.proj.weight']
    t = F.conv2d(x, w, sd['patch_embed.proj.bias'], stride=w.shape[-1])
    t = t.flatten(2).transpose(1, 2)  # (B, N, D)
    pe = sd['encoder_pos_embed']
    t = t + pe[:, 1:]
    b, n, d = t.shape
    noise = torch.rand(b, n, generator=torch.Generator().manual_seed(seed))
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    t = torch.gather(t, 1, ids_shuffle[..., None].expand(-1, -1, d))
    cls = (sd['cls_token'] + pe[:, :1]).expand(b, -1, -1)
    t = torch.cat([cls, t], dim=1)
    enc = 'encoder.' if variant == 'official-timm' else 'encoder.encoders.'
    depth = 1 + max(
        int(m[1]) for k in sd if (m := re.match(re.escape(enc) + r'(\d+)\.', k))
    )
    for i in range(depth):
        t = _block(t, sd, f'{enc}{i}.', variant, heads)
    _ = _ln(t, sd, 'encoder_norm.')  # computed, and discarded, by their forward
    patches = torch.gather(t[:, 1:], 1, ids_restore[..., None].expand(-1, -1, d))
    return torch.cat([t[:, :1], patches], dim=1)


def relative_error(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return float((a - b).norm() / b.norm())
