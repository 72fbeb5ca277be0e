#!/usr/bin/env bash
# Runs weir's whole test suite against a real PostgreSQL (started by the tests).
# Installs what it needs: the wasm32-wasip2 target and, in a Python venv, DuckDB, PyIceberg,
# moto and boto3 (tests/py/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/weir-target}"
if command -v rustup >/dev/null; then
    rustup target add wasm32-wasip2 >/dev/null 2>&1 || echo "warning: could not add the wasm32-wasip2 target" >&2
fi

venv="$CARGO_TARGET_DIR/pyenv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/py/requirements.txt
export WEIR_TEST_PYTHON="$venv/bin/python"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line with the totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "weir tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
