import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from torchgeo_xscale.losses import (
    cross_prediction_loss,
    gather_with_grad,
    info_nce,
    patchify,
    reconstruction_loss,
    unpatchify,
)


def brute_force_nt_xent(
    z_a: torch.Tensor, z_b: torch.Tensor, tau: float
) -> torch.Tensor:
    """SimCLR NT-Xent written out loop by loop."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=-1)
    n = z_a.shape[0]
    losses = []
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = torch.stack([z[i] @ z[j] / tau for j in range(2 * n) if j != i])
        others = [j for j in range(2 * n) if j != i]
        losses.append(-(sims[others.index(pos)] - torch.logsumexp(sims, 0)))
    return torch.stack(losses).mean()


def test_info_nce_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert torch.allclose(
        info_nce(z_a, z_b, 0.5), brute_force_nt_xent(z_a, z_b, 0.5), atol=1e-5
    )


def test_info_nce_weight_zero_sample_is_not_used() -> None:
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    z_a.requires_grad_(True)
    w = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    loss = info_nce(z_a, z_b, 0.2, weight=w)
    keep = w > 0
    ref = brute_force_nt_xent(z_a[keep], z_b[keep], 0.2)
    assert torch.allclose(loss, ref, atol=1e-5)
    loss.backward()
    assert torch.isfinite(z_a.grad).all()
    assert z_a.grad[2].abs().sum() == 0


def test_info_nce_positives_only() -> None:
    z = torch.randn(4, 8)
    assert info_nce(z, z, negatives=False).abs() < 1e-6
    assert info_nce(z, -z, negatives=False) == pytest.approx(2.0, abs=1e-5)


def test_gather_without_process_group_is_identity() -> None:
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


def _gloo_worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group(
        'gloo', init_method=f'file://{init_file}', rank=rank, world_size=world
    )
    try:
        g = torch.Generator().manual_seed(0)
        full_a, full_b = (
            torch.randn(8, 16, generator=g),
            torch.randn(8, 16, generator=g),
        )
        weight = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
        local = slice(rank * 4, (rank + 1) * 4)
        a = full_a[local].clone().requires_grad_(True)
        b = full_b[local].clone().requires_grad_(True)
        loss = info_nce(a, b, 0.3, weight=weight[local])
        loss.backward()
        losses = [torch.empty(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        grads_a = [torch.empty_like(a.grad) for _ in range(world)]
        grads_b = [torch.empty_like(b.grad) for _ in range(world)]
        dist.all_gather(grads_a, a.grad)
        dist.all_gather(grads_b, b.grad)
        result = {
            'loss': torch.stack(losses).mean(),
            'ga': torch.cat(grads_a),
            'gb': torch.cat(grads_b),
        }
        torch.save(result, f'{init_file}.rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def test_gathered_info_nce_equals_single_process(tmp_path) -> None:
    """2 gloo processes: the mean loss equals one process on the concatenated batch,
    and each process's gradient is world_size x the single-process gradient (DDP
    divides by world_size when it averages)."""
    init_file = str(tmp_path / 'pg')
    mp.spawn(_gloo_worker, args=(2, init_file), nprocs=2, join=True)
    got = torch.load(f'{init_file}.rank0.pt')
    other = torch.load(f'{init_file}.rank1.pt')
    assert torch.equal(got['ga'], other['ga'])

    g = torch.Generator().manual_seed(0)
    full_a = torch.randn(8, 16, generator=g).requires_grad_(True)
    full_b = torch.randn(8, 16, generator=g).requires_grad_(True)
    weight = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    ref = info_nce(full_a, full_b, 0.3, weight=weight)
    ref.backward()
    assert torch.allclose(got['loss'], ref.detach(), atol=1e-6)
    assert torch.allclose(got['ga'], 2 * full_a.grad, atol=1e-6)
    assert torch.allclose(got['gb'], 2 * full_b.grad, atol=1e-6)
    assert got['ga'][3].abs().sum() == 0  # the weight-0 sample gets no gradient


def test_cross_prediction_loss() -> None:
    p, t = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    assert cross_prediction_loss(p, t) == pytest.approx(1.0)
    assert cross_prediction_loss(p, t, torch.tensor([1.0, 0.0])) == pytest.approx(1.0)
    t[1] = 3.0
    assert cross_prediction_loss(p, t, torch.tensor([0.0, 1.0])) == pytest.approx(9.0)


def test_patchify_roundtrip() -> None:
    x = torch.randn(2, 3, 16, 24)
    p = patchify(x, 8)
    assert p.shape == (2, 6, 192)
    assert torch.equal(unpatchify(p, 8, 3, (2, 3)), x)
    # patch (0, 1) is the pixels [0:8, 8:16]
    assert torch.equal(p[0, 1].view(8, 8, 3).permute(2, 0, 1), x[0, :, :8, 8:16])


def test_reconstruction_loss_ignores_invalid_and_visible() -> None:
    target = torch.zeros(1, 2, 4)
    pred = torch.ones(1, 2, 4)
    mask = torch.tensor([[1.0, 0.0]])
    assert reconstruction_loss(pred, target, mask) == pytest.approx(1.0)
    pred[0, 1] = 100.0  # visible patch: not counted
    assert reconstruction_loss(pred, target, mask) == pytest.approx(1.0)
    valid = torch.ones(1, 2, 4)
    pred[0, 0, 0] = 1000.0
    valid[0, 0, 0] = 0.0  # invalid pixel: not counted
    assert reconstruction_loss(pred, target, mask, valid) == pytest.approx(1.0)
    # norm-pix: a constant-offset prediction of a normalised target
    target = torch.arange(8.0).view(1, 2, 4)
    loss = reconstruction_loss(torch.zeros(1, 2, 4), target, mask, norm_pix=True)
    assert loss == pytest.approx(1.0, rel=1e-3)
