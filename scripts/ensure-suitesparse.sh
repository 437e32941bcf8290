#!/usr/bin/env bash
# Make sure SuiteSparse's headers and libraries are there for scikit-sparse (CHOLMOD), which pip builds
# against them; the sparse likelihood path of large sparse crossed tables needs it.
#
# Present already (/usr/include/suitesparse/cholmod.h): nothing to do, except that on Debian/Ubuntu as
# root an optimised BLAS (OpenBLAS) is installed when missing: with the reference BLAS a CHOLMOD
# factorisation of a large table was ~3-5x slower (measured: 0.16 s vs 0.03-0.05 s, 2,972 x 1,128 levels).
# Missing, running as root on Debian/Ubuntu: apt-get install libsuitesparse-dev (and OpenBLAS).
# Missing otherwise: say what to install and exit non-zero, so `make setup` stops with a reason
# instead of pip failing later in a C compile.
set -euo pipefail

HEADER=/usr/include/suitesparse/cholmod.h

say() { echo "ensure-suitesparse: $*" >&2; }

have_openblas() {
    ls /usr/lib/*/libopenblas*.so* /usr/lib/*/openblas*/libblas.so* >/dev/null 2>&1
}

if [ -f "$HEADER" ]; then
    if ! have_openblas && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
        say "installing OpenBLAS (CHOLMOD is several times faster with it than with the reference BLAS) ..."
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null \
            || say "could not install libopenblas0-pthread; CHOLMOD will use the reference BLAS (slower)."
    fi
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    say "$HEADER is missing and this system has no apt-get."
    say "Install SuiteSparse's development files (CHOLMOD headers and libraries) with your package manager"
    say "(for example 'brew install suite-sparse', 'dnf install suitesparse-devel', 'conda install suitesparse'),"
    say "then run 'make setup' again."
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    say "$HEADER is missing; scikit-sparse (CHOLMOD, the sparse likelihood path) is built against it."
    say "Install it as root:  sudo apt-get update && sudo apt-get install -y libsuitesparse-dev libopenblas0-pthread"
    exit 1
fi

say "installing Debian's libsuitesparse-dev and OpenBLAS (scikit-sparse builds against them) ..."
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq libsuitesparse-dev libopenblas0-pthread >/dev/null
if [ ! -f "$HEADER" ]; then
    say "apt-get finished but $HEADER is still missing; install a package that provides it."
    exit 1
fi
say "installed SuiteSparse in $(( $(date +%s) - start )) s"
