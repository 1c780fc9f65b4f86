"""The VSS IC's parent side: `backup(take_point)` runs FREEZE -> take_point() -> THAW and reports
a `Backup`; a guest that refuses to freeze fails the backup and no point is taken. Once the guest
froze, it is always thawed, even if take_point raises. Every step is appended to `history`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from drivers.ic import framing as f
from drivers.ic.vsp import Exchange, IcVsp
from drivers.ic.vss import protocol as p


@dataclass(eq=False)
class Backup:
    state: str = "freezing"      # freezing -> thawing -> done | failed
    point: Any = None            # what take_point returned
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state in ("done", "failed")

    @property
    def ok(self) -> bool:
        return self.state == "done"


def _why(ex: Exchange) -> str:
    return ex.error or f.status_name(ex.status)


class VssVsp(IcVsp):
    MSGTYPE = f.VSS
    VERSIONS = p.VERSIONS

    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.history: list[tuple[int, str]] = []   # (simulated time, step)
        self._backup: Backup | None = None

    def describe(self, request) -> dict:
        return {"operation": {p.FREEZE: "freeze", p.THAW: "thaw"}.get(request, request)}

    def freeze(self, on_done=None) -> Exchange:
        return self._submit(f.VSS, p.message(p.FREEZE), request=p.FREEZE, on_done=on_done)

    def thaw(self, on_done=None) -> Exchange:
        return self._submit(f.VSS, p.message(p.THAW), request=p.THAW, on_done=on_done)

    def backup(self, take_point: Callable[[], Any],
               on_done: Callable[[Backup], None] | None = None) -> Backup:
        backup = Backup()
        if self._backup is not None and not self._backup.done:
            return self._end(backup, "a backup is already running", on_done)
        if self.version is not None and self.version < p.FREEZE_SINCE:
            return self._end(backup, f"VSS {self.version} has no freeze", on_done)
        self._backup = backup
        self._note("freeze requested")
        self.freeze(lambda ex: self._frozen(backup, ex, take_point, on_done))
        return backup

    def _frozen(self, backup: Backup, ex: Exchange, take_point, on_done) -> None:
        if not ex.ok:
            self._note(f"freeze refused: {_why(ex)}")
            self._end(backup, f"the guest did not freeze: {_why(ex)}", on_done)
            return
        self._note("frozen")
        try:
            backup.point = take_point()
            self._note("point taken")
        except Exception as exc:  # the host's own callback failed: thaw all the same
            backup.error = f"take_point failed: {type(exc).__name__}: {exc}"
            self._note("point failed")
        backup.state = "thawing"
        self._note("thaw requested")
        self.thaw(lambda ex: self._thawed(backup, ex, on_done))

    def _thawed(self, backup: Backup, ex: Exchange, on_done) -> None:
        self._note("thawed" if ex.ok else f"thaw failed: {_why(ex)}")
        if backup.error is None and not ex.ok:
            backup.error = f"the guest did not thaw: {_why(ex)}"
        if backup.error is not None:
            self._end(backup, backup.error, on_done)
            return
        backup.state = "done"
        self._note("backup done")
        if on_done is not None:
            on_done(backup)

    def _end(self, backup: Backup, error: str, on_done) -> Backup:
        backup.state, backup.error = "failed", error
        self._note("backup failed")
        if on_done is not None:
            on_done(backup)
        return backup

    def _note(self, step: str) -> None:
        self.history.append((self.context.now(), step))
