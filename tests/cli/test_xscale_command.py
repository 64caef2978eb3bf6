"""The ``xscale`` command itself: one help listing every subcommand, help layout,
no Lightning warning, one ``main(argv) -> int`` per module, ``--quiet``."""

import importlib
import inspect
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from torchgeo_xscale import progress
from torchgeo_xscale.cli import COMMANDS, XScaleCLI, main

#: A command line per argparse subcommand whose --help shows defaults.
HELPS = [
    ['demo'],
    ['eval', 'knn'],
    ['eval', 'retrieval'],
    ['study'],
    ['segment'],
    ['scale-study'],
    ['embed'],
    ['weights', 'import'],
]


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['--help']) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith('    ')}
    assert {'fit', 'validate', 'test', 'predict', *COMMANDS} <= listed
    for _, line in COMMANDS.values():
        assert ' '.join(line.split()[:4]) in ' '.join(out.split())
    assert 'Runs the full optimization routine.' in out  # Lightning's own line


def test_no_command_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert 'scale-study' in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(['segmnet'])
    assert err.value.code == 2
    assert "invalid choice: 'segmnet'" in capsys.readouterr().err


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_every_command_has_one_main_signature(name: str) -> None:
    module = importlib.import_module(COMMANDS[name][0])
    signature = inspect.signature(module.main)
    assert list(signature.parameters) == ['argv']
    assert signature.parameters['argv'].default is None
    hints = inspect.get_annotations(module.main, eval_str=True)
    assert hints == {'argv': Sequence[str] | None, 'return': int}


@pytest.mark.parametrize('argv', HELPS, ids=' '.join)
def test_help_shows_defaults_and_no_markup(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as err:
        main([*argv, '--help'])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert '(default: ' in out
    if argv[0] not in ('demo', 'scale-study'):  # Lightning's own bar there
        assert '--quiet' in out
    for markup in ('``', ':class:', ':func:', ':mod:', '\n.. '):
        assert markup not in out, f'{markup!r} in xscale {" ".join(argv)} --help'


def test_lightning_subcommand_without_args_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a console script runs it: ``sys.argv`` holds the same arguments."""
    monkeypatch.setattr(sys, 'argv', ['xscale', 'fit', '--help'])
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit):
        warnings.simplefilter('always')
        main()
    assert not [w for w in caught if 'args parameter' in str(w.message)]
    out = capsys.readouterr().out
    assert out.startswith('usage: xscale') and 'default: ' in out
    assert XScaleCLI.subcommands().keys() == {'fit', 'validate', 'test', 'predict'}


def _retrieval(trained: dict[str, Any], out: Path, *extra: str) -> int:
    return main(
        [
            'eval',
            'retrieval',
            '--encoder',
            str(trained['cross_scale_mae']),
            '--data',
            str(trained['raster']),
            '--max-tiles',
            '4',
            '--scales',
            '0.5',
            '1',
            '--output',
            str(out),
            *extra,
        ]
    )


def test_eval_progress_and_quiet(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _retrieval(trained, tmp_path / 'a') == 0
    captured = capsys.readouterr()
    assert 'embed x0.5' in captured.err and 'batch' in captured.err
    assert 'embed x0.5' not in captured.out  # results only on stdout
    assert _retrieval(trained, tmp_path / 'b', '--quiet') == 0
    captured = capsys.readouterr()
    assert 'embed x' not in captured.err and 'top1' in captured.out
    assert progress.enabled()  # --quiet ends with the command


def test_step_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    """The bar of ``xscale study``'s runs (Trainers without their own bar)."""

    def fit() -> str:
        trainer = Trainer(
            max_steps=3,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            callbacks=[progress.StepProgressBar('run 1 of 2')],
        )
        trainer.fit(BoringModel())
        return capsys.readouterr().err

    assert '3/3' in fit()
    with progress.quiet():
        assert 'run 1 of 2' not in fit()
