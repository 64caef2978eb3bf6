"""CrossScaleMAE: L_cp options (targets, positions, collapse signal, paper-literal);
constructor values that would silently train nothing are refused."""

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY_MODEL

from torchgeo_xscale.losses import cross_prediction_loss
from torchgeo_xscale.models import CrossScaleMAE
from torchgeo_xscale.models.cross_scale_mae import PAPER_LITERAL, feature_spread
from torchgeo_xscale.tasks import CrossScaleMAETask
from torchgeo_xscale.tasks.pretrain import COLLAPSE_FLOOR, MODEL_ARG_NAMES

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'


def test_feature_spread_is_zero_for_collapsed_features() -> None:
    collapsed = torch.randn(1, 1, 8).expand(3, 5, 8)
    assert float(feature_spread(collapsed)) == pytest.approx(0.0, abs=1e-6)
    free = torch.randn(3, 5, 8)
    expected = free.reshape(-1, 8).std(0).mean()
    assert torch.isclose(feature_spread(free), expected)
    # token weights: only the counted tokens' spread
    weight = torch.zeros(3, 5)
    weight[:, :2] = 1
    assert torch.isclose(
        feature_spread(free, weight), free[:, :2].reshape(-1, 8).std(0).mean()
    )


def test_cross_prediction_loss_token_weight() -> None:
    pred, target = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    tw = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    per_token = (pred - target).pow(2).mean(-1)
    expected = ((per_token[0, 0] + per_token[0, 2]) / 2 + per_token[1, 3]) / 2
    assert torch.isclose(cross_prediction_loss(pred, target, None, tw), expected)


def test_standardized_cp_is_two_minus_two_correlation() -> None:
    model = CrossScaleMAE(**TINY_MODEL, cp_target='standardized')
    b, n, d = 2, 16, TINY_MODEL['decoder_embed_dim']
    feats = torch.randn(2 * b, n, d)
    loss, stats = model.loss_cp(feats, b, torch.ones(b))
    pred = model.predictor(feats[b:])
    corr = F.cosine_similarity(
        pred - pred.mean(-1, keepdim=True),
        feats[:b] - feats[:b].mean(-1, keepdim=True),
        dim=-1,
    )
    assert torch.isclose(loss, (2 - 2 * corr).mean(), atol=1e-4)
    # scale-free: rescaling the features changes nothing in the target's spread
    _, scaled = model.loss_cp(feats * 0.5, b, torch.ones(b))
    assert torch.isclose(scaled['cp_target_std'], stats['cp_target_std'], atol=1e-3)
    assert set(stats) == {'cp_target_std', 'cp_pred_std'}


def test_instance_norm_target_ignores_shared_components_and_scale() -> None:
    model = CrossScaleMAE(**TINY_MODEL, cp_target='instance_norm')
    b, n, d = 2, 16, TINY_MODEL['decoder_embed_dim']
    feats = torch.randn(2 * b, n, d)
    loss, _ = model.loss_cp(feats, b, torch.ones(b))
    moved = feats.clone()
    moved[:b] = 3 * moved[:b] + 50 * torch.randn(b, 1, d)  # scale + shared vector
    assert torch.isclose(model.loss_cp(moved, b, torch.ones(b))[0], loss, atol=1e-4)
    # the literal form is fooled by a shared component: its loss changes
    literal = CrossScaleMAE(**TINY_MODEL, **PAPER_LITERAL)
    literal.load_state_dict(model.state_dict())
    assert not torch.isclose(
        literal.loss_cp(moved, b, torch.ones(b))[0],
        literal.loss_cp(feats, b, torch.ones(b))[0],
    )


def test_batch_centered_target_removes_what_samples_share() -> None:
    model = CrossScaleMAE(**TINY_MODEL, cp_target='batch_centered')
    b, n, d = 3, 16, TINY_MODEL['decoder_embed_dim']
    feats = torch.randn(2 * b, n, d)
    loss, _ = model.loss_cp(feats, b, torch.ones(b))
    moved = feats.clone()  # a positional pattern shared by the samples, and scale
    moved[:b] = 2 * moved[:b] + 30 * torch.randn(1, n, d)
    assert torch.isclose(model.loss_cp(moved, b, torch.ones(b))[0], loss, atol=1e-4)
    # a sample with weight 0 does not enter the statistics
    w = torch.tensor([1.0, 1.0, 0.0])
    junk = feats.clone()
    junk[2] = junk[b + 2] = 1e3
    assert torch.isclose(
        model.loss_cp(junk, b, w)[0], model.loss_cp(feats, b, w)[0], atol=1e-4
    )


