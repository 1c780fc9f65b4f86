"""The shutdown IC's guest side: accepts a shutdown or restart request, answers S_OK, then calls
`on_shutdown(restart: bool)` from its config, once (the guest kernel stops cleanly). With config
`refuse: True` it answers E_FAIL to requests that are not forced. Hibernation is not supported:
answered NOT_SUPPORTED."""
from __future__ import annotations

from drivers.ic import framing as f
from drivers.ic.shutdown import protocol as p
from drivers.ic.vsc import Answer, IcVsc


class ShutdownVsc(IcVsc):
    MSGTYPE = f.SHUTDOWN
    VERSIONS = p.VERSIONS

    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.refuse = bool(self.config.get("refuse", False))
        self.requests: list[p.ShutdownRequest] = []   # every well-formed request received
        self.stopping: str | None = None              # "shutdown" or "restart" once accepted

    def handle(self, body: bytes) -> Answer:
        request = p.parse(body)
        self.requests.append(request)
        if request.hibernate:
            return Answer(f.HV_ERROR_NOT_SUPPORTED)
        if self.refuse and not request.force:
            return Answer(f.HV_E_FAIL)
        if self.stopping is not None:
            return Answer(f.HV_S_OK)  # already on its way down
        self.stopping = "restart" if request.restart else "shutdown"
        return Answer(f.HV_S_OK, then=lambda: self.guest_call(
            "on_shutdown", self.config.get("on_shutdown"), request.restart))
