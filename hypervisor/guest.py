"""Guests on VPs: Python coroutines that spend simulated CPU time only by saying so.

A guest is an `async def` function taking a `GuestContext`. Between its awaits it runs in zero
simulated time; `await ctx.compute("2ms")` spends CPU time on its VP (the scheduler decides when,
and on which LP), `await ctx.halt()` waits for an interrupt (HLT), `await ctx.sleep("10ms")` waits
for time to pass. Hypercalls (`ctx.hypercall`, or the partition's typed wrappers) execute at once
and cost the VP `hypercall_ns` of CPU time, spent before its next step.

    async def pinger(ctx):
        while True:
            await ctx.compute("100us")
            ctx.partition.post_message(connection_id=5, message_type=1, payload=b"ping")
            await ctx.halt()

    host.root.vp(0).run(pinger)
    host.run(until="1s")

The C run loop returns to Python only when guests must take their next steps, and hands over
every VP that must step at that instant in one batch.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Coroutine, Generator

from hypervisor import _binding
from hypervisor.quantities import parse_duration

if TYPE_CHECKING:
    from hypervisor.partition import HypercallResult, Partition, VirtualProcessor

STEP_COMPUTE = _binding.constant("HV_STEP_COMPUTE")
STEP_HALT = _binding.constant("HV_STEP_HALT")
STEP_SLEEP = _binding.constant("HV_STEP_SLEEP")
STEP_STOP = _binding.constant("HV_STEP_STOP")
STEP_COMPUTE_INTR = _binding.constant("HV_STEP_COMPUTE_INTR")
GUEST_NONE = _binding.constant("HV_GUEST_NONE")
GUEST_PYTHON = _binding.constant("HV_GUEST_PYTHON")
GUEST_BURN = _binding.constant("HV_GUEST_BURN")
GUEST_TICK = _binding.constant("HV_GUEST_TICK")
CYCLE_KERNEL = _binding.constant("HV_CYCLE_KERNEL")
CYCLE_PLAIN = _binding.constant("HV_CYCLE_PLAIN")
CYCLE_COMPUTE = _binding.constant("HV_CYCLE_COMPUTE")
CYCLE_IDLE = _binding.constant("HV_CYCLE_IDLE")

ALL_SINTS = (1 << _binding.constant("HV_SYNIC_SINT_COUNT")) - 1
RESUME_START = _binding.constant("HV_RESUME_START")
_REASONS = {RESUME_START: "start", _binding.constant("HV_RESUME_STEP"): "step",
            _binding.constant("HV_RESUME_INTERRUPT"): "interrupt",
            _binding.constant("HV_RESUME_TIMEOUT"): "timeout"}

#: Each partition's intercept bus: the parent's emulated devices, which live above this layer
#: (partitions/native_guest/devices.py registers a VM's bus here). A bus answers
#: port_in(port, size) -> (value, ns) and port_out(port, size, value) -> ns.
INTERCEPTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Wakeup:
    """What a guest's await returns: why it resumed and which SINTs were raised meanwhile."""

    reason: str  # "start" (its partition runs again after a suspend), "step" (its computation
                 # finished), "interrupt", "timeout"
    sints: int   # bit n: SINT n was raised since the guest last looked
    work_left: int = 0  # compute_interruptible ended early (an interrupt, a suspend): the ns it had left

    def raised(self, sint: int) -> bool:
        return bool(self.sints >> sint & 1)


class Step:
    """An awaitable step: the coroutine yields it to the run loop and gets a Wakeup back."""

    __slots__ = ("op", "arg", "pair")

    def __init__(self, op: int, arg: int):
        self.op, self.arg = op, arg
        self.pair = (op, arg)  # what the runner hands the core for it (BatchLoop)

    def __await__(self) -> Generator[Step, Wakeup, Wakeup]:
        return (yield self)


