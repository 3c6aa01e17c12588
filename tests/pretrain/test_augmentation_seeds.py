"""SeededAugmentation: one augmentation stream per (seed, epoch, image), whatever the process layout."""
import torch
from PIL import Image

from pretrain.data import SeededAugmentation, TwoViews


class SameImage(torch.utils.data.Dataset):
    """Four copies of one fixed gradient image."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        ramp = torch.arange(40 * 36 * 3).reshape(36, 40, 3) % 251
        return Image.fromarray(ramp.to(torch.uint8).numpy()), 7, index


def _first_batch(dataset, workers):
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers)
    return next(iter(loader))


def test_views_do_not_depend_on_workers_or_the_global_generator():
    dataset = SeededAugmentation(SameImage(), TwoViews(16), seed=3)
    torch.manual_seed(0)
    (a1, a2), labels, ids = _first_batch(dataset, workers=0)
    torch.manual_seed(1)
    (b1, b2), _, _ = _first_batch(dataset, workers=2)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert labels.tolist() == [7] * 4 and ids.tolist() == [0, 1, 2, 3]
    state = torch.get_rng_state()
    dataset[0]
    assert torch.equal(torch.get_rng_state(), state), "an augmentation must not consume the global stream"


def test_each_image_and_epoch_gets_its_own_draws():
    dataset = SeededAugmentation(SameImage(), TwoViews(16), seed=3)
    (first, _), _, _ = dataset[0]
    (other_image, _), _, _ = dataset[1]
    dataset.set_epoch(1)
    (next_epoch, _), _, _ = dataset[0]
    other_seed = SeededAugmentation(SameImage(), TwoViews(16), seed=4)
    (other_run, _), _, _ = other_seed[0]
    for different in (other_image, next_epoch, other_run):
        assert not torch.equal(first, different)
    dataset.set_epoch(0)
    assert torch.equal(dataset[0][0][0], first)
