"""``xscale weights``: list, import and export pretrained weights.

A progress bar of the MD5 check of an import goes to stderr (``--quiet``: none).

* ``xscale weights list``: every registered entry, and whether its converted file is
  in the cache;
* ``xscale weights import FILE``: check a downloaded release (by MD5), convert it and
  cache it, so that ``crossscalemae_base_patch16(CrossScaleMAEBase16_Weights.FMOW_RGB)``
  works offline; ``--weights ENTRY --no-check-md5`` files a checkpoint of your own
  run of the authors' code under an entry;
* ``xscale weights export SRC OUT.pth``: turn one of our Lightning checkpoints (or any
  checkpoint the converters read) into a weights file the builders load by path.

Errors (a bad file, a full disk, a read-only folder) are one line naming the file.
"""

import argparse
import sys
from collections.abc import Sequence

from .. import progress
from ..checkpoints import export_weights, find_entry, md5sum, registered_entries
from ..checkpoints.files import read_metadata
from .common import HelpFormatter, add_quiet, command_parser

__all__ = ('cmd_export', 'cmd_import', 'cmd_list', 'main', 'parse_args')


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the arguments of ``xscale weights``.

    Args:
        argv: Arguments after ``xscale weights``.

    Returns:
        The namespace (``command`` is ``list``, ``import`` or ``export``).
    """
    parser = command_parser(
        'xscale weights', 'List, import and export pretrained weights.'
    )
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=text, description=text, formatter_class=HelpFormatter
        )
        add_quiet(p)
        return p

    cache_help = 'cache folder (default: torch hub dir/checkpoints/xscale)'
    p = command('list', 'registered entries and what is cached')
    p.add_argument('--model-dir', help=cache_help)
    p = command('import', 'check, convert and cache a downloaded release')
    p.add_argument('file', help="the authors' checkpoint (.pth) as downloaded")
    p.add_argument('--weights', help='entry name (default: found by the MD5 of FILE)')
    p.add_argument(
        '--no-check-md5',
        dest='check_md5',
        action='store_false',
        help="accept a file whose MD5 is not the release's (e.g. your own run of the "
        "authors' code); needs --weights",
    )
    p.add_argument('--model-dir', help=cache_help)
    p = command('export', 'checkpoint -> weights file for the builders')
    p.add_argument(
        'src', help='Lightning .ckpt of CrossScaleMAETask, or another checkpoint'
    )
    p.add_argument(
        'out',
        help='output weights file (.pth; a .pth.json copy of its metadata beside)',
    )
    return parser.parse_args(list(argv))


def cmd_list(model_dir: str | None) -> int:
    """Print every entry with its cache state.

    Args:
        model_dir: Cache folder override.

    Returns:
        0.
    """
    for entry in registered_entries():
        path = entry.cache_path(model_dir)
        if path.is_file():
            layout = read_metadata(path).get('layout', '?')
            size = path.stat().st_size / 2**20
            state = f'cached   {path} ({size:.1f} MiB, from {layout} layout)'
        else:
            state = f'missing  (download {entry.meta["release"]}, then `xscale weights import`)'
        print(f'{entry!s:45} {state}')
        print(
            f'{"":45} md5 {entry.meta["md5"]}  licence {entry.meta.get("license", "?")}'
        )
    return 0


def cmd_import(
    file: str, weights: str | None, model_dir: str | None, check_md5: bool = True
) -> int:
    """Import a downloaded release (or your own run of the authors' code) into the cache.

    Args:
        file: The checkpoint.
        weights: Entry name, or None to find it by MD5.
        model_dir: Cache folder override.
        check_md5: Refuse a file whose MD5 is not the entry's release.

    Returns:
        0 on success, 1 if the file matches no entry.
    """
    names = [str(e) for e in registered_entries()]
    if weights:
        entry = find_entry(weights)
        if entry is None or str(entry) != weights:
            print(
                f'error: --weights {weights!r} is not one of {names}', file=sys.stderr
            )
            return 1
    elif not check_md5:
        print(
            f'error: --no-check-md5 needs --weights ENTRY to file {file} under '
            f'(one of {names})',
            file=sys.stderr,
        )
        return 1
    else:
        digest = md5sum(file)
        entry = find_entry(digest)
        if entry is None:
            known = ', '.join(f'{e} ({e.meta["md5"]})' for e in registered_entries())
            print(
                f'error: {file} has md5 {digest}, which matches no released checkpoint '
                f"[{known}]; for your own run of the authors' code add --weights ENTRY "
                '--no-check-md5, or load the file itself by path '
                "(crossscalemae_base_patch16(weights='FILE')); for a checkpoint of ours "
                'use `xscale weights export`',
                file=sys.stderr,
            )
            return 1
    path = entry.import_file(file, model_dir, check_md5=check_md5)
    metadata = read_metadata(path)
    final = 'a final norm' if metadata.get('final_norm') else 'no final norm'
    print(
        f'{entry}: {metadata.get("layout")} layout, '
        f'{metadata.get("residual_norm_style")}-norm blocks, {final}'
    )
    if not metadata['source'].get('md5_is_release', True):
        print(
            f"  md5 {metadata['source']['md5']} is not the release's (--no-check-md5)"
        )
    if metadata.get('unexpected_keys'):
        print(f'  not mapped (unused): {len(metadata["unexpected_keys"])} keys')
    print(f'  cached at {path}')
    return 0


def cmd_export(src: str, out: str) -> int:
    """Export a checkpoint to a weights file.

    Args:
        src: The checkpoint.
        out: The weights file.

    Returns:
        0.
    """
    conv = export_weights(src, out)
    args = ', '.join(f'{k}={v}' for k, v in sorted(conv.model_args.items()))
    print(f'{src} ({conv.layout}) -> {out} [{args}]')
    if conv.unexpected_keys:
        print(f'  not exported: {len(conv.unexpected_keys)} non-encoder keys')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xscale weights``.

    Args:
        argv: Arguments after ``xscale weights`` (default ``sys.argv[2:]``).

    Returns:
        Exit status: 0 on success, 1 on a bad file or a failed write (the one-line
        message says which file and why).
    """
    args = parse_args(sys.argv[2:] if argv is None else argv)
    try:
        with progress.quiet(args.quiet):
            return _run(args)
    except (ValueError, OSError) as err:  # OSError: FileNotFoundError, a full disk...
        print(f'error: {err}', file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == 'list':
        return cmd_list(args.model_dir)
    if args.command == 'import':
        return cmd_import(args.file, args.weights, args.model_dir, args.check_md5)
    return cmd_export(args.src, args.out)
