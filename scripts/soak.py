"""The soak's driver and judge (scripts/soak.sh runs both).

    python3 scripts/soak.py drive --gateway HOST:PORT --sandbox URL --out FILE
        [--seconds 60] [--clients 64] [--connections 16] [--seed N]
    python3 scripts/soak.py report --results FILE --sandbox URL --proxy-stats FILE
        --gateway-log FILE --peak-rss-kib N --gateway-exit N

`drive` calls the gateway from many concurrent clients (grpc.aio, one process,
several HTTP/2 connections) for a fixed time while it scripts faults into the WeCom
sandbox: errcodes, HTTP 5xx and HTML pages, delays, and expired or revoked tokens.
(The fault proxy between gateway and sandbox adds the network's faults.) Every
UpgradeService names a customer of its own, so the sandbox's recommendations say
which upgrades WeCom accepted. It writes the outcomes to --out.

`report` waits until the sandbox answers nothing any more, reads what it accepted,
and prints the figures and the checks; it exits 1 if a check failed. The checks
compare what the sandbox recorded with what the callers were told; none depends
on how fast anything ran:
- no OK for an upgrade the sandbox did not accept;
- every accepted upgrade the gateway reported non-OK carries ErrorInfo metadata
  `may_have_taken_effect=true`;
- every non-OK status from the gateway carries ErrorInfo (a caller's own deadline,
  which grpcio reports without details, is counted apart);
- `gettoken` calls stay within what the token events and faults can explain;
- no panic in the gateway's log, a clean exit on SIGTERM, bounded memory.
"""

import argparse
import asyncio
import collections
import json
import pathlib
import random
import sys
import tempfile
import time
import urllib.parse

import grpc

from read_error_info import details, load_stubs

OPEN_KFID = "wksoak000000000001"
MEMBERS = ("zhangsan", "lisi")
CHATS = ("wraaaaaaaaaaaaaaaa", "wrbbbbbbbbbbbbbbb")
UNCONFIGURED_MEMBER = "wangwu"  # the sandbox answers 95021: never accepted

UPGRADE = "/cgi-bin/kf/customer/upgrade_service"
CONFIG = "/cgi-bin/kf/customer/get_upgrade_service_config"
CANCEL = "/cgi-bin/kf/customer/cancel_upgrade_service"
GETTOKEN = "/cgi-bin/gettoken"

# What the callers do, with weights.
OPERATIONS = {"upgrade_member": 60, "upgrade_groupchat": 15, "upgrade_unconfigured": 5, "config": 12, "cancel": 8}
# Callers' deadlines in seconds (None: no deadline; the gateway's call timeout bounds the call).
DEADLINES = (5.0, 5.0, 5.0, 1.5, None)

FAULT_EVERY = 0.25  # seconds between two scripted sandbox faults
BURST_EVERY = 5.0  # seconds between two bursts: one fault for the next tens of requests
EXPIRE_TOKENS_EVERY = 3.0
REVOKE_TOKENS_EVERY = 15.0
HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
HTML_200 = "<!DOCTYPE html><html><body>系统维护中 maintenance</body></html>"

# Errcodes that make the gateway refresh its token and retry once.
TOKEN_ERRCODES = (40014, 42001)
# Past this peak RSS the gateway is not keeping its memory bounded.
MAX_PEAK_RSS_MIB = 256
# In place of a reason: a status without ErrorInfo, and the caller's own deadline.
NO_ERROR_INFO = "(no ErrorInfo)"
OWN_DEADLINE = "(caller's own deadline)"
# Every soak makes at least this many calls, or it did not really run.
MIN_CALLS = 1000


