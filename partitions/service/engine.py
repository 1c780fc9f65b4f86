"""The management service's simulation: one host (ManagedHost) or a datacenter advanced in windows
of simulated time on a thread of its own ("hvsim-sim"), with commands applied between windows and
a view of it (`snapshot()`, the CPU history, the event ring) that other threads read without
waiting for the simulation.

    engine = Engine(default_config(d), workdir=d, speed=1.0)
    engine.start()                                   # builds the host on the sim thread
    engine.snapshot()["vms"]                         # Get-VM rows, as of the last window
    engine.act("web", "pause")                       # applied between two windows; its row after
    engine.stop()                                    # VMs off as `hvsim run` ends; nothing saved

Invariants: nothing but the sim thread touches a simulation object (the host, its VMs, their
devices); other threads hand it closures through `call()`. Inside the thread the simulation is as
deterministic as `hvsim run`: windows end at multiples of `window` (or where a step ends), and a
command applies at a window's end, where every event it logs carries that simulated time. What is
not deterministic is *which* window a command lands in: that is wall-clock time, as it is for an
operator of a real host.

Why windows: the core's cffi calls keep the GIL (native/build_core.py), so one long crossing
blocks the API's threads for its length. A window bounds the crossings to about its own simulated
length at the default host's pace (~1x real time). Measured on the default host (a thread that
sleeps 0.5 ms in a loop beside `ManagedHost.run` in windows, its extra delay being the wait for
the GIL; 2 s of simulated time): 1 ms windows, p99 3 ms, max 19 ms; 10 ms windows, p99 14 ms,
max 27 ms; 100 ms windows, p99 34 ms, max 61 ms; the simulation's own speed was the same for 1 ms
and 10 ms windows. The default, 2 ms, keeps the GIL waits a few ms while the per-window
bookkeeping (CPU samples, the view) stays small.

Pacing: at `speed` s, simulated time follows wall time times s from an anchor (set at start, at
each speed change and resume); a simulation that cannot keep up runs flat out and the anchor moves
(the debt is dropped, so it never races to catch up after a stall). `speed=None` ("max") runs
windows back to back, giving the GIL up between them.

Failures: a command that raises is re-raised in its caller and logged; the simulation is
untouched. A guest that raises crashes its own VM (ManagedHost's on_guest_error). An error that
escapes a window anyway is logged with the VM it concerns (as `hvsim run` names it) and that VM is
crashed; the others run on. One that names no VM (the host's own services) stops the simulation:
the view stays readable, commands get Unavailable.

State directory (`workdir`): saved states and checkpoints of the VMs, and `service.json`, the VMs
created through the API (their TOML fragment, host and owner), so that a service started again
with the same directory has them back (Off, or Saved when a saved-state file of theirs is there).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import re
import threading
import time
import tomllib
from collections import deque
from pathlib import Path
from typing import Any, Callable

from hypervisor.quantities import parse_duration

logger = logging.getLogger("hvsim.service")

#: Events kept for `events()` and the API's event stream (the oldest go first).
EVENT_RING = 10_000
#: CPU samples kept per VM (one per CPU_SAMPLE_NS of simulated time: the last minute).
CPU_SAMPLES = 600
CPU_SAMPLE_NS = 100_000_000
#: A paced simulation further behind its wall-clock target than this (wall seconds) drops the debt.
MAX_LAG_S = 0.5
#: The view is published after a window if it is older than this (wall s), after every command, and
#: whenever the simulation stops to wait (paused, ahead of the wall clock, a step's end): building
#: it (every VM's Get-VM row) after each of hundreds of windows a second would cost a big host
#: more than its simulation.
PUBLISH_S = 0.01
#: Python's switch interval for a process that serves the engine (`hvsim serve` sets it): how long
#: a thread that wants the GIL waits before it asks the holder to give it up. The default, 5 ms,
#: made the API's thread wait that long behind the simulation's Python code each time it had given
#: the GIL up for a system call (a read, a send, the audit write). bench api, one run each, 0.5 ms
#: against 5 ms: paced p99 10-12 ms against 44-49 ms, flat out 2,164-2,625 requests a second and
#: p99 80 ms against 795-884 and 226-256 ms, with the simulation's pace unchanged (0.89-0.94x).
GIL_SWITCH_S = 0.0005
#: The file in the state directory that lists the VMs created through the API.
STATE_FILE = "service.json"
#: What a created VM's configuration errors name as their file.
FRAGMENT = "the VM's TOML"


class ServiceError(Exception):
    """An error the API reports with its own type and status (see api.py); messages are the user's."""
    type = "ServiceError"


class NotFound(ServiceError, LookupError):
    """No VM, host or checkpoint of that name."""
    type = "NotFound"


class Conflict(ServiceError):
    """The request cannot be carried out in the simulation's present state (other than a VM's
    state transition, which is partitions.vm.InvalidTransition)."""
    type = "Conflict"


