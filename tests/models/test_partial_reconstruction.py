"""Partial reconstruction (``decoder_keep``) of Cross-Scale MAE (issue 19)."""

import csv
import importlib.util
import inspect
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from conftest import TINY_MODEL, step_without_host_sync, tiny_fit_args

from torchgeo_xscale.masks import (
    MaskInfo,
    build_mask_strategy,
    choose_targets,
    num_kept_targets,
    num_targets,
)
from torchgeo_xscale.models import CrossScaleMAE
from torchgeo_xscale.tasks import CrossScaleMAETask
from torchgeo_xscale.tasks.pretrain import MODEL_ARG_NAMES

TINY = {**TINY_MODEL, 'depth': 2}  # 32 px, patch 8: 16 patches, 4 visible, 12 masked
CPU = torch.device('cpu')
HAS_XFORMERS = importlib.util.find_spec('xformers') is not None


def views(b: int = 3) -> torch.Tensor:
    return torch.randn(b, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def decoder_inputs(model: CrossScaleMAE) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Record (tokens, grid positions) reaching the first decoder block."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    model.decoder_blocks[0].register_forward_pre_hook(
        lambda module, args: seen.append((args[0].detach(), args[1]))
    )
    return seen


def test_model_and_task_signatures_agree() -> None:
    model = inspect.signature(CrossScaleMAE.__init__).parameters
    task = inspect.signature(CrossScaleMAETask.__init__).parameters
    for name, param in model.items():
        name = MODEL_ARG_NAMES.get(name, name)  # in_chans (timm) -> in_channels
        assert name in task, name
        assert task[name].default == param.default, name
        assert task[name].annotation == param.annotation, name
    assert model['decoder_keep'].default == 1.0


def test_keep_one_is_full_decoding_with_no_extra_draw() -> None:
    torch.manual_seed(0)
    model = CrossScaleMAE(**TINY)
    torch.manual_seed(0)
    explicit = CrossScaleMAE(**TINY, decoder_keep=1.0)
    g1, g2 = gen(1), gen(1)
    masks = model.draw_masks(3, 2, CPU, g1)
    assert masks.ids_target is None  # every masked patch decoded, MAE's layout
    model.mask_strategy(6, 4, 4, 0.75, g2, CPU)
    assert torch.equal(g1.get_state(), g2.get_state())  # no extra random draw
    a, b = model(views(), generator=gen(2)), explicit(views(), generator=gen(2))
    assert a.decoded is None
    for key in ('re', 'cc', 'cp'):
        assert torch.equal(a.parts[key], b.parts[key])
    assert torch.equal(a.loss, b.loss)


def test_partial_path_keeping_every_target_equals_full_decoding() -> None:
    """The subset decoder is exact: keeping all masked patches gives MAE's decoder
    features at every patch (tokens in another order), and the same losses."""
    torch.manual_seed(0)
    model = CrossScaleMAE(**TINY)
    masks = model.draw_masks(3, 2, CPU, gen(1))
    everything = replace(masks, ids_target=masks.ids_restore.argsort(1)[:, 4:])
    images = views().transpose(0, 1).reshape(6, 3, 32, 32)
    latent = model.forward_encoder(images, masks)
    full = model.forward_decoder(latent, masks)
    part = model.forward_decoder(latent, everything)
    ids = model.decoded_ids(everything)
    assert part.shape == (6, 16, 32)
    expected = full.gather(1, ids.unsqueeze(-1).expand_as(part))
    assert torch.allclose(part, expected, atol=1e-5)
    ref = model(views(), masks=masks)
    out = model(views(), masks=everything)
    for key in ('re', 'cc', 'cp'):
        assert torch.allclose(out.parts[key], ref.parts[key], atol=1e-5), key


