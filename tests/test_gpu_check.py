"""benchmarks/gpu_check.sh: a clear line and exit 0 without CUDA; its step part runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path: Path) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', PYTHON=sys.executable)
    output = tmp_path / 'gpu_check.md'
    done = subprocess.run(
        ['bash', str(REPO / 'benchmarks' / 'gpu_check.sh'), '--output', str(output)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (
        'no CUDA device: benchmarks/gpu_check.py needs an NVIDIA GPU; nothing was measured'
    )
    assert not output.exists()  # nothing measured, no table


def test_gpu_check_step_part_measures_a_partial_step_on_cpu() -> None:
    """The train-step part of the GPU run, in-process, with a tiny model on the CPU."""
    sys.path.insert(0, str(REPO / 'benchmarks'))
    from gpu_check import TINY_MODEL, child_step, step_row

    spec = {
        'device': 'cpu', 'model': TINY_MODEL, 'batch': 2, 'steps': 1,
        'attention': 'sdpa', 'compile': False, 'keep': 0.25,
    }  # fmt: skip
    result = json.loads(json.dumps(child_step(spec)))  # what a child prints
    assert result['images_per_s'] > 0 and result['flops'] > 0
    row = step_row(('sdpa', False, 0.25), result, peak=1e12)
    assert row[1] == 'sdpa, eager, decoder_keep 0.25' and row[3].endswith('%')