def sandbox_fault(rng: random.Random):
    """One scripted fault: (path, fault body)."""
    times = rng.randint(1, 4)
    delay = rng.randint(200, 2500)
    return rng.choice(
        [
            (UPGRADE, {"errcode": -1, "errmsg": "system busy", "times": times}),
            (UPGRADE, {"errcode": 45009, "errmsg": "api freq out of limit"}),
            (UPGRADE, {"errcode": 45033, "errmsg": "api concurrent out of limit"}),
            (UPGRADE, {"errcode": 95021, "errmsg": "userid or chat_id not configured"}),
            (UPGRADE, {"errcode": 40014, "errmsg": "invalid access_token"}),
            (UPGRADE, {"errcode": 42001, "errmsg": "access_token expired"}),
            (UPGRADE, {"http_status": 502, "body": HTML_502, "times": times}),
            (UPGRADE, {"http_status": 503, "times": times}),
            (UPGRADE, {"http_status": 429}),
            (UPGRADE, {"body": HTML_200}),
            (UPGRADE, {"delay_ms": delay, "times": times}),
            (CONFIG, {"errcode": -1, "times": times}),
            (CONFIG, {"http_status": 502, "body": HTML_502, "times": times}),
            (CONFIG, {"body": '{"errcode":0,"errmsg":"ok","member_range":{"userid_li'}),
            (CONFIG, {"delay_ms": delay}),
            (CANCEL, {"errcode": 45009}),
            (CANCEL, {"errcode": -1, "times": times}),
            (CANCEL, {"delay_ms": delay}),
            (GETTOKEN, {"errcode": -1, "times": times}),
            (GETTOKEN, {"http_status": 502, "body": HTML_502}),
            (GETTOKEN, {"delay_ms": delay}),
        ]
    )


def sandbox_burst(rng: random.Random):
    """A fault for many requests in a row, so that retries meet it too."""
    times = rng.randint(30, 80)
    return rng.choice(
        [
            (UPGRADE, {"errcode": -1, "errmsg": "system busy", "times": times}),
            (UPGRADE, {"http_status": 503, "times": times}),
            (UPGRADE, {"http_status": 502, "body": HTML_502, "times": times}),
            (UPGRADE, {"delay_ms": 1500, "times": times}),
            (CONFIG, {"errcode": -1, "times": times}),
            (CANCEL, {"http_status": 500, "times": times}),
        ]
    )


async def http(base: str, method: str, path: str, body=None):
    """A plain HTTP/1.1 exchange with the sandbox's control routes; returns (status, body)."""
    url = urllib.parse.urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    payload = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nhost: {url.netloc}\r\nconnection: close\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    )
    writer.write(head.encode() + payload)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, content = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        content = dechunk(content)
    return status, content


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


# ---------------------------------------------------------------- drive


