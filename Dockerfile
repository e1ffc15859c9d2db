# The gateway's container image: a Rust build stage, then a minimal runtime.
#
#   docker build -t wecom-kf-upgrade .          # or: podman build --format docker ...
#   docker run --rm -p 50051:50051 wecom-kf-upgrade \
#       serve --sandbox --listen 0.0.0.0:50051 --admin-listen 0.0.0.0:9464
#
# (podman's default OCI format has no HEALTHCHECK: hence --format docker.)
#
# Build arguments:
#   RUST_VERSION    the toolchain of the build stage (Debian bookworm, like the runtime:
#                   the binary links glibc dynamically, so both stages share one glibc)
#   RUNTIME_BASE    the runtime stage's base; any Debian 12 (glibc 2.36) image with
#                   libgcc_s works. No CA bundle is needed: the WeCom client trusts the
#                   Mozilla roots compiled into the binary (webpki-roots).
#
# Targets: `runtime` (the default, last) compiles the binary in the build stage.
# `runtime-prebuilt` is the same image around a binary built elsewhere, taken from the
# root of the build context as `wecom-kf-upgrade`: CI builds the binary once on the
# host and skips the build stage.

ARG RUST_VERSION=1.95
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------- build
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in a layer of their own: it is rebuilt only when the manifest,
# the lock file, the build script or the protos change, not on every source edit.
# Stub targets stand in for the sources (cargo needs every declared target to exist).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > benches/loadgen.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin wecom-kf-upgrade \
    # Forget the stubs' own artefacts, so the real sources are always compiled
    # (their modification times may well be older than the stubs').
    && rm -rf src benches \
        target/release/.fingerprint/wecom-kf-upgrade-* \
        target/release/deps/wecom_kf_upgrade-* \
        target/release/deps/libwecom_kf_upgrade-* \
        target/release/wecom-kf-upgrade*

COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin wecom-kf-upgrade \
    && install -D -m 0755 target/release/wecom-kf-upgrade /out/wecom-kf-upgrade

# ---------------------------------------------------------------- runtime
# Everything the runtime image is but the binary; the two targets below add it.
FROM ${RUNTIME_BASE} AS runtime-base

# A numeric non-root user, so that Kubernetes' runAsNonRoot can verify it without a
# passwd entry (65532 is distroless' `nonroot`). The binary writes no files: the
# image runs with a read-only root filesystem as it is.
USER 65532:65532

# gRPC, and admin HTTP (/healthz, /readyz).
EXPOSE 50051 9464

# For Docker and podman (Kubernetes ignores it and uses the chart's gRPC probes):
# the gateway's own gRPC health client, so the image needs no shell or curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/wecom-kf-upgrade", "health", "--addr", "127.0.0.1:50051", "--timeout-ms", "3000"]

# The gateway runs as PID 1 with no init in front: it installs its own SIGTERM and
# SIGINT handlers (the kernel drops signals to a PID 1 without handlers), drains on
# the first, exits at once on a second, and starts no child processes to reap.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/wecom-kf-upgrade"]
CMD ["serve"]

# A binary built elsewhere: `--target runtime-prebuilt`, with `wecom-kf-upgrade` at the
# root of the build context.
FROM runtime-base AS runtime-prebuilt
COPY --chown=0:0 --chmod=0755 wecom-kf-upgrade /usr/local/bin/wecom-kf-upgrade

# The default target: the binary of the build stage.
FROM runtime-base AS runtime
COPY --from=build --chown=0:0 --chmod=0755 /out/wecom-kf-upgrade /usr/local/bin/wecom-kf-upgrade
