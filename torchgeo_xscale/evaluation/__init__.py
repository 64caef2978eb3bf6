"""Evaluation of representations across scales, from Python or ``xscale eval``.

One entry per protocol, each writing CSV + Markdown + a plot:

* :func:`run_knn` (:mod:`.knn`): kNN classification vs scale (Scale-MAE protocol);
* :func:`run_linear_probe` (:mod:`.linear_probe`): linear probe vs scale;
* :func:`run_reconstruction` (:mod:`.reconstruction`): multi-scale reconstruction
  MSE/SSIM on GeoTIFF tiles;
* :func:`run_retrieval` (:mod:`.retrieval`): label-free cross-scale retrieval on
  GeoTIFF tiles;
* :func:`run_scale_transfer` (:mod:`.scale_transfer`): kNN or linear probe fit on one
  scale level of a levelled dataset (RSSCN7), tested on every level.

The equal-budget pretraining study, which trains the models it scores, is
:mod:`torchgeo_xscale.study` (evaluation imports no task, CLI or demo).
Encoders come from :func:`load_encoder` (:mod:`.encoders`).
"""

from .datasets import (
    CLASSIFICATION_DATASETS,
    ClassFolder,
    TileSet,
    build_classification_dataset,
    load_geotiff_tiles,
    prepare_classification,
)
from .encoders import FeatureEncoder, load_encoder
from .knn import DEFAULT_SCALES, embed_at_scale, evaluate_knn, knn_predict, run_knn
from .linear_probe import evaluate_linear_probe, run_linear_probe, train_linear_probe
from .reconstruction import (
    MAEReconstructor,
    evaluate_reconstruction,
    load_reconstructor,
    reconstruction_metrics,
    run_reconstruction,
)
from .retrieval import evaluate_retrieval, retrieval_scores, run_retrieval
from .scale_transfer import evaluate_scale_transfer, run_scale_transfer

__all__ = (
    'CLASSIFICATION_DATASETS',
    'DEFAULT_SCALES',
    'ClassFolder',
    'FeatureEncoder',
    'MAEReconstructor',
    'TileSet',
    'build_classification_dataset',
    'embed_at_scale',
    'evaluate_knn',
    'evaluate_linear_probe',
    'evaluate_reconstruction',
    'evaluate_retrieval',
    'evaluate_scale_transfer',
    'knn_predict',
    'load_encoder',
    'load_geotiff_tiles',
    'load_reconstructor',
    'prepare_classification',
    'reconstruction_metrics',
    'retrieval_scores',
    'run_knn',
    'run_linear_probe',
    'run_reconstruction',
    'run_retrieval',
    'run_scale_transfer',
    'train_linear_probe',
)