class Driver:
    def __init__(self, args, pb, pb_grpc):
        self.args = args
        self.pb = pb
        self.channels = [grpc.aio.insecure_channel(args.gateway) for _ in range(args.connections)]
        self.stubs = [pb_grpc.CustomerUpgradeServiceStub(c) for c in self.channels]
        self.rng = random.Random(args.seed)
        self.ok_upgrades = []  # external_userid of each upgrade answered OK
        self.failed_upgrades = {}  # external_userid -> [code, reason, may_have_taken_effect]
        self.statuses = collections.Counter()  # (rpc, code, reason) -> calls
        self.missing_info = []  # non-OK statuses without ErrorInfo
        self.injected = collections.Counter()
        self.stop_at = 0.0

    async def run(self):
        started = time.monotonic()
        self.stop_at = started + self.args.seconds
        chaos = asyncio.ensure_future(self.chaos())
        await asyncio.gather(*(self.client(i) for i in range(self.args.clients)))
        chaos.cancel()
        await asyncio.gather(chaos, return_exceptions=True)
        elapsed = time.monotonic() - started
        # Faults left over would hit nothing now; clear them for the reader's sake.
        await http(self.args.sandbox, "DELETE", "/sandbox/faults")
        for channel in self.channels:
            await channel.close()
        return elapsed

    async def chaos(self):
        """Scripts sandbox faults, expires and revokes tokens, until stopped."""
        rng = random.Random(self.args.seed + 1)
        next_expiry = time.monotonic() + EXPIRE_TOKENS_EVERY
        next_revocation = time.monotonic() + REVOKE_TOKENS_EVERY
        next_burst = time.monotonic() + BURST_EVERY
        while True:
            await asyncio.sleep(FAULT_EVERY)
            await self.script(*sandbox_fault(rng))
            now = time.monotonic()
            if now >= next_burst:
                await self.script(*sandbox_burst(rng))
                next_burst = now + BURST_EVERY
            if now >= next_expiry:
                await http(self.args.sandbox, "POST", "/sandbox/expire-tokens")
                self.injected["tokens expired"] += 1
                next_expiry = now + EXPIRE_TOKENS_EVERY
            if now >= next_revocation:
                await http(self.args.sandbox, "POST", "/sandbox/revoke-tokens")
                self.injected["tokens revoked"] += 1
                next_revocation = now + REVOKE_TOKENS_EVERY

    async def script(self, path: str, fault: dict):
        await http(self.args.sandbox, "POST", "/sandbox/faults", {"path": path, **fault})
        times = fault.get("times", 1)
        self.injected[f"{path} {fault_kind(fault)}"] += times
        if path == GETTOKEN:
            self.injected["gettoken faults"] += times
        if fault.get("errcode") in TOKEN_ERRCODES:
            self.injected["token errcodes"] += times

    async def client(self, number: int):
        stub = self.stubs[number % len(self.stubs)]
        rng = random.Random(self.args.seed * 1000 + number)
        sequence = 0
        ops, weights = zip(*OPERATIONS.items())
        while time.monotonic() < self.stop_at:
            sequence += 1
            operation = rng.choices(ops, weights)[0]
            timeout = rng.choice(DEADLINES)
            customer = f"wmsoak{self.args.seed}c{number}n{sequence}"
            pb = self.pb
            if operation == "config":
                rpc, method, request = "GetUpgradeConfig", stub.GetUpgradeConfig, pb.GetUpgradeConfigRequest()
            elif operation == "cancel":
                request = pb.CancelUpgradeRequest(open_kfid=OPEN_KFID, external_userid=customer)
                rpc, method = "CancelUpgrade", stub.CancelUpgrade
            else:
                request = pb.UpgradeServiceRequest(open_kfid=OPEN_KFID, external_userid=customer)
                if operation == "upgrade_groupchat":
                    request.groupchat.chat_id = rng.choice(CHATS)
                else:
                    userid = UNCONFIGURED_MEMBER if operation == "upgrade_unconfigured" else rng.choice(MEMBERS)
                    request.member.userid = userid
                    request.member.wording = f"soak {sequence}"
                rpc, method = "UpgradeService", stub.UpgradeService
            code, reason, may = await self.outcome(method, request, timeout)
            if rpc == "UpgradeService":
                if code == "OK":
                    self.ok_upgrades.append(customer)
                else:
                    self.failed_upgrades[customer] = [code, reason, may]
            self.statuses[(rpc, code, reason)] += 1

    async def outcome(self, method, request, timeout):
        """(code, ErrorInfo reason or what stands in for it, may_have_taken_effect)."""
        started = time.monotonic()  # before grpcio starts the deadline's clock
        try:
            await method(request, timeout=timeout)
            return "OK", None, False
        except grpc.aio.AioRpcError as error:
            elapsed = time.monotonic() - started
            try:
                info, _ = details(error)
            except ValueError:  # details that do not match the status: as good as none
                info = None
            code = error.code().name
            if info is not None:
                return code, info.reason, info.metadata.get("may_have_taken_effect") == "true"
            # grpcio ends a call itself when its deadline passes, without details. The
            # gateway answers at least 20 ms before the deadline, so a bare
            # DEADLINE_EXCEEDED within 10 ms of it (clocks differ) is the client's own.
            if code == "DEADLINE_EXCEEDED" and timeout is not None and elapsed >= timeout - 0.01:
                return code, OWN_DEADLINE, False
            if len(self.missing_info) < 20:
                self.missing_info.append(f"{code}: {error.details()}")
            return code, NO_ERROR_INFO, False


