#!/usr/bin/env bash
# A bounded soak under faults (about a minute of calls; the whole run under two):
# the WeCom sandbox as its own process, a TCP fault proxy in front of it
# (scripts/fault_proxy.py: resets before and after forwarding, stalls, slow
# bodies), the gateway `serve` pointed at the proxy, and scripts/soak.py driving
# thousands of calls from many concurrent clients while it scripts sandbox faults
# (errcodes, HTTP 5xx and HTML pages, delays) and expires or revokes the tokens
# every few seconds. Then the gateway gets SIGTERM, and soak.py judges what the
# sandbox recorded against what the callers were told.
#
#   scripts/soak.sh [BINARY] [--seconds N]
#
# BINARY is the release build (default target/release/wecom-kf-upgrade); this
# script builds nothing. Needs python3 with grpcio, grpcio-tools and
# grpcio-status (scripts/e2e.sh installs them). Everything stays on loopback and
# stops by itself. Exits non-zero if a check failed.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="target/release/wecom-kf-upgrade"
if [[ $# -gt 0 && "$1" != --* ]]; then
    BIN="$1"
    shift
fi
SECONDS_OF_CALLS=60
while (($#)); do
    case "$1" in
    --seconds)
        SECONDS_OF_CALLS="$2"
        shift 2
        ;;
    *)
        echo "usage: scripts/soak.sh [BINARY] [--seconds N]" >&2
        exit 64
        ;;
    esac
done
if [[ ! -x "$BIN" ]]; then
    echo "soak: no binary at $BIN (cargo build --release first)" >&2
    exit 1
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/wecom-kf-soak.XXXXXX")"
PIDS=()
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Four free loopback ports below the kernel's ephemeral range: a port picked there
# could be taken by any outgoing connection before our process binds it.
read -r GRPC_PORT ADMIN_PORT SANDBOX_PORT PROXY_PORT < <(timeout 10 python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
ports = []
while len(ports) < 4:
    port = random.randrange(10000, low)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    if port not in ports:
        ports.append(port)
print(*ports)
')
SANDBOX_URL="http://127.0.0.1:$SANDBOX_PORT"

# wait_for NAME COMMAND...: retries COMMAND for up to 30 s.
wait_for() {
    local name="$1"
    shift
    for _ in $(seq 60); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "soak: $name did not start; logs in $WORK:" >&2
    tail -n 20 "$WORK"/*.log >&2
    return 1
}

"$BIN" sandbox --listen "127.0.0.1:$SANDBOX_PORT" </dev/null >"$WORK/sandbox.log" 2>&1 &
PIDS+=($!)
wait_for sandbox timeout 5 python3 -c "import urllib.request; urllib.request.urlopen('$SANDBOX_URL/sandbox/state', timeout=2)"

python3 scripts/fault_proxy.py --listen "$PROXY_PORT" --upstream "127.0.0.1:$SANDBOX_PORT" \
    --stats "$WORK/proxy.json" --max-seconds 150 </dev/null >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")

# Upstream timeouts shorter than the defaults, so that a stall or a delay costs a
# second, not five, and a minute holds many of them; drained at once on SIGTERM.
cat >"$WORK/gateway.toml" <<'TOML'
[upstream]
connect_timeout_ms = 500
request_timeout_ms = 1000
call_timeout_ms = 3000

[server]
drain_delay_ms = 0
shutdown_grace_ms = 5000

# The soak is about faults: WeCom's frequency limits, which the gateway keeps
# by default (and which the tests cover), would refuse most of its calls.
[limits]
corp_api_per_minute = 1000000
corp_api_per_hour = 100000000
TOML
# The sandbox's demo credentials: not secrets.
WECOM_CORP_ID=wwsandbox0000000001 WECOM_CORP_SECRET=sandbox-secret \
    WECOM_API_BASE="http://127.0.0.1:$PROXY_PORT" LOG_FORMAT=json \
    "$BIN" serve --config "$WORK/gateway.toml" \
    --listen "127.0.0.1:$GRPC_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    </dev/null >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
PIDS+=("$GATEWAY_PID")
wait_for gateway timeout 5 "$BIN" health --addr "127.0.0.1:$GRPC_PORT" --timeout-ms 1000

echo "# soak: ${SECONDS_OF_CALLS} s of calls; gateway pid $GATEWAY_PID, sandbox $SANDBOX_URL, fault proxy :$PROXY_PORT"
timeout $((SECONDS_OF_CALLS + 40)) python3 scripts/soak.py drive \
    --gateway "127.0.0.1:$GRPC_PORT" --sandbox "$SANDBOX_URL" \
    --seconds "$SECONDS_OF_CALLS" --out "$WORK/results.json"

PEAK_RSS_KIB="$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$GATEWAY_PID/status" 2>/dev/null || echo 0)"
kill -TERM "$GATEWAY_PID"
GATEWAY_EXIT=0
timeout 15 tail --pid="$GATEWAY_PID" -f /dev/null || kill -KILL "$GATEWAY_PID" 2>/dev/null || true
wait "$GATEWAY_PID" || GATEWAY_EXIT=$?
kill -TERM "$PROXY_PID"
wait "$PROXY_PID" || true

rc=0
timeout 60 python3 scripts/soak.py report --results "$WORK/results.json" --sandbox "$SANDBOX_URL" \
    --proxy-stats "$WORK/proxy.json" --gateway-log "$WORK/gateway.log" \
    --peak-rss-kib "${PEAK_RSS_KIB:-0}" --gateway-exit "$GATEWAY_EXIT" || rc=$?
if ((rc != 0)) && grep -q -e panicked -e '"level":"ERROR"' "$WORK/gateway.log"; then
    echo "the gateway's log, panics and errors:"
    grep -e panicked -e '"level":"ERROR"' "$WORK/gateway.log" | head -n 10
fi
exit "$rc"
