#!/usr/bin/env bash
# Load benchmark: the release gateway in its default configuration (JSON access log
# at info, metrics on, traces off) and the WeCom sandbox, as separate processes;
# benches/loadgen.rs loads the same operation directly (HTTP to the sandbox) and
# through the gateway (gRPC), in one run, and reports the gateway's CPU per call
# (utime + stime from /proc); then the gateway's memory.
#
#   scripts/bench.sh [--concurrency N] [--duration-secs S] [--connections C] [--gateway-only]
#
# Extra environment for the gateway goes in GATEWAY_ENV: for the floor without logging,
# GATEWAY_ENV=RUST_LOG=off,wecom_kf_upgrade::startup=info (the one line left says where
# the gateway listens). Everything stays on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --quiet
cargo bench --locked --no-run --bench loadgen --quiet 2>/dev/null || cargo bench --locked --no-run --bench loadgen

BIN=target/release/wecom-kf-upgrade
DIR="$(mktemp -d)"
PIDS=()
trap 'kill -TERM "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT

# Both listen on port 0 and say where in their first log line.
listening() { # LOG FIELD: the address FIELD names in LOG, once it is there
    for _ in $(seq 100); do
        sed -n "s/.*\"$2\":\"\([0-9.]*:[0-9]*\)\".*/\1/p" "$1" | head -n 1 | grep . && return
        sleep 0.1
    done
    echo "no $2 in $1" >&2
    return 1
}
LOG_FORMAT=json "$BIN" sandbox --listen 127.0.0.1:0 </dev/null >"$DIR/sandbox.log" 2>&1 &
PIDS+=($!)
SANDBOX="$(listening "$DIR/sandbox.log" addr)"
# ${GATEWAY_ENV:-} is word-split on purpose: VAR=value pairs.
# shellcheck disable=SC2086
env -u RUST_LOG -u LOG_FORMAT WECOM_CORP_ID=wwsandbox0000000001 WECOM_CORP_SECRET=sandbox-secret \
    WECOM_API_BASE="http://$SANDBOX" ${GATEWAY_ENV:-} LOG_FORMAT=json \
    "$BIN" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 </dev/null 2>"$DIR/gateway.log" &
PID=$!
PIDS+=("$PID")
GATEWAY="$(listening "$DIR/gateway.log" grpc_addr)"

rss_kib() { sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$PID/status"; }
IDLE=$(rss_kib VmRSS)

echo "# $(nproc) cores; gateway, sandbox and load generator share them"
cargo bench --locked --quiet --bench loadgen -- \
    --gateway "$GATEWAY" --sandbox "http://$SANDBOX" --gateway-pid "$PID" "$@"

echo "gateway memory: idle RSS $((IDLE / 1024)) MiB, peak RSS $(($(rss_kib VmHWM) / 1024)) MiB, now $(($(rss_kib VmRSS) / 1024)) MiB; $(wc -l <"$DIR/gateway.log") log lines"
