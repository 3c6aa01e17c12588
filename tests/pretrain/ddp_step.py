"""One SNCLR step on a fixed global batch; run alone or under `torchrun --nproc_per_node 2`.

`ddp_step.py OUT` saves (rank 0) the loss, the updated online parameters and every BN running
statistic so tests/pretrain/test_distributed.py can check that 2 gloo processes reproduce 1 process
exactly. `ddp_step.py --views OUT` saves every rank's first batch of two-view pairs of one constant
image, built the way train.py builds them (shared init seed, then per-rank streams and seeded augmentations)."""
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pretrain import distributed as dist  # noqa: E402
from pretrain.data import SeededAugmentation, TwoViews  # noqa: E402
from pretrain.model import SNCLR  # noqa: E402
from pretrain.train import EpochSampler, seed_rank_streams  # noqa: E402

GLOBAL_BATCH = 16


def main(out: str) -> None:
    device = dist.init_distributed("cpu")
    world, rank = dist.world_size(), dist.rank()
    torch.manual_seed(0)
    model = SNCLR("resnet18", image_size=32, proj_hidden_dim=64, dim=16, candidate_set_size=64, k=4)
    g = torch.Generator().manual_seed(1)
    # A candidate set holding 40 entries of other images so the step uses neighbours.
    model.candidate_set.push(torch.randn(40, 16, generator=g), torch.arange(1000, 1040), torch.randint(0, 3, (40,), generator=g))
    x1, x2 = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g), torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
    ids, labels = torch.arange(GLOBAL_BATCH), torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)
    local = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    net = model
    if world > 1:
        net = dist.wrap_ddp(dist.convert_sync_batchnorm(model, device), device)
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    stats = net(x1[local], x2[local], ids[local], labels[local], momentum=0.9)
    stats.loss.backward()
    optimizer.step()
    loss = dist.all_reduce_mean(stats.loss.detach())
    if dist.is_main():
        torch.save({"loss": loss, "params": {k: v.detach().clone() for k, v in model.named_parameters()},
                    "initial": initial,
                    "bn_stats": {k: v.clone() for k, v in model.named_buffers() if ".running_" in k},
                    "candidate_ids": model.candidate_set.image_ids.clone()}, out)
    dist.cleanup()


class ConstantImages(torch.utils.data.Dataset):
    """Eight copies of one fixed 48 x 40 colour gradient: only the augmentation tells two samples apart
    (a gradient, not a flat colour, so that crops and flips show)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        ramp = torch.arange(48 * 40 * 3, dtype=torch.float32).reshape(40, 48, 3) % 251
        return Image.fromarray(ramp.to(torch.uint8).numpy()), 0, index


def views(out: str) -> None:
    dist.init_distributed("cpu")
    world, rank = dist.world_size(), dist.rank()
    torch.manual_seed(0)
    seed_rank_streams(0, rank)
    dataset = SeededAugmentation(ConstantImages(), TwoViews(32), seed=0)
    sampler = EpochSampler(dataset, world, rank, seed=0)
    sampler.set_epoch(1)
    dataset.set_epoch(1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=1)
    (x1, x2), _, ids = next(iter(loader))
    gathered = [dist.all_gather(t) for t in (x1, x2, ids)]
    if dist.is_main():
        torch.save({"x1": gathered[0], "x2": gathered[1], "ids": gathered[2], "world": world}, out)
    dist.cleanup()


if __name__ == "__main__":
    views(sys.argv[2]) if sys.argv[1] == "--views" else main(sys.argv[1])
