"""Checks that HTTP/JSON calls answer exactly as their gRPC twins do.

For every row of the README's error table that the sandbox can produce (and for
the successful calls), makes the same call twice against a running
`serve --sandbox`, once over gRPC and once over HTTP/JSON, each time after
scripting the same sandbox fault, and compares: the status code, the HTTP status
it maps to, the ErrorInfo reason and errcode, the BadRequest fields, and for a
success the response as proto3 JSON.

Not covered, because the sandbox cannot produce them here or HTTP has no
counterpart in the contract: UPSTREAM_UNREACHABLE / UPSTREAM_CONNECTION_FAILED
(the sandbox is in-process), UPSTREAM_TIMEOUT (longer than request_timeout_ms
with retries), UPSTREAM_BODY_TOO_LARGE (a body over max_body_bytes cannot be
scripted through the sandbox's 1 MiB request limit) and DEADLINE_EXCEEDED (no
deadline header in the HTTP contract).

Prints `ok - http parity: …` / `not ok - …` per row; exits non-zero on any
mismatch. Leaves no fault scripted. Usage:
    python3 scripts/http_parity.py GRPC_HOST:PORT SANDBOX_BASE_URL [HTTP_HOST:PORT]
(HTTP/JSON is served on the gRPC port unless HTTP_HOST:PORT says otherwise.)
"""

import http.client
import json
import pathlib
import sys
import tempfile
import urllib.request

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
UPGRADE = "/cgi-bin/kf/customer/upgrade_service"
CUSTOMER = {"open_kfid": "kfparity0000000001", "external_userid": "wmparity0000000001"}
MEMBER = {**CUSTOMER, "member": {"userid": "zhangsan", "wording": "parity"}}

# grpc-gateway's HTTPStatusFromCode.
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
    "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

ROUTES = {
    "GetUpgradeConfig": ("GET", "/v1/upgrade-config"),
    "UpgradeService": ("POST", "/v1/upgrade-service"),
    "CancelUpgrade": ("POST", "/v1/cancel-upgrade-service"),
}


def fault(errcode=None, *, times=1, **extra):
    spec = {"path": UPGRADE, "times": times, **extra}
    if errcode is not None:
        spec["errcode"] = errcode
    return spec


# Where the two differ by design (both rows are in the README's error table): gRPC's
# own layer refuses an oversized message before decoding, without ErrorInfo; over
# HTTP the gateway reads the body itself and says why.
HTTP_REASON = {"request over max_decode_message_bytes": "REQUEST_TOO_LARGE"}

