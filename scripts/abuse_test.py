#!/usr/bin/env python3
"""Load test `casetag serve` under abuse, on 127.0.0.1 only.

Starts the server, then at the same time:
  * CLIENTS closed-loop clients (keep-alive, one request in flight each)
    POSTing /v1/tag for DURATION seconds;
  * SLOWLORIS connections that send a request head one header line per
    second and never finish it (replaced when the server closes them);
  * SLOW clients that trickle a whole, valid request over about two seconds.
Then it waits for idle connections to time out and counts the server's
open file descriptors (/proc/PID/fd) against the count before the load.

Reports requests by status, p50/p99 latency of the clients' requests, the
longest a slowloris connection stayed open, and leaked descriptors. Exits 1
when any request failed other than with a 429 (queue full), when a slow
client was not answered, or when descriptors leaked.

  scripts/abuse_test.py --bin target/release/casetag --model M [--fallback F]
      [--clients 200] [--duration 20] [--slowloris 100] [--slow 20]
      [--cases 1] [--out report.md] [-- EXTRA SERVE FLAGS...]

Everything is bounded: connections (CLIENTS + SLOWLORIS + SLOW), time
(DURATION plus the server's header timeout) and the server, which is
stopped on exit whatever happens. Standard library only.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

TEXTS = [
    "buyer: I received the parcel today but the phone case is missing from the box. "
    "seller: Sorry to hear that, could you send a photo of the package? "
    "buyer: Sent. I want a refund for the missing item.",
    "buyer: The tracking number has not updated for 6 days and the delivery date has passed. "
    "agent: I have contacted the courier. buyer: Please cancel if it does not arrive this week.",
    "buyer: The blender arrived with a cracked jug and it leaks. I'd like a replacement or a refund. "
    "seller: We can offer a partial refund of 30%. buyer: That is not acceptable, I want to return it.",
    "buyer: I was charged twice for order 88213. system: duplicate payment detected. "
    "agent: The second charge will be reversed within 5 working days.",
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def body(cases, k):
    cs = [{"id": f"c{i}", "text": TEXTS[(k + i) % len(TEXTS)]} for i in range(cases)]
    return json.dumps({"cases": cs, "top_k": 3}).encode()


def request(port, payload):
    return (
        f"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


async def read_response(reader):
    """One HTTP/1.1 response with a content-length: (status, body, close)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, close = 0, False
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            length = int(v)
        elif k == "connection" and v.strip().lower() == "close":
            close = True
    data = await reader.readexactly(length)
    return status, data, close


class Stats:
    def __init__(self):
        self.status = {}
        self.errors = {}
        self.latencies = []
        self.slowloris_opened = 0
        self.slowloris_closed_by_server = 0
        self.slowloris_longest = 0.0
        self.slow_ok = 0
        self.slow_failed = {}

    def error(self, what):
        self.errors[what] = self.errors.get(what, 0) + 1


async def client(port, cases, until, st, k):
    reader = writer = None
    n = 0
    while time.monotonic() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            payload = body(cases, k + n)
            t = time.monotonic()
            writer.write(request(port, payload))
            await writer.drain()
            status, _, close = await asyncio.wait_for(read_response(reader), 60)
            st.latencies.append(time.monotonic() - t)
            st.status[status] = st.status.get(status, 0) + 1
            if status == 429:
                await asyncio.sleep(0.05)
            if close:
                writer.close()
                writer = None
            n += 1
        except Exception as e:  # a failed request: counted, then reconnect
            st.error(type(e).__name__)
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


