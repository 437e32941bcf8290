#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter, or explain what to install.
# Looks at python3.13 / python3.12 / python3 on PATH, then at pyenv's versions.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
for cand in python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && ok "$cand"; then
        command -v "$cand"; exit 0
    fi
done
root=""
if command -v pyenv >/dev/null 2>&1; then root=$(pyenv root 2>/dev/null); fi
[ -n "$root" ] || root="${PYENV_ROOT:-$HOME/.pyenv}"
for v in 3.12 3.13; do
    for py in $(ls -d "$root"/versions/"$v"*/bin/python"$v" 2>/dev/null | sort -r); do
        if ok "$py"; then echo "$py"; exit 0; fi
    done
done
echo "twoway needs Python 3.12 or newer and found none (looked for python3.13, python3.12, python3 on PATH and in pyenv's versions)." >&2
echo "Install one, for example 'pyenv install 3.12' or your system's python3.12 package, then run the command again." >&2
exit 1
