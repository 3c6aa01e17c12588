#!/usr/bin/env bash
# Sourced by the set-up scripts: apt_install PACKAGE... installs Debian packages when apt-get can run
# (as root, or through password-less sudo), retrying once after `apt-get update`. It never fails the
# set-up: it prints a warning, and the caller says what the user can do instead.
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else return 0; fi
    fi
    command -v apt-get >/dev/null || return 0
    echo "installing Debian packages $* ..."
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null 2>&1 \
             && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1; } \
        || echo "warning: apt-get could not install $*" >&2
}
