"""Attention backends for the ViT blocks, behind one registry.

Every backend is an ``nn.Module`` with the parameter names of timm's
:class:`timm.layers.Attention` (``qkv``, ``q_norm``, ``k_norm``, ``proj``) where it has
the same parameters, so a state dict loads across backends, and a forward of the form
``forward(x, pos=None, attn_mask=None)``:

* ``x``: tokens ``(B, N, D)``;
* ``pos``: optional integer grid positions ``(B, N, 2)`` (row, col) of each token, ``-1``
  for prefix tokens such as CLS. Backends that mix tokens by position (``local``) need
  it; the others ignore it;
* ``attn_mask``: optional bool mask (True = attend) or additive bias broadcastable to
  ``(B, H, N, N)``.

Backends:

* ``sdpa``: :func:`torch.nn.functional.scaled_dot_product_attention` (the default);
* ``eager``: softmax(QK^T / sqrt(d)) V written out, the reference for tests;
* ``xformers``: ``xformers.ops.memory_efficient_attention``, CUDA only; raises at
  construction without CUDA or without the package;
* ``fourier``: FNet token mixing (:mod:`.fourier`); only the output projection
  ``proj`` of timm's parameters;
* ``local``: attention inside ``w x w`` windows of the patch grid
  (:mod:`.local_attention`); timm's parameters, plus a relative position bias table
  when enabled.

``sdpa``, ``eager``, ``xformers`` and ``local`` (without bias table) have the same
parameters, so one state dict serves all of them.

New backends register with the :func:`register_attention` decorator in their own
module (as ``fourier`` and ``local`` do), which :mod:`torchgeo_xscale.models`
imports; this module imports none of them.
"""

import importlib.util
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import Tensor, nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_attention[T: Callable[..., nn.Module]](name: str) -> Callable[[T], T]:
    """Register an attention backend under *name* (decorator).

    Args:
        name: Name used in configs, e.g. ``attention='sdpa'``.

    Returns:
        The decorator, which returns its argument unchanged.
    """

    def decorator(factory: T) -> T:
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_attention_backends() -> list[str]:
    """Names of the registered attention backends.

    Returns:
        Sorted list of backend names.
    """
    return sorted(_REGISTRY)


def build_attention(name: str, dim: int, num_heads: int, **kwargs: Any) -> nn.Module:
    """Build the attention module of backend *name*.

    Args:
        name: A registered backend (see :func:`list_attention_backends`).
        dim: Token dimension D.
        num_heads: Number of attention heads.
        **kwargs: Passed to the backend (``qkv_bias``, ``qk_norm``, ``attn_drop``,
            ``proj_drop``, ``norm_layer`` and backend-specific options).

    Returns:
        The attention module.

    Raises:
        ValueError: If *name* is not a registered backend.
    """
    if name not in _REGISTRY:
        msg = f'attention={name!r} is not a known backend; expected one of {list_attention_backends()}'
        raise ValueError(msg)
    return _REGISTRY[name](dim, num_heads=num_heads, **kwargs)


def _timm_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keep only the keyword arguments timm's Attention accepts."""
    keys = ('qkv_bias', 'qk_norm', 'proj_bias', 'attn_drop', 'proj_drop', 'norm_layer')
    return {k: v for k, v in kwargs.items() if k in keys}


