#!/usr/bin/env bash
# Make the embedded data set available: Fashion-MNIST (70,000 images, 10 classes, MIT licence) from
# Debian's package dataset-fashion-mnist, which puts the four IDX files in
# /usr/share/datasets/fashion-mnist. Never fails the set-up: without apt it says how to get a copy.
set -uo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ] || [ -n "${SNCLR_FASHION_MNIST:-}" ]; then
    exit 0
fi
source "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh"
apt_install dataset-fashion-mnist
if [ ! -f "$DIR/train-images-idx3-ubyte.gz" ]; then
    echo "warning: Fashion-MNIST not found. Install it with 'sudo apt-get install dataset-fashion-mnist'," \
         "or download the four IDX files from https://github.com/zalandoresearch/fashion-mnist and set" \
         "SNCLR_FASHION_MNIST=DIR (tests that need it will skip; the demo will stop)." >&2
fi
exit 0
