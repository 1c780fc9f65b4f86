"""The time-sync IC's guest side: a guest clock that runs `drift_ppm` fast (or slow, if negative)
against simulated time, set by the host.

Policy: SYNC sets the clock exactly. SAMPLE steps it too if it is off by `step_threshold` or
more (default 128 ms, ntpd's), and otherwise slews: the offset is spread linearly over
`slew_window` (default 1 s), so the clock never jumps and never runs backwards (the threshold
must be below the window). A v4 message's reference time lets the guest add the delivery delay,
as Linux's adj_guesttime does. Drift is not learnt: between samples the error grows by at most
drift x sample period.

`clock_ns()` is the guest's time (ns since the Unix epoch); `error_ns()` is how far it is from
the host's clock, extrapolated from the last host message (None before the first one).
"""
from __future__ import annotations

from drivers.ic import framing as f
from drivers.ic.timesync import protocol as p
from drivers.ic.vsc import Answer, IcVsc
from hypervisor.quantities import parse_duration


_OK = Answer(f.HV_S_OK)   # the request's own buffer back: one tuple for every answer


class TimesyncVsc(IcVsc):
    MSGTYPE = f.TIMESYNC
    VERSIONS = p.VERSIONS

    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.drift_ppb = round(float(self.config.get("drift_ppm", 0)) * 1000)
        self.step_threshold = parse_duration(self.config.get("step_threshold", "128ms"), "step_threshold")
        self.slew_window = parse_duration(self.config.get("slew_window", "1s"), "slew_window")
        if not 0 < self.step_threshold < self.slew_window:
            raise ValueError("time sync needs 0 < step_threshold < slew_window")
        self._base_clock = int(self.config.get("start_ns", 0))  # the clock at _base_sim...
        self._base_sim = self.context.now()
        self._slew = 0                                          # ...plus this, spread over the window
        self._host: tuple[int, int] | None = None               # (host ns, simulated ns) last heard
        self.steps = self.slews = 0

    def clock_ns(self) -> int:
        elapsed = self.context.now() - self._base_sim
        slewed = self._slew * min(elapsed, self.slew_window) // self.slew_window
        return self._base_clock + elapsed + elapsed * self.drift_ppb // 1_000_000_000 + slewed

    def error_ns(self) -> int | None:
        if self._host is None:
            return None
        host_ns, at = self._host
        return self.clock_ns() - (host_ns + self.context.now() - at)

    def handle(self, body: bytes) -> Answer:
        parent_time, flags, reference_time = p.read(body, self.version)
        now = self.context.now()
        host_ns = (parent_time - p.WLTIMEDELTA) * 100   # p.to_unix_ns
        if reference_time is not None:
            host_ns += (now // 100 - reference_time) * 100
        self._host = (host_ns, now)
        if flags & p.SYNC:
            self._set(host_ns, step=True)
        elif flags & p.SAMPLE:
            self._set(host_ns, step=False)
        return _OK

    def _set(self, host_ns: int, *, step: bool) -> None:
        self._base_clock, self._base_sim, self._slew = self.clock_ns(), self.context.now(), 0
        offset = host_ns - self._base_clock
        if step or abs(offset) >= self.step_threshold:
            self._base_clock = host_ns
            self.steps += 1
        else:
            self._slew = offset
            self.slews += 1

    def save(self) -> dict:
        return super().save() | {"clock_ns": self.clock_ns()}

    def _load(self, state: dict) -> None:
        # The clock stood still while the guest was saved: it is wrong until the host's SYNC.
        self._base_clock, self._base_sim = state["clock_ns"], self.context.now()
