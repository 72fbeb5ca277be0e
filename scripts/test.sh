#!/usr/bin/env bash
# Runs weir's whole test suite against a real PostgreSQL (started by the tests).
# Installs what it needs: the wasm32-wasip2 target; in a Python venv, DuckDB, PyIceberg,
# moto, boto3, componentize-py and PySpark (tests/py/requirements.txt); ComponentizeJS
# (npm); and, as root from Debian packages when missing, python3-venv, Node.js, npm,
# e2fsprogs, binutils and Java 17.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/weir-target}"

# A Debian package, installed when missing and running as root; otherwise a clear stop.
need_package() { # command package
    command -v "$1" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq "$2" >/dev/null
    else
        echo "error: $1 is missing: install it (apt-get install $2)" >&2
        exit 1
    fi
}

if command -v rustup >/dev/null; then
    rustup target add wasm32-wasip2 >/dev/null
elif [ ! -d "$(rustc --print sysroot)/lib/rustlib/wasm32-wasip2" ]; then
    echo "error: the wasm32-wasip2 target is missing and rustup is not there to add it" >&2
    exit 1
fi

# chattr makes the output unwritable in a fault test (root ignores permissions).
need_package chattr e2fsprogs
# Java runs Spark (PySpark, local mode), one of the changelog's independent readers.
need_package java openjdk-17-jre-headless

venv="$CARGO_TARGET_DIR/pyenv"
if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian splits venv support out of python3.
        rm -rf "$venv"
        pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq "python$pyver-venv" >/dev/null
        fi
        python3 -m venv "$venv"
    fi
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/py/requirements.txt
export WEIR_TEST_PYTHON="$venv/bin/python"

# The container and Kubernetes files: hadolint, the Kubernetes API schemas, the alert rules.
bash scripts/lint-deploy.sh "$venv"
# The Dockerfile's build stage, run outside Docker (there is no Docker engine here);
# readelf tells whether the binary is stripped.
need_package readelf binutils
bash scripts/docker-build-stage.sh --quick

# ComponentizeJS, which builds the JavaScript example plugin (examples/plugins/route-js).
# Installed from the example's lockfile, again only when the lockfile changes.
need_package node nodejs
need_package npm npm
jsenv="$CARGO_TARGET_DIR/jsenv"
mkdir -p "$jsenv"
if ! cmp -s examples/plugins/route-js/package-lock.json "$jsenv/package-lock.json" || [ ! -x "$jsenv/node_modules/.bin/componentize-js" ]; then
    cp examples/plugins/route-js/package.json examples/plugins/route-js/package-lock.json "$jsenv/"
    # `npm install` with the lockfile, not `npm ci`: npm 11 leaves other platforms'
    # optional packages out of the lockfile and `npm ci` then refuses it.
    (cd "$jsenv" && npm install --no-audit --no-fund --loglevel=error)
fi
export WEIR_TEST_NODE_MODULES="$jsenv/node_modules"

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
