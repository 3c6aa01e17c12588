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
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
fi
if command -v apt-get >/dev/null && [ "$SUDO" != "none" ]; then
    echo "installing Debian packages $PACKAGES (pdflatex, booktabs) ..."
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null 2>&1 \
             && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES >/dev/null 2>&1; } \
        || echo "warning: apt-get could not install $PACKAGES" >&2
fi
if ! command -v pdflatex >/dev/null; then
    echo "warning: pdflatex not found. Install it ('sudo apt-get install $PACKAGES', or TeX Live / MiKTeX" \
         "with booktabs); the LaTeX compile test skips without it, and fails under CI=true." >&2
    [ "${CI:-}" = "true" ] && exit 1
fi
exit 0
