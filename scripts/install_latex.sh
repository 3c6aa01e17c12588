#!/usr/bin/env bash
# pdflatex for the test that compiles every LaTeX table (tests/evaluate/report/test_latex.py):
# Debian's texlive-latex-base (pdflatex, LaTeX) and texlive-latex-recommended (booktabs). Idempotent:
# does nothing when pdflatex is on PATH. Without apt or root it says what to install; the test then
# skips, except under CI=true, where it fails (CI must compile the tables).
set -uo pipefail
PACKAGES="texlive-latex-base texlive-latex-recommended"
if command -v pdflatex >/dev/null; then
    exit 0
fi
source "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh"
apt_install $PACKAGES
if ! command -v pdflatex >/dev/null; then
    echo "warning: pdflatex not found. Install it ('sudo apt-get install $PACKAGES', or TeX Live / MiKTeX" \
         "with booktabs); the LaTeX compile test skips without it, and fails under CI=true." >&2
    [ "${CI:-}" = "true" ] && exit 1
fi
exit 0
