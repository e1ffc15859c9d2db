"""Reads the gateway's error details the way the README tells Python callers to.

Generates the stubs from proto/ into a temporary folder, calls UpgradeService
against a running gateway with a member that is not configured and with an empty
request, and checks the ErrorInfo and BadRequest details. Exits non-zero on any
mismatch. Usage: python3 scripts/read_error_info.py HOST:PORT
"""

import pathlib
import sys
import tempfile

import grpc
from grpc_status import rpc_status
from google.rpc import error_details_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_stubs(out: pathlib.Path):
    proto = "wecom/kf/v1/upgrade.proto"
    # grpc_tools' own google/protobuf/*.proto, which `python -m grpc_tools.protoc` adds by itself.
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        ["protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", proto]
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, str(out))
    from wecom.kf.v1 import upgrade_pb2, upgrade_pb2_grpc  # noqa: E402

    return upgrade_pb2, upgrade_pb2_grpc


def details(call: grpc.RpcError):
    """The ErrorInfo and BadRequest of a failed call, as the README shows."""
    info, bad = None, None
    status = rpc_status.from_call(call)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    return info, bad


def expect_failure(invoke):
    try:
        invoke()
    except grpc.RpcError as call:
        return call
    sys.exit("the call succeeded, but it should have failed")


def main(addr: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pb, pb_grpc = load_stubs(pathlib.Path(tmp))
        stub = pb_grpc.CustomerUpgradeServiceStub(grpc.insecure_channel(addr))
        checks = []

        request = pb.UpgradeServiceRequest(
            open_kfid="kfxxxxxxxxxxxxxx",
            external_userid="wmxxxxxxxxxxxxxxxxxx",
            member=pb.MemberTarget(userid="wangwu"),
        )
        call = expect_failure(
            lambda: stub.UpgradeService(request, metadata=[("x-wecom-app", "default")], timeout=5)
        )
        info, _ = details(call)
        checks.append(("95021 is FAILED_PRECONDITION", call.code() == grpc.StatusCode.FAILED_PRECONDITION))
        checks.append(("95021 reason", info is not None and info.reason == "UPGRADE_TARGET_NOT_CONFIGURED"))
        checks.append(("95021 errcode metadata", info is not None and info.metadata.get("errcode") == "95021"))
        checks.append(("95021 domain", info is not None and info.domain == "qyapi.weixin.qq.com"))

        call = expect_failure(lambda: stub.UpgradeService(pb.UpgradeServiceRequest(), timeout=5))
        info, bad = details(call)
        fields = [v.field for v in bad.field_violations] if bad else []
        checks.append(("empty request is INVALID_ARGUMENT", call.code() == grpc.StatusCode.INVALID_ARGUMENT))
        checks.append(("BadRequest names the fields", fields == ["open_kfid", "external_userid", "target"]))
        checks.append(("INVALID_REQUEST reason", info is not None and info.reason == "INVALID_REQUEST"))

        failed = 0
        for name, ok in checks:
            print(("ok - " if ok else "not ok - ") + "python: " + name)
            failed += not ok
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
