#!/usr/bin/env bash
# GPU tier of the Fashion-MNIST Table 4 study (issue 19): ONE prepared command for one CUDA GPU, at
# most 9 minutes from start to the shipped folder.
#
#   bash scripts/gpu_study.sh OUT_DIR [DATA_DIR]     # on the GPU machine
#   bash scripts/gpu_study.sh --dry-run [OUT_DIR]    # on CPU: the plan, then the CPU smoke tier
#
# Runs, in this order, three at a time on the one GPU (recipe fmnist_resnet18_gpu, all 60,000 images):
#   baselines supervised (same backbone, views and epochs, with labels), random init, raw pixels;
#   Eq. 1 (none) / binary / soft x seeds 0, 1, 2;
#   then, as time allows, the official loss form and K in {5, 30} (seed 0).
# Every checkpoint gets the fast probe, kNN (k=20) and the standard linear probe on all 60,000 / 10,000.
# No unit starts after DEADLINE_S (default 380 s); the study is killed at STUDY_TIMEOUT_S (default
# 500 s), leaving 40 s for the report. `--dry-run` prints the projected seconds of every unit (the
# arithmetic is in scripts/study_fmnist_table4.py: projection) before anything is spent.
#
# Writes OUT_DIR/fmnist_table4_gpu/ (records, pre-training logs and configs, curves.png, summary.json,
# README.md generated from the records, wall_times.jsonl; no checkpoints) and OUT_DIR/gpu_study.log:
# copy the folder to results/studies/fmnist_table4_gpu/ to ship it.
# Uses the interpreter in $PYTHON (default python3): the GPU machine brings its own torch.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
REQUIRED="none:0 binary:0 soft:0 none:1 binary:1 soft:1 none:2 binary:2 soft:2"
EXTRA="soft_official:0 soft_k5:0 soft_k30:0"
BASELINES="supervised:0 random:0 raw-pixels:0"

if [ "${1:-}" = "--dry-run" ]; then
    OUT="${2:-$(mktemp -d)}"
    WORK="$OUT/work"
    SHIP="$OUT/fmnist_table4_gpu_smoke"
    echo "== plan of the GPU tier (projection, nothing runs) =="
    "$PY" scripts/study_fmnist_table4.py --tier gpu --work "$WORK" --ship "$SHIP" --parallel 3 \
        --deadline-s "${DEADLINE_S:-380}" --units $REQUIRED $EXTRA --baselines $BASELINES --dry-run || exit $?
    echo "== the same units, recipe and evaluators at CPU-smoke scale (16 px, 64 images): not the GPU tier =="
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$PY" scripts/study_fmnist_table4.py --tier gpu_cpu_smoke \
        --work "$WORK" --ship "$SHIP" --units ${SMOKE_UNITS:-none:0 soft:0} --baselines $BASELINES || exit $?
    "$PY" scripts/study_report.py "$SHIP" --readme "CPU smoke tier of the GPU study (16 px, 64 images; NOT the GPU tier)" \
        --command "bash scripts/gpu_study.sh --dry-run" > /dev/null || exit $?
    echo "dry run done: $SHIP (smoke numbers, meaningless for the method)"
    exit 0
fi

OUT="${1:?usage: bash scripts/gpu_study.sh OUT_DIR [DATA_DIR] | --dry-run [OUT_DIR]}"
DATA="${2:-${SNCLR_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}}"
WORK="${WORK:-/tmp/gpu_study_work}"
SHIP="$OUT/fmnist_table4_gpu"
mkdir -p "$OUT" "$SHIP"
timeout "${STUDY_TIMEOUT_S:-500}" "$PY" scripts/study_fmnist_table4.py --tier "${TIER:-gpu}" --data-dir "$DATA" \
    --work "$WORK" --ship "$SHIP" --parallel "${PARALLEL:-3}" --deadline-s "${DEADLINE_S:-380}" \
    --units ${UNITS:-$REQUIRED $EXTRA} --baselines ${BASELINES_OVERRIDE:-$BASELINES} > "$OUT/gpu_study.log" 2>&1
echo "study exit $? after ${SECONDS}s" | tee -a "$OUT/gpu_study.log"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$OUT/gpu_study.log" 2>&1
"$PY" scripts/study_report.py "$SHIP" --readme "GPU tier: one $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)" \
    --command "bash scripts/gpu_study.sh OUT_DIR" >> "$OUT/gpu_study.log" 2>&1
tail -n 30 "$WORK"/logs/*.log > "$OUT/gpu_study_unit_logs.txt" 2>/dev/null
echo "done after ${SECONDS}s: $SHIP" | tee -a "$OUT/gpu_study.log"