def test_decoder_sees_only_visible_and_kept_tokens() -> None:
    model = CrossScaleMAE(**TINY, decoder_keep=0.25)
    assert (model.num_targets, model.num_decoded_targets) == (12, 3)
    seen = decoder_inputs(model)
    out = model(views(), generator=gen(1))
    tokens, pos = seen[-1]
    assert tokens.shape == (6, 1 + 4 + 3, 32)  # CLS + visible + 3 of 12 masked
    assert out.decoded is not None and torch.all(out.decoded.sum(-1) == 3)
    assert torch.all(out.decoded <= out.mask)  # only masked patches are targets
    # the positions reaching the decoder are exactly the visible and kept patches
    flat = (pos[:, 1:, 0] * 4 + pos[:, 1:, 1]).sort(1).values
    decoded = (1 - out.mask + out.decoded).transpose(0, 1).reshape(6, 16)
    assert torch.equal(flat, decoded.nonzero()[:, 1].view(6, 7))
    # eval mode decodes every patch, 3 mask tokens per pass as in training
    model.eval()
    seen.clear()
    model(views(), generator=gen(1))
    assert [t.shape for t, _ in seen] == [(6, 1 + 4 + 3, 32)] * 4
    # the count is fixed by the configuration, whatever the masks
    assert num_kept_targets(0.5, 12) == 6 and num_kept_targets(1e-3, 12) == 1
    with pytest.raises(ValueError, match='decoder_keep=0'):
        CrossScaleMAE(**TINY, decoder_keep=0.0)
    with pytest.raises(ValueError, match=r'decoder_keep=1\.5'):
        CrossScaleMAETask(**TINY, decoder_keep=1.5)


def test_eval_decodes_every_patch_in_groups_of_the_trained_size() -> None:
    """Outside training a decoder_keep < 1 model decodes all masked patches, K per
    pass with every visible token (the context it was trained in): each group's
    features equal a partial decoding of that group; keep 1 is one full pass."""
    torch.manual_seed(0)
    model = CrossScaleMAE(**TINY, decoder_keep=0.4).eval()  # K = 5 of 12 masked
    assert model.num_decoded_targets == 5
    masks = model.draw_masks(3, 2, CPU, gen(1))
    images = views().transpose(0, 1).reshape(6, 3, 32, 32)
    latent = model.forward_encoder(images, masks)
    seen = decoder_inputs(model)
    out = model.forward_decoder(latent, masks)
    assert out.shape == (6, 16, 32)
    assert [t.shape[1] for t, _ in seen] == [1 + 4 + 5] * 3  # groups 0-4, 5-9, 7-11
    masked = masks.mask.float().argsort(dim=1, descending=True, stable=True)[:, :12]
    for ids in (masked[:, 0:5], masked[:, 7:12]):
        group = replace(masks, ids_target=ids)
        part = model.forward_decoder(latent, group)[:, 4:]  # the group's tokens
        got = out.gather(1, ids.unsqueeze(-1).expand(-1, -1, 32))
        assert torch.allclose(got, part, atol=1e-5)
    visible = model.forward_decoder(latent, replace(masks, ids_target=masked[:, 7:]))
    keep = masks.ids_keep.unsqueeze(-1).expand(-1, -1, 32)
    assert torch.allclose(out.gather(1, keep), visible[:, :4], atol=1e-5)
    assert model.training is False and model.grouped_decoding(masks)
    model.train()
    assert not model.grouped_decoding(masks)
    full = CrossScaleMAE(**TINY).eval()
    assert not full.grouped_decoding(masks)


def test_l_re_counts_only_the_kept_targets() -> None:
    model = CrossScaleMAE(**TINY, decoder_keep=0.25, loss_cc=False, loss_cp=False)
    grads: list[torch.Tensor] = []

    def keep_grad(module, args, output) -> None:
        output.register_hook(grads.append)

    model.decoder_pred.register_forward_hook(keep_grad)
    out = model(views(), generator=gen(1))
    out.loss.backward()
    assert grads[0].shape == (6, 3, 192)  # pixels predicted for kept targets only
    assert bool((grads[0].abs().sum(-1) > 0).all())
    d = out.decoded.unsqueeze(-1)
    expected = ((out.pred - out.target) ** 2 * d).sum() / (d.sum() * 192)
    assert torch.allclose(out.parts['re'], expected, atol=1e-6)
    assert torch.all(out.pred[out.decoded == 0] == 0)


