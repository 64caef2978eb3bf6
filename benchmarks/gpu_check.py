"""GPU check of Cross-Scale MAE: one run, one Markdown table, within about 8 minutes.

    bash benchmarks/gpu_check.sh                      # on a machine with an NVIDIA GPU
    bash benchmarks/gpu_check.sh --install-xformers   # pip install xformers if missing
    python benchmarks/gpu_check.py --output outputs/gpu_check.md --budget 450

Parts, each in its own subprocess with a time limit, all inside one budget
(``--budget`` seconds, default 450, so the whole run stays under 8 minutes with
start-up; a part that no longer fits is reported as not run):

1. ``pytest -m cuda``: the test suite's CUDA-marked tests;
2. the GPU's bf16 matmul peak (best of 10 square 8192 matmuls), measured here;
3. a ViT-B/16, 128 px Cross-Scale MAE training step (two views, the paper's 512 x 8
   decoder, bf16 autocast, fused AdamW) with ``sdpa`` and ``xformers`` attention,
   eager and ``torch.compile``, full decoding and partial reconstruction
   (``decoder_keep`` 0.25): view-images/s, MFU (FLOPs counted by
   ``FlopCounterMode`` on the eager SDPA model / step time / the matmul peak of
   part 2) and peak allocated memory (weights, AdamW state and activations);
4. Kornia :class:`~torchgeo_xscale.transforms.ScaleViews` on CUDA vs CPU;
5. a 2-step ``xscale fit`` of ``configs/paper/xscale_vitb_fmow.yaml`` at a reduced
   batch on a generated fMoW-RGB folder (the layout writer of the test suite,
   ``tests/fmow_layout.py``).

Uncompiled steps run before the compiled ones (which spend most of their time
compiling), so a tight budget drops compiled rows first. Without CUDA the script
prints one "no CUDA device" line and exits 0. ``--device cpu --allow-cpu`` runs every
part with a tiny model on the CPU, to check the script itself (numbers meaningless).
"""

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAPER_CONFIG = REPO / 'configs' / 'paper' / 'xscale_vitb_fmow.yaml'
NO_CUDA = (
    'no CUDA device: benchmarks/gpu_check.py needs an NVIDIA GPU; nothing was measured'
)

