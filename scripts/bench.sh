#!/usr/bin/env bash
# Load benchmark: the release gateway on its embedded sandbox, loaded by
# benches/loadgen.rs both directly (HTTP to the sandbox) and through the gateway
# (gRPC), in one run; then the gateway's memory from /proc.
#
#   scripts/bench.sh [--secure] [--concurrency N] [--duration-secs S] [--connections C]
#
# --secure runs the gateway as production would: TLS (certificates made with openssl) and
# caller authentication (a token from `caller add`), the load generator sending the token
# over TLS. Both modes print the gateway process's CPU time per call (/proc/PID/stat).
# Everything stays on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

SECURE=""
if [[ "${1:-}" == --secure ]]; then
    SECURE=1
    shift
fi

cargo build --release --locked --quiet
cargo bench --locked --no-run --bench loadgen --quiet 2>/dev/null || cargo bench --locked --no-run --bench loadgen

read -r GRPC_PORT ADMIN_PORT SANDBOX_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')
WORK="$(mktemp -d)"
LOG="$WORK/gateway.log"
# The sandbox is not WeCom: WeCom's frequency limits, which the gateway keeps by
# default (9,500 calls a minute per corp and API), are lifted so that the run
# measures the gateway's own cost. Everything else is the default configuration.
CONFIG="$WORK/gateway.toml"
printf '[limits]\ncorp_api_per_minute = 1000000\ncorp_api_per_hour = 100000000\n' >"$CONFIG"
BIN=target/release/wecom-kf-upgrade
SERVE_ENV=()
HEALTH_TLS=()
LOADGEN_SECURE=()
if [[ -n "$SECURE" ]]; then
    key() { openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "$@" 2>/dev/null; }
    key -x509 -days 1 -subj "/CN=bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.crt"
    key -subj /CN=localhost -keyout "$WORK/tls.key" -out "$WORK/tls.csr"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$WORK/tls.ext"
    openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
        -days 1 -extfile "$WORK/tls.ext" -out "$WORK/tls.crt" 2>/dev/null
    "$BIN" caller add bench --apps '*' >"$WORK/caller.out"
    tail -n +2 "$WORK/caller.out" >"$WORK/callers.toml"
    SERVE_ENV=(WECOM_TLS_CERT_FILE="$WORK/tls.crt" WECOM_TLS_KEY_FILE="$WORK/tls.key"
        WECOM_CALLERS_FILE="$WORK/callers.toml")
    HEALTH_TLS=(--tls-ca-file "$WORK/ca.crt" --tls-server-name localhost)
    LOADGEN_SECURE=(--ca-file "$WORK/ca.crt" --token "$(head -n 1 "$WORK/caller.out" | awk '{print $NF}')")
fi
env "${SERVE_ENV[@]}" RUST_LOG=warn "$BIN" serve --sandbox --config "$CONFIG" \
    --listen "127.0.0.1:$GRPC_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --sandbox-listen "127.0.0.1:$SANDBOX_PORT" </dev/null 2>"$LOG" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT

for _ in $(seq 60); do
    "$BIN" health --addr "127.0.0.1:$GRPC_PORT" "${HEALTH_TLS[@]}" --timeout-ms 500 >/dev/null 2>&1 && break
    sleep 0.5
done

rss_kib() { sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$PID/status"; }
IDLE=$(rss_kib VmRSS)

echo "# $(nproc) cores; gateway and load generator share them${SECURE:+; TLS and caller authentication on}"
cargo bench --locked --quiet --bench loadgen -- \
    --gateway "127.0.0.1:$GRPC_PORT" --sandbox "http://127.0.0.1:$SANDBOX_PORT" --pid "$PID" \
    "${LOADGEN_SECURE[@]}" "$@"

echo "gateway + embedded sandbox memory: idle RSS $((IDLE / 1024)) MiB, peak RSS $(($(rss_kib VmHWM) / 1024)) MiB, now $(($(rss_kib VmRSS) / 1024)) MiB"
