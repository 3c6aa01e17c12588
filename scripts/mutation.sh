#!/usr/bin/env bash
# Mutation testing (make mutation): mutmut on each scored module with only the tests that cover it.
# Usage: bash scripts/mutation.sh [MODULE ...]     (default: every module of the table below)
# Each module runs in a scratch copy of the tree (the working tree gets no mutants/ folder); the
# summary prints mutants / killed / survived per module and the surviving mutants' names, and the
# scratch copies stay in $MUTATION_DIR (default /tmp/snclr-mutation) for `mutmut show NAME` there.
# Not part of CI: about 20 minutes on 2 cores with OMP_NUM_THREADS=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
WORK="${MUTATION_DIR:-/tmp/snclr-mutation}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"

# The report modules' in-process tests. test_study (50 s: it rebuilds the shipped study) and
# test_latex's three pdflatex compiles are left out: with them, facts.py's 976 mutants took hours.
LATEX=tests/evaluate/report/test_latex.py
REPORT_TESTS="tests/evaluate/report/test_facts.py tests/evaluate/report/test_golden_tables.py tests/evaluate/report/test_tables.py tests/evaluate/report/test_records.py tests/evaluate/report/test_bold_and_seeds.py tests/evaluate/report/test_references.py tests/evaluate/report/test_cells.py $LATEX --deselect=$LATEX::test_shipped_study_and_references_compile --deselect=$LATEX::test_published_baselines_compile --deselect=$LATEX::test_messy_names_compile_and_stay_inside_every_format"
declare -A TESTS=(
    [pretrain/losses.py]="tests/pretrain/test_losses.py tests/pretrain/test_reference_maths.py"
    [pretrain/neighbors.py]="tests/pretrain/test_neighbors.py tests/pretrain/test_candidate_set.py tests/pretrain/test_reference_maths.py"
    [pretrain/model.py]="tests/pretrain/test_reference_maths.py tests/pretrain/test_backbones.py tests/pretrain/test_model_heads.py tests/pretrain/test_supervised.py"
    [pretrain/optim.py]="tests/pretrain/test_optim.py"
    [evaluate/loading.py]="tests/evaluate/test_loading.py"
    [evaluate/detection/convert.py]="tests/evaluate/detection/test_convert.py"
    [pretrain/safe_load.py]="tests/pretrain/test_safe_load.py tests/evaluate/test_loading.py"
    [evaluate/report/tables.py]="$REPORT_TESTS"
    [evaluate/report/facts.py]="$REPORT_TESTS"
    [evaluate/report/leaderboard.py]="$REPORT_TESTS"
)
ORDER=(pretrain/losses.py pretrain/neighbors.py pretrain/model.py pretrain/optim.py evaluate/loading.py
       evaluate/detection/convert.py pretrain/safe_load.py evaluate/report/tables.py evaluate/report/facts.py
       evaluate/report/leaderboard.py)
modules=("$@")
[ ${#modules[@]} -eq 0 ] && modules=("${ORDER[@]}")
for module in "${modules[@]}"; do
    [ -n "${TESTS[$module]:-}" ] || { echo "error: $module is not in the table of scripts/mutation.sh" >&2; exit 2; }
done
"$PY" -c "import mutmut" 2>/dev/null || { echo "error: mutmut is not installed for $PY (pip install mutmut==3.8.1)" >&2; exit 2; }

summary=()
for module in "${modules[@]}"; do
    scratch="$WORK/$(echo "${module%.py}" | tr / _)"
    rm -rf "$scratch"
    mkdir -p "$scratch/repo"
    # The tree as tests see it; ../shared beside it as in the real checkout.
    tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude=./mutants --exclude=./results/demo* \
        --exclude='__pycache__' -cf - . | tar -C "$scratch/repo" -xf -
    [ -e "$ROOT/../shared" ] && ln -s "$(cd "$ROOT/../shared" && pwd)" "$scratch/shared"
    "$PY" - "$scratch/repo/setup.cfg" "$module" ${TESTS[$module]} <<'PY'
import configparser, sys
path, module, *tests = sys.argv[1:]
config = configparser.ConfigParser()
config.read(path)
config["mutmut"]["only_mutate"] = "\n" + module
config["mutmut"]["pytest_add_cli_args_test_selection"] = "\n" + "\n".join(tests)
with open(path, "w") as handle:
    config.write(handle)
PY
    echo "=== $module: tests ${TESTS[$module]}"
    # MUTANTS="name ..." reruns only those mutants (e.g. the survivors of a previous run).
    (cd "$scratch/repo" && "$PY" -m mutmut run --max-children "${MUTATION_JOBS:-2}" ${MUTANTS:-} > ../run.log 2>&1) || {
        echo "error: mutmut failed on $module; see $scratch/run.log" >&2; tail -20 "$scratch/run.log" >&2; exit 1; }
    (cd "$scratch/repo" && "$PY" -m mutmut results --all true > ../results.txt 2>&1)
    line=$("$PY" - "$scratch/results.txt" "$module" <<'PY'
import collections, sys
path, module = sys.argv[1:]
states = collections.Counter()
survivors = []
for line in open(path):
    name, _, state = line.strip().rpartition(": ")
    if not name:
        continue
    states[state] += 1
    if state == "survived":
        survivors.append(name)
total = sum(states.values())
killed = states["killed"] + states["timeout"]
others = {k: v for k, v in states.items() if k not in ("killed", "timeout", "survived")}
rate = 100.0 * states["survived"] / total if total else 0.0
print(f"{module}: {total} mutants, {killed} killed, {states['survived']} survived ({rate:.1f}%)"
      + (f", other {dict(others)}" if others else ""))
for name in survivors:
    print(f"    survived: {name}")
PY
)
    echo "$line"
    summary+=("$line")
done
echo
echo "=== mutation summary"
printf '%s\n' "${summary[@]}"
