"""A datacenter host in another process: RemoteHostNode stands in for a HostNode behind the window
seam and speaks the window protocol over a FrameStream to `serve_host`, which runs the real
HostNode in the process `hvsim host serve` started (docs/wire.md).

    node = RemoteHostNode("host-b", config, address="127.0.0.1:7000", seed=s, neighbours={"host-a"})
    node.accept(messages); node.advance(until); node.take_outbox(); node.summary(); node.close()

One round trip per window: the messages accepted for the host ride on the next request, and the
answer to `advance` carries the messages the host sent during the window, its time and how many
messages it holds. Both sides check every message they decode (its ends, kind, sizes and times):
a damaged or hostile peer can stop a run, or send what its host could send, nothing past that
(it cannot forge another host's messages or deliver one into a host's past). A host whose connection
breaks raises WireError naming it, once: afterwards it stands still at the time it was lost, drops
the messages sent to it, and answers `summary` from what it last knew, so the run still reports
how it ended and can go on without it.
"""
from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path
from typing import Any

from partitions.config_schema import Config, PythonWorkload
from partitions.datacenter.link import Message
from partitions.datacenter.wire import DEFAULT_TIMEOUT, PROTOCOL, VERSION, FrameStream, WireError, parse_address

MAX_NAME = 64                         # a host name (partitions.config's pattern)
MAX_KIND = 256                        # a message kind
MAX_NS = 2**63 - 1
#: Kinds of error a served host reports as what they are (the run's outcome reads the same as in
#: one process); any other is a defect and comes with the served side's traceback.
_CLEAN_ERRORS = ("ScenarioError", "GuestError")


class RemoteHostError(RuntimeError):
    """The served host raised while running (not a transport failure). `kind` is the exception's
    class name there, `remote_traceback` its traceback for a defect (None for a scenario's or a
    guest's error, which are the run's outcome, not hvsim's fault)."""

    def __init__(self, message: str, kind: str, remote_traceback: str | None) -> None:
        super().__init__(message)
        self.kind = kind
        self.remote_traceback = remote_traceback


# ---- messages as plain data -------------------------------------------------------------------------

def message_record(m: Message) -> list:
    return [m.src, m.dst, m.kind, m.payload, m.size, m.sent_ns, m.seq, m.start_ns, m.arrival_ns]


def message_from(record: Any, what: str) -> Message:
    """A Message from its record, every field checked; WireError naming `what` otherwise."""
    def fail(why: str):
        raise WireError(f"{what}: {why}")
    if not isinstance(record, list) or len(record) != 9:
        fail("not a message record (a list of 9 fields)")
    src, dst, kind, payload, size, sent, seq, start, arrival = record
    for field, value, limit in (("src", src, MAX_NAME), ("dst", dst, MAX_NAME), ("kind", kind, MAX_KIND)):
        if not isinstance(value, str) or not 1 <= len(value) <= limit:
            fail(f"{field}: expected a name of 1-{limit} characters, got {value!r:.80}")
    if not isinstance(payload, bytes):
        fail(f"payload: expected bytes, got {type(payload).__name__}")
    for field, value, optional in (("size", size, False), ("sent_ns", sent, False), ("seq", seq, False),
                                   ("start_ns", start, True), ("arrival_ns", arrival, True)):
        if (value is None and not optional) or (value is not None and (type(value) is not int
                                                                        or not 0 <= value <= MAX_NS)):
            fail(f"{field}: expected an integer from 0 to 2^63-1, got {value!r:.80}")
    if size < len(payload):
        fail(f"size {size} is less than the payload's {len(payload)} bytes")
    return Message(src, dst, kind, payload, size, sent, seq, start, arrival)


def _integer(value: Any, what: str, lo: int = 0, hi: int = MAX_NS) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise WireError(f"{what}: expected an integer from {lo} to {hi}, got {value!r:.80}")
    return value


# ---- the datacenter's side -------------------------------------------------------------------------------