@pytest.mark.parametrize('view_masks', ['independent', 'consistent'])
def test_l_cp_counts_the_patches_both_views_decode(view_masks: str) -> None:
    """L_cp against a per-patch loop: token i of the low view vs token i of the full
    view, at the patches both decode, visible-visible pairs weighted K / T."""
    torch.manual_seed(0)
    # the literal L_cp (decoder_norm features, every position), whose per-token
    # error is plain MSE; the default's positions and normalisation are checked
    # against full decoding above
    model = CrossScaleMAE(
        **TINY,
        decoder_keep=0.25,
        view_masks=view_masks,
        cp_target='decoder_norm',
        cp_positions='all',
    )
    masks = model.draw_masks(3, 2, CPU, gen(1))
    out = model(views(), masks=masks)
    images = views().transpose(0, 1).reshape(6, 3, 32, 32)
    feats = model.forward_decoder(model.forward_encoder(images, masks), masks)
    ids = model.decoded_ids(masks)
    per_sample = []
    for i in range(3):
        high = dict(zip(ids[i].tolist(), feats[i]))
        num = den = 0.0
        for j, p in enumerate(ids[3 + i].tolist()):
            if p not in high:
                continue
            both_visible = masks.mask[i, p] == 0 and masks.mask[3 + i, p] == 0
            w = 3 / 12 if both_visible else 1.0
            err = (model.predictor(feats[3 + i, j]) - high[p]).pow(2).mean()
            num, den = num + w * err, den + w
        per_sample.append(num / den)
    assert torch.allclose(out.parts['cp'], torch.stack(per_sample).mean(), atol=1e-6)
    if view_masks == 'consistent':  # the same targets kept in both views
        assert torch.equal(masks.ids_target[:3], masks.ids_target[3:])


def test_choose_targets_keeps_a_shared_subset_of_each_views_targets() -> None:
    strategy = build_mask_strategy('random')
    masks = strategy(2 * 400, 8, 8, 0.75, gen(0), CPU)  # 400 samples x 2 views
    ids = choose_targets(masks, 2, 12, gen(1))
    assert ids.shape == (800, 12)
    assert bool(masks.mask.gather(1, ids).all())  # all kept patches are masked
    assert bool((ids.sort(1).values.diff(1) > 0).all())  # no patch twice
    # each view's subset is uniform over its targets: every patch kept equally often
    kept = torch.zeros(800, 64).scatter(1, ids, 1.0)
    rate = kept.sum(0) / masks.mask.sum(0)
    assert float(rate.min()) > 0.15 and float(rate.max()) < 0.35  # 12 / 48 = 0.25
    # shared random numbers: targets of both views are mostly kept in both
    both = masks.mask[:400] * masks.mask[400:]
    in_both = kept[:400] * kept[400:]
    kept_shared = (in_both.sum() / (kept[:400] * both).sum()).item()
    assert kept_shared > 0.6  # independent draws would give about 0.25


@pytest.mark.parametrize(
    ('name', 'options', 'expected'),
    [
        ('random', {}, 48),
        ('colormae-red', {'bank_size': 8, 'pattern_size': 8}, 48),
        ('lomar', {'num_windows': 2, 'window_size': 4}, 2 * (16 - 3)),
        ('easy-first', {'drop_hardest': 0.2}, 48 - 9),
        (
            'easy-first',
            {'base': 'lomar', 'base_options': {'num_windows': 2, 'window_size': 4}},
            26 - 5,
        ),
    ],
)
def test_num_targets_is_the_count_every_draw_has(
    name: str, options: dict, expected: int, tmp_path: Path
) -> None:
    if name.startswith('colormae'):
        options = {**options, 'cache_dir': str(tmp_path)}
    strategy = build_mask_strategy(name, **options)
    assert num_targets(strategy, 8, 8, 0.75) == expected
    for seed in range(3):
        info = strategy(4, 8, 8, 0.75, gen(seed), CPU)
        targets = info.mask > 0
        if info.loss_weight is not None:
            targets &= info.loss_weight > 0
        assert torch.equal(targets.sum(1), torch.full((4,), expected))


def test_easy_first_zero_weight_targets_never_reach_the_decoder() -> None:
    model = CrossScaleMAE(**TINY, mask_strategy='easy-first', decoder_keep=1.0)
    assert (model.num_targets, model.num_decoded_targets) == (10, 10)  # 12 - 2
    seen = decoder_inputs(model)
    masks = model.draw_masks(3, 2, CPU, gen(1))
    out = model(views(), masks=masks)
    assert torch.isfinite(out.loss)
    tokens, pos = seen[-1]
    assert tokens.shape == (6, 1 + 4 + 10, 32)  # the 2 hardest are not computed
    flat = pos[:, 1:, 0] * 4 + pos[:, 1:, 1]
    dropped = (masks.mask > 0) & (masks.loss_weight == 0)
    assert torch.equal(dropped.sum(1), torch.full((6,), 2))
    assert not bool(dropped.gather(1, flat).any())


