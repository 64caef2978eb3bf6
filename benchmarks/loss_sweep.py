"""Screen of the L_cp forms, tau, the projection head and the views (docs/evaluation.md).

Each variant is Cross-Scale MAE with one group of options changed, trained and
evaluated exactly as in ``xscale study`` (same rasters, budget, seeds, evaluation);
the table of ``docs/evaluation.md`` ("Choosing the defaults") comes from::

    nice -n 19 python benchmarks/loss_sweep.py --group cp --seeds 0
    nice -n 19 python benchmarks/loss_sweep.py --group cc --seeds 0
    nice -n 19 python benchmarks/loss_sweep.py --group views --seeds 0

It prints the study summary (retrieval, reconstruction, final L_cp and collapse
signal per variant) and writes it to ``outputs/loss_sweep_<group>/study.md``.
Variants are named for what they change from the paper-literal form.
"""

import argparse
import logging
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
}


def main() -> None:
    """Run one group of variants next to the references."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--group', choices=sorted(GROUPS), required=True)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--references', nargs='*', default=['xscale_paper'])
    parser.add_argument('--output', default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    variants = GROUPS[args.group]
    config = StudyConfig(
        seeds=tuple(args.seeds),
        methods=(*args.references, *variants),
        variants=variants,
        output=args.output or f'outputs/loss_sweep_{args.group}',
        num_threads=1,
    )
    result = run_study(config, command='benchmarks/loss_sweep.py')
    with open(result['summary']) as f:
        print(f.read())


if __name__ == '__main__':
    main()
