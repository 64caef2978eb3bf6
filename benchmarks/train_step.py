"""Training-step benchmark of Cross-Scale MAE, printing ratios measured in one run.

    # CPU default: ViT-S/16 with a 256 x 4 decoder, about 2 minutes on an idle 2-core CPU
    python benchmarks/train_step.py
    # GPU (bf16 by default): the paper's ViT-B/16, 512 x 8 decoder, 128 px
    python benchmarks/train_step.py --size base --decoder-dim 512 --decoder-depth 8 \\
        --decoder-heads 16 --batch 256 --backend-batch 128

Measures, on whatever device is present (``--device``):

1. ours vs the peer: images/s per view and peak memory of one Cross-Scale MAE step
   over two views vs ``torchgeo.tasks.MAE`` (lightly's masked ViT + MAE decoder, the
   same ViT, decoder, patch, mask ratio and batch) doing one step per view, with full
   decoding and with partial reconstruction (``decoder_keep``, ``--keeps``), at the
   chosen decoder and at the paper's (512 wide, 8 blocks, 16 heads), all timed
   side by side in one run;
2. achieved FLOP/s of our step (counted by ``FlopCounterMode``) vs a large matmul
   timed in the same run, in the same precision;
3. every attention backend's step time and peak memory vs ``sdpa`` at 128 and 224 px,
   and the attention layer alone on the decoder's tokens;
4. the data pipeline (GeoTIFF tiles through ``GeoTIFFDataModule`` + ``ScaleViews``,
   one process) in tiles/s vs the step's demand.

A step is forward + backward + AdamW. Times are the best of interleaved repetitions
(configurations take turns, so background load hits all alike). Peak memory is
``torch.cuda.max_memory_allocated`` above the resident weights/optimiser on CUDA; on
CPU, where PyTorch keeps no allocator statistics, it is the bytes of activations saved
for backward (parameters excluded), the part that differs between configurations.
"""

import argparse
import contextlib
import datetime
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from torchgeo_xscale.models import CrossScaleMAE, list_attention_backends
from torchgeo_xscale.models.vit import VIT_SIZES

PAPER_A6000 = 'paper (supplement), ViT-B 128 px b512 on an A6000: 0.282 s/step xFormers, 0.295 s/step timm'
#: The paper's decoder: (width, blocks, heads).
PAPER_DECODER = (512, 8, 16)
#: Target of issue 19: partial reconstruction at 0.25 vs the peer, paper's decoder.
PARTIAL_TARGET = 1.5


#: (flag, default, help) of the command-line options.
OPTIONS: list[tuple[str, Any, str]] = [
    ('--size', 'small', f'ViT size {list(VIT_SIZES)}'),
    ('--img', 128, 'view size of parts 1, 2 and 4'),
    ('--patch', 16, 'patch size'),
    ('--batch', 8, 'samples (each with two views) per step in parts 1, 2 and 4'),
    ('--backend-batch', 4, 'samples per step in part 3'),
    ('--decoder-dim', 256, 'decoder width'),
    ('--decoder-depth', 4, 'decoder blocks'),
    ('--decoder-heads', 8, 'decoder heads'),
    (
        '--window',
        0,
        'window side of the local backend (0: half the patch grid, 4 windows)',
    ),
    ('--reps', 7, 'timed repetitions (best taken)'),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for flag, default, text in OPTIONS:
        p.add_argument(flag, type=type(default), default=default, help=text)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument(
        '--precision',
        choices=['fp32', 'bf16', 'fp16'],
        help='default: bf16 on CUDA, fp32 on CPU',
    )
    p.add_argument(
        '--backend-imgs',
        type=int,
        nargs='+',
        default=[128, 224],
        help='view sizes of part 3',
    )
    p.add_argument(
        '--rasters', help='GeoTIFFs for part 4 (default: a generated 2048 px GeoTIFF)'
    )
    p.add_argument(
        '--keeps',
        type=float,
        nargs='+',
        default=[0.5, 0.25],
        help='decoder_keep values of part 1 besides full decoding (1.0)',
    )
    p.add_argument(
        '--no-paper-decoder',
        action='store_true',
        help="part 1 at the chosen decoder only (not also at the paper's 512 x 8)",
    )
    p.add_argument(
        '--threads',
        type=int,
        default=0,
        help='torch CPU threads (0: torch default); 1 on a shared machine',
    )
    p.add_argument(
        '--skip', nargs='*', default=[], choices=['peer', 'flops', 'backends', 'data']
    )
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], Any]], reps: int, device: torch.device
) -> dict[str, float]:
    """Best (minimum) seconds per call of each function, the functions taking turns.

    The minimum is the estimate least disturbed by other processes on the machine.
    """
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}


