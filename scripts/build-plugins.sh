#!/usr/bin/env bash
# Builds the built-in plugins as WebAssembly components and puts each beside its manifest
# (plugins/<name>/<name>.wasm), where pipelines find them.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
target="${CARGO_TARGET_DIR:-/var/tmp/weir-target}/wasm"
for name in mask filter rename webhook; do
    CARGO_TARGET_DIR="$target" cargo build --quiet --release --target wasm32-wasip2 -p "weir-plugin-$name"
    cp "$target/wasm32-wasip2/release/weir_plugin_$name.wasm" "plugins/$name/$name.wasm"
    echo "plugins/$name/$name.wasm"
done
