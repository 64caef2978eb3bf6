"""One seeding scheme for views and masks (seeding.py)."""

import torch

from torchgeo_xscale.seeding import content_generator, key_seed, step_generator


def test_step_generators_depend_on_the_key_only() -> None:
    def draw(*key: object) -> torch.Tensor:
        return torch.rand(4, generator=step_generator(*key))  # type: ignore[arg-type]

    assert torch.equal(draw(0, 0, 5, 'views'), draw(0, 0, 5, 'views'))
    for other in ((1, 0, 5, 'views'), (0, 1, 5, 'views'), (0, 0, 6, 'views')):
        assert not torch.equal(draw(0, 0, 5, 'views'), draw(*other))
    assert not torch.equal(draw(0, 0, 5, 'views'), draw(0, 0, 5, 'masks/train'))
    assert key_seed(0, 1, 2, 'views') == key_seed('0', '1', '2', 'views')


def test_content_generators_follow_the_batch() -> None:
    bounds = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    a = content_generator(3, 'views/val', bounds).get_state()
    assert torch.equal(a, content_generator(3, 'views/val', bounds.clone()).get_state())
    assert not torch.equal(a, content_generator(3, 'views/val', bounds + 1).get_state())
    assert not torch.equal(a, content_generator(4, 'views/val', bounds).get_state())