# (what, rpc, request as proto JSON, metadata, sandbox faults, expected code, expected reason)
CASES = [
    ("GetUpgradeConfig", "GetUpgradeConfig", {}, [], [], "OK", None),
    ("UpgradeService member", "UpgradeService", MEMBER, [], [], "OK", None),
    ("UpgradeService groupchat", "UpgradeService",
     {**CUSTOMER, "groupchat": {"chat_id": "wraaaaaaaaaaaaaaaa"}}, [], [], "OK", None),
    ("CancelUpgrade", "CancelUpgrade", CUSTOMER, [], [], "OK", None),
    ("empty request", "UpgradeService", {}, [], [], "INVALID_ARGUMENT", "INVALID_REQUEST"),
    ("userid with a space", "UpgradeService", {**CUSTOMER, "member": {"userid": "zhang san"}}, [], [],
     "INVALID_ARGUMENT", "INVALID_REQUEST"),
    ("unknown x-wecom-app", "GetUpgradeConfig", {}, [("x-wecom-app", "no-such-app")], [],
     "INVALID_ARGUMENT", "UNKNOWN_APP"),
    ("x-wecom-app sent twice", "GetUpgradeConfig", {}, [("x-wecom-app", "default"), ("x-wecom-app", "default")],
     [], "INVALID_ARGUMENT", "INVALID_METADATA"),
    ("request over max_decode_message_bytes", "UpgradeService",
     {**CUSTOMER, "member": {"userid": "zhangsan", "wording": "x" * 70000}}, [], [], "OUT_OF_RANGE", None),
    ("errcode 95000", "UpgradeService", MEMBER, [], [fault(95000)], "INVALID_ARGUMENT", "INVALID_OPEN_KFID"),
    ("errcode 95004", "UpgradeService", MEMBER, [], [fault(95004)], "NOT_FOUND", "OPEN_KFID_NOT_FOUND"),
    ("errcode 40096", "UpgradeService", MEMBER, [], [fault(40096)], "INVALID_ARGUMENT", "INVALID_EXTERNAL_USERID"),
    ("errcode 40003", "UpgradeService", MEMBER, [], [fault(40003)], "INVALID_ARGUMENT", "INVALID_USERID"),
    ("errcode 40058", "UpgradeService", MEMBER, [], [fault(40058)], "INVALID_ARGUMENT", "INVALID_PARAMETER"),
    ("errcode 95021 (wangwu)", "UpgradeService", {**CUSTOMER, "member": {"userid": "wangwu"}}, [], [],
     "FAILED_PRECONDITION", "UPGRADE_TARGET_NOT_CONFIGURED"),
    ("errcode 95018", "UpgradeService", MEMBER, [], [fault(95018)], "FAILED_PRECONDITION", "KF_STATE_REJECTED"),
    ("errcode 40013", "UpgradeService", MEMBER, [], [fault(40013)], "FAILED_PRECONDITION", "CREDENTIALS_REJECTED"),
    ("errcode 48002", "UpgradeService", MEMBER, [], [fault(48002)], "PERMISSION_DENIED", "API_NOT_PERMITTED"),
    ("errcode 60011", "UpgradeService", MEMBER, [], [fault(60011)], "PERMISSION_DENIED", "OUT_OF_VISIBLE_RANGE"),
    ("errcode 60020", "UpgradeService", MEMBER, [], [fault(60020)], "PERMISSION_DENIED", "UNTRUSTED_IP"),
    ("errcode 301002", "UpgradeService", MEMBER, [], [fault(301002)], "PERMISSION_DENIED", "APP_NOT_PERMITTED"),
    ("errcode 45009", "UpgradeService", MEMBER, [], [fault(45009)], "RESOURCE_EXHAUSTED", "RATE_LIMITED"),
    ("errcode 45033", "UpgradeService", MEMBER, [], [fault(45033)], "RESOURCE_EXHAUSTED", "CONCURRENCY_LIMITED"),
    ("errcode -1 after retries", "UpgradeService", MEMBER, [], [fault(-1, times=10)], "UNAVAILABLE", "SYSTEM_BUSY"),
    ("errcode 40014 after a refresh", "UpgradeService", MEMBER, [], [fault(40014, times=10)],
     "UNAVAILABLE", "ACCESS_TOKEN_REJECTED"),
    ("HTTP 502 after retries", "UpgradeService", MEMBER, [], [fault(http_status=502, times=10)],
     "UNAVAILABLE", "UPSTREAM_HTTP_ERROR"),
    ("HTTP 429", "UpgradeService", MEMBER, [], [fault(http_status=429)], "RESOURCE_EXHAUSTED", "UPSTREAM_RATE_LIMITED"),
    ("HTML page with HTTP 200", "UpgradeService", MEMBER, [], [fault(body="<html><body>gateway</body></html>")],
     "INTERNAL", "UPSTREAM_MALFORMED_BODY"),
    ("HTTP 404", "UpgradeService", MEMBER, [], [fault(http_status=404)], "INTERNAL", "UPSTREAM_HTTP_ERROR"),
    ("errcode 41001", "UpgradeService", MEMBER, [], [fault(41001)], "INTERNAL", "ACCESS_TOKEN_MISSING"),
    ("errcode 47001", "UpgradeService", MEMBER, [], [fault(47001)], "INTERNAL", "REQUEST_NOT_UNDERSTOOD"),
    ("errcode 12345", "UpgradeService", MEMBER, [], [fault(12345)], "UNKNOWN", "WECOM_ERROR"),
]


def load_stubs(out: pathlib.Path):
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    code = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}", f"--python_out={out}",
                        f"--grpc_python_out={out}", "wecom/kf/v1/upgrade.proto"])
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, str(out))
    from wecom.kf.v1 import upgrade_pb2, upgrade_pb2_grpc  # noqa: E402

    return upgrade_pb2, upgrade_pb2_grpc


