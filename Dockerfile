# syntax=docker/dockerfile:1
# weir's container image: the `weir` binary and the built-in plugins (mask, filter, rename,
# webhook), run as a non-root user.
#
#   docker build -t weir .
#   docker run --rm -e WEIR_SOURCE_URL=postgres://weir@db:5432/shop -e PGPASSWORD \
#       -v "$PWD/pipeline.toml:/etc/weir/pipeline.toml:ro" -v weir-data:/var/lib/weir weir
#
# The pipeline file is read from /etc/weir/pipeline.toml (mount it, or pass other
# arguments: `docker run weir validate /etc/weir/pipeline.toml --offline`). Built-in
# plugins are under /usr/share/weir/plugins/<name>, so a pipeline names them with an
# absolute path: `plugin = "/usr/share/weir/plugins/mask"`. `[metrics] listen` must be
# `0.0.0.0:9187` to be reached from outside the container. `docker stop` waits 10 s by
# default, less than weir's `shutdown_timeout` (30 s): use `docker stop -t 45`.

# Build and runtime stages are both Debian bookworm, so the binary links against the glibc
# it runs with. 1.95 is the workspace's rust-version.
FROM rust:1.95-bookworm AS build

RUN rustup target add wasm32-wasip2

WORKDIR /src
COPY . .

# The host: the `dist` profile (LTO, stripped), the versions in Cargo.lock exactly.
# --locked resolves the whole workspace, so the plugin builds below cannot change
# Cargo.lock either. The caches keep downloads and compiled dependencies between builds;
# what the runtime stage needs is copied out of them in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist -p weir --locked \
    && install -D -m 0755 target/dist/weir /out/bin/weir

# The built-in plugins, as the README builds them: scripts/build-plugins.sh runs
# `cargo build --release --target wasm32-wasip2` for each and puts the component beside its
# manifest (plugins/<name>/<name>.wasm). Each manifest and its component go to
# /out/plugins/<name>/; a manifest without its component fails the build here.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    CARGO_TARGET_DIR=/src/target bash scripts/build-plugins.sh \
    && for manifest in plugins/*/weir-plugin.toml; do \
        dir="$(dirname "$manifest")"; name="$(basename "$dir")"; \
        install -D -m 0644 "$manifest" "/out/plugins/$name/weir-plugin.toml"; \
        install -m 0644 "$dir/$name.wasm" "/out/plugins/$name/$name.wasm"; \
    done

FROM debian:bookworm-slim

# ca-certificates: the public roots for S3, REST catalogs, webhooks and
# `sslrootcert=system`. DL3008 (pin apt versions) is ignored on purpose: ca-certificates
# must follow Debian's updates, and a pinned version disappears from the archive once
# superseded, which would break the build rather than make it reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The user weir runs as (uid and gid 10001), with its home on the state volume.
# /var/cache/weir: compiled plugin components ($WEIR_CACHE_DIR) and, for Iceberg mirror
# tables, `index_dir = "/var/cache/weir/index"`; both are rebuilt when lost.
# /var/lib/weir: local output and state (file:// sinks, `[state] url`).
RUN groupadd --system --gid 10001 weir \
    && useradd --system --no-log-init --uid 10001 --gid weir \
        --home-dir /var/lib/weir --shell /usr/sbin/nologin weir \
    && install -d -o weir -g weir -m 0750 /var/lib/weir /var/cache/weir /var/cache/weir/components \
    && install -d -m 0755 /etc/weir

COPY --from=build /out/bin/weir /usr/local/bin/weir
COPY --from=build /out/plugins/ /usr/share/weir/plugins/

ENV WEIR_CACHE_DIR=/var/cache/weir/components
VOLUME ["/var/cache/weir", "/var/lib/weir"]

# The metrics and health endpoint, when the pipeline has `[metrics] listen = "0.0.0.0:9187"`.
EXPOSE 9187

USER 10001:10001
WORKDIR /var/lib/weir
ENTRYPOINT ["weir"]
CMD ["run", "/etc/weir/pipeline.toml"]
