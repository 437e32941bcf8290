#!/usr/bin/env bash
# Make sure a headless-capable Chromium is at /usr/bin/chromium for the report's browser test.
#
# Present already: nothing to do. Missing, running as root on Debian/Ubuntu: install the
# distribution's `chromium` package with apt-get (about 20 s and ~300 MB on Debian 12).
# Missing otherwise: say what to install and exit non-zero, so `make test` stops with a reason
# instead of the browser test failing later.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

say() { echo "ensure-chromium: $*" >&2; }

if ! command -v apt-get >/dev/null 2>&1; then
    say "$CHROMIUM is missing and this system has no apt-get."
    say "Install Chromium with your package manager so that $CHROMIUM exists, then run 'make test' again."
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    say "$CHROMIUM is missing; the report's browser test needs it."
    say "Install it as root:  sudo apt-get update && sudo apt-get install -y chromium"
    exit 1
fi

say "installing Debian's chromium package (needed by the report's browser test) ..."
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
if [ ! -x "$CHROMIUM" ]; then
    say "apt-get finished but $CHROMIUM is still missing; install a package that provides it."
    exit 1
fi
say "installed $("$CHROMIUM" --version 2>/dev/null | head -n 1) in $(( $(date +%s) - start )) s"