#: The paper's ViT-B model: encoder size, 128 px, patch 16, decoder 512 x 8 x 16.
PAPER_MODEL: dict[str, Any] = dict(
    size='base',
    img_size=128,
    patch_size=16,
    decoder_embed_dim=512,
    decoder_depth=8,
    decoder_num_heads=16,
)
#: A tiny model for ``--allow-cpu`` dry runs.
TINY_MODEL: dict[str, Any] = dict(
    size='tiny',
    img_size=32,
    patch_size=8,
    embed_dim=32,
    depth=1,
    num_heads=2,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
    projection_dim=16,
    projection_hidden_dim=32,
    predictor_hidden_dim=32,
)
#: Step rows: (attention, compile, decoder_keep); uncompiled first.
STEP_ROWS = [
    (attention, compiled, keep)
    for compiled in (False, True)
    for attention in ('sdpa', 'xformers')
    for keep in (1.0, 0.25)
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--output', default='outputs/gpu_check.md', help='Markdown table')
    p.add_argument('--budget', type=float, default=450.0, help='seconds for all parts')
    p.add_argument(
        '--batch', type=int, default=256, help='samples (x 2 views) per step'
    )
    p.add_argument('--steps', type=int, default=10, help='timed steps per row')
    p.add_argument('--fit-batch', type=int, default=16, help='batch of the 2-step fit')
    p.add_argument(
        '--install-xformers',
        action='store_true',
        help='pip install --no-deps xformers when it is missing (never changes torch)',
    )
    p.add_argument('--device', default='cuda', help='cuda, or cpu with --allow-cpu')
    p.add_argument(
        '--allow-cpu',
        action='store_true',
        help='dry run on the CPU with a tiny model (checks the script, not the GPU)',
    )
    p.add_argument('--child', help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------- children
def autocast(device: Any) -> Any:
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16)


def sync(device: Any) -> None:
    import torch

    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def child_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """bf16 matmul FLOP/s, best of 10 (the practical peak MFU is measured against)."""
    import torch

    device = torch.device(spec['device'])
    n = 8192 if device.type == 'cuda' else 1024
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    a @ b
    best = float('inf')
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return {'flops_per_s': 2 * n**3 / best}


def child_step(spec: dict[str, Any]) -> dict[str, Any]:
    """One training-step configuration: images/s, FLOPs, peak memory."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from torchgeo_xscale.models import CrossScaleMAE

    device = torch.device(spec['device'])
    if spec['attention'] == 'xformers' and importlib.util.find_spec('xformers') is None:
        return {'status': 'not installed'}
    model_kwargs = {**spec['model'], 'decoder_keep': spec['keep']}
    size, b = model_kwargs['img_size'], spec['batch']
    torch.manual_seed(0)
    views = torch.randn(b, 2, 3, size, size, device=device)
    reference = CrossScaleMAE(**model_kwargs, attention='sdpa').to(device)
    with FlopCounterMode(display=False) as counter:  # FLOPs of the same math, eager
        with autocast(device):
            loss = reference(views).loss
        loss.backward()
    flops = counter.get_total_flops()
    del reference, loss
    model = CrossScaleMAE(**model_kwargs, attention=spec['attention']).to(device)
    forward = torch.compile(model) if spec['compile'] else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        with autocast(device):
            loss = forward(views).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    step()  # compiles, when compiled
    sync(device)
    first = time.perf_counter() - start
    step()
    step()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(spec['steps']):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / spec['steps']
    peak = torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else None
    return {
        'images_per_s': 2 * b / seconds,
        'step_s': seconds,
        'flops': flops,
        'first_step_s': first,
        'peak_bytes': peak,
    }


def child_scale_views(spec: dict[str, Any]) -> dict[str, Any]:
    """Kornia ScaleViews (256 px tiles -> two 128 px views) on the GPU and the CPU."""
    import torch

    from torchgeo_xscale.transforms import ScaleViews

    device = torch.device(spec['device'])
    b, side, size = spec['batch'], 2 * spec['size'], spec['size']
    transform = ScaleViews(size=size, num_views=2)

    def rate(dev: Any, reps: int) -> float:
        image = torch.rand(b, 3, side, side, device=dev)
        gsd = torch.ones(b, device=dev)
        transform({'image': image, 'gsd': gsd})  # warm-up
        best = float('inf')
        for _ in range(reps):
            sync(dev)
            start = time.perf_counter()
            transform({'image': image, 'gsd': gsd})
            sync(dev)
            best = min(best, time.perf_counter() - start)
        return b / best

    return {
        'device_tiles_per_s': rate(device, 10),
        'cpu_tiles_per_s': rate(torch.device('cpu'), 3),
        'cpu_threads': torch.get_num_threads(),
    }


def child_fit(spec: dict[str, Any]) -> dict[str, Any]:
    """``xscale fit`` of the paper config, 2 steps, on a generated fMoW-RGB folder."""
    import torch

    sys.path.insert(0, str(REPO / 'tests'))
    from fmow_layout import write_fmow, write_fmow_image

    with tempfile.TemporaryDirectory() as tmp:
        root = write_fmow(Path(tmp) / 'fmow-rgb')
        for i in range(2 * spec['batch']):  # enough training images for 2 batches
            category = ('airport', 'zoo', 'dam')[i % 3]
            write_fmow_image(root, 'train', category, 100 + i, 160, 128, 0.5)
        args = ['fit', '--config', str(PAPER_CONFIG), '--data.root', str(root)]
        args += ['--data.batch_size', str(spec['batch']), '--data.val_samples', '2']
        args += ['--data.index_cache', str(Path(tmp) / 'cache')]
        args += ['--trainer.max_steps', '2', '--trainer.limit_val_batches', '1']
        args += ['--trainer.devices', '1', '--trainer.default_root_dir', tmp + '/run']
        args += spec.get('extra', [])
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, '-m', 'torchgeo_xscale', *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=spec['timeout'],
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
            return {'error': f'exit {done.returncode}: {" ".join(tail)[:300]}'}
        (last,) = Path(tmp, 'run').rglob('last.ckpt')
        state = torch.load(last, map_location='cpu', weights_only=False)
        return {'steps': state['global_step'], 'seconds': seconds}


CHILDREN = {
    'peak': child_peak,
    'step': child_step,
    'scale_views': child_scale_views,
    'fit': child_fit,
}


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one part in a fresh process; its last stdout line is its JSON result."""
    if timeout < 15:
        return {'status': 'not run (time budget)'}
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', json.dumps(spec)]
    try:
        done = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {'status': f'timed out after {timeout:.0f} s'}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or ['no output']
        return {'error': f'exit {done.returncode}: {tail[0][:300]}'}
    return json.loads(lines[-1])


# ----------------------------------------------------------------------- parent
def run_cuda_tests(timeout: float) -> tuple[str, float]:
    """``pytest -m cuda``; returns its summary line and the seconds it took."""
    start = time.perf_counter()
    cmd = [sys.executable, '-m', 'pytest', '-q', '-m', 'cuda', '-p', 'no:cacheprovider']
    try:
        done = subprocess.run(
            [*cmd, 'tests'], cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f'timed out after {timeout:.0f} s', time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip('= ') if lines else f'exit {done.returncode}'
    if done.returncode not in (0, 5):  # 5: no test collected
        summary = f'FAILED (exit {done.returncode}): {summary}'
    return summary, time.perf_counter() - start


def install_xformers(timeout: float) -> str:
    """pip install --no-deps xformers (keeps the installed torch); returns a note."""
    if importlib.util.find_spec('xformers') is not None:
        return 'already installed'
    cmd = [sys.executable, '-m', 'pip', 'install', '--no-deps', 'xformers']
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f'pip install timed out after {timeout:.0f} s'
    importlib.invalidate_caches()
    return (
        'installed'
        if done.returncode == 0
        else f'pip install failed: {done.returncode}'
    )


Row = tuple[str, str, str, str, str, str]


def step_row(
    spec: tuple[str, bool, float], result: dict[str, Any], peak: float | None
) -> Row:
    attention, compiled, keep = spec
    what = (
        f'{attention}, {"torch.compile" if compiled else "eager"}, '
        f'{"full decoding" if keep == 1.0 else f"decoder_keep {keep:g}"}'
    )
    if 'images_per_s' not in result:
        return (
            'train step',
            what,
            '-',
            '-',
            '-',
            result.get('status') or result['error'],
        )
    mfu = f'{100 * result["flops"] / result["step_s"] / peak:.0f} %' if peak else '-'
    memory = f'{result["peak_bytes"] / 2**30:.1f} GiB' if result['peak_bytes'] else '-'
    first = f'{result["step_s"]:.3f} s/step; first step {result["first_step_s"]:.1f} s'
    return ('train step', what, f'{result["images_per_s"]:.0f}', mfu, memory, first)


def markdown(rows: list[Row], header: list[str]) -> str:
    """The one table, with its context lines above it."""
    cols = [
        'part',
        'configuration',
        'view-images/s',
        'MFU (bf16)',
        'peak memory',
        'result',
    ]
    lines = [*header, '', '| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec.pop('kind')](spec)))
        return 0
    import torch

    if args.device == 'cpu' and not args.allow_cpu:
        raise SystemExit('--device cpu is a dry run of the script: add --allow-cpu')
    if args.device != 'cpu' and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    start = time.perf_counter()

    def left() -> float:
        return args.budget - (time.perf_counter() - start)

    cpu = args.device == 'cpu'
    model = TINY_MODEL if cpu else PAPER_MODEL
    batch = 2 if cpu else args.batch
    steps = 1 if cpu else args.steps
    if cpu:
        name = 'CPU dry run (tiny model; numbers meaningless)'
    else:
        name = torch.cuda.get_device_name(0)
    xformers_note = 'not installed'
    if args.install_xformers:
        xformers_note = install_xformers(min(150.0, left()))
    if importlib.util.find_spec('xformers') is not None:
        xformers_note = f'xformers {importlib.metadata.version("xformers")}'
    rows: list[Row] = []

    summary, seconds = run_cuda_tests(min(150.0, left()))
    rows.append(('pytest -m cuda', 'the suite\'s CUDA-marked tests', '-', '-', '-', f'{summary} ({seconds:.0f} s)'))  # fmt: skip
    peak_result = run_child({'kind': 'peak', 'device': args.device}, min(60.0, left()))
    peak = peak_result.get('flops_per_s')
    note = (
        f'{peak / 1e12:.1f} TFLOP/s'
        if peak
        else peak_result.get('status') or peak_result['error']
    )
    rows.append(('bf16 matmul peak', '8192 x 8192 x 8192, best of 10', '-', '-', '-', note))  # fmt: skip

    def step(spec: tuple[str, bool, float]) -> None:
        attention, compiled, keep = spec
        child = {
            'kind': 'step', 'device': args.device, 'model': model, 'batch': batch,
            'steps': steps, 'attention': attention, 'compile': compiled, 'keep': keep,
        }  # fmt: skip
        if attention == 'xformers' and importlib.util.find_spec('xformers') is None:
            result: dict[str, Any] = {'status': 'not installed'}
        else:
            result = run_child(child, min(240.0 if compiled else 90.0, left() - 60))
        rows.append(step_row(spec, result, peak))
        print(' | '.join(rows[-1]), flush=True)

    for spec in STEP_ROWS[:4]:  # eager first: the compiled rows mostly compile
        step(spec)
    views = run_child(
        {'kind': 'scale_views', 'device': args.device, 'batch': 4 * batch, 'size': model['img_size']},
        min(60.0, left()),
    )  # fmt: skip
    if 'device_tiles_per_s' in views:
        dev, host = views['device_tiles_per_s'], views['cpu_tiles_per_s']
        result = f'{dev:.0f} vs {host:.0f} tiles/s on CPU ({views["cpu_threads"]} threads): {dev / host:.1f}x'
    else:
        result = views.get('status') or views['error']
    rows.append(('Kornia ScaleViews', f'{4 * batch} tiles of {2 * model["img_size"]} px -> 2 views of {model["img_size"]} px, {args.device} vs CPU', '-', '-', '-', result))  # fmt: skip
    extra = ['--trainer.accelerator', 'cpu', '--trainer.precision', '32']
    extra += ['--data.img_size', str(TINY_MODEL['img_size'])]
    extra += [f'--model.{k}={v}' for k, v in TINY_MODEL.items()]
    fit_batch = 2 if cpu else args.fit_batch
    fit_limit = min(180.0, left() - 30)
    fit = run_child(
        {'kind': 'fit', 'batch': fit_batch, 'timeout': fit_limit - 10, 'extra': extra if cpu else []},
        fit_limit,
    )  # fmt: skip
    result = (
        f'{fit["steps"]} steps, exit 0, {fit["seconds"]:.0f} s with start-up'
        if 'steps' in fit
        else fit.get('status') or fit['error']
    )
    rows.append(('xscale fit', f'configs/paper/xscale_vitb_fmow.yaml, batch {fit_batch}, 2 steps, generated fMoW-RGB', '-', '-', '-', result))  # fmt: skip
    for spec in STEP_ROWS[4:]:
        step(spec)

    header = [
        f'# GPU check, {datetime.date.today()}: {name}',
        '',
        f'torch {torch.__version__}, CUDA {torch.version.cuda}, {xformers_note}; '
        f'ViT-{model["size"]}/{model["patch_size"]}, {model["img_size"]} px, decoder '
        f'{model["decoder_embed_dim"]} x {model["decoder_depth"]}, batch {batch} x 2 '
        f'views, bf16 autocast, fused AdamW; {steps} timed steps after 3 warm-up '
        f'steps; MFU = FLOPs of the eager SDPA step / step time / the bf16 matmul '
        f'peak above. Total {time.perf_counter() - start:.0f} s.',
    ]
    table = markdown(rows, header)
    print('\n' + table)
    from torchgeo_xscale.io import atomic_path

    with atomic_path(args.output) as tmp, open(tmp, 'w') as f:
        f.write(table)
    print(f'written to {args.output}')
    return 0


if __name__ == '__main__':
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
