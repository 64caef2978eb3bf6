"""FNet-style Fourier token mixing as an attention backend (``attention='fourier'``).

FNet (Lee-Thorp et al., 2022) replaces self-attention by the real part of a 2-D
discrete Fourier transform over the token and channel axes. It has no queries, keys or
values, so its cost is ``O(N D log(N D))`` instead of ``O(N^2 D)`` and it works for a
token set of any length, such as MAE's visible tokens.

Choices made here, where FNet's recipe does not transfer to a pre-norm MAE:

* The transform is orthonormal (``norm='ortho'``), so the mixing keeps the scale of
  the residual stream (FNet's post-norm blocks renormalise after an unscaled FFT; a
  pre-norm block does not).
* Tokens are mixed in grid order: when grid positions are given, tokens are sorted by
  ``(row, col)`` (prefix tokens such as CLS first) before the FFT and put back after,
  so the output does not depend on the random order in which MAE lists visible tokens.
* The block keeps timm's output projection ``proj`` (a learned ``D -> D`` linear map
  after the mixing), so the module has parameters that every step uses (DDP needs no
  ``find_unused_parameters``) and ``proj`` loads from the other backends' weights.
* The FFT runs in float32 under autocast (bf16 FFTs are unsupported or inexact).
"""

from typing import Any

import torch
from torch import Tensor, nn

from .attention import register_attention

#: Larger than any patch-grid width, for a flat raster key ``row * W + col``.
_MAX_GRID_WIDTH = 1 << 20


def fourier_mix(x: Tensor) -> Tensor:
    """Real part of the orthonormal 2-D FFT over tokens and channels.

    Args:
        x: Tokens ``(B, N, D)``.

    Returns:
        Mixed tokens ``(B, N, D)``, in the dtype of *x*.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        mixed = torch.fft.fft2(x.float(), dim=(-2, -1), norm='ortho').real
    return mixed.to(x.dtype)


def grid_order(pos: Tensor) -> Tensor:
    """Permutation that sorts tokens by grid position, prefix tokens first.

    Args:
        pos: Integer grid positions ``(B, N, 2)`` (row, col), ``-1`` for prefix tokens.

    Returns:
        Indices ``(B, N)`` such that ``x.gather(1, idx)`` lists tokens in raster order.
    """
    row, col = pos[..., 0].long(), pos[..., 1].long()
    return torch.argsort(row * _MAX_GRID_WIDTH + col, dim=1, stable=True)


@register_attention('fourier')
class FourierMix(nn.Module):
    """FNet Fourier token mixing followed by timm's output projection.

    Attributes:
        proj: Output projection ``Linear(D, D)`` (timm's ``attn.proj``).
        proj_drop: Dropout after the projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        proj_bias: bool = True,
        proj_drop: float = 0.0,
        sort_by_position: bool = True,
        **kwargs: Any,
    ) -> None:
        """Initialise the layer.

        Args:
            dim: Token dimension D.
            num_heads: Ignored (no heads); kept for the backend interface.
            proj_bias: Bias of the output projection.
            proj_drop: Dropout after the output projection.
            sort_by_position: Mix tokens in grid order when positions are given (see
                the module docstring); False mixes them in sequence order (FNet and
                xFormers' ``FourierMix``).
            **kwargs: Other attention options (``qkv_bias``, ``qk_norm``,
                ``attn_drop``, ``norm_layer``...), ignored: there is no ``qkv``.
        """
        super().__init__()
        self.dim = dim
        self.sort_by_position = sort_by_position
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: Tensor, pos: Tensor | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        """Mix tokens with a 2-D FFT, then project.

        Args:
            x: Tokens ``(B, N, D)``, any N.
            pos: Optional grid positions ``(B, N, 2)``, -1 for prefix tokens.
            attn_mask: Must be None (Fourier mixing has no attention matrix).

        Returns:
            Tokens ``(B, N, D)``.

        Raises:
            ValueError: If an attention mask is given.
        """
        if attn_mask is not None:
            msg = (
                "attention='fourier' mixes all tokens and takes no attn_mask (with "
                "mask_strategy='lomar' set mask_options={'window_attention': False})"
            )
            raise ValueError(msg)
        if pos is not None and self.sort_by_position:
            order = grid_order(pos).unsqueeze(-1).expand_as(x)
            mixed = fourier_mix(torch.gather(x, 1, order))
            x = torch.empty_like(mixed).scatter(1, order, mixed)
        else:
            x = fourier_mix(x)
        return self.proj_drop(self.proj(x))
