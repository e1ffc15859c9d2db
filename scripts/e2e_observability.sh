# shellcheck shell=bash
# Observability, end to end (sourced by scripts/e2e.sh, which provides BIN, TMP,
# ok/not_ok, run_check and CLEANUP_HOOKS): the release gateway and the sandbox as
# separate processes in the default configuration, a known set of calls, then
# - /metrics counts exactly those calls, and `promtool check metrics` finds nothing;
# - a real Prometheus scrapes the gateway and a query returns the call count;
# - every query of the Grafana dashboard and every alert names exported metrics,
#   and the dashboard's queries run on that Prometheus (scripts/check_ops.py);
# - `promtool test rules` passes for the shipped alert rules;
# - the access log has one line per call;
# - a trace export configuration the gateway cannot serve stops it with exit 64.
# Needs promtool and prometheus (Debian's `prometheus`, in scripts/apt-packages.sh).

OBS_PIDS=()
obs_cleanup() {
    local pid
    for pid in "${OBS_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${OBS_PIDS[@]}"; do
        timeout 10 tail --pid="$pid" -f /dev/null 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
    done
}
CLEANUP_HOOKS+=(obs_cleanup)

# Prometheus needs a port picked for it; the sandbox and the gateway listen on port
# 0 and say where in their first log line (a port picked and released could be
# taken by someone else's connection before they bind it).
read -r OBS_PROM < <(timeout 10 python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
')
OBS_LOG="$TMP/obs-gateway.log"
obs_listening() { # LOG FIELD: the address FIELD names in LOG, once it is there
    for _ in $(seq 100); do
        sed -n "s/.*\"$2\":\"\([0-9.]*:[0-9]*\)\".*/\1/p" "$1" | head -n 1 | grep . && return
        sleep 0.1
    done
    echo "no-$2-in-log"
}

LOG_FORMAT=json "$BIN" sandbox --listen 127.0.0.1:0 </dev/null >"$TMP/obs-sandbox.log" 2>&1 &
OBS_PIDS+=($!)
OBS_SANDBOX="$(obs_listening "$TMP/obs-sandbox.log" addr)"
# The default configuration: no RUST_LOG, JSON logs (stderr is a file).
env -u RUST_LOG -u LOG_FORMAT WECOM_CORP_ID=wwsandbox0000000001 WECOM_CORP_SECRET=sandbox-secret \
    WECOM_API_BASE="http://$OBS_SANDBOX" \
    "$BIN" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    </dev/null >/dev/null 2>"$OBS_LOG" &
OBS_PIDS+=($!)
OBS_GRPC="$(obs_listening "$OBS_LOG" grpc_addr)"
OBS_ADMIN="$(obs_listening "$OBS_LOG" admin_addr)"
OBS_METRICS_URL="http://$OBS_ADMIN/metrics"
for _ in $(seq 60); do
    timeout 5 "$BIN" health --addr "$OBS_GRPC" --timeout-ms 1000 >/dev/null 2>&1 && break
    sleep 0.5
done

# The calls: UpgradeService 3 OK, 1 refused by WeCom (95021), 1 invalid; GetUpgradeConfig 2 OK.
obs_upgrade() {
    timeout 20 grpcurl -plaintext -max-time 10 -d "$1" "$OBS_GRPC" "$SERVICE/UpgradeService" >/dev/null 2>&1
}
# A call that fails here is reported by the counts below, with the gateway's log.
for i in 1 2 3; do
    obs_upgrade "{\"open_kfid\":\"kfobs\",\"external_userid\":\"wmobs$i\",\"member\":{\"userid\":\"zhangsan\"}}" ||
        echo "# UpgradeService $i failed; the gateway's log: $(tail -n 5 "$OBS_LOG")"
done
obs_upgrade '{"open_kfid":"kfobs","external_userid":"wmobs4","member":{"userid":"wangwu"}}' || true
obs_upgrade '{}' || true
for _ in 1 2; do
    timeout 20 grpcurl -plaintext -max-time 10 -d '{}' "$OBS_GRPC" "$SERVICE/GetUpgradeConfig" >/dev/null 2>&1 ||
        echo "# GetUpgradeConfig failed; the gateway's log: $(tail -n 5 "$OBS_LOG")"
done

http_get "$OBS_METRICS_URL" | sed '$d' >"$TMP/metrics.txt"
run_check "/metrics counts the calls made, by method, code, reason and errcode" 0 "
import re
series = {}
for line in open('$TMP/metrics.txt'):
    if line.startswith('#') or not line.strip():
        continue
    name, value = line.rsplit(' ', 1)
    series[name] = float(value)
def rpc(method, code, reason='', fault='', app='default'):
    return series.get(f'wecom_kf_upgrade_rpc_requests_total{{method=\"{method}\",app=\"{app}\",code=\"{code}\",reason=\"{reason}\",fault=\"{fault}\"}}')
assert rpc('UpgradeService', 'OK') == 3, series
assert rpc('UpgradeService', 'FAILED_PRECONDITION', 'UPGRADE_TARGET_NOT_CONFIGURED', 'caller') == 1, series
assert rpc('UpgradeService', 'INVALID_ARGUMENT', 'INVALID_REQUEST', 'caller', '') == 1, series
assert rpc('GetUpgradeConfig', 'OK') == 2, series
total = sum(v for k, v in series.items() if k.startswith('wecom_kf_upgrade_rpc_requests_total{'))
assert total == 7, total
def wecom(endpoint, outcome, errcode):
    return series.get(f'wecom_kf_upgrade_wecom_requests_total{{endpoint=\"{endpoint}\",app=\"default\",outcome=\"{outcome}\",errcode=\"{errcode}\"}}')
assert wecom('/cgi-bin/kf/customer/upgrade_service', 'ok', '0') == 3, series
assert wecom('/cgi-bin/kf/customer/upgrade_service', 'errcode', '95021') == 1, series
assert wecom('/cgi-bin/gettoken', 'ok', '0') == 1, series
assert series.get('wecom_kf_upgrade_token_fetches_total{app=\"default\",outcome=\"ok\"}') == 1, series
assert 7000 <= series.get('wecom_kf_upgrade_token_expiry_seconds{app=\"default\"}', 0) <= 7200, series
" -- true

run_check "promtool check metrics finds nothing to fix in /metrics" 0 '
assert text.strip() == "", text
' -- timeout 30 promtool check metrics <"$TMP/metrics.txt"

run_check "/metrics answers OpenMetrics, with # EOF, to a scraper that asks for it" 0 '
assert text.rstrip().endswith("# EOF"), text[-200:]
assert "# TYPE wecom_kf_upgrade_rpc_requests counter" in text, text[:500]
' -- timeout 15 curl -sS -m 10 -H 'Accept: application/openmetrics-text;version=1.0.0' "$OBS_METRICS_URL"

run_check "the access log has one line per call (access or audit), with code and duration" 0 "
import json
lines = [json.loads(l) for l in open('$OBS_LOG') if l.startswith('{')]
calls = [l for l in lines if l.get('target') in ('wecom_kf_upgrade::access', 'audit')]
assert len(calls) == 7, calls
assert all('code' in l and 'duration_ms' in l and 'method' in l for l in calls), calls
assert sum(l['target'] == 'audit' for l in calls) == 4, 'upgrades that passed validation are audited'
" -- true

# ---------------------------------------------------------------- a real Prometheus

mkdir -p "$TMP/prometheus"
cat >"$TMP/prometheus/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/ops/prometheus/alerts.yaml
scrape_configs:
  - job_name: wecom-kf-upgrade
    static_configs:
      - targets: ["$OBS_ADMIN"]
EOF
prometheus --config.file="$TMP/prometheus/prometheus.yml" --storage.tsdb.path="$TMP/prometheus/data" \
    --web.listen-address="127.0.0.1:$OBS_PROM" </dev/null >"$TMP/prometheus/log" 2>&1 &
OBS_PIDS+=($!)
OBS_PROM_URL="http://127.0.0.1:$OBS_PROM"

# prom_query EXPR: the query's first value, or nothing (also while Prometheus starts).
prom_query() {
    timeout 15 curl -sS -m 10 --get --data-urlencode "query=$1" "$OBS_PROM_URL/api/v1/query" 2>/dev/null |
        python3 -c 'import json, sys
result = json.load(sys.stdin)["data"]["result"]
print(result[0]["value"][1] if result else "")' 2>/dev/null || true
}
# The first scrape lands a few seconds after start.
obs_count=""
for _ in $(seq 60); do
    obs_count="$(prom_query 'sum(wecom_kf_upgrade_rpc_requests_total{job="wecom-kf-upgrade", method="UpgradeService"})')"
    [[ -n "$obs_count" ]] && break
    sleep 0.5
done
if [[ "$obs_count" == 5 ]]; then
    ok "Prometheus scrapes the gateway; its query returns the 5 UpgradeService calls made"
else
    not_ok "Prometheus scrapes the gateway; its query returns the 5 UpgradeService calls made" \
        "got '${obs_count}'; up=$(prom_query 'up'); log:"$'\n'"$(tail -n 20 "$TMP/prometheus/log")"
fi
# A second scrape, so that rates in the dashboard's queries have two points.
sleep 2

obs_out="$(timeout 120 python3 scripts/check_ops.py "$TMP/metrics.txt" --prometheus "$OBS_PROM_URL" 2>&1)" || true
while IFS= read -r line; do
    case "$line" in
    "ok - "*) ok "ops: ${line#ok - }" ;;
    "not ok - "*) not_ok "ops: ${line#not ok - }" "$(grep -A3 -F "$line" <<<"$obs_out" | sed -n 's/^#   //p')" ;;
    esac
done <<<"$obs_out"
grep -q '^ok - ' <<<"$obs_out" || not_ok "scripts/check_ops.py ran" "$obs_out"

run_check "Prometheus loaded the shipped alert rules" 0 '
rules = [r["name"] for g in doc["data"]["groups"] for r in g["rules"]]
assert "WecomKfUpgradeCredentialsRejected" in rules and len(rules) >= 10, rules
' -- timeout 15 curl -sS -m 10 "$OBS_PROM_URL/api/v1/rules"

run_check "promtool check rules: ops/prometheus/alerts.yaml" 0 "" \
    -- timeout 30 promtool check rules ops/prometheus/alerts.yaml
run_check "promtool test rules: ops/prometheus/alerts.test.yaml" 0 '
assert "SUCCESS" in text, text
' -- timeout 60 promtool test rules ops/prometheus/alerts.test.yaml

run_check "serve refuses an OTLP protocol it does not speak: exit 64, naming the variable" 64 '
assert "OTEL_EXPORTER_OTLP_PROTOCOL" in text and "grpc" in text, text
' -- env OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
    timeout 10 "$BIN" serve --sandbox --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0

obs_cleanup
OBS_PIDS=()
