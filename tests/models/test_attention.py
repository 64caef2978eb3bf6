import importlib.util
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, tiny_fit_args

from torchgeo_xscale.models import (
    CrossScaleMAE,
    build_attention,
    list_attention_backends,
)
from torchgeo_xscale.models.fourier import FourierMix, grid_order
from torchgeo_xscale.models.local_attention import (
    LocalAttention,
    set_grid_size,
    window_mask,
)
from torchgeo_xscale.models.vit import grid_positions

TINY = {**TINY_MODEL, 'depth': 2}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
HAS_XFORMERS = importlib.util.find_spec('xformers') is not None


def tokens(
    b: int = 3, n_vis: int = 16, grid: int = 8, dim: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS + a random, randomly ordered subset of grid tokens with their positions."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack(
        [torch.randperm(grid * grid, generator=g)[:n_vis] for _ in range(b)]
    )
    x = torch.randn(b, n_vis + 1, dim, generator=g)
    return x, grid_positions(ids, grid, num_prefix=1)


def explicit_local(
    m: LocalAttention, x: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """Windowed attention written out pair by pair, the reference of all paths."""
    b, n, d = x.shape
    h, w = m.num_heads, m.window_size
    out = []
    for i in range(b):
        q, k, v = m.qkv(x[i]).reshape(n, 3, h, d // h).permute(1, 2, 0, 3)
        scores = (q * m.scale) @ k.transpose(-1, -2)
        allowed = torch.zeros(n, n, dtype=torch.bool)
        for r in range(n):
            for c in range(n):
                pr, pc = pos[i, r], pos[i, c]
                prefix = bool(pr[0] < 0 or pc[0] < 0)
                allowed[r, c] = prefix or bool(((pr // w) == (pc // w)).all())
                if (
                    m.relative_position_bias_table is not None
                    and allowed[r, c]
                    and not prefix
                ):
                    dr, dc = (pr - pc).tolist()
                    scores[:, r, c] += m.relative_position_bias_table[
                        (dr + w - 1) * (2 * w - 1) + dc + w - 1
                    ]
        attn = scores.masked_fill(~allowed, -math.inf).softmax(-1)
        out.append(m.proj((attn @ v).transpose(0, 1).reshape(n, d)))
    return torch.stack(out)


def test_registry_lists_every_backend() -> None:
    assert set(list_attention_backends()) >= {
        'sdpa',
        'eager',
        'xformers',
        'fourier',
        'local',
    }
    with pytest.raises(ValueError, match=r"attention='flash'.*expected one of"):
        build_attention('flash', 32, 2)


@pytest.mark.parametrize('name', ['eager', 'local'])
def test_same_weights_same_outputs_as_sdpa(name: str) -> None:
    # local with one window over the whole grid is full attention
    sdpa = build_attention('sdpa', 32, 4, qkv_bias=True)
    other = build_attention(name, 32, 4, qkv_bias=True, window_size=8)
    other.load_state_dict(sdpa.state_dict(), strict=True)
    x, pos = tokens(n_vis=64)
    assert torch.allclose(other(x, pos), sdpa(x, pos), atol=1e-5)


def test_model_state_dict_loads_across_backends() -> None:
    torch.manual_seed(0)
    ref = CrossScaleMAE(**TINY, attention='sdpa').eval()
    views = torch.randn(2, 2, 3, 32, 32)
    g = torch.Generator().manual_seed(1)
    out = ref(views, generator=g)
    for name, opts in [('eager', None), ('local', {'window_size': 4})]:
        model = CrossScaleMAE(**TINY, attention=name, attention_options=opts).eval()
        model.load_state_dict(ref.state_dict(), strict=True)
        other = model(views, generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(other.loss)
        if name == 'eager':
            assert torch.allclose(other.loss, out.loss, atol=1e-5)
            assert torch.allclose(other.pred, out.pred, atol=1e-5)
    fourier = CrossScaleMAE(**TINY, attention='fourier')
    missing, unexpected = fourier.load_state_dict(ref.state_dict(), strict=False)
    assert not missing
    assert unexpected and all('.attn.qkv.' in k for k in unexpected)


def test_xformers_fails_at_construction_without_cuda_or_package() -> None:
    if HAS_XFORMERS and torch.cuda.is_available():
        pytest.skip('xformers can run here')
    with pytest.raises((ImportError, RuntimeError), match="attention='xformers'"):
        build_attention('xformers', 32, 2)
    with pytest.raises((ImportError, RuntimeError), match="attention='xformers'"):
        CrossScaleMAE(**TINY, attention='xformers')


@pytest.mark.cuda
@CUDA
@pytest.mark.skipif(not HAS_XFORMERS, reason='needs xformers')
def test_xformers_equals_sdpa_on_cuda() -> None:
    sdpa = build_attention('sdpa', 64, 4, qkv_bias=True).cuda()
    xf = build_attention('xformers', 64, 4, qkv_bias=True).cuda()
    xf.load_state_dict(sdpa.state_dict(), strict=True)
    x = torch.randn(2, 65, 64, device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16):
        assert torch.allclose(xf(x).float(), sdpa(x).float(), atol=2e-2)
    mask = torch.rand(2, 1, 65, 65, device='cuda') > 0.3
    mask[..., 0] = True
    assert torch.allclose(xf(x, attn_mask=mask), sdpa(x, attn_mask=mask), atol=1e-4)
    with pytest.raises(RuntimeError, match='CUDA'):
        xf.cpu()(x.cpu())


# ----------------------------------------------------------------------------- local
@pytest.mark.parametrize('rel_pos_bias', [False, True])
@pytest.mark.parametrize(
    ('grid', 'window', 'n_vis'), [(8, 3, 64), (8, 2, 40), (7, 4, 49), (7, 2, 12)]
)
def test_local_implementations_match_explicit_reference(
    rel_pos_bias: bool, grid: int, window: int, n_vis: int
) -> None:
    torch.manual_seed(0)
    ref = LocalAttention(
        32, 4, window_size=window, rel_pos_bias=rel_pos_bias, implementation='masked'
    )
    if rel_pos_bias:
        with torch.no_grad():
            ref.relative_position_bias_table.normal_()
    x, pos = tokens(b=2, n_vis=n_vis, grid=grid)
    x.requires_grad_(True)
    expected = explicit_local(ref, x, pos)
    (grad_expected,) = torch.autograd.grad(expected.sum(), x)
    impls = ['masked', 'chunked'] + (
        ['partition', 'auto'] if n_vis == grid * grid else []
    )
    for impl in impls:
        m = LocalAttention(
            32,
            4,
            window_size=window,
            rel_pos_bias=rel_pos_bias,
            grid_size=grid,
            implementation=impl,
        )
        m.load_state_dict(ref.state_dict(), strict=True)
        out = m(x, pos)
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.allclose(out, expected, atol=1e-5), impl
        assert torch.allclose(grad, grad_expected, atol=1e-4), impl
        if rel_pos_bias:
            (g_table,) = torch.autograd.grad(
                m(x, pos).square().sum(), m.relative_position_bias_table
            )
            assert g_table.abs().sum() > 0


def test_local_tokens_see_only_their_window() -> None:
    m = LocalAttention(32, 4, window_size=4, implementation='chunked')
    x, pos = tokens(b=1, n_vis=64)
    out = m(x, pos)
    # change one token of window (0, 0): tokens in other windows keep their output
    idx = int(((pos[0, 1:, 0] < 4) & (pos[0, 1:, 1] < 4)).nonzero()[0]) + 1
    x2 = x.clone()
    x2[0, idx] += 1.0
    out2 = m(x2, pos)
    same_window = window_mask(pos, 4)[0, idx]
    changed = (out2 - out).abs().amax(-1)[0] > 1e-6
    assert changed[0]  # CLS sees everything
    assert torch.equal(changed[1:], same_window[1:])


def test_local_output_follows_tokens_not_sequence_order() -> None:
    m = LocalAttention(32, 4, window_size=2, implementation='chunked')
    x, pos = tokens(b=1, n_vis=30)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(30) + 1])
    assert torch.allclose(m(x[:, perm], pos[:, perm]), m(x, pos)[:, perm], atol=1e-6)


def test_local_auto_choice_and_errors() -> None:
    m = LocalAttention(32, 4, window_size=2, grid_size=(8, 8))
    assert m.choose(65) == 'partition'
    assert m.choose(40) == 'chunked'  # 6 * 4 <= 39
    assert m.choose(17) == 'masked'
    assert m.choose(65, attn_mask=torch.ones(1, dtype=torch.bool)) == 'masked'
    with pytest.raises(ValueError, match='pos'):
        m(torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match='window_size=0'):
        LocalAttention(32, 4, window_size=0)
    with pytest.raises(ValueError, match='grid_size'):
        LocalAttention(32, 4, implementation='partition')
    with pytest.raises(ValueError, match="implementation='loose'"):
        LocalAttention(32, 4, implementation='loose')
    with pytest.raises(ValueError, match='needs all'):
        LocalAttention(32, 4, grid_size=8, implementation='partition').choose(17)


def test_set_grid_size_enables_partition_only_where_unset() -> None:
    layers = [LocalAttention(32, 2, window_size=2) for _ in range(3)]
    model = torch.nn.Sequential(*layers, LocalAttention(32, 2, grid_size=(8, 8)))
    assert all(m.choose(17) != 'partition' for m in layers)
    assert set_grid_size(model, 4) == 3
    assert all(m.grid_size == (4, 4) and m.choose(17) == 'partition' for m in layers)
    assert model[3].grid_size == (8, 8)  # an explicit grid_size is kept


def test_local_extra_mask_combines_with_windows() -> None:
    m = LocalAttention(32, 4, window_size=8)  # one window: only the extra mask acts
    sdpa = build_attention('sdpa', 32, 4)
    sdpa.load_state_dict(m.state_dict())
    x, pos = tokens(b=2, n_vis=64)
    mask = torch.rand(2, 1, 65, 65) > 0.5
    mask[..., 0] = True
    assert torch.allclose(m(x, pos, attn_mask=mask), sdpa(x, attn_mask=mask), atol=1e-5)


# --------------------------------------------------------------------------- fourier
def test_fourier_is_fnet_mixing_and_order_invariant() -> None:
    m = FourierMix(32)
    x, pos = tokens(b=2, n_vis=20)
    order = grid_order(pos)
    sorted_x = torch.gather(x, 1, order.unsqueeze(-1).expand_as(x))
    fnet = torch.fft.fft2(sorted_x, norm='ortho').real  # FNet over (tokens, channels)
    expected = torch.empty_like(fnet).scatter(1, order.unsqueeze(-1).expand_as(x), fnet)
    assert torch.allclose(m(x, pos), m.proj(expected), atol=1e-5)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(20) + 1])
    assert torch.allclose(m(x[:, perm], pos[:, perm]), m(x, pos)[:, perm], atol=1e-5)
    assert pos[0, order[0, 0], 0] == -1  # CLS first
    # any length, with or without positions; orthonormal: keeps the norm
    for n in (1, 7, 50):
        y = torch.randn(2, n, 32)
        assert m(y).shape == (2, n, 32)
    y = torch.randn(2, 7, 32)
    mixed = torch.fft.fft2(y, norm='ortho')
    assert torch.allclose(mixed.abs().square().sum(), y.square().sum(), rtol=1e-4)
    with pytest.raises(ValueError, match='attn_mask'):
        m(x, pos, attn_mask=torch.ones(1, dtype=torch.bool))


@pytest.mark.parametrize(
    ('name', 'opts'),
    [
        ('sdpa', None),
        ('eager', None),
        ('fourier', None),
        ('local', {'window_size': 2, 'rel_pos_bias': True, 'grid_size': 4}),
    ],
)
def test_every_parameter_gets_a_gradient(name: str, opts: dict | None) -> None:
    # DDP without find_unused_parameters needs this
    model = CrossScaleMAE(**TINY, attention=name, attention_options=opts)
    out = model(torch.randn(2, 2, 3, 32, 32))
    out.loss.backward()
    unused = [
        k
        for k, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not unused
    assert out.pred is not None and out.pred.shape == (2, 2, 16, 192)


@pytest.mark.slow
@pytest.mark.parametrize(
    ('name', 'opts'),
    [
        ('eager', '{}'),
        ('fourier', '{}'),
        ('local', '{window_size: 2, grid_size: 4}'),
        ('local', '{window_size: 2, rel_pos_bias: true}'),
    ],
)
def test_backend_trains_end_to_end_with_xscale_fit(
    tmp_path: Path, make_geotiff, name: str, opts: str
) -> None:
    from torchgeo_xscale.cli import lightning_cli

    make_geotiff(tmp_path / 'data' / 'a.tif', width=80, height=80)
    args = tiny_fit_args(
        tmp_path / 'data',
        tmp_path / 'run',
        TINY,
        '--model.attention',
        name,
        '--model.attention_options',
        opts,
    )
    cli = lightning_cli(args)
    assert cli.trainer.global_step == 2
    assert cli.model.hparams['attention'] == name
    metrics = cli.trainer.callback_metrics
    assert all(torch.isfinite(metrics[f'train_loss_{k}']) for k in ('re', 'cc', 'cp'))