def test_lomar_group_masks_with_partial_reconstruction() -> None:
    """LoMaR (window-local encoder): the decoder gets the visible patches and half of
    the window targets; patches outside the windows are never decoded."""
    model = CrossScaleMAE(
        **TINY, mask_strategy='lomar', decoder_keep=0.5,
        mask_options={'num_windows': 2, 'window_size': 2},
    )  # fmt: skip
    assert (model.num_targets, model.num_decoded_targets) == (6, 3)  # 2 x (4 - 1)
    seen = decoder_inputs(model)
    masks = model.draw_masks(3, 2, CPU, gen(1))
    assert masks.groups is not None
    out = model(views(), masks=masks)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert seen[-1][0].shape == (6, 1 + 2 + 3, 32)
    decoded = out.decoded.transpose(0, 1).reshape(6, 16)
    assert bool((masks.loss_weight[decoded > 0] == 1).all())  # inside the windows


def _ddp_worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group(
        'gloo', init_method=f'file://{init_file}', rank=rank, world_size=world
    )
    try:
        torch.manual_seed(0)
        model = CrossScaleMAE(**TINY, decoder_keep=0.25)
        x = torch.randn(8, 2, 3, 32, 32, generator=gen(1))
        masks = model.draw_masks(8, 2, CPU, gen(2))
        rows = torch.cat([torch.arange(4) + 4 * rank, torch.arange(4) + 8 + 4 * rank])
        local = MaskInfo(
            *(t[rows] for t in (masks.ids_keep, masks.ids_restore, masks.mask)),
            ids_target=masks.ids_target[rows],
        )
        out = model(x[4 * rank : 4 * rank + 4], masks=local)
        out.loss.backward()
        losses = [torch.empty(()) for _ in range(world)]
        dist.all_gather(losses, out.loss.detach())
        grad = model.decoder_blocks[0].attn.qkv.weight.grad.clone()
        dist.all_reduce(grad)
        torch.save(
            {'loss': torch.stack(losses).mean(), 'grad': grad / world},
            f'{init_file}.{rank}',
        )
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / 'pg')), nprocs=2, join=True)
    got = torch.load(str(tmp_path / 'pg') + '.0')
    torch.manual_seed(0)
    model = CrossScaleMAE(**TINY, decoder_keep=0.25)
    x = torch.randn(8, 2, 3, 32, 32, generator=gen(1))
    out = model(x, masks=model.draw_masks(8, 2, CPU, gen(2)))
    out.loss.backward()
    assert got['loss'] == pytest.approx(out.loss.item(), rel=1e-5)
    expected = model.decoder_blocks[0].attn.qkv.weight.grad
    assert torch.allclose(got['grad'], expected, atol=1e-6, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_partial_cuda_step_has_no_host_device_sync() -> None:
    model = CrossScaleMAE(**TINY, decoder_keep=0.25, mask_strategy='easy-first').cuda()
    x = views().cuda()
    assert torch.isfinite(step_without_host_sync(model, x))


@pytest.mark.slow
@pytest.mark.parametrize('name', ['sdpa', 'local'])
def test_partial_step_compiles_as_one_graph(name: str) -> None:
    opts = {'window_size': 2, 'grid_size': 4} if name == 'local' else None
    torch.manual_seed(0)
    model = CrossScaleMAE(**TINY, decoder_keep=0.25, attention=name, attention_options=opts)  # fmt: skip
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True, dynamic=False)
    try:
        torch.manual_seed(3)
        ref = model(views(2))
        torch.manual_seed(3)
        out = compiled(views(2))
        assert torch.allclose(out.loss, ref.loss, atol=1e-5)
        out.loss.backward()
    finally:  # other tests compile the same code with other shapes
        torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize(
    ('name', 'opts'),
    [
        ('sdpa', '{}'),
        ('eager', '{}'),
        ('fourier', '{}'),
        ('local', '{window_size: 2, grid_size: 4}'),
        pytest.param('xformers', '{}', marks=pytest.mark.cuda),
    ],
)
def test_backend_trains_with_partial_reconstruction(
    tmp_path: Path, make_geotiff, name: str, opts: str
) -> None:
    if name == 'xformers' and not (torch.cuda.is_available() and HAS_XFORMERS):
        pytest.skip('needs CUDA and xformers')
    from torchgeo_xscale.cli import lightning_cli

    make_geotiff(tmp_path / 'data' / 'a.tif', width=80, height=80)
    args = tiny_fit_args(
        tmp_path / 'data', tmp_path / 'run', TINY,
        '--model.attention', name, '--model.attention_options', opts,
        '--model.decoder_keep', '0.25',
    )  # fmt: skip
    if name == 'xformers':
        args += ['--trainer.accelerator', 'gpu', '--trainer.precision', 'bf16-mixed']
    cli = lightning_cli(args)
    assert cli.trainer.global_step == 2
    assert cli.model.model.num_decoded_targets == 3
    metrics = cli.trainer.callback_metrics
    assert all(torch.isfinite(metrics[f'train_loss_{k}']) for k in ('re', 'cc', 'cp'))


