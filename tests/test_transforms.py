import pytest
import torch
import torch.nn.functional as F

from torchgeo_xscale.transforms import ScaleViews, scale_to_ratio


def make_batch(
    batch: int = 6, channels: int = 3, size: int = 32, gsd: float = 10.0
) -> dict[str, torch.Tensor]:
    """Smooth, asymmetric images (a flip is visible even after blurring)."""
    ys, xs = torch.meshgrid(
        torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing='ij'
    )
    base = torch.stack([xs, ys**2, xs * ys], 0)[:channels]
    image = base.expand(batch, -1, -1, -1) + torch.arange(batch).view(-1, 1, 1, 1) * 0.1
    return {
        'image': image.clone(),
        'valid': torch.ones(batch, 1, size, size, dtype=torch.bool),
        'gsd': torch.full((batch,), gsd),
    }


def low_pass(x: torch.Tensor, side: int = 4) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x.flatten(0, 1), side).unflatten(0, x.shape[:2])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_footprint_shapes_and_gsd() -> None:
    batch = make_batch(size=64)
    out = ScaleViews(size=32, num_views=2)(batch, gen())
    assert out['views'].shape == (6, 2, 3, 32, 32)
    assert out['view_valid'].shape == (6, 2, 1, 32, 32)
    assert out['view_valid'].dtype == torch.bool
    assert out['scale_ratio'].shape == out['view_gsd'].shape == (6, 2)
    ratio = out['scale_ratio']
    assert torch.all(ratio[:, 0] == 1)
    assert torch.all((ratio[:, 1] >= 0.2 - 1 / 32) & (ratio[:, 1] <= 0.8 + 1 / 32))
    # The reported ratio is the one used: a whole number of low-res pixels.
    low = ratio[:, 1] * 32
    assert torch.allclose(low, low.round())
    assert torch.allclose(out['view_gsd'], 10.0 * 64 / 32 / ratio)


def test_ratios_vary_per_sample() -> None:
    batch = make_batch(batch=32)
    out = ScaleViews(size=32, flips=False)(batch, gen(1))
    assert out['scale_ratio'][:, 1].unique().numel() > 3


def test_num_views_one_is_full_scale_only() -> None:
    batch = make_batch()
    out = ScaleViews(size=32, num_views=1, flips=False)(batch, gen())
    assert out['views'].shape == (6, 1, 3, 32, 32)
    assert torch.allclose(out['views'][:, 0], batch['image'])
    assert torch.all(out['view_gsd'] == 10.0)


def test_three_views() -> None:
    out = ScaleViews(size=16, num_views=3)(make_batch(), gen())
    assert out['views'].shape == (6, 3, 3, 16, 16)


def test_flips_are_shared_by_views() -> None:
    batch = make_batch()
    original = batch['image'].clone()
    out = ScaleViews(size=32, scale_range=(0.5, 0.5))(batch, gen(3))
    views = out['views']
    # Same ground on the same grid: low-pass versions agree.
    assert torch.allclose(low_pass(views[:, 0]), low_pass(views[:, 1]), atol=0.03)
    # Some samples were flipped, and 'image' is the flipped tile.
    flipped = ~torch.isclose(out['image'], original).flatten(1).all(1)
    assert flipped.any()
    assert torch.allclose(views[:, 0], out['image'])
    # Each view equals one of the four flips of the original tile.
    for i in range(6):
        candidates = [original[i], original[i].flip(-1), original[i].flip(-2)]
        candidates.append(original[i].flip(-1).flip(-2))
        assert any(torch.allclose(out['image'][i], c) for c in candidates)


def test_unshared_flips_would_be_detected() -> None:
    """Sanity check of the low-pass comparison used above."""
    views = ScaleViews(size=32, flips=False)(make_batch(), gen())['views']
    assert not torch.allclose(
        low_pass(views[:, 0]), low_pass(views[:, 1].flip(-1)), atol=0.03
    )


def test_low_view_loses_detail() -> None:
    batch = make_batch(batch=2)
    batch['image'] = torch.rand(2, 3, 32, 32, generator=gen())
    out = ScaleViews(size=32, scale_range=(0.25, 0.25), flips=False)(batch, gen())
    view0, view1 = out['views'][:, 0], out['views'][:, 1]
    assert view1.std() < 0.7 * view0.std()
    expected = scale_to_ratio(batch['image'], 0.25)
    assert torch.allclose(view1, expected, atol=1e-5)


