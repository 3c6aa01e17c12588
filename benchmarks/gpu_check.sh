#!/usr/bin/env bash
# One prepared command for a CUDA machine (under 8 minutes): step time, images/s and peak memory of
# ResNet-50/224, batch 256, bf16, with and without K=30 neighbours (synthetic inputs already on the
# GPU: this times the step, not the input pipeline); host-sync and bf16 checks of the neighbour search;
# the CPU input pipeline for 1..8 workers; a 1-GPU torchrun smoke run of `python -m pretrain`; the
# input pipelines of --data-pipeline side by side (device at 32 px, DALI at 224 px), a Fashion-MNIST
# epoch with the device pipeline against the PIL loader, and the ResNet-50/224 training step fed by
# DALI (4 threads) against the PIL loader (16 workers) on real JPEGs.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]            # OUT_DIR defaults to $OUT, else runs/gpu_check
#   bash benchmarks/gpu_check.sh --dry-run [OUT_DIR]  # tiny CPU version of every part (tests the script)
#
# Uses plain `python` (or $PYTHON), not .venv: a GPU machine brings its own torch. Modules the
# project needs that this python lacks are taken from $GPU_CHECK_FALLBACK (a site-packages folder),
# if given, one by one. Every part runs under its own `timeout` and a failure does not stop the
# others. Writes OUT_DIR/results.json (status, seconds and numbers of every part) and OUT_DIR/gpu_check.log.
set -u
DRY=0
OUT_DIR="${OUT:-runs/gpu_check}"
for arg in "$@"; do
    case "$arg" in
        --dry-run|--device=cpu) DRY=1 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) OUT_DIR="$arg" ;;
    esac
done
PY="${PYTHON:-python}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/gpu_check.log"
PARTS="$OUT_DIR/parts"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$PARTS"
: > "$LOG"
cd "$ROOT" || exit 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

if [ "$DRY" = 1 ]; then
    DEVICE=cpu; AMP=off; STEP_ARGS="--setting resnet18_32 --batch 8 --steps 1"
    DATA_ARGS="--images 4 --rounds 1 --workers 1 --batch 2 --batches 1"
    SMOKE_ARGS="--device cpu --amp off"
    PIPE_ARGS="--device cpu --workers 0 --dali-threads 1 --images 4 --batch 4 --batches 1"
    UNIT_ARGS="--device cpu --amp off --workers 1 --train-limit 64 --batch-size 16 --max-steps-per-epoch 2 --candidate-set-size 64 --k 4"
    INPUT_ARGS="--recipe fmnist_resnet18_cpu --device cpu --amp off --batch-size 8 --epochs 2 --max-steps-per-epoch 3 --candidate-set-size 64 --k 4"
    JPEGS=8; PIL_WORKERS=1; DALI_THREADS=1
else
    DEVICE=cuda; AMP=bf16; STEP_ARGS="--setting resnet50_224 --batch 256 --steps 5"
    DATA_ARGS="--images 128 --rounds 1 --workers 1,2,4,8 --batch 8 --batches 3"
    SMOKE_ARGS="--device cuda --amp bf16"
    PIPE_ARGS="--device cuda --workers 8,16 --dali-threads 2,4 --images 256 --batch 128 --batches 2"
    UNIT_ARGS="--device cuda --amp bf16"
    # 8 epochs of 8 steps: many more batches than loader workers, so their first prefetch cannot hide the rate.
    INPUT_ARGS="--recipe resnet50_100ep --device cuda --amp bf16 --batch-size 256 --epochs 8 --max-steps-per-epoch 8 --neighbor-warmup-epochs 0"
    JPEGS=2048; PIL_WORKERS=16; DALI_THREADS=4
fi

# part NAME SECONDS COMMAND...: run under timeout, log its output, record status/rc/seconds.
part() {
    local name="$1" limit="$2"; shift 2
    local start rc status
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
    echo "=== $name: $status (rc $rc, $(( $(date +%s) - start )) s)" | tee -a "$LOG"
    printf '{"status": "%s", "rc": %d, "seconds": %d}\n' "$status" "$rc" "$(( $(date +%s) - start ))" \
        > "$PARTS/$name.status.json"
}

# Preflight: versions, and an overlay of fallback modules for whatever this python lacks.
OVERLAY="$WORK/overlay"
mkdir -p "$OVERLAY"
part preflight 60 "$PY" - "$OVERLAY" "${GPU_CHECK_FALLBACK:-}" "$PARTS/preflight.json" <<'PYEOF'
import importlib.util, json, os, platform, sys
overlay, fallback, out = sys.argv[1:4]
needed = {"torch": ["torch"], "torchvision": ["torchvision", "torchvision.libs"], "PIL": ["PIL", "pillow.libs"],
          "yaml": ["yaml", "_yaml"], "tqdm": ["tqdm"], "numpy": ["numpy"]}
