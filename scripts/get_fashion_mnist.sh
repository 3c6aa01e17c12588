#!/usr/bin/env bash
# Make the embedded data set available: Fashion-MNIST (70,000 images, 10 classes, MIT licence) from
# Debian's package dataset-fashion-mnist, which puts the four IDX files in
# /usr/share/datasets/fashion-mnist. Never fails the set-up: without apt it says how to get a copy.
set -uo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ] || [ -n "${SNCLR_FASHION_MNIST:-}" ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
fi
if command -v apt-get >/dev/null && [ "$SUDO" != "none" ]; then
    echo "installing Debian package dataset-fashion-mnist (Fashion-MNIST IDX files) ..."
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
        || echo "warning: apt-get could not install dataset-fashion-mnist"
fi
if [ ! -f "$DIR/train-images-idx3-ubyte.gz" ]; then
    echo "warning: Fashion-MNIST not found. Install it with 'sudo apt-get install dataset-fashion-mnist'," \
         "or download the four IDX files from https://github.com/zalandoresearch/fashion-mnist and set" \
         "SNCLR_FASHION_MNIST=DIR (tests that need it will skip; the demo will stop)." >&2
fi
exit 0
