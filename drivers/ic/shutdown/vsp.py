"""The shutdown IC's parent side: `request_shutdown(...)` asks the guest to shut down or restart;
`shutdown_result` is the exchange of the last request (its status once the guest answered)."""
from __future__ import annotations

from drivers.ic import framing as f
from drivers.ic.shutdown import protocol as p
from drivers.ic.vsp import Exchange, IcVsp


class ShutdownVsp(IcVsp):
    MSGTYPE = f.SHUTDOWN
    VERSIONS = p.VERSIONS

    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.shutdown_result: Exchange | None = None

    def describe(self, request) -> dict:
        return {"restart": request.restart, "force": request.force, "reason": request.reason}

    def request_shutdown(self, reason: int = p.REASON_PLANNED, *, force: bool = False,
                         restart: bool = False, message: str = "", timeout_s: int = 30,
                         on_done=None) -> Exchange:
        request = p.ShutdownRequest(reason, timeout_s, force, restart, False, message)
        self.shutdown_result = self._submit(f.SHUTDOWN, p.encode(request), request=request,
                                            on_done=on_done)
        return self.shutdown_result
