"""The guest side every integration service shares: it answers the host's negotiation the way
Linux does (first framework, then first service version, of its own preference list that the
host offers; counts 0/0 if there is none), then hands each service request to `handle` and
sends the answer back in the request's buffer with TRANSACTION|RESPONSE.

The host is not trusted: a packet that is not a well-framed request for this service, at the
negotiated versions, is counted in `rejected` and changes nothing. A well-framed request whose
body is malformed is also counted, and answered with the error status (E_FAIL unless the parser
said otherwise) so that the host is not left waiting. Nothing raises out of `on_packets`: it runs
in the guest kernel's loop.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple

from drivers.device import Vsc
from drivers.ic import framing as f
from vmbus.ring import PKT_DATA_INBAND, Packet, RingError


_FRAME_PACK = f.FRAME.pack
_IC_SIZE = f.IC_HEADER.size
_ANSWER_FLAGS = f.TRANSACTION | f.RESPONSE


class Answer(NamedTuple):
    status: int
    body: bytes | None = None                # None: the request's own body, as Linux reuses it
    then: Callable[[], None] | None = None   # run once the answer is sent


class IcVsc(Vsc):
    """Subclasses set MSGTYPE and VERSIONS (preferred first) and implement handle()."""

    MSGTYPE: ClassVar[int]
    VERSIONS: ClassVar[tuple[f.Version, ...]]
    FRAMEWORKS: ClassVar[tuple[f.Version, ...]] = f.FRAMEWORK_VERSIONS

    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.frameworks = f.versions(self.config.get("frameworks", self.FRAMEWORKS))
        self.wanted = f.versions(self.config.get("versions", self.VERSIONS))
        self.answering = bool(self.config.get("answer", True))
        self.framework: f.Version | None = None   # negotiated; None before or after a failure
        self.version: f.Version | None = None
        self.rejected = 0                         # host packets refused
        self.ignored = 0                          # requests left unanswered while hung

    def handle(self, body: bytes) -> Answer:
        """Answer one service request (raise IcError if its body is malformed)."""
        raise NotImplementedError

    def hang(self) -> None:
        """Stop answering anything (a guest whose IC service died)."""
        self.answering = False

    def resume(self) -> None:
        self.answering = True

    def guest_call(self, what: str, fn: Callable | None, *args, default: Any = None) -> Any:
        """Call a callback from the guest's config; a failing one is logged, never raised."""
        if fn is None:
            return default
        try:
            return fn(*args)
        except Exception as exc:
            self.context.log("ic guest callback failed", callback=what, error=f"{type(exc).__name__}: {exc}")
            return default

    def on_packets(self, packets: list[Packet]) -> None:
        receive = self._receive
        for packet in packets:
            try:
                receive(packet)
            except f.IcError as exc:
                self._reject(exc)

    def _reject(self, exc: f.IcError) -> None:
        self.rejected += 1
        self.context.log("ic request rejected", service=f.MESSAGE_TYPES.get(self.MSGTYPE), why=str(exc))

    def _receive(self, packet: Packet) -> None:
        if packet.type != PKT_DATA_INBAND:
            raise f.IcError(f"packet type {packet.type} is not in-band data")
        header, body = f.decode(packet.payload)
        msgtype, framework, version, _, flags, _ = header
        if flags & f.RESPONSE or not flags & f.TRANSACTION:
            raise f.IcError(f"icflags 0x{flags:x} are not those of a request")
        if msgtype == self.MSGTYPE:   # the periodic case first (MSGTYPE is never NEGOTIATE)
            if self.version is None:
                raise f.IcError("a service request before a successful negotiation")
            if framework != self.framework or version != self.version:
                raise f.IcError(f"request at {framework}/{version}, negotiated {self.framework}/{self.version}")
            if not self.answering:
                self.ignored += 1
                return
            try:
                status, reply, then = self.handle(body)
            except f.IcError as exc:
                self._reject(exc)
                status, reply, then = exc.status, None, None
        elif msgtype == f.NEGOTIATE:
            if not self.answering:
                self.ignored += 1
                return
            reply, chosen = f.negotiate_reply(body, self.frameworks, self.wanted)
            self.framework, self.version = chosen or (None, None)
            self.context.log("ic negotiated" if chosen else "ic no common version",
                             service=f.MESSAGE_TYPES.get(self.MSGTYPE),
                             framework=str(self.framework), version=str(self.version))
            status, then = f.HV_S_OK, None
        else:
            raise f.IcError(f"message type {msgtype} is not for this service")
        if reply is None:
            reply = body
        n = len(reply)
        if n > f.MAX_BODY:
            raise ValueError(f"an IC body is at most {f.MAX_BODY} bytes, got {n}")
        try:  # f.encode_answer(header, status, reply), without the call (once per exchange)
            self.channel.send(_FRAME_PACK(f.PIPE_DATA, _IC_SIZE + n, framework[0], framework[1], msgtype,
                                          version[0], version[1], n, status, header[3] & 0xFF,
                                          _ANSWER_FLAGS, 0) + reply,
                              trans_id=packet.trans_id)
        except RingError as exc:  # the host's ring is full or broken: the host will time out
            self.context.log("ic answer not sent", service=f.MESSAGE_TYPES.get(self.MSGTYPE), error=str(exc))
            return
        if then is not None:
            self.guest_call("then", then)

    # ---- saved state ------------------------------------------------------------------------------
    def save(self) -> dict:
        return {"version": 1, "framework": self.framework and str(self.framework),
                "service_version": self.version and str(self.version), "rejected": self.rejected}

    def _load(self, state: dict) -> None:
        """A subclass's own part of a saved state (what it added to save())."""

    @classmethod
    def restore(cls, channel, state, config=None, context=None):
        if state.get("version") != 1:
            raise ValueError(f"unknown IC saved-state version {state.get('version')!r}")
        vsc = cls(channel, config, context)
        if state["framework"] is not None:
            vsc.framework = f.Version.of(state["framework"])
            vsc.version = f.Version.of(state["service_version"])
        vsc.rejected = state["rejected"]
        vsc._load(state)
        return vsc
