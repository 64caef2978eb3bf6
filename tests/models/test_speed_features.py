from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, step_without_host_sync, tiny_fit_args

from torchgeo_xscale.models import CrossScaleMAE

TINY = {**TINY_MODEL, 'depth': 2}
BACKENDS = [
    ('sdpa', None),
    ('eager', None),
    ('fourier', None),
    ('local', {'window_size': 2, 'grid_size': 4, 'rel_pos_bias': True}),
]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def views(b: int = 2, device: str = 'cpu') -> torch.Tensor:
    return torch.randn(b, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(
        device
    )


@pytest.mark.parametrize(('name', 'opts'), BACKENDS)
def test_bf16_autocast_forward_backward_on_cpu(name: str, opts: dict | None) -> None:
    torch.manual_seed(0)
    model = CrossScaleMAE(**TINY, attention=name, attention_options=opts)
    g = torch.Generator().manual_seed(1)
    ref = model(views(), generator=g).loss
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(views(), generator=torch.Generator().manual_seed(1))
    assert out.pred is not None and out.pred.dtype == torch.bfloat16  # ran in bf16
    assert out.loss.dtype == torch.float32  # losses in float32
    assert torch.isfinite(out.loss)
    assert torch.allclose(out.loss, ref, rtol=0.05)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(('name', 'opts'), BACKENDS)
def test_grad_checkpointing_gives_the_same_gradients(
    name: str, opts: dict | None
) -> None:
    torch.manual_seed(0)
    plain = CrossScaleMAE(**TINY, attention=name, attention_options=opts)
    ckpt = CrossScaleMAE(
        **TINY, attention=name, attention_options=opts, grad_checkpointing=True
    )
    ckpt.load_state_dict(plain.state_dict())
    for model in (plain, ckpt):
        model(views(), generator=torch.Generator().manual_seed(1)).loss.backward()
    for (key, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), key


def test_task_compile_option_and_fused_optimizer() -> None:
    from lightning.pytorch import Trainer

    from torchgeo_xscale.tasks import CrossScaleMAETask

    task = CrossScaleMAETask(**TINY, compile=True, lr=1e-3, warmup_epochs=0)
    # LightningModule.compile wraps forward lazily; nothing is compiled until called.
    assert task.model._compiled_call_impl is not None
    assert CrossScaleMAETask(**TINY).model._compiled_call_impl is None
    task.trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False)
    optimizer = task.configure_optimizers()['optimizer']
    assert all(group['fused'] for group in optimizer.param_groups)


def test_fused_adamw_steps_on_cpu() -> None:
    # CrossScaleMAETask uses fused AdamW on CUDA and CPU
    model = CrossScaleMAE(**TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    before = model.encoder.patch_embed.proj.weight.detach().clone()
    model(views()).loss.backward()
    opt.step()
    assert not torch.equal(before, model.encoder.patch_embed.proj.weight)


@pytest.mark.slow
@pytest.mark.parametrize(('name', 'opts'), BACKENDS)
def test_whole_step_compiles_as_one_graph(name: str, opts: dict | None) -> None:
    # fullgraph=True fails on any graph break, e.g. a .item() or data-dependent branch:
    # the forward has no host-device synchronisation.
    torch.manual_seed(0)
    model = CrossScaleMAE(**TINY, attention=name, attention_options=opts)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    torch.manual_seed(3)
    ref = model(views())
    torch.manual_seed(3)
    out = compiled(views())
    assert torch.allclose(out.loss, ref.loss, atol=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.slow
def test_bf16_mixed_training_through_lightning(tmp_path: Path, make_geotiff) -> None:
    from torchgeo_xscale.cli import lightning_cli

    make_geotiff(tmp_path / 'data' / 'a.tif', width=80, height=80)
    args = tiny_fit_args(
        tmp_path / 'data',
        tmp_path / 'run',
        TINY,
        '--model.attention',
        'fourier',
        '--model.grad_checkpointing',
        'true',
        '--trainer.precision',
        'bf16-mixed',
    )
    cli = lightning_cli(args)
    assert cli.trainer.global_step == 2
    assert cli.trainer.precision == 'bf16-mixed'
    assert torch.isfinite(cli.trainer.callback_metrics['train_loss'])


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize(('name', 'opts'), BACKENDS)
def test_cuda_step_has_no_host_device_sync(name: str, opts: dict | None) -> None:
    model = CrossScaleMAE(**TINY, attention=name, attention_options=opts).cuda()
    x = views(device='cuda')
    assert torch.isfinite(step_without_host_sync(model, x))
