"""Windowed self-attention over the patch grid (``attention='local'``).

The grid of patches is partitioned into non-overlapping ``w x w`` windows (Swin's
partition, without shifting): a patch token attends to the patch tokens of its own
window and to the prefix tokens (CLS); prefix tokens attend to every token, so
windows exchange information through CLS. Windows are decided by each token's grid
position ``(row, col)``, not by its place in the sequence, so the layer is exact for
MAE's variable, randomly ordered sets of visible tokens (a window may hold 0 to
``w * w`` of them). An optional Swin-style relative position bias (one learned value
per head and per offset inside a window) is added to the scores.

Three implementations compute the same result (tested against each other):

* ``masked``: full SDPA with a ``(B, 1, N, N)`` window mask built from the positions.
  Costs as much as full attention; exact for any token set and any extra mask.
* ``chunked``: tokens are sorted by window and cut into chunks of ``w * w`` queries;
  each chunk attends to the ``3 w * w`` sorted tokens around it (a window holds at
  most ``w * w`` tokens, so all of a token's window lies in that span) and to the
  prefix tokens, with a mask. Any token set, static shapes, no host-device sync,
  ``3 w^2 N`` scores instead of ``N^2``.
* ``partition``: when the tokens are the whole grid (the decoder, or an unmasked
  encoder) and ``grid_size`` is known, tokens are put in raster order and reshaped
  into ``(B * windows, w * w)`` blocks (the grid padded to a multiple of ``w``, pads
  masked): ``w^2 N`` scores, no mask without padding.

``'auto'`` takes ``partition`` when it applies, ``chunked`` when it computes at most
half the scores of ``masked`` (``6 w^2 <= N``), else ``masked``.

The parameters are timm's :class:`~timm.layers.Attention` ones (``qkv``, ``proj``...)
plus ``relative_position_bias_table`` when enabled, so weights of the ``sdpa`` and
``eager`` backends load unchanged (with ``strict=False`` when the table is enabled).
"""

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import Tensor, nn

from .attention import register_attention

#: Larger than any grid extent, for flat keys ``row * K + col``.
_KEY_STRIDE = 1 << 20

IMPLEMENTATIONS = ('auto', 'masked', 'chunked', 'partition')


def window_mask(pos: Tensor, window_size: int) -> Tensor:
    """Which tokens may attend to which: same window, or either is a prefix token.

    Args:
        pos: Grid positions ``(B, N, 2)``, -1 for prefix tokens.
        window_size: Window side w in patches.

    Returns:
        Boolean mask ``(B, N, N)``, True where query i may attend to key j.
    """
    prefix = pos[..., 0] < 0
    win = torch.div(pos, window_size, rounding_mode='floor')
    same = (win.unsqueeze(2) == win.unsqueeze(1)).all(-1)
    return same | prefix.unsqueeze(2) | prefix.unsqueeze(1)


def relative_index(pos_q: Tensor, pos_k: Tensor, window_size: int) -> Tensor:
    """Index into a ``(2w - 1)^2`` relative position table for every token pair.

    Offsets outside ``[-(w - 1), w - 1]`` (pairs in different windows, which are
    masked anyway) are clamped.

    Args:
        pos_q: Query positions ``(..., Lq, 2)``.
        pos_k: Key positions ``(..., Lk, 2)``.
        window_size: Window side w.

    Returns:
        Long indices ``(..., Lq, Lk)``.
    """
    w = window_size
    delta = pos_q.unsqueeze(-2) - pos_k.unsqueeze(-3)
    delta = (delta + (w - 1)).clamp(0, 2 * w - 2)
    return (delta[..., 0] * (2 * w - 1) + delta[..., 1]).long()


