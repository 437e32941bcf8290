#!/usr/bin/env bash
# Install R with lme4 and metafor from Debian's packages (r-base-core, r-cran-lme4, r-cran-metafor), the peers
# the reference and speed benchmarks run in the same run as twoway. Idempotent: nothing is installed when
# `Rscript -e 'library(lme4)'` already works. Needs root (or sudo) and Debian's package registry.
set -euo pipefail
if command -v Rscript >/dev/null 2>&1 && Rscript -e 'suppressMessages({library(lme4); library(metafor)})' >/dev/null 2>&1; then
    echo "lme4 already installed: $(Rscript -e 'cat(as.character(packageVersion("lme4")))')"
    exit 0
fi
as_root=""
if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup-lme4: needs root or sudo to apt-get install r-cran-lme4" >&2; exit 1; }
    as_root="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$as_root apt-get update -qq >/dev/null || true
$as_root apt-get install -y -qq --no-install-recommends r-base-core r-cran-lme4 r-cran-metafor >/dev/null
Rscript -e 'cat("lme4", as.character(packageVersion("lme4")), "installed\n")'
