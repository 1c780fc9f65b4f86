"""The management service's API under load: request latency from 50 concurrent keep-alive clients
on loopback against a running `hvsim serve` of the default host, at `--speed 1` and `--speed max`,
with the simulated time the service advanced meanwhile, and faults thrown in during the run.

Each speed gets its own server: `python -m partitions.cli serve --listen 127.0.0.1:0 --speed S` in
a subprocess (a loopback port the kernel picks, read from the line serve prints; its working and
state directories in a scratch directory), ready when GET /v1/clock answers, measured once the
host has booted (WARM_UP_NS of simulated time). One client process drives it: 50 asyncio
connections, raw HTTP/1.1 with keep-alive (no HTTP library between the socket and the clock: a
request is timed from just before its bytes are written to just after the last byte of its answer
is read). Each client loops on a seeded mix: GET /v1/vms (40 %), GET /v1/vms/{name} (30 %),
GET /v1/clock (28 %) and now and then (2 %) a lifecycle POST: a VM paused and at once resumed, two
requests (a 409 is a right answer: another client may have got there first).

Two loads, each measured with the clock paused (PUT /v1/clock {"paused": true}: the simulation
thread waits and takes neither CPU nor the GIL) and then running, the paused figure being the
running one's baseline:
- paced: each client pauses a random 200 ms on average after each answer (THINK), about 5
  requests a second each, 250 in all; the issue's goal (p99 <= 100 ms) is judged here.
- flat out: no pause, the server saturated; its requests per second are the service's capacity,
  and its latency is queueing (50 requests in the queue at any time).
The simulated time the clock advanced over a running stretch, over the wall time, is the service's
rate under that load: at `--speed 1` it must keep pace with real time (the simulation must not
stall behind the API).

Faults during the flat-out stretch, on their own connections: clients that open the event stream
(`/v1/events?follow=true`, server-sent events), read part of it and drop the connection; a POST
with malformed JSON (400 expected); bodies over the 1 MiB bound, with a Content-Length and chunked
(413 expected); an unknown VM (404). After the run the clock must have moved on and the server must
still answer; the figure counts the faults answered as expected and fails naming any that were not.

N.B. the client and the server share the machine's CPUs (2 here), and the client's own CPU time
per request (in each p99's note) is in every latency: the figures are an upper bound.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.timing import Figure, Goal, failed, scratch_dir

CLIENTS = 50
#: Seconds of load measured per phase (paused baseline, then running), per size.
SECONDS = {"tiny": 0.3, "default": 6.0, "long": 20.0}
#: Simulated time the host runs before anything is measured (its boot), per size.
WARM_UP_NS = {"tiny": 100_000_000, "default": 1_000_000_000, "long": 2_000_000_000}
#: Seconds the fault injector waits between rounds (every kind of fault each round).
FAULT_EVERY = {"tiny": 0.1, "default": 1.0, "long": 2.0}
GOAL = Goal("<=", 100.0, "value", "API p99 latency <= 100 ms, 50 concurrent paced clients on loopback (issue 15)")
GOAL_FLAT = Goal("<=", 100.0, "value", "API p99 latency <= 100 ms flat out too (50 clients asking again at once)")
GOAL_PACE = Goal(">=", 0.9, "ratio", "--speed 1 keeps pace with real time under that load (>= 0.9x)")
#: A paced client's mean pause between an answer and its next request (exponential, seeded): about
#: 5 requests a second each, above the web console's 3 (partitions/service/static/console.js polls
#: the clock and the VMs, and the selected VM, once a second).
THINK = 0.2
#: The stretches measured on each server, in order: (phase, clock paused, think time or None for
#: flat out, faults thrown in, the phase whose p99 is this one's baseline).
PHASES = (("clock paused, paced", True, THINK, False, None),
          ("clock paused, flat out", True, None, False, None),
          ("running, paced", False, THINK, False, "clock paused, paced"),
          ("running, flat out", False, None, True, "clock paused, flat out"))
MIX = (("vms.list", 0.40), ("vms.get", 0.30), ("clock.get", 0.28), ("lifecycle", 0.02))
BOUND = 1 << 20          # the API's body bound (svc contract: 1 MiB; larger is 413 before parsing)
READY_SECONDS = 120.0    # a server that is not answering by then is reported as failed
ANSWER_SECONDS = 30.0    # a request not answered by then fails the figure (status 0), not the bench
_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


# --- the server -------------------------------------------------------------------------------

class Server:
    """`hvsim serve` of the default host in a subprocess, in a scratch directory of its own, on a
    loopback port the kernel picks (`--listen 127.0.0.1:0`; the port is read from the line serve
    prints once it listens); stopped with SIGTERM (as a user's Ctrl-C would) and killed only if
    that does not end it."""

    #: The command before its options (a test may point it elsewhere).
    COMMAND = (sys.executable, "-m", "partitions.cli", "serve")

    def __init__(self, speed: str):
        self.speed = speed
        self.port: int | None = None
        base, _ = scratch_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="hvsim-bench-api-", dir=base))
        self.log = self.dir / "serve.log"
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> None:
        """Start the process (once); `with server:` waits until it answers."""
        if self.proc is not None:
            return
        argv = [*self.COMMAND, "--listen", "127.0.0.1:0", "--speed", self.speed, "--state", str(self.dir / "state")]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def __enter__(self) -> "Server":
        self.spawn()
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if self.proc.poll() is not None:
                self.__exit__(None, None, None)
                raise RuntimeError(f"hvsim serve --speed {self.speed} exited {self.proc.returncode}: {self.tail()}")
            if self.port is None:
                found = _LISTENING.search(self.log.read_text(errors="replace"))
                self.port = int(found.group(1)) if found else None
            if self.port is not None:
                with contextlib.suppress(OSError):
                    status, _ = request("127.0.0.1", self.port, "GET", "/v1/clock", timeout=2.0)
                    if status == 200:
                        return self
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"hvsim serve --speed {self.speed} not answering after {READY_SECONDS:.0f} s: "
                                   f"{self.tail()}")
            time.sleep(0.05)   # polling its output and a readiness endpoint: the bench has no other signal

    def tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no output)"
        return " | ".join(lines[-3:]) or "(no output)"

    def __exit__(self, *exc) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def request(host: str, port: int, method: str, path: str, body=None, timeout: float = 10.0):
    """(status, decoded JSON or None) of one request on a connection of its own (set-up and checks
    only; the measured requests go through `_Conn`)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        r = conn.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, None
    finally:
        conn.close()


# --- the clients ------------------------------------------------------------------------------

class _Conn:
    """One keep-alive HTTP/1.1 connection: a request written whole, its answer read to the last
    byte of its body (Content-Length or chunked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "_Conn":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def call(self, method: str, path: str, body: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}")
        if body is not None:
            head.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        return await read_response(self.reader)

    def close(self) -> None:
        self.writer.close()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status, headers = await read_head(reader)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        return status, b"".join(p[:-2] for p in parts)
    return status, await reader.readexactly(int(headers.get("content-length", "0")))


@dataclass
class Load:
    """What one loaded stretch measured."""

    latencies: list[float] = field(default_factory=list)   # seconds, every measured request
    by_kind: dict[str, list[float]] = field(default_factory=dict)   # the same, by the mix's kind
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)   # kind -> status -> count
    seconds: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float | None = None   # CPU seconds of the server's process over the stretch (Linux /proc)
    faults: list[tuple[str, bool, str]] = field(default_factory=list)   # (fault, as expected, what came back)

    def count(self, kind: str, status: int) -> None:
        by = self.statuses.setdefault(kind, {})
        by[status] = by.get(status, 0) + 1

    def unexpected(self) -> list[str]:
        ok = {"lifecycle": {200, 409}}
        return [f"{kind} -> {status or 'no answer'} x{n}" for kind, by in self.statuses.items()
                for status, n in by.items() if status not in ok.get(kind, {200})]


def _requests(kind: str, rng: random.Random, names: list[str]) -> list[tuple[str, str]]:
    """The (method, path) requests of one draw of the mix: one, or for a lifecycle draw a pause and
    the resume of the same VM (so the VMs run nearly all the time and the host's load stays the
    default host's)."""
    if kind == "vms.list":
        return [("GET", "/v1/vms")]
    if kind == "vms.get":
        return [("GET", f"/v1/vms/{rng.choice(names)}")]
    if kind == "clock.get":
        return [("GET", "/v1/clock")]
    vm = rng.choice(names)
    return [("POST", f"/v1/vms/{vm}/pause"), ("POST", f"/v1/vms/{vm}/resume")]


async def _client(conn: _Conn, rng: random.Random, names: list[str], until: float, think: float | None,
                  load: Load) -> None:
    kinds, weights = zip(*MIX)
    while time.perf_counter() < until:
        if think:
            await asyncio.sleep(min(rng.expovariate(1 / think), max(0.0, until - time.perf_counter())))
            if time.perf_counter() >= until:
                break
        kind = rng.choices(kinds, weights)[0]
        for method, path in _requests(kind, rng, names):
            start = time.perf_counter()
            try:
                status, _ = await asyncio.wait_for(conn.call(method, path, b"" if method == "POST" else None),
                                                   ANSWER_SECONDS)
            except asyncio.TimeoutError:
                load.count(kind, 0)   # no answer: reported as an unexpected status, and the client stops
                return
            spent = time.perf_counter() - start
            load.latencies.append(spent)
            load.by_kind.setdefault(kind, []).append(spent)
            load.count(kind, status)


async def _fault_round(port: int, load: Load) -> None:
    """One of each fault, each on a connection of its own, the connection dropped afterwards."""
    async def stream_dropped():
        conn = await _Conn.open(port)
        try:
            conn.writer.write(b"GET /v1/events?follow=true&since=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              b"Accept: text/event-stream\r\n\r\n")
            status, headers = await asyncio.wait_for(read_head(conn.reader), 5)
            # Part of the stream (the boot's events are in the ring), then the client vanishes.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(conn.reader.read(512), 0.2)
            kind = headers.get("content-type", "")
            return "event stream dropped mid-stream", status == 200 and "text/event-stream" in kind, f"{status} {kind}"
        finally:
            conn.writer.transport.abort()   # no FIN handshake: a reset, as a killed client gives

    async def malformed():
        conn = await _Conn.open(port)
        try:
            status, body = await conn.call("POST", "/v1/vms", b'{"toml": "name = ',
                                           {"Content-Type": "application/json"})
            kind = _error_type(body)
            return "malformed JSON", status == 400 and kind == "BadRequest", f"{status} {kind}"
        finally:
            conn.close()

    async def oversized(chunked: bool):
        name = "oversized body, chunked" if chunked else "oversized body, Content-Length"
        conn = await _Conn.open(port)
        try:
            size = BOUND + (1 << 16)
            head = "POST /v1/vms HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
            conn.writer.write(head.encode())
            answer = asyncio.ensure_future(read_response(conn.reader))
            chunk = b'{"toml": "' + b"x" * (1 << 16)
            sent = 0
            # Send the body piece by piece and stop as soon as the server answers: it may refuse
            # before reading it all, and bytes it never reads must not reset its answer away.
            while sent < size and not answer.done():
                piece = chunk[: size - sent]
                conn.writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
                with contextlib.suppress(ConnectionError):
                    await conn.writer.drain()
            if chunked and not answer.done():
                conn.writer.write(b"0\r\n\r\n")
            try:
                status, body = await asyncio.wait_for(answer, 10)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                return name, False, f"no answer: {type(exc).__name__}"
            kind = _error_type(body)
            return name, status == 413 and kind == "TooLarge", f"{status} {kind}"
        finally:
            conn.writer.transport.abort()

    async def unknown_vm():
        conn = await _Conn.open(port)
        try:
            status, body = await conn.call("GET", "/v1/vms/no-such-vm")
            kind = _error_type(body)
            return "unknown VM", status == 404 and kind == "NotFound", f"{status} {kind}"
        finally:
            conn.close()

    for make in (stream_dropped, malformed, lambda: oversized(False), lambda: oversized(True), unknown_vm):
        try:
            load.faults.append(await make())
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            load.faults.append((getattr(make, "__name__", "oversized body"), False, f"{type(exc).__name__}: {exc}"))


def _error_type(body: bytes) -> str | None:
    try:
        return json.loads(body)["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


async def _measure(port: int, names: list[str], seconds: float, think: float | None, fault_every: float | None,
                   seed: int) -> Load:
    load = Load()
    conns = [await _Conn.open(port) for _ in range(CLIENTS)]
    try:
        # One request on each connection before the clock starts: its first answer warms the
        # server's path for it (and the connection is accepted), which is not what is measured.
        await asyncio.gather(*(c.call("GET", "/v1/clock") for c in conns))
        cpu = time.process_time()
        start = time.perf_counter()
        until = start + seconds
        tasks = [asyncio.ensure_future(_client(c, random.Random(seed * 1000 + i), names, until, think, load))
                 for i, c in enumerate(conns)]
        if fault_every is not None:
            async def faults():
                while True:   # at least one round, however short the stretch
                    await _fault_round(port, load)
                    if time.perf_counter() + fault_every >= until:
                        return
                    await asyncio.sleep(fault_every)
            tasks.append(asyncio.ensure_future(faults()))
        await asyncio.gather(*tasks)
        load.seconds = time.perf_counter() - start
        load.client_cpu = time.process_time() - cpu
    finally:
        for c in conns:
            c.close()
    return load


# --- figures ----------------------------------------------------------------------------------

def _percentile(sorted_xs: list[float], p: float) -> float:
    """The nearest-rank percentile (p in 0-100) of an ascending list."""
    k = max(0, min(len(sorted_xs) - 1, int(-(-p * len(sorted_xs) // 100)) - 1))
    return sorted_xs[k]


def _process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) the process has used so far; None where /proc has no such file."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime, stime


def _open_fds(pid: int) -> int | None:
    """How many file descriptors the process has open; None where /proc cannot say."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _stretch(server: Server, names: list[str], seconds: float, think: float | None, faults: float | None,
             seed: int) -> tuple[Load, float]:
    """(load, simulated seconds per wall second over it); the server's CPU seconds go in load.server_cpu."""
    _, before = request("127.0.0.1", server.port, "GET", "/v1/clock")
    cpu = _process_cpu(server.proc.pid)
    t0 = time.perf_counter()
    load = asyncio.run(_measure(server.port, names, seconds, think, faults, seed))
    _, after = request("127.0.0.1", server.port, "GET", "/v1/clock")
    wall = time.perf_counter() - t0
    end = _process_cpu(server.proc.pid)
    load.server_cpu = None if cpu is None or end is None else end - cpu
    return load, (after["now_ns"] - before["now_ns"]) / 1e9 / wall


def _warm_up(server: Server, until_ns: int) -> None:
    """Wait until the simulation has booted the host (its clock at `until_ns`): the boot's VMBus
    set-up is heavier than the steady state the figures are about."""
    deadline = time.monotonic() + READY_SECONDS
    while True:
        status, clock = request("127.0.0.1", server.port, "GET", "/v1/clock")
        if status == 200 and clock["now_ns"] >= until_ns:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the clock did not reach {until_ns / 1e9:g} s in {READY_SECONDS:.0f} s: {clock!r}")
        time.sleep(0.05)   # polling: the clock moves on by itself


def _fault_every(faults: bool, size: str) -> float | None:
    """Seconds between fault rounds in a stretch; None: no faults. (Not `faults and ...`: False
    reached _measure as an interval of 0 s, and every stretch had faults back to back, which
    took most of the server's CPU in the paced stretches and halved the simulation's pace.)"""
    return FAULT_EVERY[size] if faults else None


def _speed(server: Server, size: str) -> list[Figure]:
    speed = server.speed
    label = f"--speed {speed}"
    loads: dict[str, tuple[Load, float]] = {}
    with server:
        status, vms = request("127.0.0.1", server.port, "GET", "/v1/vms")
        if status != 200 or not vms:
            raise RuntimeError(f"GET /v1/vms answered {status} {vms!r}: the bench needs the default host's VMs")
        names = [row["Name"] for row in vms]
        _warm_up(server, WARM_UP_NS[size])
        fds_before = _open_fds(server.proc.pid)
        for n, (phase, paused, think, faults, _) in enumerate(PHASES):
            status, _ = request("127.0.0.1", server.port, "PUT", "/v1/clock", {"paused": paused})
            if status != 200:
                raise RuntimeError(f"PUT /v1/clock {{'paused': {paused}}} answered {status}")
            loads[phase] = _stretch(server, names, SECONDS[size], think, _fault_every(faults, size), seed=n + 1)
        # Afterwards: the clock still moves and the server still answers.
        _, c1 = request("127.0.0.1", server.port, "GET", "/v1/clock")
        deadline = time.monotonic() + 10
        while True:
            status, c2 = request("127.0.0.1", server.port, "GET", "/v1/clock")
            if status == 200 and c2["now_ns"] > c1["now_ns"]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"after the faults the clock stands still at {c1['now_ns']} ns (answer {status})")
            time.sleep(0.01)   # polling: the next window has to pass
        after_status, _ = request("127.0.0.1", server.port, "GET", "/v1/vms")
        # Every connection the clients and the faults opened is closed by now, dropped event streams
        # included: the server must let go of them (a little slack for its own files).
        fds_after = _open_fds(server.proc.pid)
        deadline = time.monotonic() + 10
        while fds_before is not None and fds_after > fds_before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)   # polling: the server closes a dropped stream when its next write fails
            fds_after = _open_fds(server.proc.pid)
    figures = []
    p99s: dict[str, float] = {}
    for phase, paused, think, faults, base in PHASES:
        load, pace = loads[phase]
        xs = sorted(load.latencies)
        name = f"{label}, {phase}: p99 latency"
        goal = None if paused else GOAL if think else GOAL_FLAT
        if not xs:
            figures.append(failed(name, "no request was answered", goal))
            continue
        bad = load.unexpected()
        error = f"unexpected answers: {', '.join(bad)}" if bad else None
        p50, p99, worst = (x * 1e3 for x in (_percentile(xs, 50), _percentile(xs, 99), xs[-1]))
        p99s[phase] = p99
        note = (f"{len(xs)} requests in {load.seconds:.1f} s; p50 {p50:.1f} ms, max {worst:.1f} ms; CPU per request: "
                f"the client's {load.client_cpu / len(xs) * 1e6:.0f} us"
                + (f", the server's {load.server_cpu / len(xs) * 1e6:.0f} us" if load.server_cpu is not None else "")
                + (" (with the simulation's)" if not paused else "")
                + "; p99 by request: " + ", ".join(f"{kind} {_percentile(sorted(ys), 99) * 1e3:.0f} ms"
                                                   for kind, ys in sorted(load.by_kind.items())))
        ratio = p99 / p99s[base] if base in p99s and p99s[base] else None
        figures.append(Figure(name, p99, "ms", base and f"{label}, {base}: p99 latency", ratio, goal, note, error))
        if not paused:
            figures += [Figure(f"{label}, {phase}: p50 latency", p50, "ms", error=error),
                        Figure(f"{label}, {phase}: max latency", worst, "ms", error=error)]
        figures.append(Figure(f"{label}, {phase}: requests per second", len(xs) / load.seconds, "req/s", error=error))
        if paused and not think and load.server_cpu:
            # The clock paused, the server's CPU is the API's alone: what a request costs on any machine,
            # however loaded (its inverse is the capacity of one CPU).
            figures.append(Figure(f"{label}, {phase}: server CPU per request", load.server_cpu / len(xs) * 1e3,
                                  "ms", note="CPU seconds of the hvsim serve process over the requests answered"))
        if not paused:
            figures.append(Figure(f"{label}, {phase}: simulated time", pace, "x real time", "real time", pace,
                                  GOAL_PACE if speed == "1" and think else None,
                                  "simulated seconds the clock advanced per wall second while the clients ran",
                                  None if pace > 0 else "the clock did not advance under load"))
    busy = next(loads[phase][0] for phase, _, _, faults, _ in PHASES if faults)
    wrong = [f"{what}: {got}" for what, ok, got in busy.faults if not ok]
    if after_status != 200:
        wrong.append(f"GET /v1/vms after the faults answered {after_status}")
    if fds_before is not None and fds_after > fds_before + 2:
        wrong.append(f"the server holds {fds_after} file descriptors after the run, {fds_before} before it: "
                     "connections left open")
    kinds = sorted({what for what, _, _ in busy.faults})
    figures.append(Figure(f"{label}: faults answered as expected", sum(ok for _, ok, _ in busy.faults), "requests",
                          note=f"{len(busy.faults)} faults during the flat-out run ({', '.join(kinds)}); the clock "
                               "moved on, GET /v1/vms answered and the server held no more connections after them",
                          error=f"not as expected: {'; '.join(wrong)}" if wrong else None))
    return figures


def run(size: str = "default") -> list[Figure]:
    servers = [Server(speed) for speed in ("1", "max")]
    figures = []
    try:
        if size == "tiny":
            for server in servers:   # a smoke test: both start at once (their start-up is most of its time)
                server.spawn()
        for server in servers:
            try:
                figures += _speed(server, size)
            except RuntimeError as exc:
                figures.append(failed(f"--speed {server.speed}, running, paced: p99 latency", str(exc), GOAL))
    finally:
        for server in servers:
            server.__exit__(None, None, None)   # a server already stopped is left as it is
    return figures


if __name__ == "__main__":
    for f in run(sys.argv[1] if len(sys.argv) > 1 else "default"):
        print(f)