# Steps are immutable, so the step makers share one per (op, whole ns) instead of building one per
# await: a guest's loop awaits the same few durations again and again. Bounded: a guest awaiting
# ever new durations (a random workload's) builds each beyond the bound anew.
_SHARED_MAX = 4096
_COMPUTES: dict[int, Step] = {}
_COMPUTES_INTR: dict[int, Step] = {}
_HALTS: dict[int, Step] = {}
_SLEEPS: dict[int, Step] = {}


_HALT_FOREVER = Step(STEP_HALT, 0)


def _shared(steps: dict[int, Step], op: int, arg: int) -> Step:
    step = Step(op, arg)
    if len(steps) < _SHARED_MAX:
        steps[arg] = step
    return step


class GuestError(RuntimeError):
    """A guest coroutine raised (or awaited something it may not); its VP is stopped. It names the
    partition and VP; `detail` says what the guest did ("ZeroDivisionError: division by zero")."""

    def __init__(self, partition_id: int, vp_index: int, detail: str, message: str):
        super().__init__(message)
        self.partition_id, self.vp_index, self.detail = partition_id, vp_index, detail


class GuestContext:
    """What a guest sees: its VP, its partition, time, and the steps it can take."""

    def __init__(self, vp: VirtualProcessor):
        self.vp = vp
        self.partition: Partition = vp.partition
        self.host = vp.partition.host
        self._now = _binding.hv_now_reader(self.host._h)
        #: bit n: SINT n was raised and nobody took it yet (take_sint). Every wakeup of this VP
        #: adds its SINTs here, whoever awaited the step, so none is lost to a caller that
        #: ignored its Wakeup.
        self.raised_sints = 0
        self._cycle: _binding.VpCycle | None = None

    def take_sint(self, sint: int) -> bool:
        """Whether SINT `sint` was raised since it was last taken; takes it."""
        bit = 1 << sint
        if self.raised_sints & bit:
            self.raised_sints &= ~bit
            return True
        return False

    @property
    def now(self) -> int:
        """Simulated time in ns."""
        return self._now()

    # The step makers are on every guest's hot path: a plain non-negative int (ns) skips the
    # parser, anything else (a string, a bool, a negative) goes through it and its checks.

    def compute(self, duration: int | str) -> Step:
        """Spend CPU time on this VP (interrupts meanwhile stay pending until it is spent)."""
        if type(duration) is int:  # (a bool is not: it would find 0's or 1's step)
            step = _COMPUTES.get(duration)
            if step is not None:
                return step
            if duration >= 0:
                return _shared(_COMPUTES, STEP_COMPUTE, duration)
        return Step(STEP_COMPUTE, parse_duration(duration))

    def compute_interruptible(self, duration: int | str) -> Step:
        """Spend CPU time on this VP until it is spent or a SINT is raised, whichever is first:
        the Wakeup says "interrupt" and how much was left (`work_left`) if it ended early."""
        if type(duration) is int:
            step = _COMPUTES_INTR.get(duration)
            if step is not None:
                return step
            if duration >= 0:
                return _shared(_COMPUTES_INTR, STEP_COMPUTE_INTR, duration)
        return Step(STEP_COMPUTE_INTR, parse_duration(duration))

    def halt(self, timeout: int | str | None = None) -> Step:
        """Wait for an interrupt (returns at once if one is pending), or for `timeout`."""
        if timeout is None:
            return _HALT_FOREVER
        if type(timeout) is int:
            step = _HALTS.get(timeout)
            if step is not None:
                return step
            if timeout >= 1:
                return _shared(_HALTS, STEP_HALT, timeout)
        return Step(STEP_HALT, max(1, parse_duration(timeout)))

    def sleep(self, duration: int | str) -> Step:
        """Let `duration` pass; interrupts that arrive meanwhile stay pending."""
        if type(duration) is int:
            step = _SLEEPS.get(duration)
            if step is not None:
                return step
            if duration >= 1:
                return _shared(_SLEEPS, STEP_SLEEP, duration)
        return Step(STEP_SLEEP, max(1, parse_duration(duration)))

    async def port_in(self, port: int, size: int = 1) -> int:
        """An intercept call: read `size` bytes (1, 2 or 4) at I/O `port` from the VM's emulated
        devices (partitions/native_guest/devices.py). The VP spends what a native guest's `in`
        costs: the exit to the parent plus the device's time."""
        value, ns = self._intercepts().port_in(port, size)
        await self.compute(ns)
        return value

    async def port_out(self, port: int, size: int, value: int) -> None:
        """An intercept call: write `value` (`size` bytes) to I/O `port`, at the cost of a native `out`."""
        await self.compute(self._intercepts().port_out(port, size, value))

    async def mmio_read(self, gpa: int, size: int) -> int:
        """An intercept call: load `size` bytes (1, 2, 4 or 8) at `gpa` from the emulated device
        that claims it, at the cost of a native guest's load there (exit plus device). A GPA no
        device claims raises, and the VP stops as a native guest's would."""
        value, ns = self._intercepts().mmio_read(gpa, size)
        await self.compute(ns)
        return value

    async def mmio_write(self, gpa: int, size: int, value: int) -> None:
        """An intercept call: store `value` (`size` bytes) at `gpa`, at the cost of a native store."""
        await self.compute(self._intercepts().mmio_write(gpa, size, value))

    async def wait_irq(self, line: int, timeout: int | str | None = None) -> bool:
        """Wait, halted, for the emulated devices' interrupt line `line` (IRQ 0-15, level-triggered:
        partitions/native_guest/devices.py) to be up: True once it is (the interrupt taken and
        ended with an APIC EOI, whose exit the VP spends), False after `timeout`. The device keeps
        the line up until the guest clears the cause through its registers."""
        bus = self._intercepts()
        deadline = None if timeout is None else self.now + parse_duration(timeout)
        while not bus.asserted(line):
            left = None if deadline is None else deadline - self.now
            if left is not None and left <= 0:
                return False
            await self.halt(left)
        await self.compute(bus.eoi(line))
        return True

    def _intercepts(self):
        bus = INTERCEPTS.get(self.partition)
        if bus is None:
            raise RuntimeError(f"partition {self.partition.id} has no emulated devices: its parent gave it "
                               "no intercept bus")
        return bus

    async def wait_for_sint(self, sint: int, timeout: int | str | None = None) -> Wakeup:
        """Halt until SINT `sint` is raised (or the timeout passes)."""
        deadline = None if timeout is None else self.now + parse_duration(timeout)
        while True:
            left = None if deadline is None else deadline - self.now
            if left is not None and left <= 0:
                return Wakeup("timeout", 0)
            w = await self.halt(left)
            if w.raised(sint) or w.reason == "timeout":
                return w

    async def receive(self, sint: int, simp_gpfn: int, timeout: int | str | None = None):
        """The next SynIC message on `sint`, the way a guest takes it: copy it out of its slot,
        free the slot, and write EOM if another message is pending. None on timeout."""
        from hypervisor.abi import Register
        from hypervisor.synic import clear_message_slot, read_message_slot
        deadline = None if timeout is None else self.now + parse_duration(timeout)
        while True:
            msg = read_message_slot(self.partition, simp_gpfn, sint)
            if not msg.empty:
                clear_message_slot(self.partition, simp_gpfn, sint)
                if msg.pending:
                    self.vp.set_registers({Register.EOM: 0})
                return msg
            left = None if deadline is None else deadline - self.now
            if left is not None and left <= 0:
                return None
            await self.halt(left)

    # A duty cycle (a cpu-burn's loop) the core takes between interrupts: the guest arms it with
    # each step it takes for the cycle; the core takes the following steps itself, the same ones at
    # the same points, while nothing else happens (native/api/core.h, struct hv_cycle). A cycle
    # guest with a side of its own (the kernel's VMBus stack) keeps the core told what that side
    # is (watch_cycle: called whenever Python code of the guest's partition may have changed it).

    def _cycle_control(self) -> _binding.VpCycle:
        if self._cycle is None:
            self._cycle = _binding.VpCycle(self.host._h, self.partition.id, self.vp.index)
        return self._cycle

    def arm_cycle(self, kind: int, phase: int, busy: int, idle: int, left: int, step: int, deadline: int,
                  horizon: int = 0, dirty: bool = False) -> None:
        """The step this guest takes now is its cycle's (phase CYCLE_COMPUTE: `step` of the period's
        `left`; CYCLE_IDLE: until `deadline`); `horizon`: when its next timer is due (0: none)."""
        self._cycle_control().arm(kind, phase, busy, idle, left, step, deadline, horizon, dirty)

    def cycle_state(self) -> tuple[int, int, int, int]:
        """(phase, left, step, deadline) of the cycle's step that just ended: the guest's, or the
        last the core took for it."""
        return self._cycle_control().state()

    def cycle_steps(self) -> int:
        """Steps the core has taken for this guest's cycles, in all."""
        return self._cycle_control().steps()

    def watch_cycle(self, sync: Callable[[], tuple[int, bool]]) -> Callable[[], None]:
        """Call `sync()` -> (horizon, dirty) before the core runs again after Python code of this
        partition ran (and at the start of every run), and hand it to the cycle; returns the
        function that stops it."""
        control = self._cycle_control()
        return self.host._guests.watch_cycle(self.partition.id, self.vp.index,
                                             lambda: control.sync(*sync()))

    def hypercall(self, control_word: int, input: bytes = b"", **kw) -> HypercallResult:
        """The raw hypercall from this VP (it costs the VP hypercall_ns)."""
        return self.vp.hypercall(control_word, input, **kw)

    def read(self, gpa: int, length: int) -> bytes:
        return self.partition.read(gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        self.partition.write(gpa, data)


GuestFunction = Callable[[GuestContext], Awaitable[None]]


class GuestRunner:
    """Drives the guest coroutines of one host: starts them, feeds them their wakeups, hands
    their next steps to the core."""

    def __init__(self, host):
        self._host = host
        self._coros: dict[tuple[int, int], Coroutine] = {}
        self._contexts: dict[tuple[int, int], GuestContext] = {}  # of the coroutines made
        # Each attach gives its guest a new handle (never reused), which the core puts in the
        # VP's resume words: _keys[handle] is its (partition id, VP index), for good;
        # _lives[handle] is (coroutine's send, context) once the coroutine is made and while it
        # lives, else None (handle 0: none). Every path that drops a coroutine drops its entry.
        self._keys: list[tuple[int, int] | None] = [None]
        self._lives: list[tuple[Callable, GuestContext] | None] = [None]
        self._handles: dict[tuple[int, int], int] = {}  # the current handle of each attached VP
        # Wakeups without work_left, by reason << 16 | sints: a Wakeup is immutable, so the guests
        # share one per kind instead of each step building its own. _fast holds those of every
        # reason but "start", by the low half of a resume word: what a plain step takes.
        self._wakes: dict[int, Wakeup] = {}
        self._fast: dict[int, Wakeup] = {}
        # partition id -> {VP index: sync} of the guests whose cycles the core takes (watch_cycle)
        self._cycles: dict[int, dict[int, Callable[[], None]]] = {}
        # While run() serves a batch: (its resume words, the steps taken so far). The guest whose
        # code runs now is record len(steps) // 2 (running_vp); None between batches.
        self._serving: tuple[list[int], list[int]] | None = None

    def running_vp(self, partition_id: int) -> int | None:
        """The VP index of the guest whose code runs now, if it is one of `partition_id`'s."""
        if self._serving is None:
            return None
        batch, steps = self._serving
        i = len(steps) >> 1
        if i >= len(batch):
            return None
        key = self._keys[batch[i] >> 32]
        return key[1] if key is not None and key[0] == partition_id else None

    def watch_cycle(self, partition_id: int, vp_index: int, sync: Callable[[], None]) -> Callable[[], None]:
        self._cycles.setdefault(partition_id, {})[vp_index] = sync

        def stop() -> None:
            syncs = self._cycles.get(partition_id)
            if syncs is not None and syncs.get(vp_index) is sync:
                del syncs[vp_index]
                if not syncs:
                    del self._cycles[partition_id]
        return stop

    def _sync_cycles(self, batch) -> None:
        """Tell the core what the cycle guests' sides are now, for every partition whose Python
        code ran in `batch` (None: every partition)."""
        cycles = self._cycles
        if batch is None:
            syncs = [f for vps in cycles.values() for f in vps.values()]
        elif len(batch) == 1:  # the common batch: one guest stepped
            vps = cycles.get(self._keys[batch[0] >> 32][0])
            if vps is None:
                return
            syncs = list(vps.values())
        else:
            keys = self._keys
            syncs = [f for pid in {keys[w >> 32][0] for w in batch} if pid in cycles for f in cycles[pid].values()]
        for sync in syncs:
            sync()

    def attach(self, vp: VirtualProcessor, fn: GuestFunction) -> None:
        key = (vp.partition.id, vp.index)
        old = self._coros.pop(key, None)
        self._contexts.pop(key, None)
        self._drop_live(key)
        if hasattr(old, "close"):
            old.close()
        if not callable(fn):
            raise TypeError(f"a guest must be an async function taking a GuestContext, got {fn!r}")
        # The coroutine is made when the VP first runs, so a guest that never runs leaves none.
        self._coros[key] = (fn, GuestContext(vp))
        handle = self._handles[key] = len(self._keys)
        self._keys.append(key)
        self._lives.append(None)
        _binding.hv_vp_set_guest(self._host._h, vp.partition.id, vp.index, GUEST_PYTHON, handle)

    def _drop_live(self, key: tuple[int, int]) -> None:
        handle = self._handles.get(key)
        if handle is not None:
            self._lives[handle] = None

    def detach(self, partition_id: int, vp_index: int | None = None) -> None:
        for key in [k for k in self._coros if k[0] == partition_id and (vp_index is None or k[1] == vp_index)]:
            coro = self._coros.pop(key)
            self._contexts.pop(key, None)
            self._drop_live(key)
            del self._handles[key]
            if hasattr(coro, "close"):
                coro.close()

    def _wakeup(self, reason: int, sints: int) -> Wakeup:
        wake = self._wakes.get(reason << 16 | sints)
        if wake is None:
            wake = self._wakes[reason << 16 | sints] = Wakeup(_REASONS.get(reason, "step"), sints)
            if reason != RESUME_START:
                self._fast[reason << 16 | sints] = wake
        return wake

    def run(self, until: int) -> None:
        """Run the host to `until`, stepping guests in batches: one crossing into C per batch.

        A guest that raises stops its own VP; the others of the batch still take their step.
        Then, if the host has an `on_guest_error` handler, it is called once per failed VP
        (after the batch's steps are with the core, so it may tear whole partitions down) and
        the run goes on; without one, the first error ends the run."""
        loop = self._loop = getattr(self, "_loop", None) or _binding.BatchLoop(self._host._h)
        # The steps of the last batch's records, in its order: (op, arg) each, (0, 0) for a VP
        # whose guest failed (already stopped). Record i's pair is at 2i, so len(steps) // 2 is
        # the index of the record being served.
        steps: list[int] = []
        lives, fast_get = self._lives, self._fast.get
        batch = None  # the Python code that ran before the first crossing: anything
        while True:
            if self._cycles:
                self._sync_cycles(batch)
            self._serving = None
            batch = loop.run(until, steps)
            if not batch:
                return
            steps = []
            self._serving = (batch, steps)
            extend = steps.extend
            errors: list[GuestError] = []
            for word in batch:
                # The common step, inline: a made coroutine (its handle's entry) resumed after a
                # step, an interrupt or a timeout with no work left (a word _fast knows). A first
                # run, a restart, a step cut short, a guest that ends, raises or awaits something
                # else all go through step().
                live = lives[word >> 32]
                wake = fast_get(word & 0xFFFFFFFF)
                if live is not None and wake is not None:
                    send, ctx = live
                    if word & 0xFFFF:
                        ctx.raised_sints |= word & 0xFFFF
                    try:
                        step = send(wake)
                    except BaseException as exc:  # noqa: BLE001 - step() sorts it out
                        thrown = exc
                    else:
                        if type(step) is Step:
                            extend(step.pair)
                            continue
                        thrown = None
                    partition_id, vp_index = self._keys[word >> 32]
                    try:
                        extend(self._settle(partition_id, vp_index, step if thrown is None else None, thrown))
                    except GuestError as exc:
                        errors.append(exc)
                        extend((0, 0))
                    continue
                if self._handles.get(self._keys[word >> 32]) != word >> 32:
                    # Its guest was replaced or removed since the core handed this batch out,
                    # which restarted (or removed) the VP: it takes no step of this record.
                    extend((0, 0))
                    continue
                partition_id, vp_index, reason, sints, left = loop.record(len(steps) >> 1)
                try:
                    extend(self.step(partition_id, vp_index, reason, sints, left))
                except GuestError as exc:  # that VP is stopped; the others still take their step
                    errors.append(exc)
                    extend((0, 0))
            if errors:
                refused = loop.apply(steps)
                if refused >= 0:
                    raise AssertionError(f"the core refused guest step {steps[2 * refused:2 * refused + 2]}")
                steps = []
                self._serving = None
                handler = self._host.on_guest_error
                if handler is None:
                    raise errors[0]
                for exc in errors:
                    handler(exc.partition_id, exc.vp_index, exc)
                batch = None  # the handler may have changed any partition

    def step(self, partition_id: int, vp_index: int, reason: int, sints: int, work_left: int = 0) -> tuple[int, int]:
        """Resume one guest; returns its next step (op, arg)."""
        key = (partition_id, vp_index)
        coro = self._coros.get(key)
        if coro is None:  # its guest was replaced or removed: the VP idles
            return STEP_STOP, 0
        wake = Wakeup(_REASONS.get(reason, "step"), sints, work_left) if work_left else self._wakeup(reason, sints)
        try:
            if isinstance(coro, tuple):  # first run: make the coroutine now
                fn, ctx = coro
                ctx.raised_sints |= sints
                self._contexts[key] = ctx
                coro = self._coros[key] = fn(ctx)
                if not hasattr(coro, "send"):
                    raise TypeError(f"a guest must be an async function taking a GuestContext, got {fn!r}")
                handle = self._handles.get(key)
                if handle is not None:
                    self._lives[handle] = (coro.send, ctx)
                step = coro.send(None)
            else:
                if wake.reason == "start":
                    # Its partition was suspended and runs again: the core forgot what was raised
                    # before, so anything may have been; and its step was cut short (work_left).
                    sints = ALL_SINTS
                if sints:
                    self._contexts[key].raised_sints |= sints
                step = coro.send(wake)
        except BaseException as exc:  # noqa: BLE001 - _settle re-raises what is not the guest's
            return self._settle(partition_id, vp_index, None, exc)
        return self._settle(partition_id, vp_index, step, None)

    def _settle(self, partition_id: int, vp_index: int, step, exc: BaseException | None) -> tuple[int, int]:
        """The step a resumed guest took (op, arg), or what its ending means: a guest that
        returned stops its VP; one that raised or awaited something else stops it and raises
        GuestError; anything that is not an Exception (KeyboardInterrupt) propagates."""
        key = (partition_id, vp_index)
        if exc is None and isinstance(step, Step):
            return step.op, step.arg
        if exc is not None and not isinstance(exc, Exception):
            raise exc
        del self._coros[key]
        self._contexts.pop(key, None)
        self._drop_live(key)
        if isinstance(exc, StopIteration):
            return STEP_STOP, 0
        _binding.hv_vp_step(self._host._h, partition_id, vp_index, STEP_STOP, 0)
        if exc is not None:
            detail = f"{type(exc).__name__}: {exc}"
            raise GuestError(partition_id, vp_index, detail,
                             f"the guest on VP {vp_index} of partition {partition_id} raised {detail}") from exc
        detail = f"awaited {step!r}; guests await only ctx.compute/halt/sleep"
        raise GuestError(partition_id, vp_index, detail,
                         f"the guest on VP {vp_index} of partition {partition_id} {detail}")
