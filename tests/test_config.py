"""The shipped configs read as plain data (config.py): the study's model is the demo's."""

from pathlib import Path

import pytest

from torchgeo_xscale.config import DEMO_CONFIG, init_args, load_config
from torchgeo_xscale.models import CrossScaleMAE
from torchgeo_xscale.study import StudyConfig, build_task, demo_model


def test_study_model_is_the_demo_config_model() -> None:
    args = init_args(DEMO_CONFIG)
    assert args['embed_dim'] == 128 and args['img_size'] == 64  # the shipped config
    model = demo_model()
    assert model == {
        k: v
        for k, v in args.items()
        if k not in ('base_lr', 'warmup_epochs', 'log_image_every_n_steps')
    }
    assert StudyConfig().model == model
    CrossScaleMAE(**model)  # every key is a model argument
    task = build_task('cross_scale_mae', StudyConfig())
    assert task.model.encoder.embed_dim == args['embed_dim']
    assert len(task.model.encoder.blocks) == args['depth']


def test_bad_configs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r'nope\.yaml not found'):
        load_config(tmp_path / 'nope.yaml')
    (tmp_path / 'list.yaml').write_text('- a\n- b\n')
    with pytest.raises(
        ValueError, match=r'list\.yaml is a YAML list; expected a mapping'
    ):
        load_config(tmp_path / 'list.yaml')
    (tmp_path / 'data.yaml').write_text('data:\n  init_args: {batch_size: 2}\n')
    assert init_args(tmp_path / 'data.yaml', 'data') == {'batch_size': 2}
    with pytest.raises(ValueError, match="has no 'model' section"):
        init_args(tmp_path / 'data.yaml')
