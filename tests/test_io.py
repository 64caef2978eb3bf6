"""Atomic writes: temporaries name their writer; reruns remove only dead writers'."""

import os
import subprocess
import sys
from pathlib import Path

from torchgeo_xscale.io import (
    atomic_path,
    remove_stale_temporaries,
    stale_temporaries,
)


def _temporary_names(path: Path) -> str:
    """The name atomic_path gives a temporary of *path* here, with ``{pid}``."""
    with atomic_path(path) as tmp:
        name = Path(tmp).name
    own = f'-p{os.getpid()}.'
    assert own in name and name.startswith(f'.{path.name}.')
    return name.replace(own, '-p{pid}.')


def _temporary_of(path: Path, template: str, pid: int) -> Path:
    """A half-written temporary of *path* as process *pid* would leave it."""
    fake = path.parent / template.format(pid=pid)
    fake.write_bytes(b'half-written')
    return fake


def test_rerun_removes_temporaries_of_dead_writers_only(tmp_path: Path) -> None:
    target = tmp_path / 'mask.tif'
    template = _temporary_names(target)
    target.unlink()
    # a writer that was killed: its process is gone
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = _temporary_of(target, template, dead.pid)
    # a writer still running: its temporary must survive
    live = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        busy = _temporary_of(target, template, live.pid)
        other = tmp_path / '.mask.tif.aux.xml'  # not a temporary of mask.tif
        other.write_text('x')
        assert stale_temporaries(target) == [str(stale)]
        with atomic_path(target) as tmp:
            Path(tmp).write_text('done')
        assert not stale.exists() and busy.exists() and other.exists()
        assert target.read_text() == 'done'
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temporaries(target) == [str(busy)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        '.mask.tif.aux.xml',
        'mask.tif',
    ]