async def slowloris(port, until, st):
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except Exception as e:
            st.error("slowloris-connect-" + type(e).__name__)
            await asyncio.sleep(0.5)
            continue
        st.slowloris_opened += 1
        opened = time.monotonic()
        writer.write(f"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        closed = False
        i = 0
        while time.monotonic() < until:
            try:
                writer.write(f"X-Slow-{i}: {i}\r\n".encode())
                await writer.drain()
                # The server closing shows as EOF (or a reset) on read.
                # EOF, or an error answer before the close: either way the
                # server acted on the stalled head.
                await asyncio.wait_for(reader.read(1024), 1.0)
                closed = True
                break
            except asyncio.TimeoutError:
                i += 1
                continue
            except (ConnectionError, OSError):
                closed = True
                break
        life = time.monotonic() - opened
        if closed:
            st.slowloris_closed_by_server += 1
            st.slowloris_longest = max(st.slowloris_longest, life)
        writer.close()


async def slow_client(port, cases, until, st, k):
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            req = request(port, body(cases, k))
            # The whole request in 20 pieces over about two seconds.
            step = max(1, len(req) // 20)
            for i in range(0, len(req), step):
                writer.write(req[i : i + step])
                await writer.drain()
                await asyncio.sleep(0.1)
            status, _, _ = await asyncio.wait_for(read_response(reader), 60)
            if status in (200, 429):
                st.slow_ok += 1
            else:
                st.slow_failed[status] = st.slow_failed.get(status, 0) + 1
            writer.close()
        except Exception as e:
            st.slow_failed[type(e).__name__] = st.slow_failed.get(type(e).__name__, 0) + 1
            await asyncio.sleep(0.1)


async def load(port, a, st):
    until = time.monotonic() + a.duration
    tasks = [client(port, a.cases, until, st, k) for k in range(a.clients)]
    tasks += [slowloris(port, until, st) for _ in range(a.slowloris)]
    tasks += [slow_client(port, a.cases, until, st, k) for k in range(a.slow)]
    await asyncio.gather(*tasks)


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                yield line


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default="target/release/casetag")
    p.add_argument("--model", required=True)
    p.add_argument("--fallback")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--slowloris", type=int, default=100)
    p.add_argument("--slow", type=int, default=20)
    p.add_argument("--cases", type=int, default=1)
    p.add_argument("--header-timeout-ms", type=int, default=2000)
    p.add_argument("--out")
    p.add_argument("extra", nargs="*", help="extra `casetag serve` flags (after --)")
    a = p.parse_args()
    if not (1 <= a.duration <= 600) or a.clients + a.slowloris + a.slow > 2000:
        sys.exit("abuse_test: --duration is 1..600 s and at most 2000 connections in all")

    port = free_port()
    args = [a.bin, "serve", "--model", a.model, "--addr", f"127.0.0.1:{port}",
            "--header-timeout-ms", str(a.header_timeout_ms)]
    if a.fallback:
        args += ["--fallback", a.fallback]
    args += a.extra
    log = open(f"/tmp/casetag-abuse-{port}.log", "w")
    env = dict(os.environ, CASETAG_LOG=os.environ.get("CASETAG_LOG", "warn"))
    srv = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        t0 = time.monotonic()
        while True:
            if srv.poll() is not None:
                sys.exit(f"abuse_test: the server exited (see {log.name})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    ready = json.loads(r.read())
                    break
            except Exception:
                if time.monotonic() - t0 > 600:
                    sys.exit("abuse_test: the server was not ready after 600 s")
                time.sleep(0.2)
        time.sleep(0.5)
        fds_before = fd_count(srv.pid)
        st = Stats()
        started = time.monotonic()
        asyncio.run(load(port, a, st))
        elapsed = time.monotonic() - started
        # Every client has closed; idle server-side sockets go within the
        # header timeout.
        time.sleep(a.header_timeout_ms / 1000 + 1.0)
        fds_after = fd_count(srv.pid)
        extra = list(metric(port, "casetag_fallback_total")) + list(
            metric(port, "casetag_header_timeouts_total")) + list(
            metric(port, "casetag_dropped_jobs_total"))
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(30)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()

    lat = sorted(st.latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")
    total = sum(st.status.values())
    bad = {k: v for k, v in st.status.items() if k not in (200, 429)}
    failures = sum(bad.values()) + sum(st.errors.values())
    leaked = fds_after - fds_before
    model = ready.get("model", {})
    lines = [
        "### casetag serve under abuse",
        "",
        f"model `{model.get('id')}` ({model.get('kind')}), fallback "
        f"`{(ready.get('fallback') or {}).get('id')}`; {os.cpu_count()} CPUs; loopback; "
        f"{a.duration} s; header timeout {a.header_timeout_ms} ms.",
        "",
        f"`{' '.join(os.path.relpath(x) if os.path.exists(x) else x for x in sys.argv)}`",
        "",
        "| what | value |",
        "|---|---|",
        f"| clients (closed loop, {a.cases} case(s) each) | {a.clients} |",
        f"| requests answered | {total} ({total / elapsed:.0f}/s) |",
        f"| by status | {', '.join(f'{k}: {v}' for k, v in sorted(st.status.items()))} |",
        f"| failures other than 429 | {failures} {bad or ''} {st.errors or ''} |",
        f"| latency p50 / p99 | {pct(0.50):.1f} ms / {pct(0.99):.1f} ms |",
        f"| slowloris connections opened / closed by the server | {st.slowloris_opened} / {st.slowloris_closed_by_server} |",
        f"| longest slowloris connection | {st.slowloris_longest:.1f} s |",
        f"| slow clients answered / failed | {st.slow_ok} / {sum(st.slow_failed.values())} {st.slow_failed or ''} |",
        f"| server file descriptors before / after | {fds_before} / {fds_after} (leaked {leaked}) |",
        f"| server counters | {'; '.join(extra)} |",
    ]
    report = "\n".join(lines)
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report + "\n")
    ok = failures == 0 and not st.slow_failed and leaked <= 0 and st.slow_ok > 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
