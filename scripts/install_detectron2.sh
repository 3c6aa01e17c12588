#!/usr/bin/env bash
# Install detectron2 for CPU machines and CI into the virtual environment of PYTHON.
#
# Usage: bash scripts/install_detectron2.sh PYTHON      (e.g. .venv/bin/python)
#
# The official detectron2 is not on PyPI and cannot be built here. The PyPI wheel
# sal-detectron2==0.7.2 repackages upstream detectron2 (code of April 2024; only its version string
# differs) but ships a Python 3.10 wheel only. Its pure-Python code runs on our Python 3.11 / torch
# for everything Mask R-CNN R50-FPN needs, so we unpack the wheel (without its dependencies, which
# pin numpy<2) into <venv>/detectron2-py310 and put that folder on sys.path with a .pth file.
# Its compiled detectron2._C never loads here; nothing we run needs it (docs/detection.md).
# On a GPU cluster, install detectron2 from source instead, as its own documentation says.
#
# Idempotent: running it again leaves a working install as it is.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "error: usage: bash scripts/install_detectron2.sh PYTHON (the venv's python, e.g. .venv/bin/python)" >&2
    exit 2
fi
PYTHON="$1"
if ! "$PYTHON" -c "import sys" 2>/dev/null; then
    echo "error: $PYTHON is not a runnable python interpreter" >&2
    exit 2
fi

D2_VERSION="0.7.2"
PREFIX="$("$PYTHON" -c 'import sys; print(sys.prefix)')"
SITE="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
TARGET="$PREFIX/detectron2-py310"
PTH="$SITE/zz_detectron2_py310.pth"

# detectron2's runtime needs beyond requirements.txt, pinned in requirements-detectron2.txt
# (setuptools<81 among them: detectron2 imports pkg_resources, which setuptools 81 removed).
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$PYTHON" -m pip install --quiet -r "$REPO/requirements-detectron2.txt"

if [ -f "$TARGET/sal_detectron2-$D2_VERSION.dist-info/METADATA" ]; then
    echo "detectron2 $D2_VERSION already unpacked in $TARGET"
else
    rm -rf "$TARGET"
    "$PYTHON" -m pip install --quiet --no-deps --target "$TARGET" --python-version 3.10 \
        --only-binary=:all: "sal-detectron2==$D2_VERSION"
fi
printf '%s\n' "$TARGET" > "$PTH"

# Fail here, not in the first test, if the unpacked code does not import on this interpreter.
"$PYTHON" -W ignore -c "import detectron2.engine, detectron2.evaluation, detectron2.model_zoo"
echo "detectron2 $D2_VERSION ready for $PYTHON (path file $PTH)"
