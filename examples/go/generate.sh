#!/usr/bin/env bash
# Generates the Go stubs of proto/wecom/kf/v1/upgrade.proto with protoc,
# protoc-gen-go and protoc-gen-go-grpc into ./gopath/src, at their import path
# (the proto's go_package), for a GOPATH-mode build. The google.api and
# google.rpc Go packages come from Debian's golang-google-genproto-dev.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf gopath
mkdir -p gopath/src
protoc -I../../proto --go_out=gopath/src --go-grpc_out=gopath/src wecom/kf/v1/upgrade.proto
echo "generated: $(cd gopath/src && find . -name '*.go' | sort | tr '\n' ' ')"
