#!/usr/bin/env bash
# Create benchmarks/.venv-bambi (a virtualenv of its own, apart from twoway's .venv) and install Bambi in it.
# Idempotent: an existing venv is reused and the install is skipped when `import bambi` already works.
# Run from anywhere: benchmarks/peers/setup-bambi.sh   (BAMBI_SPEC=bambi==0.21.0 to pin a version)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/benchmarks/.venv-bambi"
spec="${BAMBI_SPEC:-bambi}"

if [ ! -x "$venv/bin/python" ]; then
    base="$("$root/scripts/find-python.sh")"   # the same Python >= 3.12 search as `make demo`
    echo "creating $venv with $base"
    "$base" -m venv "$venv"
fi
if "$venv/bin/python" -c 'import bambi' >/dev/null 2>&1; then
    echo "bambi already installed in $venv: $("$venv/bin/python" -c 'import bambi; print(bambi.__version__)')"
    exit 0
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$spec"
"$venv/bin/python" -c 'import bambi, pymc; print(f"bambi {bambi.__version__} (pymc {pymc.__version__}) installed in '"$venv"'")'