@register_attention('sdpa')
class SDPAttention(Attention):
    """Multi-head self-attention through PyTorch's fused SDPA kernels (the default)."""

    def __init__(self, dim: int, num_heads: int = 8, **kwargs: Any) -> None:
        """Initialise the layer.

        Args:
            dim: Token dimension D.
            num_heads: Number of heads.
            **kwargs: timm :class:`~timm.layers.Attention` arguments; others ignored.
        """
        super().__init__(dim, num_heads=num_heads, **_timm_kwargs(kwargs))

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project tokens to per-head queries, keys and values.

        Args:
            x: Tokens ``(B, N, D)``.

        Returns:
            q, k, v, each ``(B, H, N, D / H)``.
        """
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
        """Attention of per-head queries over keys/values.

        Args:
            q: Queries ``(B, H, N, d)``.
            k: Keys ``(B, H, N, d)``.
            v: Values ``(B, H, N, d)``.
            bias: Optional additive bias or boolean mask broadcastable to
                ``(B, H, N, N)``.

        Returns:
            Attended values ``(B, H, N, d)``.
        """
        p = self.attn_drop.p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)

    def forward(  # type: ignore[override]
        self, x: Tensor, pos: Tensor | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        """Self-attention over tokens.

        Args:
            x: Tokens ``(B, N, D)``.
            pos: Grid positions ``(B, N, 2)``; unused by this backend.
            attn_mask: Optional mask/bias broadcastable to ``(B, H, N, N)``.

        Returns:
            Tokens ``(B, N, D)``.
        """
        b, n, d = x.shape
        q, k, v = self.qkv_heads(x)
        out = self.attend(q, k, v, attn_mask)
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.proj(self.norm(out)))


@register_attention('eager')
class EagerAttention(SDPAttention):
    """Reference attention written out as softmax(QK^T / sqrt(d)) V, for testing."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
        """Attention of per-head queries over keys/values (explicit softmax).

        Args:
            q: Queries ``(B, H, N, d)``.
            k: Keys ``(B, H, N, d)``.
            v: Values ``(B, H, N, d)``.
            bias: Optional additive bias or boolean mask (True = attend).

        Returns:
            Attended values ``(B, H, N, d)``.
        """
        scores = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            if bias.dtype == torch.bool:
                scores = scores.masked_fill(~bias, float('-inf'))
            else:
                scores = scores + bias
        return self.attn_drop(scores.softmax(dim=-1)) @ v


@register_attention('xformers')
class XFormersAttention(SDPAttention):
    """Multi-head attention through ``xformers.ops.memory_efficient_attention`` (CUDA).

    Same parameters as ``sdpa``, so weights load across the two unchanged. Raises at
    construction, not mid-training, where it cannot run.
    """

    def __init__(self, dim: int, num_heads: int = 8, **kwargs: Any) -> None:
        """Initialise the layer.

        Args:
            dim: Token dimension D.
            num_heads: Number of heads.
            **kwargs: timm :class:`~timm.layers.Attention` arguments; others ignored.

        Raises:
            ImportError: If xFormers is not installed.
            RuntimeError: If no CUDA device is available.
        """
        if importlib.util.find_spec('xformers') is None:
            msg = "attention='xformers' needs the xformers package (pip install xformers); use attention='sdpa' otherwise"
            raise ImportError(msg)
        if not torch.cuda.is_available():
            msg = "attention='xformers' runs on CUDA only and no CUDA device is available; use attention='sdpa'"
            raise RuntimeError(msg)
        super().__init__(dim, num_heads=num_heads, **kwargs)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
        """Memory-efficient attention of per-head queries over keys/values.

        Args:
            q: Queries ``(B, H, N, d)`` on a CUDA device.
            k: Keys ``(B, H, N, d)``.
            v: Values ``(B, H, N, d)``.
            bias: Optional additive bias or boolean mask broadcastable to
                ``(B, H, N, N)``.

        Returns:
            Attended values ``(B, H, N, d)``.

        Raises:
            RuntimeError: If the tensors are not on a CUDA device.
        """
        if q.device.type != 'cuda':
            msg = f"attention='xformers' got tensors on {q.device}; move the model to a CUDA device or use attention='sdpa'"
            raise RuntimeError(msg)
        import xformers.ops as xops

        attn_bias = None
        if bias is not None:
            b, h, n, _ = q.shape
            nk = k.shape[2]
            # xFormers wants the bias's last dim 8-aligned in memory: slice a padded one
            attn_bias = q.new_zeros(b, h, n, -(-nk // 8) * 8)[..., :nk]
            if bias.dtype == torch.bool:
                attn_bias.masked_fill_(~bias.expand(b, h, n, nk), float('-inf'))
            else:
                attn_bias.copy_(bias.expand(b, h, n, nk))
        p = self.attn_drop.p if self.training else 0.0
        out = xops.memory_efficient_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_bias=attn_bias,
            p=p,
        )
        return out.transpose(1, 2)