class Sandbox:
    def __init__(self, base: str):
        self.base = base.rstrip("/")

    def _send(self, method: str, path: str, doc=None):
        data = None if doc is None else json.dumps(doc).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    def script(self, faults):
        self._send("DELETE", "/sandbox/faults")
        for spec in faults:
            self._send("POST", "/sandbox/faults", spec)

    def clear(self):
        self._send("DELETE", "/sandbox/faults")


def outcome(code: str, status, response=None):
    """What a caller sees: code, ErrorInfo reason and errcode, BadRequest fields, the response."""
    reason = errcode = fields = None
    for detail in status:
        if detail.get("@type", "").endswith("/google.rpc.ErrorInfo"):
            reason, errcode = detail.get("reason"), detail.get("metadata", {}).get("errcode")
        elif detail.get("@type", "").endswith("/google.rpc.BadRequest"):
            fields = [v.get("field") for v in detail.get("fieldViolations", [])]
    return {"code": code, "reason": reason, "errcode": errcode, "fields": fields, "response": response}


def grpc_call(stub, pb, rpc, request, metadata):
    message = getattr(pb, rpc + "Request")()
    json_format.ParseDict(request, message)
    try:
        response = getattr(stub, rpc)(message, metadata=metadata or None, timeout=10)
    except grpc.RpcError as call:
        status = rpc_status.from_call(call)
        details = []
        for any_detail in status.details if status else []:
            for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
                if any_detail.Is(kind.DESCRIPTOR):
                    detail = kind()
                    any_detail.Unpack(detail)
                    details.append({"@type": any_detail.type_url, **json_format.MessageToDict(detail)})
        return outcome(call.code().name, details)
    return outcome("OK", [], json_format.MessageToDict(response))


def http_call(addr, rpc, request, metadata):
    method, path = ROUTES[rpc]
    host, port = addr.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest(method, path)
        for key, value in metadata:
            connection.putheader(key, value)
        body = None
        if method == "POST":
            body = json.dumps(request).encode()
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        raw = answer.read()
    finally:
        connection.close()
    try:
        doc = json.loads(raw)
    except ValueError:
        return answer.status, {"code": "NOT_JSON", "body": raw[:200].decode(errors="replace")}
    if answer.status == 200:
        return 200, outcome("OK", [], doc)
    code = doc.get("code")
    return answer.status, outcome(CODE_NAMES.get(code, f"?{code}"), doc.get("details", []))


def main(addr: str, sandbox_url: str, http_addr: str) -> int:
    sandbox = Sandbox(sandbox_url)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        pb, pb_grpc = load_stubs(pathlib.Path(tmp))
        stub = pb_grpc.CustomerUpgradeServiceStub(grpc.insecure_channel(addr))
        try:
            for what, rpc, request, metadata, faults, want_code, want_reason in CASES:
                sandbox.script(faults)
                over_grpc = grpc_call(stub, pb, rpc, request, metadata)
                sandbox.script(faults)
                try:
                    status, over_http = http_call(http_addr, rpc, request, metadata)
                except (OSError, http.client.HTTPException) as failure:
                    status, over_http = None, {"code": f"no HTTP answer: {failure!r}"}
                problems = []
                if (over_grpc["code"], over_grpc["reason"]) != (want_code, want_reason):
                    problems.append(f"gRPC gave {over_grpc['code']} {over_grpc['reason']}, "
                                    f"the README says {want_code} {want_reason}")
                if over_http != {**over_grpc, "reason": HTTP_REASON.get(what, over_grpc["reason"])}:
                    problems.append(f"gRPC {over_grpc} but HTTP {over_http}")
                if status != HTTP_STATUS[want_code]:
                    problems.append(f"HTTP status {status}, expected {HTTP_STATUS[want_code]} for {want_code}")
                name = f"http parity: {what}: {want_code}" + (f" {want_reason}" if want_reason else "")
                if problems:
                    failed += 1
                    print(f"not ok - {name}")
                    for problem in problems:
                        print(f"    # {problem}")
                else:
                    print(f"ok - {name} (HTTP {status})")
        finally:
            sandbox.clear()
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else sys.argv[1]))