def _pair(value: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """``8 -> (8, 8)``; pairs and None unchanged."""
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def set_grid_size(module: nn.Module, grid_size: int | tuple[int, int]) -> int:
    """Give every :class:`LocalAttention` in *module* without a ``grid_size`` this one.

    Models call it once their patch grid is known, so that users need not repeat it
    in ``attention_options`` for full-grid calls to take the ``partition`` path.

    Args:
        module: A model (or block) holding local attention layers.
        grid_size: Patch grid ``(rows, cols)`` or one int for a square grid.

    Returns:
        The number of layers updated.
    """
    grid = _pair(grid_size)
    count = 0
    for layer in module.modules():
        if isinstance(layer, LocalAttention) and layer.grid_size is None:
            layer.grid_size = grid
            count += 1
    return count


@register_attention('local')
class LocalAttention(Attention):
    """Multi-head attention inside non-overlapping windows of the patch grid.

    Attributes:
        window_size: Window side w in patches.
        grid_size: Patch grid ``(rows, cols)`` if known (enables ``partition``).
        implementation: ``auto``, ``masked``, ``chunked`` or ``partition``.
        num_prefix_tokens: Prefix tokens (CLS) at the start of the sequence.
        relative_position_bias_table: ``((2w - 1)^2, H)`` learned bias, or None.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int = 4,
        rel_pos_bias: bool = False,
        grid_size: int | tuple[int, int] | None = None,
        implementation: str = 'auto',
        num_prefix_tokens: int = 1,
        **kwargs: Any,
    ) -> None:
        """Initialise the layer.

        Args:
            dim: Token dimension D.
            num_heads: Number of heads H.
            window_size: Window side w in patches (>= 1).
            rel_pos_bias: Learn a relative position bias per head.
            grid_size: Patch grid ``(rows, cols)`` (or one int for a square grid);
                lets full-grid calls take the ``partition`` path. Without it they
                use ``chunked``/``masked`` (same result, slower).
            implementation: ``auto``, ``masked``, ``chunked`` or ``partition``
                (see the module docstring).
            num_prefix_tokens: Prefix tokens at the start of the sequence (the
                ViT's CLS); ``chunked`` and ``partition`` rely on it.
            **kwargs: timm :class:`~timm.layers.Attention` arguments; others ignored.

        Raises:
            ValueError: If *window_size*, *grid_size* or *implementation* is invalid.
        """
        if not isinstance(window_size, int) or window_size < 1:
            msg = f'window_size={window_size!r} is invalid; expected an integer >= 1'
            raise ValueError(msg)
        if implementation not in IMPLEMENTATIONS:
            msg = (
                f'implementation={implementation!r}; expected one of {IMPLEMENTATIONS}'
            )
            raise ValueError(msg)
        grid = _pair(grid_size)
        if grid is not None and min(grid) < 1:
            msg = f'grid_size={grid_size!r} is invalid; expected positive (rows, cols)'
            raise ValueError(msg)
        if implementation == 'partition' and grid is None:
            msg = "implementation='partition' needs grid_size=(rows, cols)"
            raise ValueError(msg)
        timm_keys = ('qkv_bias', 'qk_norm', 'proj_bias', 'attn_drop', 'proj_drop')
        timm_kwargs = {
            k: v for k, v in kwargs.items() if k in (*timm_keys, 'norm_layer')
        }
        super().__init__(dim, num_heads=num_heads, **timm_kwargs)
        self.window_size = window_size
        self.grid_size = grid
        self.implementation = implementation
        self.num_prefix_tokens = num_prefix_tokens
        self.relative_position_bias_table: nn.Parameter | None = None
        if rel_pos_bias:
            table = torch.zeros((2 * window_size - 1) ** 2, num_heads)
            self.relative_position_bias_table = nn.Parameter(table)
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def choose(self, num_tokens: int, attn_mask: Tensor | None = None) -> str:
        """The implementation a call over *num_tokens* tokens uses.

        Args:
            num_tokens: N, prefix included.
            attn_mask: The extra mask of the call (forces ``masked``).

        Returns:
            ``masked``, ``chunked`` or ``partition``.

        Raises:
            ValueError: If ``partition`` was asked for but the tokens are not the grid.
        """
        m = num_tokens - self.num_prefix_tokens
        full = self.grid_size is not None and m == self.grid_size[0] * self.grid_size[1]
        if self.implementation == 'partition' and not full:
            msg = f"implementation='partition' needs all {self.grid_size} grid tokens, got {m}"
            raise ValueError(msg)
        if attn_mask is not None:
            return 'masked'
        if self.implementation != 'auto':
            return self.implementation
        if full:
            return 'partition'
        return 'chunked' if 6 * self.window_size**2 <= m else 'masked'

    def forward(  # type: ignore[override]
        self, x: Tensor, pos: Tensor | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        """Windowed self-attention.

        Args:
            x: Tokens ``(B, N, D)``.
            pos: Grid positions ``(B, N, 2)`` (row, col), -1 for prefix tokens.
            attn_mask: Optional extra mask (bool, True = attend) or additive bias
                broadcastable to ``(B, H, N, N)``; uses the ``masked`` path.

        Returns:
            Tokens ``(B, N, D)``.

        Raises:
            ValueError: If *pos* is missing or does not match *x*.
        """
        b, n, d = x.shape
        if pos is None or pos.shape[:2] != (b, n):
            got = None if pos is None else tuple(pos.shape)
            msg = f"attention='local' needs grid positions pos of shape ({b}, {n}, 2), got {got}"
            raise ValueError(msg)
        path = self.choose(n, attn_mask)
        if path == 'partition':
            return self.proj_drop(self.proj(self.norm(self._partition(x, pos))))
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        if not (
            isinstance(self.q_norm, nn.Identity)
            and isinstance(self.k_norm, nn.Identity)
        ):
            q, k, v = qkv.unbind(2)
            qkv = torch.stack([self.q_norm(q), self.k_norm(k), v], dim=2)
        if path == 'chunked':
            out = self._chunked(qkv, pos)
        else:
            out = self._masked(qkv, pos, attn_mask)
        return self.proj_drop(self.proj(self.norm(out.reshape(b, n, d))))

    # ------------------------------------------------------------------ helpers
    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """SDPA of ``(B', H, L, d)`` tensors with a bool mask or additive bias."""
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        p = self.attn_drop.p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def _bias(self, pos_q: Tensor, pos_k: Tensor) -> Tensor:
        """Relative position bias ``(..., H, Lq, Lk)``, zero for prefix tokens."""
        assert self.relative_position_bias_table is not None
        idx = relative_index(pos_q, pos_k, self.window_size)
        bias = self.relative_position_bias_table[idx]  # (..., Lq, Lk, H)
        prefix = (pos_q[..., 0] < 0).unsqueeze(-1) | (pos_k[..., 0] < 0).unsqueeze(-2)
        return bias.masked_fill(prefix.unsqueeze(-1), 0.0).movedim(-1, -3)

    def _prefix_out(self, qkv: Tensor) -> Tensor:
        """Prefix queries attend to every token: ``(B, N, 3, H, d)`` -> ``(B, P, H, d)``."""
        p = self.num_prefix_tokens
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (B, H, N, d)
        return self._attend(q[:, :, :p], k, v, None).transpose(1, 2)

    # ------------------------------------------------------------ implementations
    def _masked(self, qkv: Tensor, pos: Tensor, attn_mask: Tensor | None) -> Tensor:
        """Full attention with a window mask: ``(B, N, 3, H, d)`` -> ``(B, N, H, d)``."""
        allowed = window_mask(pos, self.window_size).unsqueeze(1)  # (B, 1, N, N)
        extra_bias = attn_mask is not None and attn_mask.dtype != torch.bool
        if attn_mask is not None and not extra_bias:
            allowed = allowed & attn_mask
        mask: Tensor = allowed
        if self.relative_position_bias_table is not None or extra_bias:
            bias = torch.zeros((), device=qkv.device)
            if self.relative_position_bias_table is not None:
                bias = self._bias(pos, pos)  # (B, H, N, N)
            if extra_bias:
                assert attn_mask is not None
                bias = bias + attn_mask
            mask = bias.masked_fill(~allowed, float('-inf'))
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        return self._attend(q, k, v, mask).transpose(1, 2)

    def _chunked(self, qkv: Tensor, pos: Tensor) -> Tensor:
        """Sorted-chunk windowed attention: ``(B, N, 3, H, d)`` -> ``(B, N, H, d)``."""
        b, n, _, h, hd = qkv.shape
        p, w = self.num_prefix_tokens, self.window_size
        cap = w * w
        m = n - p
        chunks = -(-m // cap)
        length = (chunks + 2) * cap  # one empty chunk before and after

        # sort patch tokens by window, then by place inside the window
        pp = pos[:, p:].long()
        win = torch.div(pp, w, rounding_mode='floor')
        key = win[..., 0] * _KEY_STRIDE + win[..., 1]  # (B, M)
        inner = (pp[..., 0] - win[..., 0] * w) * w + (pp[..., 1] - win[..., 1] * w)
        order = torch.argsort(key * cap + inner, dim=1)  # (B, M)

        def sort_pad(t: Tensor, value: float = 0.0) -> Tensor:
            """Sort tokens along dim 1 and pad to ``length`` (``cap`` before)."""
            idx = order.view(b, m, *([1] * (t.ndim - 2))).expand(-1, -1, *t.shape[2:])
            t = torch.gather(t, 1, idx)
            return F.pad(
                t, [0, 0] * (t.ndim - 2) + [cap, length - cap - m], value=value
            )

        def spans(t: Tensor) -> Tensor:
            """``(B, length, ...)`` -> ``(B, chunks, 3 cap, ...)`` overlapping views."""
            return t.unfold(1, 3 * cap, cap).movedim(-1, 2)

        def queries(t: Tensor) -> Tensor:
            """``(B, length, ...)`` -> ``(B, chunks, cap, ...)`` (the real chunks)."""
            return t[:, cap : cap + chunks * cap].reshape(b, chunks, cap, *t.shape[2:])

        qkv_sorted = sort_pad(qkv[:, p:])  # (B, length, 3, H, d)
        qs = queries(qkv_sorted[:, :, 0])  # (B, C, cap, H, d)
        kv = spans(qkv_sorted[:, :, 1:])  # (B, C, 3cap, 2, H, d)
        if p:
            prefix = qkv[:, :p, 1:].unsqueeze(1).expand(-1, chunks, -1, -1, -1, -1)
            kv = torch.cat([prefix, kv], dim=2)  # (B, C, P + 3cap, 2, H, d)

        key_sorted = sort_pad(key, value=-1)  # pads share key -1: never a real window
        allowed = queries(key_sorted).unsqueeze(-1) == spans(key_sorted).unsqueeze(-2)
        allowed = F.pad(allowed, (p, 0), value=True).unsqueeze(2)  # (B, C, 1, cap, K)
        mask: Tensor = allowed
        if self.relative_position_bias_table is not None:
            pos_sorted = sort_pad(pp)
            pos_k = spans(pos_sorted)
            if p:
                pre = pos[:, :p].long().unsqueeze(1).expand(-1, chunks, -1, -1)
                pos_k = torch.cat([pre, pos_k], dim=2)
            bias = self._bias(queries(pos_sorted), pos_k)  # (B, C, H, cap, K)
            mask = bias.masked_fill(~allowed, float('-inf'))

        def heads_first(t: Tensor) -> Tensor:
            """``(B, C, L, H, d)`` -> ``(B * C, H, L, d)``."""
            return t.transpose(2, 3).reshape(b * chunks, h, t.shape[2], hd)

        out = self._attend(
            heads_first(qs),
            heads_first(kv[..., 0, :, :]),
            heads_first(kv[..., 1, :, :]),
            mask.reshape(b * chunks, mask.shape[2], cap, -1),
        )  # (B * C, H, cap, d)
        out = out.reshape(b, chunks, h, cap, hd).transpose(2, 3)
        out = out.reshape(b, chunks * cap, h, hd)[:, :m]  # sorted order
        out = torch.gather(
            out, 1, torch.argsort(order, dim=1).view(b, m, 1, 1).expand(-1, -1, h, hd)
        )
        return torch.cat([self._prefix_out(qkv), out], dim=1) if p else out

    def _partition(self, x: Tensor, pos: Tensor) -> Tensor:
        """Whole-grid windows: tokens ``(B, N, D)`` -> attended ``(B, N, D)``.

        Tokens are windowed before the ``qkv`` projection (moving D rather than 3D
        values) and each window carries the prefix tokens as its first keys; prefix
        queries attend to the keys of all windows read as one sequence (prefix keys
        counted in window 0 only).
        """
        assert self.grid_size is not None
        b, n, d = x.shape
        h, hd = self.num_heads, self.head_dim
        p, w = self.num_prefix_tokens, self.window_size
        gh, gw = self.grid_size
        nh, nw = -(-gh // w), -(-gw // w)
        cap, windows = w * w, nh * nw
        k_len = p + cap

        # tokens -> raster grid (the token set is the whole grid) -> windows
        x_pre, x_pat = x.split([p, n - p], dim=1)
        pp = pos[:, p:].long()
        flat = (pp[..., 0] * gw + pp[..., 1]).unsqueeze(-1).expand(-1, -1, d)
        grid = torch.zeros_like(x_pat).scatter(1, flat, x_pat).view(b, gh, gw, d)
        grid = F.pad(grid, (0, 0, 0, nw * w - gw, 0, nh * w - gh))
        win = grid.view(b, nh, w, nw, w, d).transpose(2, 3).reshape(b, windows, cap, d)
        if p:
            win = torch.cat(
                [x_pre.unsqueeze(1).expand(-1, windows, -1, -1), win], dim=2
            )
        qkv = self.qkv(win).view(b * windows, k_len, 3, h, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B * W, H, K, d)
        q, k = self.q_norm(q), self.k_norm(k)

        # keys that exist (pads do not), and the bias; the same for every sample
        rows = torch.arange(nh * w, device=x.device).view(nh, w, 1, 1)
        cols = torch.arange(nw * w, device=x.device).view(1, 1, nw, w)
        cell = torch.stack(torch.broadcast_tensors(rows, cols), dim=-1)
        cell = cell.transpose(1, 2).reshape(windows, cap, 2)  # (W, cap, 2)
        real = F.pad((cell[..., 0] < gh) & (cell[..., 1] < gw), (p, 0), value=True)
        padded = nh * w != gh or nw * w != gw
        mask: Tensor | None = real[:, None, None, :] if padded else None  # (W, 1, 1, K)
        bias = None
        if self.relative_position_bias_table is not None:
            local = F.pad(cell[0], (0, 0, p, 0), value=-1)  # (K, 2), prefix at -1
            bias = self._bias(local, local).unsqueeze(0)  # (1, H, K, K)
            mask = bias if mask is None else bias.masked_fill(~mask, float('-inf'))
        if mask is not None and mask.shape[0] != 1:  # per window: repeat per sample
            mask = mask.unsqueeze(0).expand(b, *mask.shape).reshape(-1, *mask.shape[1:])
        out = self._attend(q, k, v, mask)  # (B * W, H, K, d); prefix rows unused
        out = out.transpose(1, 2).reshape(b, windows, k_len, d)[:, :, p:]
        out = out.reshape(b, nh, nw, w, w, d).transpose(2, 3)
        out = out.reshape(b, nh * w, nw * w, d)[:, :gh, :gw].reshape(b, n - p, d)
        # back to the tokens' order (a scatter saves only its index for backward)
        inverse = torch.argsort(flat[..., 0], dim=1).unsqueeze(-1).expand(-1, -1, d)
        out = torch.empty_like(out).scatter(1, inverse, out)
        if not p:
            return out

        # prefix queries attend to all tokens: the windows' keys read as one sequence
        # (a strided view, no copy), each prefix key once (window 0), pads excluded
        def all_tokens(t: Tensor) -> Tensor:
            """``(B * W, H, K, d)`` -> ``(B, H, W * K, d)``."""
            t = t.view(b, windows, h, k_len, hd).permute(0, 2, 1, 3, 4)
            return t.reshape(b, h, windows * k_len, hd)

        keep = real.clone()
        keep[1:, :p] = False
        q_pre = q.view(b, windows, h, k_len, hd)[:, 0, :, :p]  # (B, H, P, d)
        pre = self._attend(q_pre, all_tokens(k), all_tokens(v), keep.view(1, 1, 1, -1))
        return torch.cat([pre.transpose(1, 2).reshape(b, p, d), out], dim=1)