def test_invalid_pixels_propagate() -> None:
    batch = make_batch(batch=2, size=32)
    batch['valid'][:, :, 10, 20] = False
    out = ScaleViews(size=32, scale_range=(0.5, 0.5), flips=False)(batch, gen())
    valid = out['view_valid']
    # View 0 (same size): exactly the invalid pixel.
    assert not valid[:, 0, 0, 10, 20].any()
    assert valid[:, 0].sum() == 2 * (32 * 32 - 1)
    # View 1: the 2x2 low-res pixel (10-11, 20-21) is invalid, spread by the upsampling.
    assert not valid[:, 1, 0, 9:13, 19:23].any()
    assert valid[:, 1, 0, :5].all() and valid[:, 1, 0, 16:].all()
    assert torch.all(out['views'][~valid.expand_as(out['views'])] == 0)


def test_area_downsample_of_valid_is_strict() -> None:
    batch = make_batch(batch=1, size=128)
    batch['valid'][:, :, 0, 0] = False  # one pixel in 128x128
    out = ScaleViews(size=32, scale_range=(0.125, 0.125), flips=False)(batch, gen())
    assert not out['view_valid'][0, 0, 0, 0, 0]
    assert not out['view_valid'][0, 1, 0, 0, 0]


def test_crop_mode() -> None:
    batch = make_batch(batch=8, size=64)
    out = ScaleViews(size=32, mode='crop')(batch, gen())
    assert out['views'].shape == (8, 2, 3, 32, 32)
    ratio = out['scale_ratio'][:, 1]
    area = (1 / ratio) ** 2  # crop side = H / r
    assert torch.all((area > 0.24) & (area < 0.76))
    side = 64 / ratio
    assert torch.allclose(side, side.round(), atol=1e-4)
    assert torch.allclose(out['view_gsd'][:, 1], 10.0 * side / 32)
    assert torch.allclose(out['view_gsd'][:, 0], torch.full((8,), 20.0))


def test_crop_mode_valid_mask() -> None:
    batch = make_batch(batch=4, size=32)
    batch['valid'][:] = False
    out = ScaleViews(size=32, mode='crop')(batch, gen())
    assert not out['view_valid'].any()
    assert torch.all(out['views'] == 0)


def test_generator_makes_views_reproducible() -> None:
    views = ScaleViews(size=32)
    a = views(make_batch(), gen(7))
    b = views(make_batch(), gen(7))
    assert torch.equal(a['views'], b['views'])
    assert torch.equal(a['scale_ratio'], b['scale_ratio'])


def test_missing_valid_means_all_valid() -> None:
    batch = make_batch()
    del batch['valid']
    out = ScaleViews(size=16)(batch, gen())
    assert out['view_valid'].all()


@pytest.mark.parametrize(
    'kwargs',
    [
        {'scale_range': (0.0, 0.5)},
        {'scale_range': (0.8, 0.2)},
        {'scale_range': (0.5, 1.5)},
        {'mode': 'zoom'},
        {'num_views': 0},
        {'num_scale_bins': 0},
    ],
)
def test_bad_arguments(kwargs) -> None:
    with pytest.raises(ValueError, match='expected'):
        ScaleViews(**kwargs)


def test_missing_keys_and_bad_shape() -> None:
    with pytest.raises(KeyError, match='gsd'):
        ScaleViews()({'image': torch.zeros(1, 3, 8, 8)})
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        ScaleViews()({'image': torch.zeros(3, 8, 8), 'gsd': torch.ones(1)})


def test_scale_to_ratio() -> None:
    images = torch.rand(2, 3, 64, 64, generator=gen())
    assert torch.equal(scale_to_ratio(images, 1.0), images)
    for ratio in (0.125, 0.25, 0.5):
        out = scale_to_ratio(images, ratio)
        assert out.shape == images.shape
        assert out.std() < images.std()
    constant = torch.full((1, 1, 64, 64), 3.0)
    assert torch.allclose(scale_to_ratio(constant, 0.25), constant)
    with pytest.raises(ValueError, match='ratio'):
        scale_to_ratio(images, 0.0)


def test_flips_are_random_per_sample() -> None:
    batch = make_batch(batch=32)
    original = batch['image'].clone()
    out = ScaleViews(size=32, num_views=1)(batch, gen())
    flipped = ~torch.isclose(out['image'], original).flatten(1).all(1)
    assert 0 < flipped.sum() < 32
