#!/usr/bin/env bash
# Generates the Python stubs of proto/wecom/kf/v1/upgrade.proto into ./generated
# with grpcio-tools. google.api and google.rpc come from googleapis-common-protos
# (a dependency of grpcio-status), so only the gateway's own proto is generated.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf generated
mkdir -p generated
python3 -m grpc_tools.protoc -I../../proto \
    --python_out=generated --pyi_out=generated --grpc_python_out=generated \
    wecom/kf/v1/upgrade.proto
echo "generated: $(cd generated && find . -name '*.py' | sort | tr '\n' ' ')"
