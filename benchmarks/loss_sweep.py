"""Screen of the L_cp forms, tau, the projection head and the views (docs/evaluation.md).

Each variant is Cross-Scale MAE with one group of options changed, trained and
evaluated exactly as in ``xscale study`` (same rasters, budget, seeds, evaluation);
the table of ``docs/evaluation.md`` ("Choosing the defaults") comes from::

    nice -n 19 python benchmarks/loss_sweep.py --group cp --seeds 0
    nice -n 19 python benchmarks/loss_sweep.py --group cc --seeds 0
    nice -n 19 python benchmarks/loss_sweep.py --group views --seeds 0
    # issue 18.2: tau x head and the crop views, at the study's budget of the docs
    nice -n 19 python benchmarks/loss_sweep.py --group tau_head --seeds 0 \
        --references cross_scale_mae --epochs 8 --steps-per-epoch 15 --batch-size 16

It prints the study summary (retrieval, reconstruction, final L_cp and collapse
signal per variant) and writes it to ``outputs/loss_sweep_<group>/study.md``.
Variants are named for what they change from the paper-literal form.
"""

import argparse
import logging
import sys
from typing import Any

from torchgeo_xscale.study import StudyConfig, run_study

#: Variant groups: name -> task options.
GROUPS: dict[str, dict[str, dict[str, Any]]] = {
    'cp': {
        'cp_stopgrad': {'cp_target': 'decoder_norm', 'cp_stop_grad': True},
        'cp_block': {'cp_target': 'block'},
        'cp_std': {'cp_target': 'standardized'},
        'cp_std_masked': {'cp_target': 'standardized', 'cp_positions': 'masked'},
        'cp_std_stopgrad': {'cp_target': 'standardized', 'cp_stop_grad': True},
    },
    'cc': {
        'tau_0.1': {'temperature': 0.1},
        'tau_0.2': {'temperature': 0.2},
        'tau_1.0': {'temperature': 1.0},
        'head_none': {'projection_dim': 0},
        'head_512_64': {'projection_hidden_dim': 512, 'projection_dim': 64},
    },
    'views': {'views_crop': {'view_mode': 'crop'}},
    # issue 18.2: tau x the projection head (hidden -> out), one run each; the
    # reference cross_scale_mae is tau 0.5 with the study's head 256 -> 128
    'tau_head': {
        f'tau_{tau:g}_head_{hidden}_{dim}': {
            'temperature': tau,
            'projection_hidden_dim': hidden,
            'projection_dim': dim,
        }
        for tau in (0.1, 0.2, 0.5)
        for hidden, dim in ((256, 128), (512, 64))
        if (tau, hidden, dim) != (0.5, 256, 128)
    }
    | {'views_crop': {'view_mode': 'crop'}},
}


def main() -> None:
    """Run one group of variants next to the references."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--group', choices=sorted(GROUPS), required=True)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--references', nargs='*', default=['xscale_paper'])
    parser.add_argument('--output', default=None)
    parser.add_argument(
        '--only', nargs='*', help='run only these variants of the group (default: all)'
    )
    parser.add_argument('--epochs', type=int, default=StudyConfig.epochs)
    parser.add_argument(
        '--steps-per-epoch', type=int, default=StudyConfig.steps_per_epoch
    )
    parser.add_argument('--batch-size', type=int, default=StudyConfig.batch_size)
    parser.add_argument('--data', default=StudyConfig.data)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    variants = GROUPS[args.group]
    if args.only:
        unknown = set(args.only) - set(variants)
        if unknown:
            parser.error(f'--only {sorted(unknown)}; expected some of {list(variants)}')
        variants = {k: v for k, v in variants.items() if k in args.only}
    config = StudyConfig(
        seeds=tuple(args.seeds),
        methods=(*args.references, *variants),
        variants=variants,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        data=args.data,
        output=args.output or f'outputs/loss_sweep_{args.group}',
        num_threads=args.threads,
        num_workers=0,
    )
    command = ' '.join(['python benchmarks/loss_sweep.py', *sys.argv[1:]])
    result = run_study(config, command=command)
    with open(result['summary']) as f:
        print(f.read())


if __name__ == '__main__':
    main()