def fault_kind(fault: dict) -> str:
    if "errcode" in fault:
        return f"errcode {fault['errcode']}"
    if "http_status" in fault:
        return f"HTTP {fault['http_status']}" + (" page" if "body" in fault else "")
    if "body" in fault:
        return "HTTP 200 non-JSON body"
    return "delay"


async def drive(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pb, pb_grpc = load_stubs(pathlib.Path(tmp))
    driver = Driver(args, pb, pb_grpc)
    elapsed = await driver.run()
    results = {
        "seconds": elapsed,
        "clients": args.clients,
        "connections": args.connections,
        "ok_upgrades": driver.ok_upgrades,
        "failed_upgrades": driver.failed_upgrades,
        "statuses": [[rpc, code, reason, n] for (rpc, code, reason), n in sorted(driver.statuses.items(), key=str)],
        "missing_info": driver.missing_info,
        "injected": dict(driver.injected),
    }
    pathlib.Path(args.out).write_text(json.dumps(results))


# ---------------------------------------------------------------- report


async def sandbox_state(base: str, settle_seconds: float = 30.0):
    """The sandbox's state once it answers no WeCom request any more (a delayed
    answer the gateway gave up on may still apply an upgrade)."""
    deadline = time.monotonic() + settle_seconds
    while True:
        status, body = await http(base, "GET", "/sandbox/state")
        if status != 200:
            raise SystemExit(f"GET /sandbox/state answered HTTP {status}")
        state = json.loads(body)
        if state["requests_in_flight"] == 0:
            return state
        if time.monotonic() > deadline:
            raise SystemExit(f"the sandbox still answers {state['requests_in_flight']} requests")
        await asyncio.sleep(0.2)


def report(args) -> int:
    results = json.loads(pathlib.Path(args.results).read_text())
    proxy = json.loads(pathlib.Path(args.proxy_stats).read_text())
    state = asyncio.run(sandbox_state(args.sandbox))
    accepted = {r["external_userid"] for r in state["recommendations"] if r.get("open_kfid") == OPEN_KFID}
    ok_upgrades, failed = results["ok_upgrades"], results["failed_upgrades"]
    injected = collections.Counter(results["injected"])
    statuses = results["statuses"]
    calls = sum(n for *_, n in statuses)

    ok_not_accepted = sorted(c for c in ok_upgrades if c not in accepted)
    accepted_not_ok = {c: o for c, o in failed.items() if c in accepted}
    by_gateway = {c: (code, reason, may) for c, (code, reason, may) in accepted_not_ok.items() if reason != OWN_DEADLINE}
    unflagged = sorted(c for c, (_, _, may) in by_gateway.items() if not may)
    no_info = sum(n for _, _, reason, n in statuses if reason == NO_ERROR_INFO)
    own_deadline_calls = sum(n for _, _, reason, n in statuses if reason == OWN_DEADLINE)
    proxy_faults = sum(n for k, n in proxy.items() if k not in ("connections", "upstream_connect_failed"))
    # Single flight: every gettoken is the first, or follows one token event (an
    # expiry, a revocation, a scripted token errcode) or one failed fetch (a
    # scripted gettoken fault, or a proxy fault that hit it).
    gettoken_bound = (
        1
        + injected["tokens expired"]
        + injected["tokens revoked"]
        + injected["token errcodes"]
        + injected["gettoken faults"]
        + proxy_faults
    )
    log = pathlib.Path(args.gateway_log).read_text(errors="replace")
    panics = sum(1 for line in log.splitlines() if "panicked" in line)
    peak_mib = args.peak_rss_kib / 1024

    print(
        f"calls: {calls} in {results['seconds']:.1f} s ({calls / results['seconds']:.0f}/s) "
        f"from {results['clients']} concurrent clients on {results['connections']} connections"
    )
    print("status counts:")
    for rpc, code, reason, n in statuses:
        print(f"  {rpc:<17} {code:<20} {reason or '-':<32} {n:>7}")
    print(
        "faults scripted in the sandbox: "
        + ", ".join(f"{k} ×{n}" for k, n in sorted(injected.items()) if k.startswith("/"))
    )
    print(
        f"token events: expired {injected['tokens expired']} times, revoked {injected['tokens revoked']} times, "
        f"token errcodes scripted {injected['token errcodes']} times"
    )
    print("fault proxy: " + ", ".join(f"{k} {n}" for k, n in sorted(proxy.items())))
    print(f"upgrades: {len(ok_upgrades) + len(failed)}, accepted by the sandbox: {len(accepted)}")
    print(f"OK calls not accepted by the upstream: {len(ok_not_accepted)} {ok_not_accepted[:10]}")
    reasons = collections.Counter(f"{code}/{reason}" for code, reason, _ in by_gateway.values())
    print(
        f"accepted calls reported non-OK: {len(accepted_not_ok)} "
        f"({', '.join(f'{r} {n}' for r, n in reasons.most_common()) or 'none'}); "
        f"with may_have_taken_effect=true: {len(by_gateway) - len(unflagged)}; "
        f"ended by the caller's own deadline: {len(accepted_not_ok) - len(by_gateway)}"
    )
    print(
        f"non-OK statuses without ErrorInfo: {no_info} {results['missing_info'][:5]}; "
        f"the caller's own deadline (no status from the gateway): {own_deadline_calls}"
    )
    print(f"gettoken calls: {state['gettoken_calls']} (single flight allows at most {gettoken_bound})")
    print(f"gateway peak RSS (VmHWM): {peak_mib:.1f} MiB")
    print(f"panics in the gateway's log: {panics}")
    print(f"gateway exit status after SIGTERM: {args.gateway_exit}")

    checks = [
        (f"at least {MIN_CALLS} calls", calls >= MIN_CALLS),
        ("faults were injected (sandbox and proxy)", sum(injected.values()) > 0 and proxy_faults > 0),
        ("the sandbox accepted upgrades", len(accepted) > 0),
        ("no OK for an upgrade the upstream did not accept", not ok_not_accepted),
        ("every accepted upgrade reported non-OK carries may_have_taken_effect=true", not unflagged),
        ("every non-OK status from the gateway carries ErrorInfo", no_info == 0),
        ("gettoken calls within the single-flight bound", state["gettoken_calls"] <= gettoken_bound),
        (f"peak RSS under {MAX_PEAK_RSS_MIB} MiB", 0 < peak_mib < MAX_PEAK_RSS_MIB),
        ("no panic in the gateway's log", panics == 0),
        ("the gateway exits 0 on SIGTERM", args.gateway_exit == 0),
    ]
    failed_checks = [name for name, passed in checks if not passed]
    for name, passed in checks:
        print(f"{'ok' if passed else 'FAILED'}: {name}")
    if unflagged:
        print(f"accepted but non-OK without may_have_taken_effect, e.g.: {[(c, failed[c]) for c in unflagged[:5]]}")
    return 1 if failed_checks else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    d = commands.add_parser("drive")
    d.add_argument("--gateway", required=True)
    d.add_argument("--sandbox", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--seconds", type=float, default=60)
    d.add_argument("--clients", type=int, default=64)
    d.add_argument("--connections", type=int, default=16)
    d.add_argument("--seed", type=int, default=1)
    r = commands.add_parser("report")
    r.add_argument("--results", required=True)
    r.add_argument("--sandbox", required=True)
    r.add_argument("--proxy-stats", required=True)
    r.add_argument("--gateway-log", required=True)
    r.add_argument("--peak-rss-kib", type=int, required=True)
    r.add_argument("--gateway-exit", type=int, required=True)
    args = parser.parse_args()
    if args.command == "drive":
        asyncio.run(drive(args))
    else:
        sys.exit(report(args))


if __name__ == "__main__":
    main()
