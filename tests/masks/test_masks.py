import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_MODEL

from torchgeo_xscale.cli import main
from torchgeo_xscale.masks import (
    ColorNoiseMasking,
    EasyFirstMasking,
    LocalWindowMasking,
    MaskInfo,
    build_mask_strategy,
    color_noise_bank,
    fit_window_size,
    list_mask_strategies,
    num_visible,
    patch_distance,
    place_windows,
)
from torchgeo_xscale.models import CrossScaleMAE

NAMES = [
    'random',
    'colormae-green',
    'colormae-blue',
    'colormae-red',
    'colormae-purple',
    'lomar',
    'easy-first',
]


def options(name: str, tmp_path: Path) -> dict:
    """Small, cache-in-tmp options per strategy."""
    if name.startswith('colormae'):
        return {
            'bank_size': 64,
            'pattern_size': 32,
            'cache_dir': str(tmp_path / 'bank'),
        }
    if name == 'easy-first':
        return {'subdivisions': 2}
    return {}


def gen(seed: int, device: str = 'cpu') -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def check_mask_info(info: MaskInfo, b: int, n: int, keep: int) -> None:
    """ids_keep, ids_restore and mask describe the same exact-count masks."""
    assert info.ids_keep.shape == (b, keep)
    assert info.ids_restore.shape == (b, n)
    assert info.mask.shape == (b, n)
    assert torch.equal(info.mask.sum(1), torch.full((b,), float(n - keep)))
    assert (info.mask.gather(1, info.ids_keep) == 0).all()
    assert torch.equal(info.ids_restore.sort(1).values, torch.arange(n).expand(b, -1))
    # The encoder's j-th token goes back to position j of [visible, masked].
    pos = info.ids_restore.gather(1, info.ids_keep)
    assert torch.equal(pos, torch.arange(keep).expand(b, -1))


def test_all_strategies_registered() -> None:
    assert set(NAMES) <= set(list_mask_strategies())
    with pytest.raises(ValueError, match=r"mask_strategy='colormae-pink' is unknown"):
        build_mask_strategy('colormae-pink')


@pytest.mark.parametrize('grid', [(8, 8), (6, 10)])
@pytest.mark.parametrize('name', NAMES)
def test_exact_mask_ratio_per_sample(name, grid, tmp_path) -> None:
    gh, gw = grid
    n = gh * gw
    strategy = build_mask_strategy(name, **options(name, tmp_path))
    info = strategy(16, gh, gw, 0.75, gen(0))
    if name == 'lomar':
        k = fit_window_size(gh, gw, 4, None)
        keep = 4 * int(k * k * (1 - 0.8))
    else:
        keep = num_visible(n, 0.75)
    check_mask_info(info, 16, n, keep)


@pytest.mark.parametrize('name', NAMES)
def test_deterministic_under_seed(name, tmp_path) -> None:
    opts = options(name, tmp_path)
    a = build_mask_strategy(name, **opts)(8, 8, 8, 0.75, gen(3))
    b = build_mask_strategy(name, **opts)(8, 8, 8, 0.75, gen(3))
    c = build_mask_strategy(name, **opts)(8, 8, 8, 0.75, gen(4))
    assert torch.equal(a.ids_keep, b.ids_keep)
    assert torch.equal(a.mask, b.mask)
    if a.loss_weight is not None:
        assert torch.equal(a.loss_weight, b.loss_weight)
    assert not torch.equal(a.mask, c.mask)


# --- ColorMAE ----------------------------------------------------------------------


def band_densities(masks: torch.Tensor, lo: float, hi: float) -> list[float]:
    """Mean normalised power density below, inside and above [lo, hi] cycles/patch."""
    x = masks - masks.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).mean(0)
    power = power / power.mean()  # white noise has density 1 everywhere
    h, w = power.shape
    f = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None] ** 2).sqrt()
    bands = (f < lo, (f >= lo) & (f <= hi), f > hi)
    return [power[band].mean().item() for band in bands]


