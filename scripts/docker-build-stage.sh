#!/usr/bin/env bash
# Runs the Dockerfile's build stage outside Docker (no Docker engine runs here), then
# checks what the runtime stage copies out of it:
#   - the build context as `COPY . .` gives it (.dockerignore applied) in a temporary /src;
#   - each RUN of the `build` stage, read from the Dockerfile itself (so the two cannot
#     drift), with its --mount options dropped and /src and /out moved under a temporary
#     directory; /src/target, a cache mount in the image, is $CARGO_TARGET_DIR here;
#   - then /out/bin/weir must run, be stripped, and accept a pipeline that uses every
#     built-in plugin from /out/plugins (`weir validate --offline` compiles them).
#
#   scripts/docker-build-stage.sh           # the commands as written: the dist profile (~15 min cold)
#   scripts/docker-build-stage.sh --quick   # the same commands, the dist profile unoptimized
#                                           # through Cargo's CARGO_PROFILE_DIST_* variables (CI)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
case "${1:-}" in
    --quick) quick=true ;;
    "") ;;
    *)
        echo "usage: scripts/docker-build-stage.sh [--quick]" >&2
        exit 2
        ;;
esac

target="${CARGO_TARGET_DIR:-/var/tmp/weir-target}"
mkdir -p "$target"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
src="$work/src"
out="$work/out"
mkdir -p "$src"

# COPY . . : the context without what .dockerignore names (`**/x` matches x anywhere,
# as tar's unanchored exclusions do).
excludes=()
while IFS= read -r pattern; do
    case "$pattern" in "" | \#*) continue ;; esac
    excludes+=("--exclude=${pattern#\*\*/}")
done <.dockerignore
tar -c "${excludes[@]}" . | tar -x -C "$src"
ln -s "$target" "$src/target"

# The build stage's RUN instructions, continuation lines joined.
mapfile -t runs < <(awk '
    /^FROM / { in_build = ($0 ~ / AS build$/) }
    !in_build { next }
    { line = line $0 }
    /\\$/ { sub(/\\$/, "", line); next }
    { if (line ~ /^RUN /) print substr(line, 5); line = "" }
' Dockerfile)
if [ "${#runs[@]}" -lt 2 ]; then
    echo "FAIL the Dockerfile's build stage has ${#runs[@]} RUN instruction(s); expected the host and the plugins" >&2
    exit 1
fi

if $quick; then
    export CARGO_PROFILE_DIST_OPT_LEVEL=0 CARGO_PROFILE_DIST_LTO=false CARGO_PROFILE_DIST_CODEGEN_UNITS=256
fi
for run in "${runs[@]}"; do
    command="$(sed -E -e 's/--mount=[^ ]+ +//g' \
        -e "s#(^|[ =\"])/src([/ \"]|$)#\1$src\2#g" \
        -e "s#(^|[ =\"])/out([/ \"]|$)#\1$out\2#g" <<<"$run")"
    echo "RUN $command"
    # In the image nothing sets CARGO_TARGET_DIR: cargo writes to /src/target.
    (cd "$src" && env -u CARGO_TARGET_DIR bash -euo pipefail -c "$command")
done

# What the runtime stage copies.
weir="$out/bin/weir"
"$weir" --version
if readelf -S "$weir" | grep -q '\.symtab'; then
    echo "FAIL $weir is not stripped (the dist profile strips it)" >&2
    exit 1
fi
pipeline="$work/pipeline.toml"
{
    echo '[source]'
    echo 'url = "postgres://weir@localhost:5432/shop"'
    echo 'tables = ["public.orders"]'
    printf '[[sink]]\ntype = "parquet"\nurl = "file://%s"\n' "$work/data"
    for manifest in plugins/*/weir-plugin.toml; do
        name="$(basename "$(dirname "$manifest")")"
        [ -f "$out/plugins/$name/$name.wasm" ] || {
            echo "FAIL /out/plugins/$name/$name.wasm is missing" >&2
            exit 1
        }
        case "$name" in
            mask) printf '[[transform]]\nplugin = "%s"\nconfig = { salt = "s", tags = { pii = ["email"] }, rules = [{ tag = "pii", method = "hash" }] }\n' "$out/plugins/mask" ;;
            filter) printf '[[transform]]\nplugin = "%s"\nconfig = { where = [{ column = "status", in = ["paid"] }] }\n' "$out/plugins/filter" ;;
            rename) printf '[[transform]]\nplugin = "%s"\nconfig = { tables = { "public.orders" = "sales.orders" } }\n' "$out/plugins/rename" ;;
            webhook) printf '[[sink]]\ntype = "plugin"\nplugin = "%s"\nconfig = { url = "http://127.0.0.1:9/hook" }\n' "$out/plugins/webhook" ;;
            *)
                echo "FAIL plugins/$name: this script does not know how to configure it; add it" >&2
                exit 1
                ;;
        esac
    done
} >"$pipeline"
# The webhook manifest grants HTTP to $WEIR_WEBHOOK_HOST.
WEIR_WEBHOOK_HOST=127.0.0.1:9 "$weir" validate "$pipeline" --offline
echo "docker build stage: ok (${#runs[@]} RUN instructions outside Docker$($quick && echo ', dist unoptimized'))"
