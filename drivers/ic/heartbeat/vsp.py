"""The heartbeat IC's parent side: a heartbeat every `period` (default 2 s), and the guest's
health as Hyper-V shows it: "no contact" until the first answer, "ok" while answers come,
"lost contact" once none came for more than `lost_after` periods (default 2).

A heartbeat still unanswered when the next is due is given up (one in flight at a time), so a
guest that stops answering leaves no backlog behind. The time a VM spends Saved does not count
against it: the guest could not answer, and its heartbeats stood still too.
"""
from __future__ import annotations

from enum import Enum

from drivers.ic import framing as f
from drivers.ic.heartbeat import protocol as p
from drivers.ic.vsp import Exchange, IcVsp
from hypervisor.quantities import parse_duration


class HeartbeatStatus(str, Enum):
    NO_CONTACT = "no contact"
    OK = "ok"
    LOST_CONTACT = "lost contact"


class HeartbeatVsp(IcVsp):
    MSGTYPE = f.HEARTBEAT
    VERSIONS = p.VERSIONS

    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.period = parse_duration(self.config.get("period", "2s"), "heartbeat period")
        if self.period <= 0:
            raise ValueError("heartbeat period must be positive")
        self.lost_after = int(self.config.get("lost_after", 2))  # periods without an answer
        self.sequence = 0
        self.last_answer: int | None = None   # simulated time of the last good answer
        self.application_state = p.UNKNOWN
        self._beat: Exchange | None = None
        self._shown = HeartbeatStatus.NO_CONTACT
        self._quiesced_at: int | None = None

    @property
    def status(self) -> HeartbeatStatus:
        if self.last_answer is None:
            return HeartbeatStatus.NO_CONTACT
        if self.context.now() - self.last_answer > self.lost_after * self.period:
            return HeartbeatStatus.LOST_CONTACT
        return HeartbeatStatus.OK

    def on_ready(self) -> None:
        self._send()
        self._every(self.period, self._send)

    def _send(self) -> None:
        # While it shows OK (an answer was had), the status changes only once answers stop.
        if self._shown is not HeartbeatStatus.OK or \
                self.context.now() - self.last_answer > self.lost_after * self.period:
            self._note_status()
        if self._beat is not None:
            self.cancel(self._beat, "no answer within a period")
        self.sequence = sequence = (self.sequence + 1) & p.MASK
        self._beat = self._submit(f.HEARTBEAT, p.PACK(sequence, p.UNKNOWN), request=sequence,
                                  decode=self._decode, on_done=self._answered)

    @staticmethod
    def _decode(sequence: int, body: bytes) -> int:
        n = len(body)
        if n >= 12:   # p.parse without the call
            answered, state = p.STATE(body)
        else:
            answered, state = p.parse(body)
        if answered != (sequence + 1) & p.MASK:
            raise f.IcError(f"heartbeat {sequence} answered with {answered}, not {sequence + 1}")
        return state

    def _answered(self, ex: Exchange) -> None:
        if self._beat is ex:
            self._beat = None
        if ex.error is None and ex.status == f.HV_S_OK:   # ex.ok
            self.last_answer, self.application_state = self.context.now(), ex.reply
            if self._shown is not HeartbeatStatus.OK:   # an answer just now: the status is OK
                self._note_status()

    def quiesce(self) -> None:
        super().quiesce()
        self._quiesced_at = self.context.now()

    def resume(self) -> None:
        if self._quiesced_at is not None and self.last_answer is not None:
            self.last_answer += self.context.now() - self._quiesced_at
        self._quiesced_at = None
        super().resume()

    def _note_status(self) -> None:
        status = self.status
        if status is not self._shown:
            self.context.log("status", status=status.value, was=self._shown.value)
            self._shown = status

    def save(self) -> dict:
        return super().save() | {"sequence": self.sequence}

    def _load(self, state: dict) -> None:
        self.sequence = state["sequence"]