def test_green_spectrum_is_band_pass(tmp_path) -> None:
    # A Gaussian of sigma (patches) cuts off at 1 / (2 pi sigma) cycles per patch.
    lo, hi = 1 / (2 * math.pi * 2.0), 1 / (2 * math.pi * 0.5)
    grid = 32

    def masks(name: str) -> torch.Tensor:
        opts = {} if name == 'random' else {'bank_size': 256, 'cache_dir': None}
        info = build_mask_strategy(name, **opts)(256, grid, grid, 0.75, gen(0))
        return info.mask.view(-1, grid, grid)

    low, band, high = band_densities(masks('colormae-green'), lo, hi)
    w_low, w_band, w_high = band_densities(masks('random'), lo, hi)
    # Power concentrated between the two sigmas: above white inside, below outside.
    assert band > 1.3 * w_band
    assert low < w_low and high < w_high
    assert band > low and band > high
    # The other colours put their power where their filters pass it.
    r_low, _, r_high = band_densities(masks('colormae-red'), lo, hi)
    b_low, _, b_high = band_densities(masks('colormae-blue'), lo, hi)
    assert r_low > 3 * w_low and r_high < w_high
    assert b_high > w_high and b_low < w_low


def test_bank_deterministic_and_cached_atomically(tmp_path) -> None:
    strategy = ColorNoiseMasking(
        'green', bank_size=16, pattern_size=16, cache_dir=tmp_path
    )
    bank = strategy.bank()
    path = strategy.cache_path
    assert path is not None and path.is_file() and path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    assert torch.equal(bank, color_noise_bank('green', 16, 16, (0.5, 2.0), 0))
    assert torch.equal(torch.load(path, weights_only=True), bank)
    # Per-pattern zero mean, unit variance.
    assert bank.mean(dim=(1, 2)).abs().max() < 1e-5
    assert torch.allclose(bank.std(dim=(1, 2)), torch.ones(16), atol=1e-4)
    # Another seed is another bank in another file.
    other = ColorNoiseMasking(
        'green', bank_size=16, pattern_size=16, seed=1, cache_dir=tmp_path
    )
    assert other.cache_path != path
    assert not torch.equal(other.bank(), bank)
    # A corrupt cache file is regenerated, not trusted.
    path.write_bytes(b'not a tensor')
    again = ColorNoiseMasking(
        'green', bank_size=16, pattern_size=16, cache_dir=tmp_path
    )
    assert torch.equal(again.bank(), bank)
    assert torch.equal(torch.load(path, weights_only=True), bank)


def test_colormae_crops_come_from_the_bank() -> None:
    strategy = ColorNoiseMasking('red', bank_size=4, pattern_size=8, cache_dir=None)
    bank = strategy.bank()
    scores = strategy.scores(32, 5, 6, gen(0)).view(32, 5, 6)
    for crop in scores:  # each crop is a periodic window of one pattern, maybe flipped
        found = False
        for m, dr, dc in itertools.product(range(4), range(8), range(8)):
            tile = bank[m].roll((-dr, -dc), dims=(0, 1))[:5, :6]
            views = (tile, tile.flip(0), tile.flip(1), tile.flip(0).flip(1))
            if any(torch.equal(crop, v) for v in views):
                found = True
                break
        assert found


def test_colormae_errors(tmp_path) -> None:
    with pytest.raises(
        ValueError, match=r'patch grid 20x20 is larger .* pattern_size >= 20'
    ):
        ColorNoiseMasking(pattern_size=16, cache_dir=None)(2, 20, 20, 0.75)
    with pytest.raises(ValueError, match=r"color='pink'"):
        ColorNoiseMasking('pink')  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r'sigmas=\(2.0, 0.5\)'):
        build_mask_strategy('colormae-green', sigmas=(2.0, 0.5))
    with pytest.raises(ValueError, match='sets color itself'):
        build_mask_strategy('colormae-green', color='blue')


