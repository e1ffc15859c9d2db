# shellcheck shell=bash
# The polyglot part of the end-to-end test, sourced by scripts/e2e.sh while its
# `serve --sandbox` runs on $GRPC_ADDR (sandbox at $SANDBOX_URL):
#   - the protos: buf lint (STANDARD), buf format, buf breaking against the
#     released image buf/image.binpb (and proof that the gate fails on a
#     renumbered field), buf generate with local plugins;
#   - the Python, Node and Go examples: each generated/installed/built as its
#     README says, run, its output checked line by line, and its calls found in
#     the sandbox's request journal;
#   - the commands of README.md and examples/*/README.md marked `<!-- ci: run -->`
#     (scripts/readme_commands.py);
#   - run_http_examples: the PHP example, the README's curl lines and the
#     HTTP/JSON-vs-gRPC parity of every producible error-table row.
# Uses from e2e.sh: ok, not_ok, run_check, http_get, $TMP, $BIN, $GRPC_ADDR,
# $SANDBOX_URL. Needs the Debian packages of scripts/apt-packages.sh, npm, and
# Python gRPC.

BUF_VERSION=1.75.0
BUF=.tools/node_modules/.bin/buf

# The lines every example prints against the sandbox (the PHP one adds the HTTP
# status after each error line).
POLYGLOT_CONFIG='config: members=zhangsan,lisi departments=2,3 chats=wraaaaaaaaaaaaaaaa,wrbbbbbbbbbbbbbbb'
POLYGLOT_95021='error: code=FAILED_PRECONDITION reason=UPGRADE_TARGET_NOT_CONFIGURED errcode=95021'
POLYGLOT_INVALID='error: code=INVALID_ARGUMENT reason=INVALID_REQUEST violations=open_kfid,external_userid,target'

# polyglot_lines [http]: the expected output as a Python list literal.
polyglot_lines() {
    local http_line=""
    [[ "${1:-}" == http ]] && http_line="'http status: 400', "
    echo "['$POLYGLOT_CONFIG', 'upgrade member: ok', 'upgrade groupchat: ok', 'cancel: ok', " \
        "'$POLYGLOT_95021', ${http_line}'$POLYGLOT_INVALID', ${http_line}]"
}

# polyglot_elapsed START_NS: seconds since START_NS, one decimal.
polyglot_elapsed() {
    local now
    now="$(date +%s%N)"
    echo "$(((now - $1) / 1000000000)).$((((now - $1) / 100000000) % 10))"
}

# forward_tap NAME COMMAND...: runs COMMAND, which prints `ok - …` / `not ok - …`
# lines (details indented as `    # …`), and counts them here. A failing COMMAND
# that reported no failure, or one that reported nothing, is a failure of NAME.
forward_tap() {
    local name="$1" out rc=0 line pending="" details="" oks=0 not_oks=0
    shift
    out="$("$@" 2>&1)" || rc=$?
    while IFS= read -r line; do
        if [[ "$line" == "    # "* && -n "$pending" ]]; then
            details+="${line#    # }"$'\n'
            continue
        fi
        if [[ -n "$pending" ]]; then
            not_ok "$pending" "${details%$'\n'}"
            pending="" details=""
        fi
        case "$line" in
        "ok - "*)
            ok "${line#ok - }"
            oks=$((oks + 1))
            ;;
        "not ok - "*)
            pending="${line#not ok - }"
            not_oks=$((not_oks + 1))
            ;;
        esac
    done <<<"$out"
    [[ -n "$pending" ]] && not_ok "$pending" "${details%$'\n'}"
    if { ((rc != 0)) && ((not_oks == 0)); } || ((oks + not_oks == 0)); then
        not_ok "$name" "exit status $rc; output:"$'\n'"$out"
    fi
}

# journal_check LANG CUSTOMER: the example's calls reached the sandbox as WeCom
# requests: member zhangsan (type 1, with its wording), group chat (type 2),
# cancel, then member wangwu (answered 95021); the invalid request never left.
journal_check() {
    run_check "$1: its calls reached WeCom (sandbox journal) as upgrade/upgrade/cancel/upgrade" 0 "
mine = [r for r in doc if isinstance(r.get('body'), dict) and r['body'].get('external_userid') == '$2']
seen = []
for r in mine:
    body = r['body']
    target = body.get('member') or body.get('groupchat') or {}
    seen.append((r['path'].rsplit('/', 1)[-1], body.get('type'), target.get('userid') or target.get('chat_id')))
    assert r['had_access_token'], r
assert seen == [
    ('upgrade_service', 1, 'zhangsan'),
    ('upgrade_service', 2, 'wraaaaaaaaaaaaaaaa'),
    ('cancel_upgrade_service', None, None),
    ('upgrade_service', 1, 'wangwu'),
], seen
assert mine[0]['body']['member']['wording'] == '你好，我是你的专属服务专员zhangsan', mine[0]
assert 'wording' not in mine[3]['body']['member'], mine[3]
" -- sandbox_journal
}