def test_decoder_norm_target_collapses_with_the_norm() -> None:
    """The literal target is decoder_norm(x): with its weight at 0 every token's
    target is the same vector (the bias), and the collapse signal reads 0."""
    model = CrossScaleMAE(**TINY_MODEL, **PAPER_LITERAL)
    with torch.no_grad():
        model.decoder_norm.weight.zero_()
    out = model(torch.randn(3, 2, 3, 32, 32))
    assert float(out.stats['cp_target_std']) == pytest.approx(0.0, abs=1e-6)
    free = CrossScaleMAE(**TINY_MODEL, cp_target='instance_norm')
    with torch.no_grad():
        free.decoder_norm.weight.zero_()
    spread = float(free(torch.randn(3, 2, 3, 32, 32)).stats['cp_target_std'])
    assert spread > COLLAPSE_FLOOR


def test_masked_positions_count_only_low_view_masked_tokens() -> None:
    torch.manual_seed(0)
    model = CrossScaleMAE(**TINY_MODEL, cp_positions='masked', loss_cc=False)
    views = torch.randn(2, 2, 3, 32, 32)
    masks = model.draw_masks(2, 2, views.device, torch.Generator().manual_seed(1))
    out = model(views, masks=masks)
    images = views.transpose(0, 1).reshape(4, 3, 32, 32)
    with torch.no_grad():
        block = model.forward_decoder(
            model.forward_encoder(images, masks), masks, prenorm=True
        )
        expected, _ = model.loss_cp(block, 2, torch.ones(2), masks.mask[2:])
        everywhere, _ = model.loss_cp(block, 2, torch.ones(2))
    assert torch.isclose(out.parts['cp'], expected)
    assert not torch.isclose(out.parts['cp'], everywhere)


def test_bad_cp_options() -> None:
    with pytest.raises(ValueError, match='cp_target'):
        CrossScaleMAE(**TINY_MODEL, cp_target='nope')
    with pytest.raises(ValueError, match='cp_positions'):
        CrossScaleMAE(**TINY_MODEL, cp_positions='nowhere')


def test_task_repeats_the_model_signature() -> None:
    """Every model argument is a task argument with the same default; the band
    count is named as in TorchGeo's tasks (in_channels), the model's as timm's."""
    model = inspect.signature(CrossScaleMAE.__init__).parameters
    task = inspect.signature(CrossScaleMAETask.__init__).parameters
    assert MODEL_ARG_NAMES == {'in_chans': 'in_channels'}
    for name, param in model.items():
        name_in_task = MODEL_ARG_NAMES.get(name, name)
        assert name_in_task in task, name
        assert task[name_in_task].default == param.default, name


def test_paper_literal_configs_set_the_literal_options() -> None:
    literal = yaml.safe_load(
        (CONFIGS / 'pretrain' / 'xscale_paper_literal_tiny.yaml').read_text()
    )['model']['init_args']
    default = yaml.safe_load(
        (CONFIGS / 'pretrain' / 'xscale_tiny_geotiff.yaml').read_text()
    )['model']['init_args']
    for key, value in PAPER_LITERAL.items():
        value = list(value) if isinstance(value, tuple) else value
        assert literal[key] == value, key
    # one config away: the same model otherwise
    sizes = {k: v for k, v in default.items() if k not in PAPER_LITERAL}
    assert {k: literal[k] for k in sizes} == sizes
    for name in (
        'xscale_vitb_fmow',
        'xscale_vitl_fmow',
        'xscale_vitb_fmow_public_code',
    ):
        args = yaml.safe_load((CONFIGS / 'paper' / f'{name}.yaml').read_text())
        args = args['model']['init_args']
        assert (args['cp_target'], args['cp_positions'], args['cp_stop_grad']) == (
            'decoder_norm',
            'all',
            False,
        ), name


def test_mask_ratio_zero_with_reconstruction_loss_is_refused() -> None:
    # Today's failure: nothing masked, so L_re (on masked patches only) is exactly 0.
    with pytest.raises(ValueError, match=r'^mask_ratio=0 with loss_re=True: .*0 <'):
        CrossScaleMAE(**TINY_MODEL, mask_ratio=0.0)
    with pytest.raises(ValueError, match=r'mask_ratio=0 with loss_re=True'):
        CrossScaleMAETask(**TINY_MODEL, mask_ratio=0)


@pytest.mark.parametrize('ratio', [-0.25, 1.0, 1.5])
def test_mask_ratio_outside_unit_interval_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match=rf'^mask_ratio={ratio}; expected 0 <= '):
        CrossScaleMAE(**TINY_MODEL, mask_ratio=ratio)


def test_mask_ratio_zero_without_reconstruction_loss_trains() -> None:
    """Without L_re, unmasked views are legitimate (contrastive losses only)."""
    model = CrossScaleMAE(**TINY_MODEL, mask_ratio=0.0, loss_re=False)
    out = model(torch.randn(2, 2, 3, 32, 32))
    assert torch.isfinite(out.loss) and out.loss > 0
    assert 're' not in out.parts
