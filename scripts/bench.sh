#!/usr/bin/env bash
# Load benchmark: the release gateway on its embedded sandbox, loaded by
# benches/loadgen.rs both directly (HTTP to the sandbox) and through the gateway
# (gRPC), in one run; then the gateway's memory from /proc.
#
#   scripts/bench.sh [--concurrency N] [--duration-secs S] [--connections C]
#
# Everything stays on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --quiet
cargo bench --locked --no-run --bench loadgen --quiet 2>/dev/null || cargo bench --locked --no-run --bench loadgen

read -r GRPC_PORT ADMIN_PORT SANDBOX_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')
LOG="$(mktemp)"
# The sandbox is not WeCom: WeCom's frequency limits, which the gateway keeps by
# default (9,500 calls a minute per corp and API), are lifted so that the run
# measures the gateway's own cost. Everything else is the default configuration.
CONFIG="$(mktemp)"
printf '[limits]\ncorp_api_per_minute = 1000000\ncorp_api_per_hour = 100000000\n' >"$CONFIG"
RUST_LOG=warn target/release/wecom-kf-upgrade serve --sandbox --config "$CONFIG" \
    --listen "127.0.0.1:$GRPC_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --sandbox-listen "127.0.0.1:$SANDBOX_PORT" </dev/null 2>"$LOG" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; rm -f "$LOG" "$CONFIG"' EXIT

for _ in $(seq 60); do
    target/release/wecom-kf-upgrade health --addr "127.0.0.1:$GRPC_PORT" --timeout-ms 500 >/dev/null 2>&1 && break
    sleep 0.5
done

rss_kib() { sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$PID/status"; }
IDLE=$(rss_kib VmRSS)

echo "# $(nproc) cores; gateway and load generator share them"
cargo bench --locked --quiet --bench loadgen -- \
    --gateway "127.0.0.1:$GRPC_PORT" --sandbox "http://127.0.0.1:$SANDBOX_PORT" "$@"

echo "gateway + embedded sandbox memory: idle RSS $((IDLE / 1024)) MiB, peak RSS $(($(rss_kib VmHWM) / 1024)) MiB, now $(($(rss_kib VmRSS) / 1024)) MiB"