def matmul_peak(device: torch.device, dtype: torch.dtype, reps: int = 10) -> float:
    """FLOP/s of the best of *reps* large square matmuls (the device's practical peak)."""
    n = 8192 if device.type == 'cuda' else 3072
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / interleaved({'mm': lambda: a @ b}, reps, device)['mm']


def peak_memory(
    forward: Callable[[], Tensor], params: list[Tensor], device: torch.device
) -> int:
    """Peak bytes of one forward + backward (see the module docstring)."""
    if device.type == 'cuda':
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward().backward()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    exclude = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        ptr, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
        if ptr not in exclude:
            saved[ptr] = max(saved.get(ptr, 0), size)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    loss.backward()
    return sum(saved.values())


# ----------------------------------------------------------------------------- models
class Step:
    """A model, its optimiser and batch: ``forward()`` gives the loss, ``()`` trains."""

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[[], Tensor],
        autocast: Any,
        calls: int = 1,
    ) -> None:
        self.forward_fn, self.autocast, self.calls = forward, autocast, calls
        self.params = [p for p in model.parameters() if p.requires_grad]
        # as CrossScaleMAETask: fused AdamW on CUDA (the same optimiser for the peer)
        fused = self.params[0].device.type == 'cuda'
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, fused=fused)

    def forward(self) -> Tensor:
        with self.autocast():
            return self.forward_fn()

    def __call__(self) -> None:
        for _ in range(self.calls):
            self.forward().backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)


