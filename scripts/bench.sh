#!/usr/bin/env bash
# The gateway's benchmark: builds the release binary and benches/loadgen.rs, which
# starts the WeCom sandbox and the gateway (its default configuration: JSON access log
# at info, metrics on, traces off) as processes of their own, loads them, and prints
# one table of figures and the targets, each marked met or not (see the README's
# "Performance").
#
#   scripts/bench.sh [--secure] [loadgen options: --concurrency 1,16,64,256
#                    --rates 100,1000 --duration-secs 5 --deadline-ms 5000
#                    --connections 4 --loads-only --gateway-env KEY=VALUE]
#
# One departure from the defaults: the sandbox is not WeCom, so WeCom's frequency
# limits, which the gateway keeps by default (9,500 calls a minute per corp and API),
# are lifted; the run measures the gateway's own cost.
#
# --secure runs the gateway as production would: TLS (certificates made with openssl)
# and caller authentication (a token from `caller add`), the load generator sending the
# token over TLS. Everything stays on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

SECURE=""
if [[ "${1:-}" == --secure ]]; then
    SECURE=1
    shift
fi

cargo build --release --locked --quiet
cargo bench --locked --no-run --bench loadgen --quiet

BIN=target/release/wecom-kf-upgrade
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT

SECURE_ARGS=()
if [[ -n "$SECURE" ]]; then
    key() { openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "$@" 2>/dev/null; }
    key -x509 -days 1 -subj "/CN=bench CA" -keyout "$DIR/ca.key" -out "$DIR/ca.crt"
    key -subj /CN=localhost -keyout "$DIR/tls.key" -out "$DIR/tls.csr"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$DIR/tls.ext"
    openssl x509 -req -in "$DIR/tls.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial \
        -days 1 -extfile "$DIR/tls.ext" -out "$DIR/tls.crt" 2>/dev/null
    "$BIN" caller add bench --apps '*' >"$DIR/caller.out"
    tail -n +2 "$DIR/caller.out" >"$DIR/callers.toml"
    SECURE_ARGS=(--gateway-env "WECOM_TLS_CERT_FILE=$DIR/tls.crt"
        --gateway-env "WECOM_TLS_KEY_FILE=$DIR/tls.key"
        --gateway-env "WECOM_CALLERS_FILE=$DIR/callers.toml"
        --ca-file "$DIR/ca.crt" --token "$(head -n 1 "$DIR/caller.out" | awk '{print $NF}')")
fi

cargo bench --locked --quiet --bench loadgen -- --binary "$BIN" "${SECURE_ARGS[@]}" "$@"