missing, linked = [], []
for module, folders in needed.items():
    if importlib.util.find_spec(module) is None:
        missing.append(module)
        for folder in folders:
            source = os.path.join(fallback, folder) if fallback else ""
            if source and os.path.exists(source):
                os.symlink(source, os.path.join(overlay, folder))
                linked.append(folder)
info = {"python": sys.version.split()[0], "platform": platform.platform(), "missing": missing, "linked": linked}
sys.path.insert(0, overlay)
import torch
info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
            gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, cores=os.cpu_count())
try:
    import torchvision
    info["torchvision"] = torchvision.__version__
except Exception as error:   # recorded, the later parts say what it breaks
    info["torchvision"] = f"unusable: {error}"
print(json.dumps(info, indent=1))
json.dump(info, open(out, "w"), indent=1)
PYEOF
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}:$OVERLAY"

part pretrain_step 200 "$PY" benchmarks/pretrain_step.py --device "$DEVICE" --amp "$AMP" $STEP_ARGS \
    --json "$PARTS/pretrain_step.json"

# The neighbour search under the device's autocast: no host sync, same neighbours and loss as fp32.
part search_checks 60 "$PY" - "$DEVICE" "$PARTS/search_checks.json" <<'PYEOF'
import json, sys, warnings
import torch
from pretrain.losses import snclr_loss
from pretrain.neighbors import CandidateSet
device, out = torch.device(sys.argv[1]), sys.argv[2]
g = torch.Generator(device=device).manual_seed(0)
size, dim, n, k = (128_000, 256, 512, 30) if device.type == "cuda" else (4096, 64, 64, 8)
c = CandidateSet(size, dim).to(device)
c.push(torch.randn(size, dim, device=device, generator=g), torch.arange(10**6, 10**6 + size, device=device))
keys, ids = torch.randn(n, dim, device=device, generator=g), torch.arange(n, device=device)
result = {}
def host_syncs(fn):
    """Messages of torch's sync debug mode raised while fn runs (its 'prototype' notice left out)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return [str(w.message)[:160] for w in caught if "called a synchronizing" in str(w.message)]
if device.type == "cuda":
    result["host_syncs_in_push"] = host_syncs(lambda: c.push(keys[:256], ids[:256]))
    result["host_syncs_in_search"] = host_syncs(lambda: c.lookup(*c.search(keys, ids, k)))
    # Informative: the whole training step (forward with monitor=False, backward) on a small ResNet.
    from pretrain.model import SNCLR
    model = SNCLR("resnet18", image_size=64, proj_hidden_dim=256, dim=dim, candidate_set_size=size, k=k).to(device)
    model.candidate_set.push(torch.randn(size, dim, device=device), torch.arange(10**6, 10**6 + size, device=device))
    x = torch.randn(32, 3, 64, 64, device=device)
    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            stats = model(x, x.flip(3), ids[:32], ids[:32] % 10, 0.99, True, monitor=False)
        stats.loss.backward()
    try:
        train_step()
        result["host_syncs_in_model_step"] = host_syncs(train_step)
    except Exception as error:   # informative only: recorded, the search checks still count
        result["host_syncs_in_model_step"] = f"not measured: {error!r}"[:300]
dtype = torch.bfloat16
want = c.query(keys, ids, k)
with torch.autocast(device.type, dtype=dtype):
    got = c.query(keys, ids, k)
result["same_neighbours_under_bf16"] = bool(torch.equal(got.index, want.index))
q, y = torch.randn(n // 2, dim, device=device, generator=g), torch.randn(n // 2, dim, device=device, generator=g)
plain = snclr_loss(q, y, keys, want.neighbors, temperature=0.2, neighbor_mask=want.valid)
with torch.autocast(device.type, dtype=dtype):
    mixed = snclr_loss(q, y, keys, want.neighbors, temperature=0.2, neighbor_mask=want.valid)
result["loss_rel_diff_under_bf16"] = abs(mixed.item() - plain.item()) / abs(plain.item())
print(json.dumps(result, indent=1))
json.dump(result, open(out, "w"), indent=1)
ok = (result["same_neighbours_under_bf16"] and result["loss_rel_diff_under_bf16"] <= 1e-5
      and not result.get("host_syncs_in_push") and not result.get("host_syncs_in_search"))
sys.exit(0 if ok else 1)
PYEOF

part data_pipeline 150 "$PY" benchmarks/data_pipeline.py $DATA_ARGS --json "$PARTS/data_pipeline.json"

# 1-GPU torchrun smoke run: a few steps of `python -m pretrain` on a tiny synthetic ImageFolder.
part smoke_data 30 "$PY" - "$WORK/tiny" <<'PYEOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, count in (("train", 48), ("val", 8)):
    for label in ("a", "b"):
        folder = Path(sys.argv[1]) / split / label
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
PYEOF
part torchrun_smoke 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m pretrain \
    --recipe fmnist_resnet18_cpu --dataset imagefolder --data-dir "$WORK/tiny" --train-limit none \
    --output-dir "$WORK/smoke_run" --epochs 2 --batch-size 32 --max-steps-per-epoch 2 \
    --candidate-set-size 256 --k 4 --neighbor-warmup-epochs 1 --warmup-epochs 1 --workers 2 --log-every 1 \
    $SMOKE_ARGS
cp "$WORK/smoke_run/metrics.jsonl" "$PARTS/torchrun_smoke_metrics.jsonl" 2>/dev/null

# The pipelines of --data-pipeline side by side: device at 32 px, DALI at 224 px (GPU decode), PIL loaders.
part pipelines 150 "$PY" benchmarks/data_pipeline.py --pipelines $PIPE_ARGS --json "$PARTS/pipelines.json"

# One Fashion-MNIST epoch of the CPU recipe on this device, device pipeline against 12 PIL loader
# workers (random IDX files of Fashion-MNIST's shape where no copy is installed: the cost is the same).
part fmnist_data 30 "$PY" - "$WORK/fmnist" <<'PYEOF'
import gzip, sys
from pathlib import Path
import numpy as np
from pretrain.data import DataError, resolve_fashion_mnist_dir
out = Path(sys.argv[1])
out.mkdir(parents=True)
try:
    source = resolve_fashion_mnist_dir(None)
    for name in source.iterdir():
        (out / name.name).symlink_to(name)
except DataError:
    rng = np.random.default_rng(0)
    for stem, header, data in (("train-images-idx3-ubyte", (3, 60000, 28, 28), rng.integers(0, 256, (60000, 28, 28))),
                               ("train-labels-idx1-ubyte", (1, 60000), np.arange(60000) % 10)):
        with gzip.open(out / f"{stem}.gz", "wb") as handle:
            handle.write(bytes([0, 0, 8, header[0]]) + b"".join(v.to_bytes(4, "big") for v in header[1:]))
            handle.write(data.astype(np.uint8).tobytes())
PYEOF
for pipe in device pil; do
    part "fmnist_epoch_$pipe" 120 "$PY" -m pretrain --recipe fmnist_resnet18_cpu --data-dir "$WORK/fmnist" \
        --epochs 1 --workers 12 --log-every 5 --data-pipeline "$pipe" --output-dir "$WORK/unit_$pipe" $UNIT_ARGS
    cp "$WORK/unit_$pipe/metrics.jsonl" "$PARTS/fmnist_epoch_${pipe}_metrics.jsonl" 2>/dev/null
done

# The training step fed from real JPEGs: DALI with $DALI_THREADS threads, PIL with $PIL_WORKERS workers.
part input_jpegs 90 "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; \
from data_pipeline import make_jpegs; make_jpegs(Path('$WORK/jpegs'), $JPEGS, 500, 375)"
for pipe in dali pil; do
    workers=$([ "$pipe" = dali ] && echo "$DALI_THREADS" || echo "$PIL_WORKERS")
    part "input_step_$pipe" 150 "$PY" -m pretrain $INPUT_ARGS --dataset imagefolder --data-dir "$WORK/jpegs" \
        --train-limit none --warmup-epochs 1 --log-every 1 --data-pipeline "$pipe" --workers "$workers" \
        --output-dir "$WORK/input_$pipe"
    cp "$WORK/input_$pipe/metrics.jsonl" "$PARTS/input_step_${pipe}_metrics.jsonl" 2>/dev/null
done

"$PY" - "$PARTS" "$OUT_DIR/results.json" "$DRY" <<'PYEOF'
import json, sys
from pathlib import Path
parts, out, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
results = {"dry_run": dry, "parts": {}}
for status in sorted(parts.glob("*.status.json")):
    name = status.name[:-len(".status.json")]
    entry = json.loads(status.read_text())
    numbers = parts / f"{name}.json"
    if numbers.exists():
        entry["result"] = json.loads(numbers.read_text())
    results["parts"][name] = entry
for metrics in sorted(parts.glob("*_metrics.jsonl")):
    name = metrics.name[:-len("_metrics.jsonl")]
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    if name in results["parts"]:
        results["parts"][name]["metrics"] = rows
        # Steady state: the median images/s of the last half of the logged steps (cuDNN tuning excluded).
        rates = sorted(r["images_per_s"] for r in rows[len(rows) // 2:])
        results["parts"][name]["median_images_per_s"] = rates[len(rates) // 2] if rates else None
out.write_text(json.dumps(results, indent=1))
print(json.dumps({name: entry["status"] for name, entry in results["parts"].items()}))
PYEOF
echo "results: $OUT_DIR/results.json, log: $LOG"