# --- LoMaR -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('grid', 'windows', 'size'),
    [((14, 14), 4, None), ((20, 20), 4, None), ((8, 8), 4, None), ((9, 13), 3, 3)],
)
def test_lomar_windows_inside_grid_and_ratio_inside_each(grid, windows, size) -> None:
    gh, gw = grid
    strategy = LocalWindowMasking(num_windows=windows, window_size=size)
    b = 32
    info, tops, k = strategy.draw(b, gh, gw, 0.75, gen(0))
    assert k == (size or (7 if min(grid) >= 14 else 4))
    assert tops.shape == (b, windows, 2)
    assert (tops >= 0).all()
    assert (tops[..., 0] <= gh - k).all() and (tops[..., 1] <= gw - k).all()
    keep = int(k * k * (1 - 0.8))
    mask = info.mask.view(b, gh, gw)
    inside = torch.zeros(b, gh, gw)
    for i, j in itertools.product(range(b), range(windows)):
        r, c = tops[i, j].tolist()
        window = mask[i, r : r + k, c : c + k]
        assert int((window == 0).sum()) == keep  # exact ratio inside each window
        inside[i, r : r + k, c : c + k] += 1
        visible = info.ids_keep[i][info.groups[i] == j]
        assert ((visible // gw >= r) & (visible // gw < r + k)).all()
        assert ((visible % gw >= c) & (visible % gw < c + k)).all()
    assert inside.max() == 1  # windows do not overlap
    assert torch.equal(info.loss_weight.view(b, gh, gw), inside)  # targets: inside only
    assert (mask[inside == 0] == 1).all()  # nothing visible outside the windows


@pytest.mark.parametrize('attention', ['sdpa', 'eager', 'local'])
def test_lomar_encodes_each_window_on_its_own(attention: str) -> None:
    from torchgeo_xscale.models import build_vit

    torch.manual_seed(0)
    opts = {'window_size': 2} if attention == 'local' else None
    vit = build_vit(
        'tiny', img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2,
        attention=attention, attention_options=opts,
    ).eval()  # fmt: skip
    gw, ps = 8, 4
    x = torch.randn(2, 3, 32, 32)
    for window_attention in (True, False):
        strategy = LocalWindowMasking(2, 4, 0.5, window_attention=window_attention)
        info = strategy(2, 8, 8, 0.75, gen(1))
        assert (info.groups is not None) == window_attention
        groups = torch.arange(2).repeat_interleave(8).expand(2, -1)
        # change the pixels of window 1's visible patches only
        y = x.clone()
        for i, p in zip(*torch.nonzero(groups == 1, as_tuple=True)):
            r, c = divmod(int(info.ids_keep[i, p]), gw)
            y[i, :, r * ps : (r + 1) * ps, c * ps : (c + 1) * ps] += 3.0
        with torch.no_grad():
            a = vit.forward_encoder(x, info.ids_keep, groups=info.groups)[:, 1:]
            b = vit.forward_encoder(y, info.ids_keep, groups=info.groups)[:, 1:]
        in0 = groups == 0
        assert not torch.allclose(a[~in0], b[~in0], atol=1e-4)
        # window 0 does not see window 1 exactly when the encoder honours groups
        assert torch.allclose(a[in0], b[in0], atol=1e-5) == window_attention


def test_consistent_view_masks_keep_lomar_groups() -> None:
    model = CrossScaleMAE(
        **{**TINY, 'img_size': 64}, mask_strategy='lomar', view_masks='consistent'
    )
    info = model.draw_masks(3, 2, torch.device('cpu'), gen(0))
    assert info.groups is not None and info.groups.shape == info.ids_keep.shape
    assert torch.equal(info.groups[:3], info.groups[3:])
    out = model(torch.randn(3, 2, 3, 64, 64), generator=gen(0))
    assert torch.isfinite(out.loss)


def test_lomar_positions_are_random_when_there_is_room() -> None:
    tops = place_windows(256, 24, 24, 4, 5, gen(0))
    assert len({tuple(t) for t in tops[:, 0].tolist()}) > 100


def test_lomar_ratio_option_and_errors() -> None:
    info = LocalWindowMasking(num_windows=1, window_size=4, window_ratio=None)(
        2, 8, 8, 0.5, gen(0)
    )
    assert info.num_visible == 8  # half of the 16 window patches
    with pytest.raises(
        ValueError, match=r'num_windows=4 windows of 7x7 .* 8x8 patch grid'
    ):
        LocalWindowMasking(window_size=7)(2, 8, 8, 0.75)
    with pytest.raises(ValueError, match=r'window_ratio=1\.2'):
        build_mask_strategy('lomar', window_ratio=1.2)


# --- easy-first --------------------------------------------------------------------


def brute_force_p2dist(mask: np.ndarray, gh: int, gw: int, s: int) -> np.ndarray:
    """Mean distance from the s x s points of each patch to the nearest visible point."""
    offs = (np.arange(s) + 0.5) / s
    out = np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        m = mask[b].reshape(gh, gw)
        vis = [
            (i + dy, j + dx)
            for i in range(gh)
            for j in range(gw)
            if m[i, j] == 0
            for dy in offs
            for dx in offs
        ]
        vis_arr = np.array(vis)
        for i, j in itertools.product(range(gh), range(gw)):
            pts = np.array([(i + dy, j + dx) for dy in offs for dx in offs])
            d = np.sqrt(((pts[:, None] - vis_arr[None]) ** 2).sum(-1)).min(1)
            out[b, i * gw + j] = d.mean()
    return out


@pytest.mark.parametrize('s', [1, 3])
def test_easy_first_difficulty_equals_brute_force(s) -> None:
    gh, gw = 5, 7
    mask = build_mask_strategy('random')(4, gh, gw, 0.8, gen(1)).mask
    fast = patch_distance(mask, gh, gw, subdivisions=s)
    slow = brute_force_p2dist(mask.numpy(), gh, gw, s)
    np.testing.assert_allclose(fast.numpy(), slow, rtol=1e-5, atol=1e-5)
    assert (fast[mask == 0] == 0).all() and (fast[mask == 1] > 0).all()


def test_easy_first_drops_hardest_and_upweights_easy() -> None:
    gh = gw = 8
    strategy = EasyFirstMasking(drop_hardest=0.25, weight_power=1.0, subdivisions=2)
    info = strategy(16, gh, gw, 0.75, gen(0))
    d = patch_distance(info.mask, gh, gw, 2)
    w = info.loss_weight
    masked = info.mask == 1
    n_masked = gh * gw - num_visible(gh * gw, 0.75)
    kept = w > 0
    assert torch.equal(kept.sum(1), torch.full((16,), n_masked - int(n_masked * 0.25)))
    assert not (kept & ~masked).any()
    for i in range(16):
        dropped = masked[i] & ~kept[i]
        assert d[i][dropped].min() >= d[i][kept[i]].max()  # the hardest go
        # Mean 1 over kept targets; easier (closer) targets weigh more.
        assert w[i][kept[i]].mean().item() == pytest.approx(1.0, rel=1e-5)
        order = d[i][kept[i]].argsort()
        assert (w[i][kept[i]][order].diff() <= 1e-6).all()
    no_weight = EasyFirstMasking(drop_hardest=0.0, weight_power=0.0)(
        4, gh, gw, 0.75, gen(0)
    )
    assert torch.equal(no_weight.loss_weight, no_weight.mask)


def test_easy_first_on_lomar_only_weights_window_targets() -> None:
    strategy = build_mask_strategy(
        'easy-first', base='lomar', base_options={'num_windows': 2, 'window_size': 4}
    )
    info = strategy(4, 8, 8, 0.75, gen(0))
    window_targets = 2 * (16 - int(16 * 0.2))
    kept = (info.loss_weight > 0).sum(1)
    assert torch.equal(
        kept, torch.full((4,), window_targets - int(window_targets * 0.2))
    )


# --- with the model ------------------------------------------------------------------

TINY = TINY_MODEL


def model_options(name: str, tmp_path: Path) -> dict:
    opts = options(name, tmp_path)
    if name == 'lomar':
        opts = {'num_windows': 2, 'window_size': 2}  # a 4 x 4 patch grid
    return opts


@pytest.mark.parametrize('view_masks', ['independent', 'consistent'])
@pytest.mark.parametrize('name', NAMES)
def test_cross_scale_mae_trains_with_each_strategy(name, view_masks, tmp_path) -> None:
    model = CrossScaleMAE(
        **TINY, mask_strategy=name, mask_options=model_options(name, tmp_path),
        view_masks=view_masks,
    )  # fmt: skip
    views = torch.randn(3, 2, 3, 32, 32)
    out = model(views, gsd=torch.ones(3, 2), generator=gen(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and set(out.parts) == {'re', 'cc', 'cp'}
    assert model.encoder.patch_embed.proj.weight.grad is not None
    same = torch.equal(out.mask[:, 0], out.mask[:, 1])
    assert same == (view_masks == 'consistent')


@pytest.mark.parametrize('name', NAMES)
def test_plain_mae_with_each_strategy(name, tmp_path) -> None:
    model = CrossScaleMAE(
        **TINY, mask_strategy=name, mask_options=model_options(name, tmp_path),
        loss_cc=False, loss_cp=False,
    )  # fmt: skip
    out = model(torch.randn(2, 1, 3, 32, 32), generator=gen(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.mask.shape == (2, 1, 16)


def test_loss_weight_zero_drops_targets_from_l_re(tmp_path) -> None:
    """LoMaR: patches outside the windows are not decoded in training (decoder
    masking); every decoded target gets a gradient from L_re. In eval mode all
    patches are decoded and the zero-weight ones get no gradient."""
    model = CrossScaleMAE(
        **TINY, mask_strategy='lomar', mask_options={'num_windows': 1, 'window_size': 2},
        loss_cc=False, loss_cp=False,
    )  # fmt: skip
    grads = []

    def keep_grad(module, inputs, output) -> None:
        output.register_hook(grads.append)

    model.decoder_pred.register_forward_hook(keep_grad)
    out = model(torch.randn(2, 1, 3, 32, 32), generator=gen(0))
    out.loss.backward()
    info = model.draw_masks(2, 1, torch.device('cpu'), gen(0))  # the same masks
    targets = (info.mask * info.loss_weight) > 0
    assert torch.equal(targets.sum(1), torch.tensor([3, 3]))  # 2x2 window, 1 visible
    assert torch.equal(out.decoded[:, 0] > 0, targets)
    assert grads[0].shape[:2] == (2, 3) and bool((grads[0].abs().sum(-1) > 0).all())
    model.eval()
    info = model.draw_masks(2, 1, torch.device('cpu'), gen(0))
    assert info.ids_target is None
    model(torch.randn(2, 1, 3, 32, 32), masks=info).loss.backward()
    per_patch = grads[1].abs().sum(-1)  # (B, N)
    assert torch.equal(per_patch > 0, targets)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('name', NAMES)
def test_strategies_on_cuda(name, tmp_path) -> None:
    strategy = build_mask_strategy(name, **options(name, tmp_path))
    info = strategy(64, 8, 8, 0.75, gen(0, 'cuda'), 'cuda')
    assert info.ids_keep.is_cuda and info.mask.is_cuda
    assert (info.mask.sum(1) == info.mask.sum(1)[0]).all()
    again = strategy(64, 8, 8, 0.75, gen(0, 'cuda'), 'cuda')
    assert torch.equal(info.mask, again.mask)


# --- end to end through the CLI -------------------------------------------------------


@pytest.mark.slow
def test_xscale_fit_with_each_strategy(tmp_path, make_geotiff) -> None:
    make_geotiff(tmp_path / 'rasters' / 'a.tif', width=96, height=96)
    config = {
        'model': {
            'class_path': 'torchgeo_xscale.tasks.CrossScaleMAETask',
            'init_args': {**TINY, 'warmup_epochs': 1},
        },
        'data': {
            'class_path': 'torchgeo_xscale.datamodules.GeoTIFFDataModule',
            'init_args': {
                'paths': str(tmp_path / 'rasters'), 'img_size': 32, 'patch_size': 32,
                'batch_size': 2, 'length': 2, 'stats_cache': str(tmp_path / 'stats'),
            },
        },
        'trainer': {
            'accelerator': 'cpu', 'devices': 1, 'max_steps': 1, 'limit_val_batches': 1,
            'enable_progress_bar': False, 'logger': False, 'enable_checkpointing': False,
        },
    }  # fmt: skip
    path = tmp_path / 'config.yaml'
    path.write_text(yaml.safe_dump(config))
    for name in NAMES:
        opts = model_options(name, tmp_path)
        args = ['fit', '--config', str(path), '--model.mask_strategy', name]
        args += ['--trainer.default_root_dir', str(tmp_path / name)]
        if opts:
            args += [
                '--model.mask_options',
                yaml.safe_dump(opts, default_flow_style=True),
            ]
        main(args)
    assert list((tmp_path / 'bank').glob('*.pt'))  # ColorMAE banks were cached there
