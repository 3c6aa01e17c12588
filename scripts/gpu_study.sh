#!/usr/bin/env bash
# GPU tier of the Fashion-MNIST Table 4 study (issue 11), one prepared command for one CUDA GPU.
#
#   bash scripts/gpu_study.sh OUT_DIR [DATA_DIR]
#
# Runs Eq. 1 / binary / soft (K=10) with 3 seeds on all 60,000 images, then the K sweep {5, 30}, in
# that priority order, starting no unit after DEADLINE_S seconds (default 330) so that it ends inside a
# 10-minute lease; then evaluates a random-init backbone alike. At ~3 minutes a unit on one H100
# (input-bound, see the gpu tier in study_fmnist_table4.py) one lease finishes about 3 units: the
# whole tier (11 units) needs about 35 GPU-minutes; split UNITS over several calls (WORK is per machine). Writes OUT_DIR/fmnist_table4_gpu.tgz
# (records, pre-training logs, configs; no checkpoints) and OUT_DIR/gpu_study.log.
# Uses the interpreter in $PYTHON (default python3): the GPU machine brings its own torch.
set -uo pipefail
OUT="${1:?usage: bash scripts/gpu_study.sh OUT_DIR [DATA_DIR]}"
DATA="${2:-${SNCLR_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}}"
PY="${PYTHON:-python3}"
WORK="${WORK:-/tmp/gpu_study_work}"
SHIP="$WORK/ship"
mkdir -p "$OUT" "$SHIP"
cd "$(dirname "$0")/.."
UNITS="${UNITS:-none:0 binary:0 soft:0 none:1 binary:1 soft:1 none:2 binary:2 soft:2 soft_k5:0 soft_k30:0}"
timeout "${STUDY_TIMEOUT_S:-420}" "$PY" scripts/study_fmnist_table4.py --tier "${TIER:-gpu}" --data-dir "$DATA" \
    --work "$WORK" --ship "$SHIP" --deadline-s "${DEADLINE_S:-330}" --units $UNITS --baselines ${BASELINES-random:0} \
    > "$OUT/gpu_study.log" 2>&1
echo "study exit $? after ${SECONDS}s" | tee -a "$OUT/gpu_study.log"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$OUT/gpu_study.log" 2>&1
tail -n 30 "$WORK"/logs/*.log > "$OUT/gpu_study_unit_logs.txt" 2>/dev/null
tar czf "$OUT/fmnist_table4_gpu.tgz" -C "$SHIP" .
