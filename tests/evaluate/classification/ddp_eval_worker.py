"""Run every evaluator on tiny data, as one process or under torchrun; rank 0 saves what it measured.

Used by test_ddp_eval.py: ``python ddp_eval_worker.py OUT`` and
``torchrun --nproc_per_node 2 ddp_eval_worker.py OUT`` must measure the same numbers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from classification_fixtures import TinyBackbone, colour_blobs  # noqa: E402
from evaluate.classification.features import extract_features  # noqa: E402
from evaluate.classification.knn import knn_classify  # noqa: E402
from evaluate.classification.linear import LinearSettings, linear_probe, linear_probe_fast, new_linear_head  # noqa: E402
from evaluate.classification.metrics import evaluate_classifier  # noqa: E402
from evaluate.classification.linear import LinearClassifier, sharded_eval_loader  # noqa: E402
from evaluate.classification.semisup import FineTuneSettings, fine_tune  # noqa: E402
from pretrain.distributed import cleanup, init_distributed, is_main, world_size  # noqa: E402


def main(out: Path) -> None:
    device = init_distributed("cpu")
    # Noisy enough that accuracies sit between chance and 100%, so equal numbers mean something.
    train, val = colour_blobs(46, seed=0, size=4, noise=4.0), colour_blobs(23, seed=1, size=4, noise=4.0)
    torch.manual_seed(0)
    backbone = TinyBackbone()
    features, labels = extract_features(backbone, train, device=device, batch_size=4, num_workers=0)
    val_features, val_labels = extract_features(backbone, val, device=device, batch_size=4, num_workers=0)

    torch.manual_seed(1)
    classifier = LinearClassifier(backbone, new_linear_head(8, 3))
    fixed = evaluate_classifier(classifier, sharded_eval_loader(val, 5, 0), device, ks=(1, 2))

    settings = LinearSettings(epochs=3, batch_size=10, base_lr=25.6)
    standard = linear_probe(backbone, 8, train, val, checkpoint_state=backbone.state_dict(), num_classes=3, settings=settings, device=device,
                            out_dir=out / f"standard_w{world_size()}", num_workers=0, eval_batch_size=6,
                            tensorboard=False)
    head = torch.load(out / f"standard_w{world_size()}" / "linear_state.pt", weights_only=False)["model"]
    fast = linear_probe_fast(features, labels, val_features, val_labels, num_classes=3, settings=settings,
                             device=device, out_dir=out / f"fast_w{world_size()}", tensorboard=False)
    knn = knn_classify(features, labels, val_features, val_labels, ks=(3, 7))
    # Global batch 7: ranks get slices of 4 and 3, so averaging per-rank mean losses would be wrong.
    torch.manual_seed(2)  # the same starting trunk in both runs, whatever the evaluators above drew
    trunk = TinyBackbone()
    trunk_start = {k: v.clone() for k, v in trunk.state_dict().items()}
    tuned = fine_tune(trunk, 8, train, val, num_classes=3,
                      settings=FineTuneSettings(epochs=2, batch_size=7, trunk_lr=0.05, head_lr=0.5),
                      device=device, out_dir=out / f"semisup_w{world_size()}", num_workers=0, tensorboard=False)
    tuned_weights = torch.load(out / f"semisup_w{world_size()}" / "semisup_state.pt", weights_only=False)["model"]
    if is_main():
        torch.save({"world_size": world_size(), "features": features, "labels": labels, "fixed": fixed,
                    "standard": standard, "head": head, "fast": fast, "knn": knn, "fine_tune": tuned,
                    "fine_tune_weights": tuned_weights, "fine_tune_start": trunk_start},
                   out / f"measured_w{world_size()}.pt")
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