def step_losses(root: Path) -> dict[int, float]:
    losses: dict[int, float] = {}
    for metrics in sorted(root.rglob('metrics.csv')):
        with open(metrics) as f:
            for row in csv.DictReader(f):
                if row.get('train_loss_step'):
                    losses[int(row['step'])] = float(row['train_loss_step'])
    return losses


@pytest.mark.slow
def test_resume_is_exact_with_partial_reconstruction(
    tmp_path: Path, make_geotiff
) -> None:
    """The kept targets come from the step-seeded mask generator: a resumed run
    decodes what the uninterrupted run decoded. (A raster of exactly one tile, so
    the comparison does not depend on the tile sampler's resume.)"""
    from torchgeo_xscale.cli import main

    make_geotiff(tmp_path / 'rasters' / 'a.tif', width=32, height=32)
    config = {
        'seed_everything': 3,
        'model': {
            'class_path': 'torchgeo_xscale.tasks.CrossScaleMAETask',
            'init_args': {**TINY, 'decoder_keep': 0.25, 'warmup_epochs': 1},
        },
        'data': {
            'class_path': 'torchgeo_xscale.datamodules.GeoTIFFDataModule',
            'init_args': {
                'paths': str(tmp_path / 'rasters'), 'img_size': 32, 'patch_size': 32,
                'batch_size': 4, 'length': 8, 'stats_cache': None, 'num_workers': 1,
            },
        },
        'trainer': {
            'accelerator': 'cpu', 'devices': 1, 'max_epochs': 2, 'log_every_n_steps': 1,
            'limit_val_batches': 0, 'enable_progress_bar': False,
            'logger': {'class_path': 'lightning.pytorch.loggers.CSVLogger',
                       'init_args': {'save_dir': str(tmp_path)}},
            'callbacks': [{'class_path': 'lightning.pytorch.callbacks.ModelCheckpoint',
                           'init_args': {'save_top_k': -1}}],
        },
    }  # fmt: skip
    path = tmp_path / 'config.yaml'
    path.write_text(yaml.safe_dump(config))
    root = tmp_path / 'full'
    main(['fit', '--config', str(path), '--trainer.default_root_dir', str(root)])
    reference = step_losses(tmp_path / 'lightning_logs' / 'version_0')
    assert sorted(reference) == [0, 1, 2, 3]
    first = next(tmp_path.rglob('epoch=0-step=2.ckpt'))
    args = ['fit', '--config', str(path), '--trainer.default_root_dir', str(root)]
    main([*args, '--ckpt_path', str(first)])
    resumed = step_losses(tmp_path / 'lightning_logs' / 'version_1')
    assert sorted(resumed) == [2, 3]
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


def test_instance_normalize_counts_only_valid_tokens() -> None:
    from torchgeo_xscale.models.cross_scale_mae import instance_normalize

    x = torch.randn(2, 6, 4)
    valid = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 1, 0, 1, 1]]).bool()
    out = instance_normalize(x, valid)
    for i in range(2):
        sub = x[i, valid[i]]
        expected = (sub - sub.mean(0)) / (sub.var(0, unbiased=False) + 1e-6).sqrt()
        assert torch.allclose(out[i, valid[i]], expected, atol=1e-5)
    assert torch.allclose(
        instance_normalize(x), instance_normalize(x, torch.ones(2, 6).bool()), atol=1e-5
    )


def test_batch_centered_target_with_partial_decoding_is_refused() -> None:
    with pytest.raises(ValueError, match=r"decoder_keep=0\.5 with cp_target='batch_"):
        CrossScaleMAE(**TINY, decoder_keep=0.5, cp_target='batch_centered')
