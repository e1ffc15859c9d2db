"""A TCP fault proxy for the soak (scripts/soak.sh): between the gateway and the
WeCom sandbox, it breaks a random share of the traffic the way a network does.

    python3 scripts/fault_proxy.py --listen PORT --upstream HOST:PORT --stats FILE
        [--seed N] [--max-seconds S] [--storm-every S] [--storm-seconds S]

Each time bytes arrive from one side it draws a fault (the same faults as the Rust
tests' tests/api/fault_proxy.rs; neither toxiproxy nor tc netem installs here):

- request bytes: reset (RST, SO_LINGER 0) before forwarding, so the upstream sees
  nothing; or stall: swallow them and answer nothing until the gateway gives up;
- answer bytes: reset after forwarding, so the upstream processed the request and
  its answer is lost; or slow body: pass the answer on one byte at a time;
- a new connection: reset at once.

Most of the time a fault acts on a fraction of a percent of the events; during a
storm (--storm-seconds out of every --storm-every) on a tenth or more, so that a
call's retries meet faults too, as they do when a network path goes bad.

It reads bytes, not HTTP, so a fault also hits pooled keep-alive connections. On
SIGTERM (or after --max-seconds) it writes how often each fault acted to --stats as
JSON and exits 0. Loopback only.
"""

import argparse
import asyncio
import json
import random
import signal
import socket
import struct
import time

# Share of events each fault acts on (the rest pass through): calm, and in a storm.
CALM = {
    "accept": {"reset_on_accept": 0.01},
    "request": {"reset_before_forwarding": 0.003, "stall": 0.001},
    "answer": {"reset_after_forwarding": 0.003, "slow_body": 0.003},
}
STORM = {
    "accept": {"reset_on_accept": 0.1},
    "request": {"reset_before_forwarding": 0.08, "stall": 0.02},
    "answer": {"reset_after_forwarding": 0.12, "slow_body": 0.05},
}
# Seconds per byte of a slow answer: a WeCom answer of about 300 bytes takes more
# than the soak's 1 s request timeout, so some are lost after WeCom acted.
SLOW_BODY_BYTE_INTERVAL = 0.004
CHUNK = 16 * 1024


class Proxy:
    def __init__(self, upstream_host, upstream_port, rng, storm_every, storm_seconds):
        self.upstream = (upstream_host, upstream_port)
        self.rng = rng
        self.storm_every = storm_every
        self.storm_seconds = storm_seconds
        self.started = time.monotonic()
        self.counts = {name: 0 for table in CALM.values() for name in table}
        self.counts.update(connections=0, upstream_connect_failed=0)

    def draw(self, event: str):
        """The fault for one event ("accept", "request", "answer"), counted; None to forward."""
        into_cycle = (time.monotonic() - self.started) % self.storm_every
        table = (STORM if into_cycle >= self.storm_every - self.storm_seconds else CALM)[event]
        roll = self.rng.random()
        for name, share in table.items():
            if roll < share:
                self.counts[name] += 1
                return name
            roll -= share
        return None

    async def handle(self, client_reader, client_writer):
        self.counts["connections"] += 1
        if self.draw("accept"):
            reset(client_writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.counts["upstream_connect_failed"] += 1
            reset(client_writer)
            return
        requests = asyncio.ensure_future(self.requests(client_reader, client_writer, up_writer))
        answers = asyncio.ensure_future(self.answers(up_reader, client_writer))
        try:
            # Whichever direction ends first (a close or a fault) ends the connection.
            await asyncio.wait({requests, answers}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (requests, answers):
                task.cancel()
            await asyncio.gather(requests, answers, return_exceptions=True)
            close(up_writer)
            close(client_writer)

    async def requests(self, client_reader, client_writer, up_writer):
        while data := await client_reader.read(CHUNK):
            fault = self.draw("request")
            if fault == "reset_before_forwarding":
                reset(client_writer)
                return
            if fault == "stall":
                # Hold the connection: read and drop until the gateway closes it.
                while await client_reader.read(CHUNK):
                    pass
                return
            up_writer.write(data)
            await up_writer.drain()

    async def answers(self, up_reader, client_writer):
        while data := await up_reader.read(CHUNK):
            fault = self.draw("answer")
            if fault == "reset_after_forwarding":
                reset(client_writer)
                return
            if fault == "slow_body":
                for i in range(len(data)):
                    client_writer.write(data[i : i + 1])
                    await client_writer.drain()
                    await asyncio.sleep(SLOW_BODY_BYTE_INTERVAL)
            else:
                client_writer.write(data)
                await client_writer.drain()


def reset(writer):
    """Closes with RST: SO_LINGER 0, then abort (no flush)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed by the peer: nothing left to reset
    writer.transport.abort()


def close(writer):
    if not writer.transport.is_closing():
        writer.transport.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True, help="loopback port")
    parser.add_argument("--upstream", required=True, help="HOST:PORT (loopback)")
    parser.add_argument("--stats", required=True, help="where to write the counts on exit")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--storm-every", type=float, default=6.0, help="seconds from one storm to the next")
    parser.add_argument("--storm-seconds", type=float, default=1.5, help="how long a storm lasts")
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)

    proxy = Proxy(host, int(port), random.Random(args.seed), args.storm_every, args.storm_seconds)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    except asyncio.TimeoutError:
        pass
    server.close()
    with open(args.stats, "w", encoding="utf-8") as out:
        json.dump(proxy.counts, out)


if __name__ == "__main__":
    asyncio.run(main())
