#!/bin/sh
# One-time set-up shared by `make serve` and `make test` on a fresh Debian machine (as root):
# Debian packages, a Python >= 3.12 virtualenv with sandboxd installed, and the wasm runtimes
# built once into the data directory. Every step is skipped when already done.
set -eu
cd "$(dirname "$0")/.."
DATA_DIR=${SANDBOXD_DATA_DIR:-.sandboxd}
DEBIAN_PACKAGES="libnl-route-3-200 redis-server redis-tools git bubblewrap procps uidmap"

step() { printf '\n==> %s\n' "$*"; }

missing=""
for package in $DEBIAN_PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $package"
done
if [ -n "$missing" ]; then
    step "installing Debian packages:$missing"
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: these Debian packages are missing and installing them needs root:$missing" >&2
        exit 1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    python=$(scripts/find_python.sh)
    step "creating .venv with $python"
    rm -rf .venv
    "$python" -m venv .venv
fi

stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    step "installing sandboxd and its dependencies into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet --progress-bar on -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

step "wasm runtimes in $DATA_DIR"
.venv/bin/python -m isolates.wasm.build --data-dir "$DATA_DIR"

# Bytecode for sandboxd's own packages, written even where PYTHONDONTWRITEBYTECODE is set:
# compiling them from source at every start would cost `sandboxd serve` about 0.3 s.
# compileall skips what is up to date.
.venv/bin/python -m compileall -q executor isolates artifacts egress scheduler sandboxd bench