class Unavailable(ServiceError):
    """The simulation has stopped (or did not answer): nothing was done."""
    type = "Unavailable"


@dataclasses.dataclass
class _Command:
    fn: Callable[[], Any]
    future: concurrent.futures.Future


class _Recorder:
    """The event log the hosts write to (what ManagedHost, HostEvents and Datacenter call:
    `event(name, **fields)` and `bind(**fields)`): each event goes into the engine's ring and, with
    `--log`, to the EventLog file too."""

    def __init__(self, engine: Engine, file_log, fields: dict):
        self._engine, self._file, self._fields = engine, file_log, fields

    def event(self, name: str, /, **fields: Any) -> None:
        self._engine._record(name, {**self._fields, **fields})
        if self._file is not None:
            self._file.event(name, **fields)

    def bind(self, **fields: Any) -> _Recorder:
        return _Recorder(self._engine, self._file.bind(**fields) if self._file is not None else None,
                         {**self._fields, **fields})


def _plain(value: Any) -> Any:
    """An event field as JSON can carry it (paths, enums, bytes as the event log writes them)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    from partitions.eventlog import _json_value
    try:
        return _json_value(value)
    except TypeError:
        return f"<{type(value).__name__}>"


class Engine:
    """The simulation of `config` (a Config: one host; a DatacenterConfig: its hosts) as a service.
    `workdir` is the state directory; `speed` 1.0 is real time, None as fast as possible; `window`
    the simulated time between two points where commands apply; `log` a path for the structured
    event log (JSON lines, as `hvsim run --log`)."""

    def __init__(self, config, *, seed: int | None = None, workdir: Path | str, speed: float | None = 1.0,
                 paused: bool = False, window: int | str = "2ms", log: str | os.PathLike | None = None):
        self.config = config
        self.seed = seed
        self.workdir = Path(workdir)
        self.window_ns = parse_duration(window, "window")
        if self.window_ns <= 0:
            raise ValueError(f"window: expected a positive duration, got {window!r}")
        _check_speed(speed)
        self._speed = speed
        self._paused = paused
        self._log_path = log
        self._file_log = None
        # The sim thread's own state (nothing else reads it).
        self._dc = None                                  # a Datacenter, or None for one host
        self._hosts: dict[str, Any] = {}                 # host name -> ManagedHost
        self._windows = 0
        self._anchor: tuple[float, int] | None = None    # (wall monotonic s, simulated ns) of the pacing
        self._step_to: int | None = None                 # a step in progress ends here
        self._step_waiters: list[concurrent.futures.Future] = []
        self._next_cpu_ns = 0
        self._dirty = False                              # windows ran since the view was last published
        self._published_at = 0.0                         # when it was (wall monotonic s)
        self._cpu_before: dict[str, tuple[int, int]] = {}   # vm -> (time, CPU time) of its last sample
        self._created: dict[str, dict] = {}              # vm -> {"host", "vm", "owner"}: made through the API
        self._saved_on_disk: set[str] = set()            # Off VMs with a saved-state file from an earlier service
        # Shared between threads: commands (under _cond), the published view, the event ring.
        self._cond = threading.Condition()
        self._commands: deque[_Command] = deque()
        self._stopping = False
        self._failed: str | None = None                  # why the simulation stopped, if it did
        self._thread: threading.Thread | None = None
        self._snapshot: dict = {"clock": {"now_ns": 0, "speed": _speed_value(speed), "paused": paused,
                                          "windows": 0}, "hosts": [], "vms": [], "details": {},
                          "cpu_samples": 0}
        self._cpu: dict[str, deque] = {}
        self._cpu_samples = 0                            # CPU sampling rounds so far (the history's version)
        self._owners: dict[str, str] = {}
        self._events_cond = threading.Condition()
        self._ring: deque[dict] = deque(maxlen=EVENT_RING)
        self._seq = 0

    # ---- the thread ---------------------------------------------------------------------------
    def start(self) -> None:
        """Build the hosts on the sim thread and start advancing; a host that cannot be built
        raises here (ConfigError, ScenarioError, OSError ...) and no thread is left running."""
        if self._thread is not None:
            raise RuntimeError("the engine was started already")
        built: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(built,), name="hvsim-sim", daemon=True)
        self._thread.start()
        try:
            built.result()
        except BaseException:
            self._thread.join()
            raise

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the window in progress, turn every VM off (as `hvsim run` does at its end; nothing
        is saved), close the event log and join the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the simulation thread did not stop within {timeout} s")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def _main(self, built: concurrent.futures.Future) -> None:
        try:
            self._build()
        except BaseException as exc:
            built.set_exception(exc)
            return
        built.set_result(None)
        try:
            self._loop()
        except BaseException as exc:   # a defect of the engine itself: say so, serve the last view
            logger.exception("the simulation stopped")
            self._failed = f"{type(exc).__name__}: {exc}"
        finally:
            self._finish()

    def _build(self) -> None:
        from partitions.config_schema import DatacenterConfig
        from partitions.eventlog import EventLog
        from partitions.management import ManagedHost
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._log_path is not None:
            self._file_log = EventLog(self._log_path, self._now)
        recorder = _Recorder(self, self._file_log, {})
        try:
            if isinstance(self.config, DatacenterConfig):
                from partitions.datacenter import Datacenter
                self._dc = Datacenter(self.config, seed=self.seed, workdir=self.workdir, event_log=recorder)
                self._hosts = {name: node.managed for name, node in self._dc.hosts.items() if hasattr(node, "managed")}
            else:
                managed = ManagedHost(self.config, seed=self.seed, workdir=self.workdir, event_log=recorder)
                self._hosts = {getattr(self.config.host, "name", None) or "host": managed}
            for managed in self._hosts.values():
                # Autostart now, as `hvsim run` does at time 0; either way the host counts as
                # started, so that ManagedHost.run does not start again the VMs an operator turned
                # off before the first window (it autostarts a host at time 0 whose VMs are all Off).
                if managed.host.now == 0 and all(vm.state.value == "Off" for vm in managed.vms.values()):
                    managed.start()
                managed.started = True
            self._load_created()
            self._saved_on_disk = {name for managed in self._hosts.values() for name, vm in managed.vms.items()
                                   if vm.state.value == "Off" and (self.workdir / f"{name}.hvsav").is_file()}
        except BaseException:
            self._close_hosts()
            raise
        self._anchor = (time.monotonic(), self._now())
        self._publish()

    def _loop(self) -> None:
        while True:
            self._run_commands()
            with self._cond:
                if self._stopping:
                    return
                target, wait = self._next_window()
            if target is None:   # nothing to run now: the view is brought up to date, then wait
                if self._dirty:
                    self._publish()
                with self._cond:
                    if not self._commands and not self._stopping:
                        self._cond.wait(wait)
                continue
            self._advance(target)
            self._dirty = True
            if time.monotonic() - self._published_at >= PUBLISH_S:
                self._publish()
            # Give the API's threads the GIL between windows at every speed: the core's calls keep
            # it, and a paced simulation that is behind real time runs windows back to back (without
            # this, requests waited seconds for the simulation to catch up).
            time.sleep(0)

    def _next_window(self) -> tuple[int | None, float | None]:
        """(where the next window ends, None: not now) and how long to wait before looking again
        (None: until woken). Called with _cond held."""
        if self._failed is not None:
            waiters, self._step_waiters, self._step_to = self._step_waiters, [], None
            for fut in waiters:
                fut.set_exception(Unavailable(f"the simulation has stopped: {self._failed}"))
            return None, None
        now = self._now()
        if self._step_to is not None:
            if now >= self._step_to:
                self._step_done()
                return None, 0
            return min(self._step_to, (now // self.window_ns + 1) * self.window_ns), None
        if self._paused:
            return None, None
        end = (now // self.window_ns + 1) * self.window_ns
        if self._speed is None:
            return end, None
        wall0, sim0 = self._anchor
        allowed = sim0 + (time.monotonic() - wall0) * self._speed * 1e9
        if allowed - end > MAX_LAG_S * self._speed * 1e9:   # far behind: drop the debt
            self._anchor = (time.monotonic(), now)
        if end <= allowed:
            return end, None
        return None, (end - allowed) / (self._speed * 1e9)

    def _step_done(self) -> None:
        if self._dirty:
            self._publish()   # first: the caller of step() reads the view at the step's end
        self._step_to = None
        waiters, self._step_waiters = self._step_waiters, []
        for fut in waiters:
            fut.set_result(self._now())

    def _advance(self, target: int) -> None:
        """Run every host to `target` (simulated ns). An error that escapes is contained to the VM
        it concerns, if any (see the module's docstring)."""
        from partitions.management import ScenarioError
        try:
            if self._dc is not None:
                self._dc.run(target)
            else:
                managed = next(iter(self._hosts.values()))
                managed.run(target, step=self.window_ns)
        except ScenarioError as exc:   # a timeline action failed: logged as vm.action_failed; go on
            logger.warning("%s", exc)
            self._skip_failed_action()
        except Exception as exc:
            self._contain(exc)
        self._windows += 1
        self._sample_cpu()

    def _skip_failed_action(self) -> None:
        """The timeline action that just failed is not tried again at every window."""
        for managed in self._hosts.values():
            managed.skip_due_action()

    def _contain(self, exc: BaseException) -> None:
        from partitions.cli.run import _is_guest_error, _naming_vms
        host = self._dc.stopped_in if self._dc is not None else next(iter(self._hosts))
        managed = self._hosts.get(host)
        reason = _naming_vms(exc, managed) if managed is not None else f"{type(exc).__name__}: {exc}"
        vm = self._vm_of(exc, managed) if managed is not None else None
        if vm is None:
            self._failed = f"host {host!r}: {reason}"
            logger.error("the simulation stopped: %s", self._failed,
                         exc_info=None if _is_guest_error(exc) else exc)
            self._record("service.failed", {"host": host, "error": reason})
            return
        logger.error("vm %r crashed: %s", vm.name, reason, exc_info=None if _is_guest_error(exc) else exc)
        managed.event("vm.crashed", vm=vm.name, error=reason)
        try:
            vm.crash(f"crashed: {reason}")
        except Exception:   # its teardown failed too: the VM is lost, the host goes on
            logger.exception("vm %r: the crash's teardown failed", vm.name)

    @staticmethod
    def _vm_of(exc: BaseException, managed):
        """The VM an escaping error concerns (its partition id, or one its message names)."""
        names = {vm.partition.id: vm for vm in managed.vms.values() if vm.partition is not None}
        pid = getattr(exc, "partition_id", None)
        if pid is None:
            m = re.search(r"\bpartition (\d+)\b", str(exc))
            pid = int(m.group(1)) if m else None
        vm = names.get(pid)
        if vm is None:
            name = getattr(exc, "vm", None)
            m = re.search(r"\bvm '([^']+)'", str(exc)) if name is None else None
            vm = managed.vms.get(name or (m.group(1) if m else None))
        return vm

    def _run_commands(self) -> None:
        """Run the commands queued, in order; the view is published once after them, before their
        callers hear back (so each caller's next read of the view sees what it did)."""
        while True:
            with self._cond:
                if not self._commands:
                    return
                batch, self._commands = list(self._commands), deque()
            outcomes = []
            for command in batch:
                if not command.future.set_running_or_notify_cancel():
                    continue   # its caller gave up before it ran: it does nothing
                try:
                    outcomes.append((command.future, True, command.fn()))
                except BaseException as exc:
                    logger.info("command failed: %s: %s", type(exc).__name__, exc)
                    outcomes.append((command.future, False, exc))
            if outcomes:
                self._publish()
            for future, ok, value in outcomes:
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _finish(self) -> None:
        with self._cond:
            self._stopping = True
            pending, self._commands = list(self._commands), deque()
            waiters, self._step_waiters = self._step_waiters, []
        for command in pending:
            if command.future.set_running_or_notify_cancel():
                command.future.set_exception(Unavailable("the simulation has stopped"))
        for fut in waiters:
            fut.set_exception(Unavailable("the simulation has stopped"))
        try:
            self._publish()
        finally:
            self._close_hosts()
            with self._events_cond:
                self._events_cond.notify_all()

    def _close_hosts(self) -> None:
        try:
            if self._dc is not None:
                self._dc.close()
            else:
                for managed in self._hosts.values():
                    managed.close()
        except Exception:
            logger.exception("closing the hosts failed")
        if self._file_log is not None:
            self._file_log.close()

    # ---- what other threads call -----------------------------------------------------------------
    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Queue `fn()` for the sim thread (between two windows) and return its Future at once;
        cancelling the Future before the command runs withdraws it. Unavailable if the simulation
        has stopped."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping or self._thread is None or self._failed is not None:
                raise Unavailable(f"the simulation has stopped{': ' + self._failed if self._failed else ''}")
            self._commands.append(_Command(fn, future))
            self._cond.notify_all()
        return future

    def call(self, fn: Callable[[], Any], timeout: float | None = 5.0) -> Any:
        """Run `fn()` on the sim thread between two windows (also while paused) and return its value,
        or raise its exception here. Unavailable if the simulation has stopped or did not take the
        command within `timeout` seconds (it is then withdrawn: it never runs). On the sim thread
        itself (a command calling another engine method), `fn()` runs at once."""
        if threading.current_thread() is self._thread:
            return fn()
        future = self.submit(fn)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.cancel():
                raise Unavailable(f"the simulation did not take the command within {timeout} s") from None
            return future.result()   # it is running: its outcome is the caller's

    async def call_async(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """call() for an asyncio caller (the API): awaits the command without holding a thread. A
        caller cancelled before the command runs (its client went away) withdraws it."""
        import asyncio
        future = self.submit(fn)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
        except asyncio.TimeoutError:
            if future.cancel():
                raise Unavailable(f"the simulation did not take the command within {timeout} s") from None
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def snapshot(self) -> dict:
        """The view published after the last window or command (do not modify it; each publish
        makes a new one): {"clock": {"now_ns", "speed", "paused", "windows"}, "hosts": [{"name",
        "logical_processors", "memory_bytes", "vms"}], "vms": [Get-VM rows with "Host" and "Owner"],
        "details": {vm: what vm_detail adds to the row, but the CPU history}, "cpu_samples": the CPU
        history's version (it changes when a sample is added)}."""
        return self._snapshot

    def cpu_history(self, vm: str) -> list[list]:
        """[[time_ns, CPU %], ...]: the VM's use of its host's LPs in each 100 ms of simulated time,
        the last CPU_SAMPLES of them."""
        return [list(s) for s in list(self._cpu.get(vm, ()))]

    def owner(self, vm: str) -> str | None:
        """The user who created `vm` through the API (None: it came from the configuration)."""
        return self._owners.get(vm)

    @property
    def failed(self) -> str | None:
        """Why the simulation stopped by itself (None while it runs)."""
        return self._failed

    # ---- clock control ------------------------------------------------------------------------------
    def set_speed(self, speed: float | None) -> None:
        """Simulated seconds per wall second (None: as fast as possible); applies at once."""
        _check_speed(speed)

        def apply():
            self._speed = speed
            self._anchor = (time.monotonic(), self._now())
            self._emit("clock.speed", speed=_speed_value(speed))
        self.call(apply)

    def pause(self) -> None:
        def apply():
            if not self._paused:
                self._paused = True
                self._emit("clock.paused")
        self.call(apply)

    def resume(self) -> None:
        def apply():
            if self._step_to is not None:
                raise Conflict("the clock is stepping: wait for the step to end")
            if self._paused:
                self._paused = False
                self._anchor = (time.monotonic(), self._now())
                self._emit("clock.resumed")
        self.call(apply)

    def step(self, ns: int | str, timeout: float | None = 60.0) -> int:
        """Paused: advance exactly `ns` of simulated time (in windows), then stay paused; returns the
        new time. Conflict if the clock is running or another step is in progress."""
        ns = parse_duration(ns, "by")
        if ns <= 0:
            raise ValueError(f"by: expected a positive duration, got {ns} ns")
        done: concurrent.futures.Future = concurrent.futures.Future()

        def apply():
            if not self._paused:
                raise Conflict("the clock is running: pause it before stepping")
            if self._step_to is not None:
                raise Conflict("the clock is stepping already")
            self._step_to = self._now() + ns
            self._step_waiters.append(done)
            self._emit("clock.step", by_ns=ns, to_ns=self._step_to)
        self.call(apply)
        try:
            return done.result(timeout)
        except concurrent.futures.TimeoutError:
            raise Unavailable(f"the step did not end within {timeout} s (it goes on)") from None

    # ---- events -----------------------------------------------------------------------------------
    def _record(self, name: str, fields: dict) -> None:
        """One event into the ring (sim thread): {"seq", "time_ns", "event", ...fields}."""
        with self._events_cond:
            self._seq += 1
            record = {"seq": self._seq, "time_ns": self._now(), "event": name}
            for k, v in fields.items():
                if k not in record:
                    record[k] = _plain(v)
            self._ring.append(record)
            self._events_cond.notify_all()

    def _emit(self, name: str, **fields: Any) -> None:
        """An event of the service's own (the clock, VMs created and deleted)."""
        recorder = _Recorder(self, self._file_log, {})
        recorder.event(name, **fields)

    def events(self, since_seq: int = 0, vms: set[str] | None = None, limit: int | None = None, *,
               tail: int | None = None) -> list[dict]:
        """The events after `since_seq` still in the ring, oldest first; with `vms`, only those of
        these VMs (an event without a VM is the host's: left out then); with `tail`, only the last
        `tail` of them (the newest, still oldest first)."""
        with self._events_cond:
            ring = self._ring
            if not ring or since_seq >= self._seq:
                return []
            start = max(0, since_seq - ring[0]["seq"] + 1)
            out = []
            if tail is not None:   # from the newest back: a console's first look reads N, not the ring
                for i in range(len(ring) - 1, start - 1, -1):
                    record = ring[i]
                    if vms is not None and record.get("vm") not in vms:
                        continue
                    out.append(record)
                    if len(out) >= tail:
                        break
                out.reverse()
                return out[:limit] if limit is not None else out
            for i in range(start, len(ring)):
                record = ring[i]
                if vms is not None and record.get("vm") not in vms:
                    continue
                out.append(record)
                if limit is not None and len(out) >= limit:
                    break
            return out

    def wait_events(self, since_seq: int, timeout: float | None) -> bool:
        """Block until there is an event after `since_seq` (True), the timeout passes or the engine
        stops (False)."""
        with self._events_cond:
            return self._events_cond.wait_for(lambda: self._seq > since_seq or not self.running, timeout) \
                and self._seq > since_seq

    @property
    def last_seq(self) -> int:
        return self._seq

    # ---- VMs (each runs on the sim thread through call) ---------------------------------------------
    def _now(self) -> int:
        if self._dc is not None:
            return self._dc.clock()
        managed = next(iter(self._hosts.values()), None)
        return managed.host.now if managed is not None else 0

    def _find(self, name: str):
        """(host name, ManagedHost, VirtualMachine) of VM `name`; NotFound if no host has it."""
        if self._dc is not None:
            try:
                node = self._dc.where(name)
            except LookupError:
                raise NotFound(f"no VM named {name!r}") from None
            return node.name, node.managed, node.managed.vms[name]
        for host, managed in self._hosts.items():
            if name in managed.vms:
                return host, managed, managed.vms[name]
        raise NotFound(f"no VM named {name!r}")

    def act(self, name: str, action: str, *, checkpoint: str | None = None, to: str | None = None,
            kind: str = "live", user: str | None = None) -> dict:
        """A lifecycle action on VM `name` between two windows: start, stop, turn-off, pause,
        resume, save, restore, checkpoint, apply, move. Returns the VM's row after it."""
        return self.call(lambda: self._act(name, action, checkpoint=checkpoint, to=to, kind=kind, user=user))

    def _act(self, name: str, action: str, *, checkpoint=None, to=None, kind="live", user=None) -> dict:
        from partitions.checkpoints import CheckpointError
        from partitions.datacenter.migration import MigrationError
        from partitions.vm import DiskUnavailable, VmState
        host, managed, vm = self._find(name)
        saved = self._saved_file(managed, vm)
        was = vm.state
        if action == "checkpoint":
            checkpoint = checkpoint or f"checkpoint-{managed.host.now // 1_000_000}ms"
            tree = vm.checkpoints
            if tree is not None and checkpoint in tree.checkpoints:
                raise Conflict(f"vm {name!r} already has a checkpoint named {checkpoint!r}")
        if action == "apply":
            tree = vm.checkpoints
            if not checkpoint:
                raise ValueError("checkpoint: the name of the checkpoint to apply is required")
            if tree is None or checkpoint not in tree.checkpoints:
                raise NotFound(f"vm {name!r} has no checkpoint named {checkpoint!r}")
        if action == "move":
            if self._dc is None:
                raise Conflict(f"vm {name!r} runs on a single host: there is no host to move it to")
            if to not in self._dc.hosts:
                raise NotFound(f"no host named {to!r} (hosts: {', '.join(self._dc.hosts)})")
        run = {"start": lambda: vm.restore(saved) if saved else vm.start(),
               "stop": vm.stop, "turn-off": vm.turn_off, "pause": vm.pause, "resume": vm.resume,
               "save": lambda: vm.save(managed.saved_state_path(vm)),
               "restore": lambda: vm.restore(saved) if saved else vm.restore(),
               "checkpoint": lambda: vm.checkpoint(checkpoint),
               "apply": lambda: vm.apply_checkpoint(checkpoint),
               "move": lambda: self._dc.move(name, to=to, kind=kind)}.get(action)
        if run is None:
            raise ValueError(f"no VM action {action!r}")
        if action == "turn-off" and saved:
            run = lambda: self._discard_saved(managed, vm)   # noqa: E731  (Hyper-V deletes the saved state)
        fields = {"user": user} if user is not None else {}
        try:
            run()
        except Exception as exc:
            managed.event("vm.action_failed", vm=name, action=action, error=str(exc), **fields)
            if isinstance(exc, (DiskUnavailable, CheckpointError, MigrationError)):
                raise Conflict(str(exc)) from None
            raise
        managed.event("vm.action", vm=name, action=action, **fields)
        if (action in ("start", "restore") and (saved or was is VmState.SAVED)) and vm.state is not VmState.SAVED:
            self._forget_saved(managed, vm)   # restored: the state lives in the VM again
        if action == "turn-off" and was is VmState.SAVED:
            self._forget_saved(managed, vm)
        return self._row(name)

    def _saved_file(self, managed, vm) -> Path | None:
        """The saved-state file of an Off VM that an earlier service with this state directory
        saved: the VM shows as Saved; start or restore resumes it (into a new shell), turn-off
        discards it, as Hyper-V does with a saved state."""
        from partitions.vm import VmState
        if vm.name not in self._saved_on_disk or vm.state is not VmState.OFF:
            return None
        return self.workdir / f"{vm.name}.hvsav"

    def _discard_saved(self, managed, vm) -> None:
        self._forget_saved(managed, vm)
        managed.event("savedstate.discarded", vm=vm.name)

    def _forget_saved(self, managed, vm) -> None:
        """The VM's saved state is used or discarded: its file goes (a restore does not come back to it)."""
        self._saved_on_disk.discard(vm.name)
        try:
            (self.workdir / f"{vm.name}.hvsav").unlink()
        except FileNotFoundError:
            pass

    def _row(self, name: str) -> dict:
        host, managed, vm = self._find(name)
        for row in managed.get_vm():
            if row["Name"] == name:
                return self._dress(row, host, managed)
        raise NotFound(f"no VM named {name!r}")

    def _dress(self, row: dict, host: str, managed) -> dict:
        row = dict(row, Host=host, Owner=self._owners.get(row["Name"]))
        if row["State"] == "Off" and row["Name"] in self._saved_on_disk:
            row["State"] = "Saved"
            row["Status"] = "saved state in the state directory"
        return row

    def vm_detail(self, name: str) -> dict:
        """The row of VM `name` with its processors, memory, checkpoints, devices, Measure-VM's
        figures and CPU history, from the published view (it waits for no window, like
        `snapshot()`); NotFound if the view has no such VM."""
        snap = self._snapshot
        row = next((r for r in snap["vms"] if r["Name"] == name), None)
        if row is None:
            raise NotFound(f"no VM named {name!r}")
        return {**row, **snap["details"][name], "cpu": self.cpu_history(name)}

    @staticmethod
    def _details(managed) -> dict[str, dict]:
        """What a VM's detail adds to its row (see vm_detail), for each VM of `managed`."""
        measures = {m["VMName"]: m for m in managed.measure()}
        out = {}
        for name, vm in managed.vms.items():
            tree = vm.checkpoints
            out[name] = {"processors": vm.spec.processors, "memory_bytes": vm.spec_memory_bytes(),
                         "checkpoints": [{"name": n, "time_ns": cp.created_ns, "consistent": cp.consistent}
                                         for n, cp in tree.checkpoints.items()] if tree is not None else [],
                         "devices": [slot.name for slot in vm.devices], "measure": measures.get(name, {})}
        return out

    def switches(self) -> list[dict]:
        """Every host's virtual switches: {"name", "host", "type", "stats" (frames and bytes)}."""
        def read():
            return [{"name": name, "host": host, "type": sw.kind.value, "stats": dataclasses.asdict(sw.stats)}
                    for host, managed in self._hosts.items() for name, sw in managed.switches.items()]
        return self.call(read)

    def disks(self) -> list[dict]:
        """Every VM's disks as configured: {"vm", "host", "lun", "path", "size", "type", "parent"}."""
        def read():
            return [{"vm": name, "host": host, "lun": lun, "path": str(d.path), "size": d.size, "type": d.type,
                     "parent": str(d.parent) if d.parent else None}
                    for host, managed in self._hosts.items() for name, vm in managed.vms.items()
                    for lun, d in enumerate(vm.config.disks if vm.config is not None else ())]
        return self.call(read)

    def create_vm(self, source: str | dict, *, owner: str | None = None, host: str | None = None,
                  name: str | None = None, check: Callable[[Any, list[dict]], None] | None = None) -> dict:
        """Add a VM to `host` (default: the first) from a TOML fragment (the keys of a [[vm]]
        table) or that table parsed; `name` wins over its own. It is Off. ConfigError names the
        key (as the fragment has it); Conflict for a name in use. `check(vm_config, owned)` runs
        on the sim thread once the fragment is checked and before anything is made (the API's
        quota check: `owned` is [{"name", "processors", "memory"}] of the VMs `owner` has): what
        it raises, the caller gets. The fragment and owner are kept in the state directory."""
        if isinstance(source, str):
            try:
                fragment = tomllib.loads(source)
            except tomllib.TOMLDecodeError as exc:
                from partitions.config_schema import ConfigError
                raise ConfigError(FRAGMENT, None, "valid TOML", str(exc)) from None
        else:
            fragment = dict(source)
        if name is not None:
            fragment["name"] = name
        return self.call(lambda: self._create(fragment, owner, host, check))

    def _create(self, fragment: dict, owner: str | None, host: str | None, check=None, persist: bool = True) -> dict:
        from partitions.config import from_dict
        from partitions.config_schema import ConfigError
        if host is None:
            host = next(iter(self._hosts))
        managed = self._hosts.get(host)
        if managed is None:
            raise NotFound(f"no host named {host!r} (hosts: {', '.join(self._hosts)})")
        name = fragment.get("name")
        if isinstance(name, str) and any(name in m.vms for m in self._hosts.values()):
            raise Conflict(f"a VM named {name!r} exists already")
        table = dict(fragment)
        table.setdefault("autostart", False)
        h = managed.config.host
        document = {"host": {"logical_processors": h.logical_processors, "smt": h.smt, "memory": h.memory,
                             "scheduler": h.scheduler},
                    "vm": [table]}
        if managed.config.switches:
            document["switch"] = [{"name": sw.name, "type": sw.type} for sw in managed.config.switches]
        try:
            cfg = from_dict(document, file=FRAGMENT, base_dir=self.workdir).vms[0]
            if check is not None:
                owned = [{"name": n, "processors": v.spec.processors, "memory": v.spec_memory_bytes()}
                         for m in self._hosts.values() for n, v in m.vms.items()
                         if owner is not None and self._owners.get(n) == owner]
                check(cfg, owned)
            vm = managed.add_vm(cfg)
        except ConfigError as exc:   # its keys as the fragment has them: "memory", not "vm[0].memory"
            key = re.sub(r"^vm\[\d+\]\.?", "", exc.key or "") or None
            raise ConfigError(FRAGMENT, key, exc.expected, exc.got, hint=exc.hint) from None
        if self._dc is not None:
            self._dc._adopt(vm)
        self._created[cfg.name] = {"host": host, "vm": fragment, "owner": owner}
        if owner is not None:
            self._owners[cfg.name] = owner
        if persist:
            self._save_created()
            self._emit("vm.created", vm=cfg.name, host=host, owner=owner)
        return self._row(cfg.name)

    def delete_vm(self, name: str, *, user: str | None = None) -> None:
        """Remove VM `name` (Off or Saved only: InvalidTransition otherwise)."""
        self.call(lambda: self._delete(name, user))

    def _delete(self, name: str, user: str | None) -> None:
        from partitions.vm import InvalidTransition, VmState
        host, managed, vm = self._find(name)
        if vm.state not in (VmState.OFF, VmState.SAVED):
            raise InvalidTransition(name, vm.state, "delete", (VmState.OFF, VmState.SAVED))
        if vm.state is VmState.SAVED:
            vm.turn_off()
        self._forget_saved(managed, vm)
        managed.remove_vm(name)
        self._created.pop(name, None)
        self._owners.pop(name, None)
        self._cpu.pop(name, None)
        self._cpu_before.pop(name, None)
        self._save_created()
        self._emit("vm.deleted", vm=name, host=host, **({"user": user} if user is not None else {}))

    def _save_created(self) -> None:
        path = self.workdir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"vms": [{"name": n, **v} for n, v in self._created.items()]}, indent=1, default=str))
        os.replace(tmp, path)

    def _load_created(self) -> None:
        """The VMs an earlier service with this state directory created (each Off; one that no
        longer fits this configuration is logged and left out)."""
        path = self.workdir / STATE_FILE
        if not path.is_file():
            return
        try:
            entries = json.loads(path.read_text())["vms"]
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("%s: not a list of VMs (%s): ignored", path, exc)
            return
        for entry in entries:
            try:
                fragment = dict(entry["vm"], name=entry["name"])
                self._create(fragment, entry.get("owner"), entry.get("host"), persist=False)
            except Exception as exc:
                logger.error("%s: vm %r cannot be made again: %s", path, entry.get("name"), exc)

    # ---- the published view -------------------------------------------------------------------------
    def _publish(self) -> None:
        self._dirty = False
        self._published_at = time.monotonic()
        rows, hosts, details = [], [], {}
        for host, managed in self._hosts.items():
            own = [self._dress(row, host, managed) for row in managed.get_vm()]
            rows.extend(own)
            hosts.append({"name": host, "logical_processors": managed.host.logical_processors,
                          "memory_bytes": managed.host.memory_bytes, "vms": [r["Name"] for r in own]})
            details.update(self._details(managed))
        # A new dict each time, never changed afterwards: a reader holds one consistent view, and
        # the API keys the JSON it built from a view on the view's identity.
        self._snapshot = {"clock": {"now_ns": self._now(), "speed": _speed_value(self._speed),
                                    "paused": self._paused or self._failed is not None, "windows": self._windows},
                          "hosts": hosts, "vms": rows, "details": details, "cpu_samples": self._cpu_samples,
                          **({"failed": self._failed} if self._failed is not None else {})}

    def _sample_cpu(self) -> None:
        """Each CPU_SAMPLE_NS of simulated time: every VM's use of its host's LPs since its last sample."""
        now = self._now()
        if now < self._next_cpu_ns:
            return
        self._next_cpu_ns = (now // CPU_SAMPLE_NS + 1) * CPU_SAMPLE_NS
        self._cpu_samples += 1
        for managed in self._hosts.values():
            lps = managed.host.logical_processors
            for name, vm in managed.vms.items():
                cpu = vm.run_time_ns()
                t0, cpu0 = self._cpu_before.get(name, (now, cpu))
                self._cpu_before[name] = (now, cpu)
                if now > t0:
                    pct = round(100.0 * max(0, cpu - cpu0) / (now - t0) / lps, 2)
                    self._cpu.setdefault(name, deque(maxlen=CPU_SAMPLES)).append((now, pct))


def _check_speed(speed: float | None) -> None:
    if speed is not None and (isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0
                              or speed == float("inf")):
        raise ValueError(f"speed: expected a positive number of simulated seconds per second, or max; got {speed!r}")


def _speed_value(speed: float | None):
    return "max" if speed is None else speed

