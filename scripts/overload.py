#!/usr/bin/env python3
"""Overload figures for the README's "Reliability" section, with the default
configuration of the binary given:

1. 5,000 UpgradeService calls at once over 25 connections, against a sandbox that
   takes 4 s to answer: the gateway's RSS and file descriptors while they are in
   flight, the statuses they end with, and the descriptors left open 1 s and 25 s
   after (idle connections to WeCom).
2. 15,000 calls from 48 concurrent callers against a prompt sandbox: how many reach
   WeCom per second (an OK call reached it; a refused one did not).

    python3 scripts/overload.py [--binary target/release/wecom-kf-upgrade]

Needs grpcio and grpcio-status (pip install grpcio grpcio-status). Messages are encoded by hand: no generated code.
"""

import argparse
import asyncio
import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

METHOD = "/wecom.kf.v1.CustomerUpgradeService/UpgradeService"


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def length_delimited(number, payload):
    """One protobuf field of wire type 2 (string or message)."""
    out = bytearray([number << 3 | 2])
    size = len(payload)
    while size >= 0x80:
        out.append(size & 0x7F | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out) + payload


def upgrade_request(customer):
    member = length_delimited(1, b"zhangsan")
    return (
        length_delimited(1, b"kfoverload")
        + length_delimited(2, customer.encode())
        + length_delimited(3, member)
    )


class Gateway:
    """The sandbox and the gateway as processes of their own (so that the
    gateway's figures are its own), on free loopback ports."""

    def __init__(self, binary):
        self.grpc_port, admin, self.sandbox_port = free_ports(3)
        self.log = tempfile.TemporaryFile()
        quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log)
        self.sandbox_process = subprocess.Popen(
            [binary, "sandbox", "--listen", f"127.0.0.1:{self.sandbox_port}"], **quiet)
        env = dict(os.environ, WECOM_CORP_ID="wwsandbox0000000001",
                   WECOM_CORP_SECRET="sandbox-secret",
                   WECOM_API_BASE=f"http://127.0.0.1:{self.sandbox_port}")
        self.process = subprocess.Popen(
            [binary, "serve",
             "--listen", f"127.0.0.1:{self.grpc_port}",
             "--admin-listen", f"127.0.0.1:{admin}"], env=env, **quiet)
        for _ in range(100):
            done = subprocess.run(
                [binary, "health", "--addr", f"127.0.0.1:{self.grpc_port}"],
                capture_output=True,
            )
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise SystemExit("the gateway did not start")

    def sandbox(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.sandbox_port}{path}", data=data, method=method,
            headers={"content-type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=5).read()

    def rss_mib(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def descriptors(self):
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self):
        for process in (self.process, self.sandbox_process):
            process.terminate()
            process.wait(timeout=30)


def channels(gateway, n):
    """`n` connections: without a subchannel pool of its own, grpcio would
    share one connection between channels to the same address."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    target = f"127.0.0.1:{gateway.grpc_port}"
    return [grpc.aio.insecure_channel(target, options=options) for _ in range(n)]


def outcome(error):
    """`CODE REASON` from the status and its ErrorInfo."""
    reason = ""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = " " + info.reason
    return error.code().name + reason


async def in_flight(binary):
    gateway = Gateway(binary)
    try:
        gateway.sandbox("POST", "/sandbox/faults", {
            "path": "/cgi-bin/kf/customer/upgrade_service", "delay_ms": 4000,
            "times": 1_000_000,
        })
        pool = channels(gateway, 25)
        idle = (gateway.rss_mib(), gateway.descriptors())

        async def one(i):
            call = pool[i % len(pool)].unary_unary(METHOD)
            try:
                await call(upgrade_request(f"flight-{i}"), timeout=30)
                return "OK"
            except grpc.aio.AioRpcError as error:
                return outcome(error)

        tasks = [asyncio.ensure_future(one(i)) for i in range(5000)]
        peak_rss, peak_fds = 0.0, 0
        while not all(t.done() for t in tasks):
            await asyncio.sleep(0.25)
            peak_rss = max(peak_rss, gateway.rss_mib())
            peak_fds = max(peak_fds, gateway.descriptors())
        codes = collections.Counter(t.result() for t in tasks)
        gateway.sandbox("DELETE", "/sandbox/faults")
        for ch in pool:
            await ch.close()
        await asyncio.sleep(1)
        after_1s = gateway.descriptors()
        await asyncio.sleep(24)
        after_25s = gateway.descriptors()
        print(f"5,000 calls at once, WeCom answering in 4 s:")
        print(f"  idle: RSS {idle[0]:.1f} MiB, {idle[1]} fds")
        print(f"  peak while in flight: RSS {peak_rss:.1f} MiB, {peak_fds} fds")
        print(f"  fds 1 s after: {after_1s}; 25 s after: {after_25s}")
        print(f"  statuses: {dict(codes)}")
    finally:
        gateway.stop()


async def burst(binary):
    gateway = Gateway(binary)
    try:
        pool = channels(gateway, 4)
        total, workers = 15_000, 48
        issued = 0
        accepted = []
        codes = collections.Counter()

        async def worker(w):
            nonlocal issued
            call = pool[w % len(pool)].unary_unary(METHOD)
            while issued < total:
                issued += 1
                try:
                    await call(upgrade_request(f"burst-{issued}"), timeout=30)
                    accepted.append(time.monotonic())
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    codes[outcome(error)] += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(workers)))
        elapsed = time.monotonic() - started
        per_second = collections.Counter(int(at - started) for at in accepted)
        peak = max(per_second.values(), default=0)
        print(f"15,000 calls from 48 callers in {elapsed:.1f} s:")
        print(f"  reached WeCom: {len(accepted)} ({len(accepted) / elapsed:.0f}/s on average, "
              f"peak {peak} in one second)")
        print(f"  statuses: {dict(codes)}")
        for ch in pool:
            await ch.close()
    finally:
        gateway.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="target/release/wecom-kf-upgrade")
    args = parser.parse_args()
    print(f"# {args.binary}, default configuration, {os.cpu_count()} cores")
    asyncio.run(in_flight(args.binary))
    asyncio.run(burst(args.binary))


if __name__ == "__main__":
    sys.exit(main())
