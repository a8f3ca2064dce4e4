#!/usr/bin/env bash
# Installs the locked environment into .venv at the repository root.
# Needs only Python 3.11 (or 3.12) and access to PyPI; safe to run again (a no-op when up to date).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UV_VERSION="0.13.9"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))' 2>/dev/null; then
    echo "setup: needs Python 3.11 or 3.12 as '$PYTHON' (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi

if command -v uv >/dev/null 2>&1; then
    UV="$(command -v uv)"
else
    TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/maxtoki/uv-$UV_VERSION"
    UV="$TOOLS/bin/uv"
    if [ ! -x "$UV" ]; then
        echo "setup: installing uv $UV_VERSION into $TOOLS"
        "$PYTHON" -m venv "$TOOLS"
        "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
    fi
fi

# Byte-compile at install time: environments that set PYTHONDONTWRITEBYTECODE would otherwise
# recompile torch and Composer from source on every import (tens of seconds per command).
export UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1
cd "$ROOT"
"$UV" sync --frozen --python "$PYTHON" --quiet
echo "setup: environment ready in $ROOT/.venv"
