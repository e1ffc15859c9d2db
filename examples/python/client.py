"""Calls the gateway's three RPCs from Python and reads its error details.

Usage: python3 client.py [HOST:PORT] [APP]   (defaults: localhost:50051 default)
Run ./generate.sh first: it writes the stubs this imports into ./generated.
"""

import pathlib
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "generated"))
from wecom.kf.v1 import upgrade_pb2 as pb  # noqa: E402
from wecom.kf.v1 import upgrade_pb2_grpc as pb_grpc  # noqa: E402

OPEN_KFID = "kfxxxxxxxxxxxxxx"
CUSTOMER = "wmexample_python"
DEADLINE_SECONDS = 5


def describe_error(call: grpc.RpcError) -> str:
    """One line: the status code, the ErrorInfo reason and errcode, any BadRequest fields."""
    line = f"error: code={call.code().name}"
    status = rpc_status.from_call(call)  # google.rpc.Status from grpc-status-details-bin
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            line += f" reason={info.reason}"
            if "errcode" in info.metadata:
                line += f" errcode={info.metadata['errcode']}"
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            line += " violations=" + ",".join(v.field for v in bad.field_violations)
    return line


def main() -> int:
    addr = sys.argv[1] if len(sys.argv) > 1 else "localhost:50051"
    app = sys.argv[2] if len(sys.argv) > 2 else "default"
    metadata = [("x-wecom-app", app)]  # which configured WeCom app serves the call

    with grpc.insecure_channel(addr) as channel:
        stub = pb_grpc.CustomerUpgradeServiceStub(channel)

        def call(rpc, request):
            return rpc(request, metadata=metadata, timeout=DEADLINE_SECONDS)

        try:
            config = call(stub.GetUpgradeConfig, pb.GetUpgradeConfigRequest())
            members = config.member_range
            print(
                f"config: members={','.join(members.userid_list)}"
                f" departments={','.join(str(d) for d in members.department_id_list)}"
                f" chats={','.join(config.groupchat_range.chat_id_list)}"
            )
            call(
                stub.UpgradeService,
                pb.UpgradeServiceRequest(
                    open_kfid=OPEN_KFID,
                    external_userid=CUSTOMER,
                    member=pb.MemberTarget(userid="zhangsan", wording="你好，我是你的专属服务专员zhangsan"),
                ),
            )
            print("upgrade member: ok")
            call(
                stub.UpgradeService,
                pb.UpgradeServiceRequest(
                    open_kfid=OPEN_KFID,
                    external_userid=CUSTOMER,
                    groupchat=pb.GroupChatTarget(chat_id="wraaaaaaaaaaaaaaaa", wording="欢迎加入客户群"),
                ),
            )
            print("upgrade groupchat: ok")
            call(stub.CancelUpgrade, pb.CancelUpgradeRequest(open_kfid=OPEN_KFID, external_userid=CUSTOMER))
            print("cancel: ok")
        except grpc.RpcError as failed:
            print(describe_error(failed))
            return 1

        # Two calls that fail on purpose, to show the error details.
        failing = [
            # wangwu is not configured in 升级服务: WeCom answers errcode 95021.
            pb.UpgradeServiceRequest(
                open_kfid=OPEN_KFID, external_userid=CUSTOMER, member=pb.MemberTarget(userid="wangwu")
            ),
            # Nothing set: refused by the gateway before any WeCom call.
            pb.UpgradeServiceRequest(),
        ]
        for request in failing:
            try:
                call(stub.UpgradeService, request)
            except grpc.RpcError as failed:
                print(describe_error(failed))
            else:
                print("error: none, but the call should have failed")
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
