#!/usr/bin/env bash
# Load benchmark: the release gateway in its default configuration (JSON access log
# at info, metrics on, traces off) and the WeCom sandbox, as separate processes;
# benches/loadgen.rs loads the same operation directly (HTTP to the sandbox) and
# through the gateway (gRPC), in one run, and reports the gateway's CPU per call
# (utime + stime from /proc); then the gateway's memory.
#
#   scripts/bench.sh [--secure] [--concurrency N] [--duration-secs S] [--connections C] [--gateway-only]
#
# One departure from the defaults: the sandbox is not WeCom, so WeCom's frequency
# limits, which the gateway keeps by default (9,500 calls a minute per corp and API),
# are lifted; the run measures the gateway's own cost.
#
# --secure runs the gateway as production would: TLS (certificates made with openssl)
# and caller authentication (a token from `caller add`), the load generator sending the
# token over TLS.
#
# Extra environment for the gateway goes in GATEWAY_ENV: for the floor without logging,
# GATEWAY_ENV=RUST_LOG=off,wecom_kf_upgrade::startup=info (the one line left says where
# the gateway listens). Everything stays on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

SECURE=""
if [[ "${1:-}" == --secure ]]; then
    SECURE=1
    shift
fi

cargo build --release --locked --quiet
cargo bench --locked --no-run --bench loadgen --quiet 2>/dev/null || cargo bench --locked --no-run --bench loadgen

BIN=target/release/wecom-kf-upgrade
DIR="$(mktemp -d)"
PIDS=()
trap 'kill -TERM "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT

printf '[limits]\ncorp_api_per_minute = 1000000\ncorp_api_per_hour = 100000000\n' >"$DIR/gateway.toml"
SECURE_ENV=()
LOADGEN_SECURE=()
if [[ -n "$SECURE" ]]; then
    key() { openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "$@" 2>/dev/null; }
    key -x509 -days 1 -subj "/CN=bench CA" -keyout "$DIR/ca.key" -out "$DIR/ca.crt"
    key -subj /CN=localhost -keyout "$DIR/tls.key" -out "$DIR/tls.csr"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$DIR/tls.ext"
    openssl x509 -req -in "$DIR/tls.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial \
        -days 1 -extfile "$DIR/tls.ext" -out "$DIR/tls.crt" 2>/dev/null
    "$BIN" caller add bench --apps '*' >"$DIR/caller.out"
    tail -n +2 "$DIR/caller.out" >"$DIR/callers.toml"
    SECURE_ENV=(WECOM_TLS_CERT_FILE="$DIR/tls.crt" WECOM_TLS_KEY_FILE="$DIR/tls.key"
        WECOM_CALLERS_FILE="$DIR/callers.toml")
    LOADGEN_SECURE=(--ca-file "$DIR/ca.crt" --token "$(head -n 1 "$DIR/caller.out" | awk '{print $NF}')")
fi

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
    WECOM_API_BASE="http://$SANDBOX" "${SECURE_ENV[@]}" ${GATEWAY_ENV:-} LOG_FORMAT=json \
    "$BIN" serve --config "$DIR/gateway.toml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    </dev/null 2>"$DIR/gateway.log" &
PID=$!
PIDS+=("$PID")
GATEWAY="$(listening "$DIR/gateway.log" grpc_addr)"

rss_kib() { sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$PID/status"; }
IDLE=$(rss_kib VmRSS)

echo "# $(nproc) cores; gateway, sandbox and load generator share them${SECURE:+; TLS and caller authentication on}"
cargo bench --locked --quiet --bench loadgen -- \
    --gateway "$GATEWAY" --sandbox "http://$SANDBOX" --gateway-pid "$PID" \
    "${LOADGEN_SECURE[@]}" "$@"

echo "gateway memory: idle RSS $((IDLE / 1024)) MiB, peak RSS $(($(rss_kib VmHWM) / 1024)) MiB, now $(($(rss_kib VmRSS) / 1024)) MiB; $(wc -l <"$DIR/gateway.log") log lines"