class RemoteHostNode:
    """Host `name` of a datacenter, run by `hvsim host serve` at `address` ("HOST:PORT"). Its
    configuration is sent at hello (disk paths relative to `base_dir`, which the served host reads
    as relative to its own work directory); `timeout` is how many seconds (wall clock) it waits for
    the connection and for each answer."""

    def __init__(self, name: str, config: Config, *, address: str, seed: int, neighbours: set[str],
                 links: dict[str, tuple[int, int]] | None = None, base_dir: Path | str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        from partitions.config_schema import dump
        self.name = name
        self.address = address
        self.seed = seed
        self.neighbours = frozenset(neighbours)
        self.links = dict(links or {})   # peer -> (bandwidth bit/s, latency ns), as HostNode.links
        #: how the served host's `call`s reach another host: (peer, kind, payload) -> bytes (set by
        #: the datacenter, as for a HostNode)
        self.caller = None
        self._now = 0
        self._pending = 0                          # messages the served host holds, as of its last answer
        self._accepted: list[Message] = []         # accepted here, sent with the next request
        self._outbox: list[Message] = []           # what the last window's answer carried
        self._next_seq = 0                         # the seq the host's next message must have
        self._last: dict[str, Any] | None = None   # its last summary, for a host whose connection broke
        self.lost: str | None = None               # why the connection broke, once it has
        self.dropped = 0                           # messages accepted for it after it was lost
        host, port = parse_address(address)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise WireError(f"host {name!r}: cannot connect to {address} ({e.strerror or e})") from None
        self._stream = FrameStream(sock, peer=address, timeout=timeout)
        base = Path(base_dir) if base_dir is not None else (config.path.parent if config.path else Path.cwd())
        try:
            answer = self._call({"op": "hello", "protocol": PROTOCOL, "version": VERSION, "host": name, "seed": seed,
                                 "neighbours": sorted(self.neighbours), "config": dump(config, relative_to=base),
                                 "links": {peer: list(link) for peer, link in self.links.items()}})
        except RemoteHostError as e:   # the served side checked the configuration and said no
            self._break(f"the served host refused it: {str(e).partition(' raised refused: ')[2]}")
        if answer.get("protocol") != PROTOCOL or answer.get("version") != VERSION or answer.get("host") != name:
            self._break(f"its hello names protocol {answer.get('protocol')!r} version {answer.get('version')!r} for "
                        f"host {answer.get('host')!r}, not {PROTOCOL!r} {VERSION} for {name!r}")

    # ---- the window seam ------------------------------------------------------------------------
    @property
    def now(self) -> int:
        return self._now

    def accept(self, messages: list[Message]) -> None:
        """As HostNode.accept; the messages go with the next request (a lost host drops them)."""
        if self.lost is not None:
            self.dropped += len(messages)
            return
        for m in messages:
            if m.dst != self.name or m.arrival_ns is None or m.arrival_ns < self._now:
                raise AssertionError(f"window protocol broken: message {m.kind!r} from {m.src!r} to {m.dst!r} "
                                     f"arriving at {m.arrival_ns} ns reached host {self.name!r} at {self._now} ns")
        self._accepted.extend(messages)

    def advance(self, until: int) -> None:
        """Run the served host to `until`; its messages sent meanwhile wait for take_outbox. A
        lost host stands still (the WireError was raised when it was lost)."""
        if self.lost is not None:
            return
        start = self._now
        answer = self._call({"op": "advance", "until": until})
        outbox = answer.get("outbox")
        if not isinstance(outbox, list) or self._now != until:
            self._break(f"its answer to advance({until}) is not one (now {self._now}, outbox {type(outbox).__name__})")
        checked = []
        for i, record in enumerate(outbox):
            try:
                m = message_from(record, f"message {i} of the window's outbox")
                # sent_ns may lie past the window: a sender may hand a message to the link later
                # (HostNode.send's `at`), never earlier than its time when it sent it.
                if m.src != self.name or m.dst not in self.neighbours or m.seq != self._next_seq \
                        or m.sent_ns < start or m.start_ns is not None or m.arrival_ns is not None:
                    raise WireError(f"message {i} of the window's outbox ({m.kind!r} from {m.src!r} to {m.dst!r}, "
                                    f"seq {m.seq}, sent at {m.sent_ns} ns) is not one host {self.name!r} could "
                                    f"send in the window from {start} ns to {until} ns")
            except WireError as e:
                self._break(str(e))
            self._next_seq += 1
            checked.append(m)
        self._outbox.extend(checked)

    def take_outbox(self) -> list[Message]:
        out, self._outbox = self._outbox, []
        return out

    def pending(self) -> int:
        return self._pending + len(self._accepted)

    def trace_digest(self) -> bytes:
        """The served host's trace digest; 16 zero bytes once its connection is lost (the summary
        says so)."""
        if self.lost is not None:
            return bytes(16)
        digest = self._call({"op": "trace_digest"}).get("digest")
        if not isinstance(digest, bytes) or len(digest) != 16:
            self._break("its trace digest is not 16 bytes")
        return digest

    def summary(self) -> dict[str, Any]:
        """The served host's summary (HostNode.summary), with `remote` its address; once the
        connection is lost, the last one it gave (or the little known without one) with `lost`
        saying why."""
        if self.lost is None:
            try:
                summary = self._call({"op": "summary"}).get("summary")
                if not isinstance(summary, dict):
                    self._break("its summary is not a map")
                self._last = summary
                return {**summary, "remote": self.address}
            except WireError:
                pass
        known = self._last or {"simulated_ns": self._now, "seed": self.seed, "vms": [], "measure": [],
                               "partitions": [], "trace_digest": bytes(16).hex()}
        return {**known, "simulated_ns": self._now, "remote": self.address, "lost": self.lost,
                "dropped": self.dropped}

    def close(self) -> None:
        """Ask the served host to let go of its VMs and files, then hang up."""
        if self.lost is None:
            try:
                self._call({"op": "close"})
            except (WireError, RemoteHostError):
                pass
        self._stream.close()

    def answered(self, src: str, kind: str, payload: bytes) -> bytes:
        """The served host's answer to a call from host `src` (HostNode.answered, one round trip)."""
        answer = self._call({"op": "answered", "src": src, "kind": kind, "payload": bytes(payload)}).get("answer")
        if not isinstance(answer, bytes):
            self._break("its answer to a call is not bytes")
        return answer

    # ---- what code on this host would use ------------------------------------------------------
    def handle(self, kind: str, handler) -> None:
        raise TypeError(f"host {self.name!r} runs in another process ({self.address}): its handlers are the "
                        "served host's own (docs/wire.md)")

    def send(self, to: str, kind: str, payload: bytes = b"", *, size: int | None = None) -> Message:
        raise TypeError(f"host {self.name!r} runs in another process ({self.address}): only code there sends "
                        "its messages")

    # ---- one round trip --------------------------------------------------------------------------
    def _call_out(self, call: Any) -> dict:
        """The answer to a `call` frame: the served host, in the middle of a request, calls host
        `to` (HostNode.call: a post-copy target reading its source's frozen page)."""
        if not (isinstance(call, dict) and call.get("to") in self.neighbours and isinstance(call.get("kind"), str)
                and len(call["kind"]) <= MAX_KIND and isinstance(call.get("payload"), bytes)):
            raise WireError("a call from the served host is not one (to a neighbour, a kind and a payload)")
        if self.caller is None:
            return {"error": f"host {self.name!r} cannot call {call['to']!r}"}
        try:
            return {"answer": bytes(self.caller(call["to"], call["kind"], call["payload"]))}
        except Exception as e:   # the callee's refusal goes back to the caller, which decides
            return {"error": f"{type(e).__name__}: {e}"}

    def _break(self, why: str):
        self.lost = self.lost or why
        self._stream.close()
        raise WireError(f"host {self.name!r} ({self.address}): {why}")

    def _call(self, request: dict) -> dict:
        """Send `request` (with the messages accepted since the last one) and return the answer;
        WireError naming this host if the stream fails, RemoteHostError if the host raised."""
        if self.lost is not None:
            raise WireError(f"host {self.name!r} ({self.address}): the connection was lost earlier ({self.lost})")
        if self._accepted:
            request["accept"] = [message_record(m) for m in self._accepted]
        try:
            self._stream.send(request)
            answer = self._stream.receive()
            while isinstance(answer, dict) and "call" in answer:   # the host calls out mid-request
                self._stream.send(self._call_out(answer["call"]))
                answer = self._stream.receive()
        except WireError as e:
            self._break(str(e).removeprefix(f"{self.address}: "))
        except KeyboardInterrupt:   # a second Ctrl-C inside a round trip: the stream is mid-frame,
            self.lost = self.lost or "interrupted inside a round trip"   # so the host is lost, and the
            self._stream.close()                                         # run ends as interrupted
            raise
        self._accepted = []
        if not isinstance(answer, dict):
            self._break("an answer is not a map")
        error = answer.get("error")
        if error is not None:
            if not (isinstance(error, dict) and all(isinstance(error.get(k), str) for k in ("type", "message"))):
                self._break("an error answer is not one")
            if error["type"] == "ScenarioError":   # a timeline action: the outcome reads as in one process
                from partitions.management import ScenarioError
                raise ScenarioError(error["message"])
            detail = error.get("traceback")
            raise RemoteHostError(f"host {self.name!r} ({self.address}) raised {error['type']}: {error['message']}",
                                  error["type"], detail if isinstance(detail, str) else None)
        if "now" in answer:
            try:
                now = _integer(answer["now"], "now", self._now)
                self._pending = _integer(answer.get("pending", 0), "pending", 0, MAX_NS)
            except WireError as e:
                self._break(str(e))
            self._now = now
        return answer


# ---- the served side -------------------------------------------------------------------------------------

def answer_pings(node) -> None:
    """The handler every served host has: a `ping` is answered by a `pong` with the same payload
    (a liveness check between hosts, and what tests exchange)."""
    node.handle("ping", lambda m: node.send(m.src, "pong", m.payload))


def _checked_config(hello: dict, workdir: Path, allow_python: bool
                    ) -> tuple[str, int, set[str], dict[str, tuple[int, int]], Config]:
    """The host's name, seed, neighbours, links and configuration from a hello, checked as a
    file is, and confined: disks only under `workdir`, python workloads only when allowed."""
    from partitions import run_files
    from partitions.config import ConfigError, loads
    if hello.get("op") != "hello" or hello.get("protocol") != PROTOCOL or hello.get("version") != VERSION:
        raise WireError(f"the first frame is not a {PROTOCOL} version {VERSION} hello")
    name, neighbours, text, links = hello.get("host"), hello.get("neighbours"), hello.get("config"), hello.get("links", {})
    seed = _integer(hello.get("seed"), "hello.seed", 0, 2**64 - 1)
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
        raise WireError(f"hello.host: expected a host name, got {name!r:.80}")
    if not (isinstance(neighbours, list) and len(neighbours) <= 4096
            and all(isinstance(n, str) and 1 <= len(n) <= MAX_NAME and n != name for n in neighbours)):
        raise WireError("hello.neighbours: expected a list of other hosts' names")
    if not isinstance(text, str):
        raise WireError("hello.config: expected the host's configuration as TOML text")
    if not (isinstance(links, dict) and set(links) <= set(neighbours) and all(
            isinstance(v, list) and len(v) == 2 and all(type(x) is int and 0 < x <= MAX_NS for x in v)
            for v in links.values())):
        raise WireError("hello.links: expected each neighbour's [bandwidth, latency]")
    config = loads(text, file=f"host {name!r}'s configuration", base_dir=workdir)
    if not isinstance(config, Config):
        raise ConfigError(f"host {name!r}'s configuration", None, "one host's configuration", "a datacenter")
    root = Path(os.path.realpath(workdir))
    for i, vm in enumerate(config.vms):
        for j, disk in enumerate(vm.disks):
            for path in (disk.path, disk.parent):
                if path is not None and not _inside(root, path):
                    raise ConfigError(f"host {name!r}'s configuration", f"vm[{i}].disks[{j}].path",
                                      f"a path under the served host's work directory {root}", str(path))
        if not allow_python and any(isinstance(w, PythonWorkload) for w in vm.workloads):
            raise ConfigError(f"host {name!r}'s configuration", f"vm[{i}].workload",
                              "a built-in workload (a python workload imports code the peer names: "
                              "`hvsim host serve --allow-python` allows it)", "a python workload")
    run_files.plan_disks(config, workdir, f"host {name!r}'s configuration")
    return name, seed, set(neighbours), {peer: (v[0], v[1]) for peer, v in links.items()}, config


def _inside(root: Path, path) -> bool:
    """Whether `path` (symbolic links resolved) lies under directory `root`."""
    return root in Path(os.path.realpath(path)).parents


def _confine_incoming(node, root: Path, allow_python: bool) -> None:
    """A VM that migrates to a served host is built from a configuration its peer sent: the same
    rules as the hello's hold for it (its disk files under `root`, no python workload unless
    allowed), checked before anything is opened. A refusal is a SavedStateError, which the
    migration's target reports to its source (which keeps the VM)."""
    from partitions.savedstate import SavedStateError
    incoming = node.managed.incoming

    def confined(config_data):
        vm = config_data.get("vm") if isinstance(config_data, dict) else None
        storage = config_data.get("storage") if isinstance(config_data, dict) else None
        if isinstance(vm, dict) and isinstance(storage, list):
            disks = vm.get("disks") if isinstance(vm.get("disks"), list) else []
            paths = [str(p) for p in storage] + [str(d[k]) for d in disks if isinstance(d, dict)
                                                 for k in ("path", "parent") if isinstance(d.get(k), str)]
            outside = [p for p in paths if not _inside(root, root / p)]
            if outside:
                raise SavedStateError(f"incoming vm: disk {outside[0]!r} is not under the served host's work "
                                      f"directory {root}")
            workloads = vm.get("workload")
            workloads = workloads if isinstance(workloads, list) else [workloads]
            if not allow_python and any(isinstance(w, dict) and w.get("kind") == "python" for w in workloads):
                raise SavedStateError("incoming vm: a python workload (it imports code the peer names; "
                                      "`hvsim host serve --allow-python` allows it)")
        return incoming(config_data)
    node.managed.incoming = confined


def _calling_out(stream: FrameStream):
    """HostNode.caller for a served host: a call (in the middle of a request) goes to the
    datacenter as a `call` frame, and the next frame holds its `answer` (or an `error`)."""
    def call(to: str, kind: str, payload: bytes) -> bytes:
        stream.send({"call": {"to": to, "kind": kind, "payload": payload}})
        reply = stream.receive()
        if isinstance(reply, dict) and isinstance(reply.get("answer"), bytes):
            return reply["answer"]
        if isinstance(reply, dict) and isinstance(reply.get("error"), str):
            raise LookupError(reply["error"])
        raise WireError("the answer to a call is not one")
    return call


def serve_host(sock: socket.socket, peer: str, *, workdir: Path | str, timeout: float = DEFAULT_TIMEOUT,
               allow_python: bool = False, say=None, log: str | os.PathLike | None = None) -> tuple[bool, str]:
    """Serve one datacenter's connection on `sock`: a hello, then requests until `close`, the
    connection's end or a stream error. Returns (whether the datacenter closed the session,
    one line saying how it ended); `say` is told along the way; `log` is a file the host's
    events go to (rewritten by each session). Never raises for what the peer does."""
    from partitions.datacenter.node import HostNode
    from partitions.eventlog import EventLog
    say = say or (lambda line: None)
    stream = FrameStream(sock, peer=peer, timeout=timeout)
    node = None
    events = None
    try:
        try:
            hello = stream.receive()
            if not isinstance(hello, dict):
                raise WireError("the first frame is not a hello")
            name, seed, neighbours, links, config = _checked_config(hello, Path(workdir), allow_python)
            if log is not None:   # its clock reads the host's time once there is a host
                events = EventLog(log, lambda: node.now if node is not None else 0)
            node = HostNode(name, config, seed=seed, neighbours=neighbours, workdir=workdir,
                            event_log=events.bind(host=name) if events is not None else None)
            node.links, node.caller = links, _calling_out(stream)
            _confine_incoming(node, Path(os.path.realpath(workdir)), allow_python)
            answer_pings(node)
        except WireError as e:
            return False, f"{peer}: no session: {e}"
        except Exception as e:   # a configuration refused, a host that cannot be built: the peer is told
            _answer(stream, {"error": {"type": "refused", "message": str(e)}})
            return False, f"{peer}: refused: {e}"
        _answer(stream, {"protocol": PROTOCOL, "version": VERSION, "host": name, "now": node.now, "pending": 0})
        say(f"serving host {name!r} (seed {seed}) to {peer}")
        while True:
            try:
                request = stream.receive()
            except WireError as e:
                return False, f"host {name!r}: session ended: {e}"
            answer = _serve_one(node, request)
            if not _answer(stream, answer):
                return False, f"host {name!r}: session ended: {stream.broken}"
            if isinstance(request, dict) and request.get("op") == "close":
                return True, f"host {name!r}: closed by {peer} at {node.now / 1e9:g} s"
    finally:
        if node is not None:
            node.close()
        if events is not None:
            events.close()
        stream.close()


def _answer(stream: FrameStream, answer: dict) -> bool:
    try:
        stream.send(answer)
        return True
    except WireError:
        return False


def _serve_one(node, request: Any) -> dict:
    """The answer to one request; what the host raises is answered as an error, and the session
    goes on (the datacenter still asks for the summary of a run that failed)."""
    try:
        if not isinstance(request, dict):
            raise WireError("a request is not a map")
        accepted = request.get("accept", [])
        if not isinstance(accepted, list):
            raise WireError("accept: expected a list of messages")
        node.accept([message_from(r, f"accepted message {i}") for i, r in enumerate(accepted)])
        op = request.get("op")
        if op == "advance":
            node.advance(_integer(request.get("until"), "until", node.now))
            return {"now": node.now, "pending": node.pending(),
                    "outbox": [message_record(m) for m in node.take_outbox()]}
        if op == "trace_digest":
            return {"now": node.now, "digest": node.trace_digest()}
        if op == "summary":
            return {"now": node.now, "pending": node.pending(), "summary": node.summary()}
        if op == "answered":
            src, kind, payload = request.get("src"), request.get("kind"), request.get("payload")
            if src not in node.neighbours or not isinstance(kind, str) or not isinstance(payload, bytes):
                raise WireError("answered: expected a neighbour, a kind and a payload")
            return {"answer": node.answered(src, kind, payload)}
        if op == "close":
            return {"now": node.now, "closed": True}
        raise WireError(f"unknown request {op!r:.80}")
    except Exception as e:
        kind = type(e).__name__
        return {"error": {"type": kind, "message": str(e),
                          "traceback": None if kind in _CLEAN_ERRORS or isinstance(e, (WireError, AssertionError))
                          else traceback.format_exc()}}


def listen(address: str) -> socket.socket:
    """A listening socket on "HOST:PORT" (port 0: any free one; getsockname() says which)."""
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock

