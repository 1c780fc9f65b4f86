"""The parent side every integration service shares: it negotiates versions as soon as the
channel opens, then runs host-initiated exchanges one at a time, each matched to its answer by
transaction id, bounded by a timeout, and handed back as an `Exchange`.

Invariants: at most one exchange is in flight (Hyper-V hosts keep one IC transaction
outstanding; Linux's KVP driver relies on it); an answer is taken only if it is well formed and
answers the exchange in flight; anything else the guest sends is counted in `rejected` and
changes nothing else (the exchange in flight keeps waiting for a good answer or its timeout).
Timers are never cancelled: each checks that what it was set for is still current.

Quiesced (its VM is being saved), nothing is sent: exchanges asked meanwhile wait in the queue,
the one in flight stays in flight (its request is in the ring the save keeps, and its timeout
stands still with the VSP's other timers), and sending goes on after resume().
"""
from __future__ import annotations

from collections import deque
from functools import partial
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, ClassVar

from drivers.device import Vsp
from drivers.ic import framing as f
from hypervisor.quantities import parse_duration
from vmbus.ring import PKT_DATA_INBAND, Packet, RingError

DEFAULT_TIMEOUT = "5s"

# Exchanges not logged one by one: negotiation is logged by its outcome, and a heartbeat every
# period would flood the log (its status changes are logged instead).
_QUIET = (f.NEGOTIATE, f.HEARTBEAT)
_ANSWER_FLAGS = f.TRANSACTION | f.RESPONSE
_REQUEST_FLAGS = f.TRANSACTION | f.REQUEST
_HEADER = tuple.__new__   # an IcHeader without its Python-level constructor (once per exchange)
_FRAME_PACK = f.FRAME.pack
_IC_SIZE = f.IC_HEADER.size


