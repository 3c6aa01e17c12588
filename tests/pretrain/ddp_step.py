"""One SNCLR step on a fixed global batch; run alone or under `torchrun --nproc_per_node 2`.

Saves (rank 0) the loss, the updated online parameters and every BN running statistic so tests/pretrain/test_distributed.py can
check that 2 gloo processes reproduce 1 process exactly."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pretrain import distributed as dist  # noqa: E402
from pretrain.model import SNCLR  # noqa: E402

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


if __name__ == "__main__":
    main(sys.argv[1])
