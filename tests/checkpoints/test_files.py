"""Our weights file (``checkpoints.files``): one atomic unit, old format, NaN, OS errors."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL

from torchgeo_xscale.checkpoints import (
    WEIGHTS_FORMAT,
    WeightsWriteError,
    export_weights,
    read_checkpoint,
    save_weights,
)
from torchgeo_xscale.checkpoints import files as files_module
from torchgeo_xscale.cli import main as xscale
from torchgeo_xscale.models import CrossScaleMAE
from torchgeo_xscale.models.vit import build_vit

TINY = {**TINY_MODEL, 'depth': 1}


def encoder(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    vit = build_vit(
        'tiny', img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2
    )
    return vit.state_dict()


def mae_file(path: Path, seed: int, nan: str | None = None) -> Path:
    """A CrossScaleMAE state dict file (the ``mae`` layout), optionally with a NaN."""
    torch.manual_seed(seed)
    sd = CrossScaleMAE(**TINY).state_dict()
    if nan:
        sd[nan] = sd[nan].clone()
        sd[nan].view(-1)[3] = float('nan')
    torch.save(sd, path)
    return path


def test_metadata_is_embedded_and_the_json_is_only_a_copy(tmp_path: Path) -> None:
    path = tmp_path / 'enc.pth'
    meta = {'residual_norm_style': 'post', 'model': {'embed_dim': 32, 'num_heads': 2}}
    save_weights(encoder(0), path, meta)
    obj = torch.load(path, weights_only=True)  # plain containers and tensors
    assert set(obj) == {'state_dict', 'metadata'}
    assert obj['metadata']['format'] == WEIGHTS_FORMAT
    side = json.loads((tmp_path / 'enc.pth.json').read_text())
    assert side == obj['metadata']
    (tmp_path / 'enc.pth.json').write_text(
        json.dumps({**side, 'residual_norm_style': 'pre'})
    )
    assert (
        read_checkpoint(path).metadata['residual_norm_style'] == 'post'
    )  # embedded wins
    (tmp_path / 'enc.pth.json').unlink()
    assert read_checkpoint(path).metadata['model']['num_heads'] == 2


def test_first_format_still_loads(tmp_path: Path) -> None:
    """A plain state dict and its ``.json`` (format 1, written before)."""
    path = tmp_path / 'old.pth'
    sd = encoder(0)
    torch.save(sd, path)
    side = {
        'format': 'torchgeo_xscale.weights/1',
        'layout': 'official-xformers-post',
        'residual_norm_style': 'post',
        'model': {'num_heads': 2, 'img_size': 32},
    }
    (tmp_path / 'old.pth.json').write_text(json.dumps(side))
    resolved = read_checkpoint(path)
    assert resolved.metadata['residual_norm_style'] == 'post'
    assert resolved.metadata['model']['num_heads'] == 2
    assert resolved.metadata['final_norm'] is True  # it has norm.* tensors
    assert all(torch.equal(resolved.state_dict[k], v) for k, v in sd.items())


def fail_midway(monkeypatch: pytest.MonkeyPatch, code: int, after: int) -> None:
    """Make the low-level write of our files fail with *code* after *after* bytes."""
    real = files_module._write
    written = {'n': 0}

    def write(file: object, data: bytes) -> int:
        if written['n'] + len(data) > after:
            raise OSError(code, os.strerror(code))
        written['n'] += len(data)
        return real(file, data)  # type: ignore[arg-type]

    monkeypatch.setattr(files_module, '_write', write)


@pytest.mark.parametrize('code', [errno.ENOSPC, errno.EACCES])
def test_failed_export_leaves_the_old_pair(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    code: int,
) -> None:
    out = tmp_path / 'weights' / 'enc.pth'
    assert (
        xscale(['weights', 'export', str(mae_file(tmp_path / 'a.pth', 0)), str(out)])
        == 0
    )
    before = (out.read_bytes(), out.with_name('enc.pth.json').read_bytes())
    capsys.readouterr()
    fail_midway(monkeypatch, code, after=20_000)  # a full disk, midway through
    assert (
        xscale(['weights', 'export', str(mae_file(tmp_path / 'b.pth', 1)), str(out)])
        == 1
    )
    err = capsys.readouterr().err
    assert (
        err == f'error: cannot write {out}: {os.strerror(code)}\n'
    )  # one line, final path
    assert (out.read_bytes(), out.with_name('enc.pth.json').read_bytes()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ['enc.pth', 'enc.pth.json']
    # the .pth written completely, its .json not: still the old pair
    fail_midway(monkeypatch, code, after=out.stat().st_size + 10)
    with pytest.raises(WeightsWriteError, match=f'cannot write {out}'):
        export_weights(tmp_path / 'b.pth', out)
    assert (out.read_bytes(), out.with_name('enc.pth.json').read_bytes()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ['enc.pth', 'enc.pth.json']


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / 'ro'
    folder.mkdir()
    folder.chmod(0o555)
    try:
        src = str(mae_file(tmp_path / 'a.pth', 0))
        assert xscale(['weights', 'export', src, str(folder / 'enc.pth')]) == 1
        err = capsys.readouterr().err
        assert err == f'error: cannot write {folder / "enc.pth"}: Permission denied\n'
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_non_finite_weights_are_refused_at_export_and_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = 'encoder.blocks.0.mlp.fc1.weight'
    src = mae_file(tmp_path / 'diverged.pth', 0, nan=key)
    out = tmp_path / 'enc.pth'
    assert xscale(['weights', 'export', str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and str(src) in err
    assert "'blocks.0.mlp.fc1.weight' (128, 32) has 1 non-finite values" in err
    assert not out.exists() and not out.with_name('enc.pth.json').exists()
    with pytest.raises(ValueError, match=r'diverged\.pth: tensor .blocks\.0\.mlp\.fc1'):
        read_checkpoint(src)
    bad = encoder(0)
    bad['pos_embed'] = bad['pos_embed'].clone().fill_(float('inf'))
    with pytest.raises(
        ValueError, match=r"refusing to write .*enc\.pth: tensor 'pos_embed'"
    ):
        save_weights(bad, out, {})
    assert not out.exists()


def test_failed_import_names_the_cache_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from authors_checkpoints import official_state_dict, write_official

    variant = 'official-xformers-post'
    sd = official_state_dict((32, 1, 2), variant, img_size=32, decoder=(16, 1, 2))
    src = write_official(tmp_path / 'mine.pth', sd, variant)
    entry = 'CrossScaleMAEBase16_Weights.FMOW_RGB'
    cache = tmp_path / 'cache'
    fail_midway(monkeypatch, errno.ENOSPC, after=5_000)
    args = ['weights', 'import', str(src), '--weights', entry, '--no-check-md5']
    # --quiet: no MD5 progress bar, so stderr is the error line alone
    assert xscale([*args, '--model-dir', str(cache), '--quiet']) == 1
    target = cache / 'crossscalemae_vit_base_patch16_fmow_rgb-0c33995d.pth'
    err = capsys.readouterr().err
    assert err == f'error: cannot write {target}: No space left on device\n'
    assert list(cache.iterdir()) == []