sandbox_journal() {
    local out
    out="$(http_get "$SANDBOX_URL/sandbox/requests")" || return 1
    [[ "$(tail -n 1 <<<"$out")" == "HTTP 200" ]] || return 1
    sed '$d' <<<"$out"
}

# ---------------------------------------------------------------- protos (buf)

polyglot_start="$(date +%s%N)"
step_start="$polyglot_start"
if [[ "$("$BUF" --version 2>/dev/null)" != "$BUF_VERSION" ]]; then
    echo "# installing buf $BUF_VERSION (npm: @bufbuild/buf) into .tools"
    timeout 300 npm install --prefix .tools --no-save --no-package-lock --no-audit --no-fund \
        --loglevel=error "@bufbuild/buf@$BUF_VERSION" >/dev/null || true
fi
run_check "buf --version is $BUF_VERSION" 0 "
assert text.strip() == '$BUF_VERSION', text
" -- timeout 30 "$BUF" --version

run_check "buf lint (STANDARD rules) passes on proto/wecom" 0 '' -- timeout 120 "$BUF" lint
run_check "buf format -d --exit-code shows no diff" 0 '' -- timeout 120 "$BUF" format -d --exit-code
run_check "buf breaking against buf/image.binpb (the released API) passes" 0 '' \
    -- timeout 120 "$BUF" breaking --against buf/image.binpb

# The gate can fail: a scratch copy of the protos with a field renumbered.
mkdir -p "$TMP/breaking"
cp -R buf.yaml proto "$TMP/breaking/"
sed -i 's/^  string open_kfid = 1;/  string open_kfid = 5;/' "$TMP/breaking/proto/wecom/kf/v1/upgrade.proto"
# shellcheck disable=SC2016 # the inner bash expands its own arguments
run_check "buf breaking fails on a renumbered field (open_kfid 1 -> 5, scratch copy)" nonzero '
assert "Previously present field \"1\" with name \"open_kfid\"" in text, text
' -- bash -c 'cd "$1" && timeout 120 "$2" breaking --against "$3"' _ \
    "$TMP/breaking" "$PWD/$BUF" "$PWD/buf/image.binpb"

# Lint can fail too: a scratch copy with a field named against the STANDARD rules.
mkdir -p "$TMP/lint"
cp -R buf.yaml proto "$TMP/lint/"
sed -i 's/^  string wording = 2;/  string Wording = 2;/' "$TMP/lint/proto/wecom/kf/v1/upgrade.proto"
# shellcheck disable=SC2016 # the inner bash expands its own arguments
run_check "buf lint fails on a field not in lower_snake_case (scratch copy)" nonzero '
assert "should be lower_snake_case" in text, text
' -- bash -c 'cd "$1" && timeout 120 "$2" lint' _ "$TMP/lint" "$PWD/$BUF"

run_check "buf generate (local plugins) writes the Go and Python stubs" 0 "
import pathlib
root = pathlib.Path('$TMP/buf-generate')
for name in ('gen/go/wecom/kf/v1/upgrade.pb.go', 'gen/go/wecom/kf/v1/upgrade_grpc.pb.go',
             'gen/python/wecom/kf/v1/upgrade_pb2.py', 'gen/python/wecom/kf/v1/upgrade_pb2_grpc.py'):
    assert (root / name).is_file(), name
assert 'package kfv1' in (root / 'gen/go/wecom/kf/v1/upgrade.pb.go').read_text()
assert 'CustomerUpgradeServiceStub' in (root / 'gen/python/wecom/kf/v1/upgrade_pb2_grpc.py').read_text()
" -- timeout 120 "$BUF" generate -o "$TMP/buf-generate"
# The package options at work for languages without an example here.
mkdir -p "$TMP/langs"/{java,csharp,php,ruby,objc}
run_check "protoc puts Java (one file per message), C#, PHP, Ruby, Objective-C code in the declared packages" 0 "
import pathlib
out = pathlib.Path('$TMP/langs')
java = out / 'java/com/wecom/kf/v1'
assert (java / 'UpgradeServiceRequest.java').is_file() and (java / 'UpgradeProto.java').is_file(), list(java.iterdir())
assert 'namespace Wecom.Kf.V1 {' in (out / 'csharp/Upgrade.cs').read_text()
assert 'namespace Wecom\\\\Kf\\\\V1;' in (out / 'php/Wecom/Kf/V1/MemberTarget.php').read_text()
assert (out / 'php/Wecom/Kf/V1/GPBMetadata/Upgrade.php').is_file()
ruby = (out / 'ruby/wecom/kf/v1/upgrade_pb.rb').read_text()
assert 'module Wecom' in ruby and 'module Kf' in ruby and 'module V1' in ruby, ruby
assert '@interface WKXUpgradeServiceRequest' in (out / 'objc/wecom/kf/v1/Upgrade.pbobjc.h').read_text()
" -- timeout 60 protoc -Iproto --java_out="$TMP/langs/java" --csharp_out="$TMP/langs/csharp" \
    --php_out="$TMP/langs/php" --ruby_out="$TMP/langs/ruby" --objc_out="$TMP/langs/objc" \
    wecom/kf/v1/upgrade.proto
echo "# polyglot: protos checked in $(polyglot_elapsed "$step_start") s"

# ---------------------------------------------------------------- Python

step_start="$(date +%s%N)"
run_check "python: examples/python/generate.sh generates the stubs" 0 '' \
    -- timeout 120 examples/python/generate.sh
run_check "python: examples/python/client.py makes the three calls and reads ErrorInfo/BadRequest" 0 "
assert text.splitlines() == $(polyglot_lines), text
" -- timeout 60 python3 examples/python/client.py "$GRPC_ADDR" default
journal_check python wmexample_python
echo "# polyglot: python in $(polyglot_elapsed "$step_start") s"

# ---------------------------------------------------------------- Node

step_start="$(date +%s%N)"
run_check "node: npm ci installs the pinned packages of examples/node" 0 '' \
    -- timeout 300 npm ci --prefix examples/node --no-audit --no-fund --loglevel=error
run_check "node: examples/node/client.js makes the three calls and decodes grpc-status-details-bin" 0 "
assert text.splitlines() == $(polyglot_lines), text
" -- timeout 60 node examples/node/client.js "$GRPC_ADDR" default
journal_check node wmexample_node
echo "# polyglot: node in $(polyglot_elapsed "$step_start") s"

# ---------------------------------------------------------------- Go

step_start="$(date +%s%N)"
# Go needs a build cache; without HOME there is no default one.
if [[ -z "$(go env GOCACHE 2>/dev/null)" ]]; then
    export GOCACHE="$TMP/go-build"
fi
run_check "go: examples/go/generate.sh generates the stubs with protoc" 0 '' \
    -- timeout 120 examples/go/generate.sh
# shellcheck disable=SC2016 # the inner bash expands its own arguments
run_check "go: examples/go builds in GOPATH mode from Debian's packages" 0 '' \
    -- bash -c 'cd examples/go && GO111MODULE=off GOPATH="$PWD/gopath:/usr/share/gocode" \
        timeout 600 go build -o gopath/bin/client .'
run_check "go: examples/go client makes the three calls and reads errdetails" 0 "
assert text.splitlines() == $(polyglot_lines), text
" -- timeout 60 examples/go/gopath/bin/client "$GRPC_ADDR" default
journal_check go wmexample_go
echo "# polyglot: go in $(polyglot_elapsed "$step_start") s"

# ---------------------------------------------------------------- README commands

step_start="$(date +%s%N)"
forward_tap "README commands marked <!-- ci: run --> run as documented" \
    timeout 900 python3 scripts/readme_commands.py --addr "$GRPC_ADDR" --blocks grpc
echo "# polyglot: README commands in $(polyglot_elapsed "$step_start") s"

# ---------------------------------------------------------------- HTTP/JSON

run_http_examples() {
    local http_start
    http_start="$(date +%s%N)"
    run_check "php: examples/php/client.php makes the three calls over HTTP/JSON and reads the error body" 0 "
assert text.splitlines() == $(polyglot_lines http), text
" -- timeout 60 php examples/php/client.php "http://$GRPC_ADDR" default
    journal_check php wmexample_php
    forward_tap "README HTTP/JSON commands (<!-- ci: run http -->) run as documented" \
        timeout 300 python3 scripts/readme_commands.py --addr "$GRPC_ADDR" --blocks http
    forward_tap "HTTP/JSON answers as gRPC does, row by row (scripts/http_parity.py)" \
        timeout 300 python3 scripts/http_parity.py "$GRPC_ADDR" "$SANDBOX_URL"
    echo "# polyglot: HTTP/JSON in $(polyglot_elapsed "$http_start") s"
}

run_http_examples
echo "# polyglot: all in $(polyglot_elapsed "$polyglot_start") s"