def window(args: argparse.Namespace, img: int) -> int:
    """Window side of the local backend at *img* px (default: half the grid side)."""
    return args.window or max(1, img // args.patch // 2)


def attention_options(
    args: argparse.Namespace, img: int, attention: str
) -> dict[str, Any]:
    if attention != 'local':
        return {}
    return {'window_size': window(args, img), 'grid_size': img // args.patch}


Decoder = tuple[int, int, int]  # (width, blocks, heads)


def decoder_of(args: argparse.Namespace) -> Decoder:
    return args.decoder_dim, args.decoder_depth, args.decoder_heads


def ours(
    args: argparse.Namespace,
    img: int,
    attention: str,
    views: Tensor,
    autocast: Any,
    decoder: Decoder | None = None,
    keep: float = 1.0,
) -> Step:
    dim, depth, heads = decoder or decoder_of(args)
    model = CrossScaleMAE(
        size=args.size, img_size=img, patch_size=args.patch, decoder_embed_dim=dim,
        decoder_depth=depth, decoder_num_heads=heads, decoder_keep=keep,
        attention=attention, attention_options=attention_options(args, img, attention),
    ).to(views.device)  # fmt: skip
    return Step(model, lambda: model(views).loss, autocast)


def peer(
    args: argparse.Namespace,
    img: int,
    views: Tensor,
    autocast: Any,
    decoder_spec: Decoder | None = None,
) -> Step:
    """``torchgeo.tasks.MAE`` with our ViT size at *img* px, one training step per view."""
    import timm
    from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM
    from torchgeo.tasks import MAE

    name = f'vit_{args.size}_patch{args.patch}_224'
    dim, depth, heads = decoder_spec or decoder_of(args)
    decoder = dict(decoder_depth=depth, decoder_num_heads=heads)
    # views are made outside the step, as for ours: no augmentation inside it
    task = MAE(
        model=name,
        decoder_dim=dim,
        size=img,
        transform=nn.Identity(),
        **decoder,
    )
    # the task builds its ViT at 224 px; rebuild the same modules at the view size
    vit = timm.create_model(name, img_size=img, num_classes=0)
    task.backbone = MaskedVisionTransformerTIMM(vit=vit)
    task.decoder = MAEDecoderTIMM(
        num_patches=vit.patch_embed.num_patches, patch_size=args.patch, embed_dim=vit.embed_dim,
        decoder_embed_dim=dim, mlp_ratio=4.0, proj_drop_rate=0.0, attn_drop_rate=0.0,
        **decoder,
    )  # fmt: skip
    task.sequence_length = task.backbone.sequence_length
    task.to(views.device)
    per_view = [views[:, i].contiguous() for i in range(views.shape[1])]
    turn = iter(range(10**9))

    def forward() -> Tensor:  # alternates views; __call__ runs one step per view
        return task.training_step({'image': per_view[next(turn) % len(per_view)]}, 0)

    return Step(task, forward, autocast, calls=len(per_view))


# ----------------------------------------------------------------------------- parts
Rows = list[tuple[str, str, str, str]]


def verdict(ok: bool) -> str:
    return 'met' if ok else 'MISSED'


def part_peer(
    args: argparse.Namespace, device: torch.device, autocast: Any, rows: Rows
) -> float:
    """Ours (full and partial decoding) vs the peer at each decoder, side by side.

    Returns:
        The step's demand in samples/s (ours, full decoding, the chosen decoder).
    """
    views = torch.randn(args.batch, 2, 3, args.img, args.img, device=device)
    decoders = [decoder_of(args)]
    if not args.no_paper_decoder and PAPER_DECODER not in decoders:
        decoders.append(PAPER_DECODER)
    keeps = [1.0, *sorted({k for k in args.keeps if k < 1.0}, reverse=True)]
    n = args.batch * 2  # view-images per step (peer: one step per view)
    demand = 0.0
    for di, dec in enumerate(decoders):
        label = f'decoder {dec[0]} x {dec[1]}'
        steps = {
            f'keep {k:g}': ours(args, args.img, 'sdpa', views, autocast, dec, k)
            for k in keeps
        }
        steps['peer'] = peer(args, args.img, views, autocast, dec)
        flops = {}
        for key, step in steps.items():
            with FlopCounterMode(display=False) as counter:
                for _ in range(step.calls):
                    step.forward().backward()
            step.opt.zero_grad(set_to_none=True)
            flops[key] = counter.get_total_flops()
        t = interleaved(steps, args.reps, device)
        mem = {k: peak_memory(s.forward, s.params, device) for k, s in steps.items()}
        print(
            f'\n[1.{di + 1}] ours vs torchgeo.tasks.MAE, ViT-{args.size}/{args.patch}, {args.img} px,'
            f' {label}, batch {args.batch} x 2 views'
        )
        print(
            f'    peer          : {n / t["peer"]:6.1f} images/s ({t["peer"]:.3f} s for two steps),'
            f' {flops["peer"] / 1e9:6.1f} GFLOP, peak {mem["peer"] / 2**20:.0f} MiB'
        )
        for k in keeps:
            key = f'keep {k:g}'
            ratio, mem_ratio = t['peer'] / t[key], (mem[key] / 2) / mem['peer']
            what = 'full decoding' if k == 1.0 else f'decoder_keep {k:g}'
            print(
                f'    ours {key:<9}: {n / t[key]:6.1f} images/s ({t[key]:.3f} s for both views),'
                f' {flops[key] / 1e9:6.1f} GFLOP, peak {mem[key] / 2**20:.0f} MiB'
                f' -> ours/peer images/s per view {ratio:.2f}, FLOPs {flops[key] / flops["peer"]:.2f},'
                f' memory per view {mem_ratio:.2f}'
            )
            target, ok = '-', '-'
            if k == 1.0 and di == 0:
                target, ok = '>= 1.0', verdict(ratio >= 1.0)
            if k == 0.25 and dec == PAPER_DECODER:
                target = f'>= {PARTIAL_TARGET}'
                ok = verdict(ratio >= PARTIAL_TARGET)
            rows.append(
                (
                    f'images/s per view, ours ({what}) / torchgeo MAE, {label}',
                    f'{ratio:.2f}',
                    target,
                    ok,
                )
            )
            if k == 1.0 and di == 0:
                rows.append(
                    (
                        f'peak memory per view, ours / torchgeo MAE, {label}',
                        f'{mem_ratio:.2f}',
                        '-',
                        '-',
                    )
                )
        if di == 0:
            demand = args.batch / t['keep 1']
        del steps
    return demand


def part_flops(
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    autocast: Any,
    rows: Rows,
) -> None:
    views = torch.randn(args.batch, 2, 3, args.img, args.img, device=device)
    step = ours(args, args.img, 'sdpa', views, autocast)
    with FlopCounterMode(display=False) as counter:
        step.forward().backward()
    step.opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    t = interleaved(
        {'step': lambda: step.forward().backward(), 'step_opt': step}, args.reps, device
    )
    peak = matmul_peak(device, dtype)
    frac, target = flops / t['step'] / peak, 0.45 if device.type == 'cuda' else 0.50
    print(
        f'\n[2] achieved FLOP/s, ViT-{args.size}, {args.img} px, batch {args.batch} x 2 views, {dtype}'
    )
    print(
        f'    step: {flops / 1e9:.1f} GFLOP forward+backward in {t["step"]:.3f} s (+AdamW: {t["step_opt"]:.3f} s)'
    )
    print(
        f'    achieved {flops / t["step"] / 1e9:.1f} GFLOP/s; matmul peak {peak / 1e9:.1f} GFLOP/s'
        f' -> {100 * frac:.0f} % (target >= {100 * target:.0f} %)'
    )
    rows.append(
        (
            f'achieved / matmul peak FLOP/s ({dtype})',
            f'{100 * frac:.0f} %',
            f'>= {100 * target:.0f} %',
            verdict(frac >= target),
        )
    )


def part_backends(
    args: argparse.Namespace, device: torch.device, autocast: Any, rows: Rows
) -> None:
    backends = [
        b
        for b in ('sdpa', 'eager', 'fourier', 'local', 'xformers')
        if b in list_attention_backends()
    ]
    if device.type != 'cuda':
        backends.remove('xformers')  # CUDA only: it raises at construction elsewhere
    print(
        f'\n[3] attention backends, ViT-{args.size}, batch {args.backend_batch} x 2 views (local: windows of half the grid side)'
    )
    print(
        '    img  backend    step s  vs sdpa  memory MiB  vs sdpa | layer: speed  memory vs sdpa'
    )
    for img in args.backend_imgs:
        views = torch.randn(args.backend_batch, 2, 3, img, img, device=device)
        steps = {}
        for name in backends:
            try:
                steps[name] = ours(args, img, name, views, autocast)
            except (ImportError, RuntimeError) as err:
                print(f'    {img:>3}  {name:<9}  skipped: {err}')
        t = interleaved(steps, args.reps, device)
        mem = {k: peak_memory(s.forward, s.params, device) for k, s in steps.items()}
        lt, lm = layer_times(args, img, list(steps), device, autocast)
        for name in steps:
            speed, mratio = t['sdpa'] / t[name], mem[name] / mem['sdpa']
            lspeed, lmem = lt['sdpa'] / lt[name], lm[name] / lm['sdpa']
            print(
                f'    {img:>3}  {name:<9} {t[name]:7.3f}  {speed:6.2f}x  {mem[name] / 2**20:10.0f}'
                f'  {mratio:6.2f}x | {lspeed:11.2f}x  {lmem:13.2f}x'
            )
            both, big = f'{speed:.2f}x / {lspeed:.2f}x', img >= 224
            if name == 'fourier':
                rows.append(
                    (
                        f'fourier speed vs sdpa, {img} px (step / layer)',
                        both,
                        '>= 1.5x',
                        verdict(speed >= 1.5),
                    )
                )
                memory = f'{mratio:.2f}x / {lmem:.2f}x'
                rows.append(
                    (
                        f'fourier memory vs sdpa, {img} px (step / layer)',
                        memory,
                        '<= 0.5x',
                        verdict(mratio <= 0.5),
                    )
                )
            if name == 'local':
                ok = verdict(speed >= 1.3) if big else '-'
                rows.append(
                    (
                        f'local speed vs sdpa, {img} px (step / layer)',
                        both,
                        '>= 1.3x' if big else '-',
                        ok,
                    )
                )
            if name == 'xformers':
                rows.append(
                    (f'xformers speed vs sdpa, {img} px (step / layer)', both, '-', '-')
                )
        del steps


def layer_times(
    args: argparse.Namespace,
    img: int,
    backends: list[str],
    device: torch.device,
    autocast: Any,
) -> tuple[dict[str, float], dict[str, int]]:
    """Time and memory of one decoder attention layer (forward + backward, all tokens)."""
    from torchgeo_xscale.models import build_attention
    from torchgeo_xscale.models.vit import grid_positions

    grid, b = img // args.patch, args.backend_batch * 2
    x = torch.randn(
        b, grid * grid + 1, args.decoder_dim, device=device, requires_grad=True
    )
    pos = grid_positions(
        torch.arange(grid * grid, device=device).expand(b, -1), grid, num_prefix=1
    )
    fns, mems = {}, {}
    for name in backends:
        opts = attention_options(args, img, name)
        layer = build_attention(
            name, args.decoder_dim, args.decoder_heads, qkv_bias=True, **opts
        ).to(device)

        def forward(layer: nn.Module = layer) -> Tensor:
            with autocast():
                return layer(x, pos).float().sum()

        fns[name] = lambda forward=forward: forward().backward()
        mems[name] = peak_memory(forward, [*layer.parameters(), x], device)
    return interleaved(fns, args.reps * 2, device), mems


def part_data(
    args: argparse.Namespace, device: torch.device, demand: float, rows: Rows
) -> None:
    from torchgeo_xscale.datamodules import GeoTIFFDataModule

    with tempfile.TemporaryDirectory() as tmp:
        paths = args.rasters or write_raster(tmp)
        dm = GeoTIFFDataModule(
            paths,
            img_size=args.img,
            batch_size=args.batch,
            length=args.batch * 12,
            stats_cache=None,
        )
        dm.setup('fit')
        rate = 0.0
        for _ in range(args.reps):  # best epoch of 12 batches (the first 2 warm up)
            tiles, start = 0, time.perf_counter()
            for i, batch in enumerate(dm.train_dataloader()):
                batch = {
                    k: v.to(device) if isinstance(v, Tensor) else v
                    for k, v in batch.items()
                }
                batch = dm.on_after_batch_transfer(batch, 0)
                sync(device)
                if i == 1:
                    start = time.perf_counter()
                tiles += batch['views'].shape[0] if i > 1 else 0
            rate = max(rate, tiles / (time.perf_counter() - start))
    ratio = rate / demand
    print(
        f'\n[4] data pipeline: GeoTIFF tiles -> ScaleViews({args.img} px, 2 views) in one process on {device}'
    )
    print(
        f"    {rate:.1f} tiles/s vs the step's demand {demand:.1f} tiles/s -> {ratio:.1f}x (target >= 5x; workers multiply it)"
    )
    rows.append(
        (
            'data pipeline / step demand (1 process)',
            f'{ratio:.1f}x',
            '>= 5x',
            verdict(ratio >= 5),
        )
    )


def write_raster(folder: str) -> str:
    """A 2048 x 2048 px, 3-band uint8, 1 m UTM GeoTIFF (tiled) in *folder*."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    data = np.random.default_rng(0).integers(0, 255, (3, 2048, 2048), dtype=np.uint8)
    profile = dict(
        driver='GTiff', width=2048, height=2048, count=3, dtype='uint8', crs='EPSG:32633',
        transform=from_origin(500000, 5000000, 1.0, 1.0), tiled=True, blockxsize=256, blockysize=256,
    )  # fmt: skip
    with rasterio.open(os.path.join(folder, 'bench.tif'), 'w', **profile) as dst:
        dst.write(data)
    return folder


def machine(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open('/proc/cpuinfo') as f:
        cpu = next(
            (
                line.split(':', 1)[1].strip()
                for line in f
                if line.startswith('model name')
            ),
            cpu,
        )
    return f'{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads'


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings('ignore')
    device = torch.device(args.device)
    precision = args.precision or ('bf16' if device.type == 'cuda' else 'fp32')
    dtype = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}[
        precision
    ]

    def autocast() -> Any:
        enabled = dtype != torch.float32
        return (
            torch.autocast(device.type, dtype=dtype)
            if enabled
            else contextlib.nullcontext()
        )

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f'# train_step benchmark, {datetime.date.today()}, {machine(device)}')
    print(
        f'# torch {torch.__version__}, precision {precision}, load average at start {os.getloadavg()[0]:.1f}'
    )
    rows: Rows = []
    demand = None
    if 'peer' not in args.skip:
        demand = part_peer(args, device, autocast, rows)
    if 'flops' not in args.skip:
        part_flops(args, device, dtype, autocast, rows)
    if 'backends' not in args.skip:
        part_backends(args, device, autocast, rows)
    if 'data' not in args.skip:
        if demand is None:
            views = torch.randn(args.batch, 2, 3, args.img, args.img, device=device)
            step = ours(args, args.img, 'sdpa', views, autocast)
            demand = args.batch / interleaved({'s': step}, args.reps, device)['s']
        part_data(args, device, demand, rows)
    if device.type == 'cuda':
        print(f'\n{PAPER_A6000}')
    print('\n| measure | result | target | |\n|---|---|---|---|')
    for row in rows:
        print('| ' + ' | '.join(row) + ' |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