class Negotiation(Enum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(eq=False, slots=True)   # slots: one is made per exchange, heartbeats included
class Exchange:
    """One host-initiated transaction: the handle a VSP's request methods return. It is done once
    the guest answered (`status`, and `reply` decoded from an S_OK answer) or once it failed
    without a usable answer (`error`: "timeout", "channel closed", "not negotiated", ...). A
    status other than S_OK is the guest's own answer (e.g. E_FAIL: it refused)."""

    id: int
    msgtype: int
    request: Any = None
    status: int | None = None
    reply: Any = None
    error: str | None = None
    on_done: Callable[[Exchange], None] | None = field(default=None, repr=False)
    body: bytes | Callable[[], bytes] = field(default=b"", repr=False)   # built when sent if callable
    # (request, the body of an S_OK answer) -> reply; raises IcError if that body is malformed
    decode: Callable[[Any, bytes], Any] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.status is not None or self.error is not None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == f.HV_S_OK


class IcVsp(Vsp):
    """Subclasses set MSGTYPE and VERSIONS (offered, newest first) and may override on_ready."""

    MSGTYPE: ClassVar[int]
    VERSIONS: ClassVar[tuple[f.Version, ...]]

    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.frameworks = f.versions(self.config.get("frameworks", f.FRAMEWORK_VERSIONS))
        self.offered = f.versions(self.config.get("versions", self.VERSIONS))
        self.timeout = parse_duration(self.config.get("timeout", DEFAULT_TIMEOUT), "IC timeout")
        self.negotiation = Negotiation.PENDING
        self.framework: f.Version | None = None   # negotiated
        self.version: f.Version | None = None     # negotiated service version
        self.rejected = 0                         # guest packets refused
        self._queue: deque[Exchange] = deque()
        self._inflight: Exchange | None = None
        self._sent: f.IcHeader | None = None      # the header of the exchange in flight
        self._next_id = 1
        self._open = False
        self._pumping = False
        self._quiesced = False                    # its VM is being saved: send nothing
        self._epoch = 0                           # bumped on close: older timers do nothing

    # ---- for subclasses ---------------------------------------------------------------------------
    def on_ready(self) -> None:
        """Negotiation succeeded (or the VSP was restored): start the service."""

    def describe(self, request) -> dict:
        """A request's fields for the event log (a subclass says what its requests carry)."""
        return {}

    def _submit(self, msgtype: int, body, *, request=None, decode=None, on_done=None) -> Exchange:
        ex = Exchange(self._next_id, msgtype, request, on_done=on_done, body=body, decode=decode)
        self._next_id += 1
        if msgtype not in _QUIET:
            self.context.log("requested", exchange=ex.id, **self.describe(request))
        if not self._open:
            self._finish(ex, error="channel not open")
        elif self.negotiation is Negotiation.FAILED:
            self._finish(ex, error="not negotiated")
        else:
            self._queue.append(ex)
            self._pump()
        return ex

    def cancel(self, ex: Exchange, why: str) -> None:
        """Give up on an exchange (queued or in flight); a late answer to it is rejected."""
        if ex.status is not None or ex.error is not None:   # ex.done: every timeout timer asks
            return
        if ex in self._queue:
            self._queue.remove(ex)
        self._finish(ex, error=why)

    def _every(self, period: int, fn: Callable[[], None]) -> None:
        """Call fn every `period` ns while the channel stays open."""
        epoch = self._epoch

        def tick() -> None:
            if self._epoch == epoch and self._open:
                fn()
                self.context.call_later(period, tick)

        self.context.call_later(period, tick)

    # ---- the channel ------------------------------------------------------------------------------
    def on_open(self) -> None:
        self._open = True
        self.negotiation, self.framework, self.version = Negotiation.PENDING, None, None
        self._submit(f.NEGOTIATE, f.negotiate_body(self.frameworks, self.offered),
                     decode=lambda _, body: f.parse_negotiate_reply(body, self.frameworks, self.offered),
                     on_done=self._negotiated)

    def _negotiated(self, ex: Exchange) -> None:
        if ex.ok and ex.reply is not None:
            self.framework, self.version = ex.reply
            self.negotiation = Negotiation.DONE
            self.context.log("negotiated", service=f.MESSAGE_TYPES.get(self.MSGTYPE),
                             framework=str(self.framework), version=str(self.version))
            self.on_ready()
            self._pump()  # what was asked before negotiation finished
            return
        self.negotiation = Negotiation.FAILED
        why = ex.error or ("no common version" if ex.ok else f"status {f.status_name(ex.status)}")
        self.context.log("negotiation_failed", service=f.MESSAGE_TYPES.get(self.MSGTYPE), why=why)
        while self._queue:
            self._finish(self._queue.popleft(), error="not negotiated")

    def on_close(self) -> None:
        self._open = False
        self._epoch += 1
        while self._queue:
            self._finish(self._queue.popleft(), error="channel closed")
        if self._inflight is not None:
            self._finish(self._inflight, error="channel closed")

    def quiesce(self) -> None:
        self._quiesced = True

    def resume(self) -> None:
        self._quiesced = False
        self._pump()  # what was asked while the VM was saved

    def _pump(self) -> None:
        """Send the next queued exchange if none is in flight (negotiation goes first). Not
        re-entered: an answer that arrives while send() runs is taken, and the loop goes on."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._inflight is None and self._queue and self._open and not self._quiesced:
                if self.negotiation is not Negotiation.DONE and self._queue[0].msgtype != f.NEGOTIATE:
                    return
                ex = self._queue.popleft()
                body = ex.body() if callable(ex.body) else ex.body
                negotiated = ex.msgtype != f.NEGOTIATE
                msgtype, trans = ex.msgtype, ex.id & 0xFF
                fw = self.framework if negotiated else self.frameworks[0]
                ver = self.version if negotiated else self.offered[0]
                header = _HEADER(f.IcHeader, (msgtype, fw, ver, trans, _REQUEST_FLAGS, f.HV_S_OK))
                # In flight before it is sent: the answer may come back before send() returns.
                self._inflight, self._sent = ex, header
                self.context.call_later(self.timeout, partial(self.cancel, ex, "timeout"))
                n = len(body)
                if n > f.MAX_BODY:
                    raise ValueError(f"an IC body is at most {f.MAX_BODY} bytes, got {n}")
                try:  # an in-band packet; the answer is another one, not a VMBus completion
                    # f.encode(header, body), without the call (once per exchange)
                    self.channel.send(_FRAME_PACK(f.PIPE_DATA, _IC_SIZE + n, fw[0], fw[1], msgtype, ver[0], ver[1],
                                                  n, f.HV_S_OK, trans, _REQUEST_FLAGS, 0) + body, trans_id=ex.id)
                except RingError as exc:  # a full or broken ring fails this exchange, not the host
                    self._finish(ex, error=f"send failed: {exc}")
        finally:
            self._pumping = False

    def _finish(self, ex: Exchange, *, status=None, reply=None, error=None) -> None:
        ex.status, ex.reply, ex.error = status, reply, error
        if ex.msgtype not in _QUIET:
            self.context.log("answered", exchange=ex.id, status=None if status is None else f.status_name(status),
                             error=error)
        if self._inflight is ex:
            self._inflight = self._sent = None
            if self._queue:   # (nothing else to send, as after every periodic exchange)
                self._pump()
        if ex.on_done is not None:
            ex.on_done(ex)

    def on_packets(self, packets: list[Packet]) -> None:
        for packet in packets:
            ex = self._inflight
            try:
                if ex is None or packet.trans_id != ex.id:
                    raise f.IcError(f"no exchange {packet.trans_id} in flight")
                if packet.type != PKT_DATA_INBAND:
                    raise f.IcError(f"packet type {packet.type} is not in-band data")
                header, body = f.decode(packet.payload)
                sent = self._sent
                # msgtype, framework, version and trans_id: the first four fields of a header
                if header[:4] != sent[:4]:
                    raise f.IcError(f"the answer's header {header} does not match the request {sent}")
                if header.flags != _ANSWER_FLAGS:
                    raise f.IcError(f"icflags 0x{header.flags:x} of an answer are not TRANSACTION|RESPONSE")
                status = header.status
                reply = ex.decode(ex.request, body) if status == f.HV_S_OK and ex.decode else None
            except f.IcError as exc:  # refused; the exchange in flight keeps waiting
                self.rejected += 1
                self.context.log("answer_rejected", service=f.MESSAGE_TYPES.get(self.MSGTYPE),
                                 why=str(exc))
                continue
            self._finish(ex, status=status, reply=reply)

    # ---- saved state: the negotiated versions; exchanges in flight are not kept (asked again) ---
    def save(self) -> dict:
        return {"version": 1, "negotiation": self.negotiation.value, "rejected": self.rejected,
                "framework": self.framework and str(self.framework),
                "service_version": self.version and str(self.version)}

    def _load(self, state: dict) -> None:
        """A subclass's own part of a saved state (what it added to save())."""

    @classmethod
    def restore(cls, channel, state, config=None, context=None):
        if state.get("version") != 1:
            raise ValueError(f"unknown IC saved-state version {state.get('version')!r}")
        vsp = cls(channel, config, context)
        vsp.rejected = state["rejected"]
        vsp._load(state)
        if Negotiation(state["negotiation"]) is not Negotiation.DONE:
            vsp.on_open()  # negotiate afresh
            return vsp
        vsp.negotiation = Negotiation.DONE
        vsp.framework = f.Version.of(state["framework"])
        vsp.version = f.Version.of(state["service_version"])
        vsp._open = True
        vsp.on_ready()
        return vsp
