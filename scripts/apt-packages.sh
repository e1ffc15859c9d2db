#!/usr/bin/env bash
# The Debian packages of a whole CI run, installed in one apt-get run (skipped
# when they are all installed). .ci/run calls it before `cargo test`, whose fleet
# tests need redis-server; scripts/e2e.sh calls it again, which then finds
# everything installed (or installs it, when run on its own).
#
# Needs Debian's apt-get and root when something is missing. Exits non-zero,
# with the end of apt-get's output on stderr, if the install failed.
set -euo pipefail

# - podman, buildah and runc build and run the container image (iptables for its
#   published ports, which --no-install-recommends would leave out); debootstrap makes
#   its base (no image can be pulled); unzip unpacks helm;
# - Go with Debian's gRPC packages (GOPATH mode, no module downloads), protoc and
#   its Go plugins; PHP with curl; curl;
# - openssl makes the certificates of the TLS and mTLS checks;
# - redis-server for the fleet tests (tests/api/fleet.rs), a real Redis;
# - prometheus: the server that scrapes the gateway, and promtool for the metrics
#   lint and the alert rules' unit tests.
APT_PACKAGES=(
    podman buildah runc iptables debootstrap unzip
    golang-go golang-github-golang-protobuf-1-5-dev golang-google-grpc-dev
    golang-google-protobuf-dev golang-google-genproto-dev
    protobuf-compiler protoc-gen-go protoc-gen-go-grpc
    php-cli php-curl curl openssl
    redis-server prometheus
)
apt_missing=()
for package in "${APT_PACKAGES[@]}"; do
    package_status="$(dpkg -s "$package" 2>/dev/null)" || true
    [[ "$package_status" == *"Status: install ok installed"* ]] || apt_missing+=("$package")
done
if ((${#apt_missing[@]})); then
    echo "# installing Debian packages: ${apt_missing[*]}"
    log="$(mktemp "${TMPDIR:-/tmp}/apt-packages.XXXXXX")"
    trap 'rm -f "$log"' EXIT
    if ! { timeout 900 apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get install -y -qq --no-install-recommends \
            "${apt_missing[@]}" >"$log" 2>&1; }; then
        tail -n 20 "$log" >&2
        exit 1
    fi
fi
