"""The synthetic guest kernel: VP 0 runs the guest's VMBus stack and, interleaved with it, the
VM's workload, the way a kernel takes device interrupts between a program's time slices.

A workload is an `async def workload(ctx)` using the same steps as any guest (compute, sleep,
halt); here `ctx` is a KernelContext that serves VMBus (messages, channel signals, device timers)
when an interrupt comes and whenever it waits. A computation is one interruptible step: an
interrupt ends it early, the kernel serves VMBus, and the rest of it goes on; so a workload that
computes without I/O costs the stack nothing, and a busy one costs per interrupt.

A duty cycle (`ctx.cycle(busy, idle)`, what the cpu-burn workload runs) takes the same steps as
`compute(busy); sleep(idle)` in a loop, but while the VM's stack has nothing to do the core takes
them itself (hypervisor/guest.py, arm_cycle): Python runs per interrupt, not twice per period.
"""
from __future__ import annotations

from hypervisor.guest import CYCLE_COMPUTE, CYCLE_IDLE, CYCLE_KERNEL, CYCLE_PLAIN
from hypervisor.quantities import parse_duration
from partitions.vmbus_guest import GuestVmbus

#: Whether the core takes a duty cycle's steps between interrupts. False: every step is taken in
#: Python, the reference the core's steps are tested against (the same trace either way).
CYCLES_IN_CORE = True


class _WorkloadContext:
    """What every workload context has: its VP, partition, host, the time, the VM's devices and
    `state`, the dict of plain values the workload keeps to survive a restore into a new shell
    (docs/guest-state.md)."""

    def __init__(self, ctx, stack: GuestVmbus, state: dict | None = None):
        self._ctx, self.stack = ctx, stack
        self.state = {} if state is None else state
        self.vp, self.partition, self.host = ctx.vp, ctx.partition, ctx.host
        self._now = ctx._now  # the host's clock, read with no property on the way (hot: every wait)

    @property
    def now(self) -> int:
        return self._now()

    @property
    def devices(self):
        return self.stack.devices

    async def device(self, name: str, timeout: int | str = "10s"):
        """The VM's device `name` (its VSC: `device_vsc(name)` on the host side) once it is there
        and ready; None if it is not by `timeout`, which is logged (`wait_timeout` with the
        device's name as `device_name`). A name the VM has no device by is logged at once
        (`device_missing`, with the names it has) and gives None without waiting."""
        known = sorted(set(getattr(self.stack, "names", {}).values()))
        if known and name not in known:
            self.stack.log("device_missing", device_name=name, devices=known)
            return None

        def ready() -> bool:
            vsc = self.devices.get(name)
            return vsc is not None and bool(getattr(vsc, "ready", True))

        if await self.wait_for(ready, timeout, what=f"device {name!r} to be ready", device_name=name):
            return self.devices[name]
        return None

    def read(self, gpa: int, length: int) -> bytes:
        """The guest's own memory (what an emulated device's driver keeps its rings in)."""
        return self._ctx.read(gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        self._ctx.write(gpa, data)

    # Intercept calls to the VM's emulated devices (partitions/native_guest/devices.py): the
    # guest context's own, at the same cost (the exit to the parent and the device's time); the
    # VP waits them out as a native guest's `in`/`out` does, VMBus served at the next step.
    async def port_in(self, port: int, size: int = 1) -> int:
        return await self._ctx.port_in(port, size)

    async def port_out(self, port: int, size: int, value: int) -> None:
        await self._ctx.port_out(port, size, value)

    async def mmio_read(self, gpa: int, size: int) -> int:
        return await self._ctx.mmio_read(gpa, size)

    async def mmio_write(self, gpa: int, size: int, value: int) -> None:
        await self._ctx.mmio_write(gpa, size, value)

    async def wait_irq(self, line: int, timeout: int | str | None = None) -> bool:
        """Wait for an emulated device's interrupt line (the guest context's wait_irq)."""
        return await self._ctx.wait_irq(line, timeout)

    def _timed_out(self, condition, timeout_ns: int, what: str | None, fields: dict) -> None:
        # A wait that ends without its condition is always logged: a workload waiting for
        # something that never comes must not look like one that is busy.
        what = what or getattr(condition, "__qualname__", None) or repr(condition)
        self.stack.log("wait_timeout", what=what, timeout_ns=timeout_ns, vp=self.vp.index, **fields)


class KernelContext(_WorkloadContext):
    """What a workload on VP 0 sees: its steps, with VMBus served in between them."""

    async def _serve(self, cpu: int) -> None:
        """Spend `cpu` (what serving VMBus just charged) and serve it again while that lets
        something new come: an interrupt, a timer due. Callers serve once themselves and await
        this only when that cost something, so a step with nothing to serve makes no coroutine."""
        while cpu:
            await self._ctx.compute(cpu)
            cpu = self.stack.service() if self.stack.pending() else 0

    async def compute(self, duration: int | str) -> None:
        left = parse_duration(duration)
        while left > 0:
            nxt = self.stack.context.next_timeout()   # a device timer due meanwhile ends it too
            step = left if nxt is None else min(left, nxt)
            wake = await self._ctx.compute_interruptible(step)
            # Ended early by an interrupt, or by a pause (the VM resumed): the rest goes on.
            left -= step - (wake.work_left if wake.reason in ("interrupt", "start") else 0)
            cpu = self.stack.service()
            if cpu:
                await self._serve(cpu)

    async def sleep(self, duration: int | str) -> None:
        deadline = self.now + parse_duration(duration)
        await self.wait_until(deadline)

    async def wait_until(self, deadline: int, condition=None) -> bool:
        """Serve VMBus until `deadline` or until condition() is true; returns condition()."""
        stack, now, halt = self.stack, self._now, self._ctx.halt
        while True:
            cpu = stack.service()
            if cpu:
                await self._serve(cpu)
            if condition is not None and condition():
                return True
            timeout = deadline - now()  # time moves only at an await: one read serves both uses
            if timeout <= 0:
                return bool(condition and condition())
            nxt = stack.context.next_timeout()
            await halt(min(timeout, nxt) if nxt else timeout)

    async def wait_irq(self, line: int, timeout: int | str | None = None) -> bool:
        """Wait for an emulated device's interrupt line with VMBus served meanwhile; once it is up,
        the guest context takes it (and charges its EOI)."""
        bus = self._ctx._intercepts()
        deadline = self.now + (1 << 62 if timeout is None else parse_duration(timeout))
        if not await self.wait_until(deadline, lambda: bus.asserted(line)):
            return False
        return await self._ctx.wait_irq(line, 0)

    def _stack_side(self):
        """A function giving (when the stack's next timer is due, 0 if none; whether the stack has
        work at its next look): what the core needs to take a cycle's steps. (Called for every
        cycle guest at the start of every run: its lookups are made once.)"""
        next_due, quiet = self.stack.context.timers.next_due, self.stack.quiet
        return lambda: (next_due() or 0, not quiet())

    async def cycle(self, busy: int, idle: int) -> None:
        """compute(busy) then sleep(idle), for ever (busy + idle > 0): the same steps at the same
        points, written as one loop whose state the core can carry on from. The loop's top is in
        compute's loop (`left` of the period's work to go) or in wait_until's (until `deadline`);
        each step is armed as the cycle's, and when the guest resumes its state is the core's."""
        ctx, stack = self._ctx, self.stack
        core = CYCLES_IN_CORE and stack.on_poll is None  # a poll hook runs on every pass: Python's
        side = self._stack_side()
        unwatch = ctx.watch_cycle(side) if core else None
        phase, left, step, deadline = (CYCLE_COMPUTE, busy, 0, 0) if busy else (CYCLE_IDLE, 0, 0, self.now + idle)
        try:
            while True:
                if phase == CYCLE_COMPUTE:
                    if left <= 0:  # compute(busy) returned: sleep(idle), or the next period's compute
                        if idle:
                            phase, deadline = CYCLE_IDLE, self.now + idle
                        else:
                            left = busy
                        continue
                    nxt = stack.context.next_timeout()
                    step = left if nxt is None else min(left, nxt)
                    if core:
                        ctx.arm_cycle(CYCLE_KERNEL, phase, busy, idle, left, step, 0, *side())
                    wake = await ctx.compute_interruptible(step)
                else:
                    cpu = stack.service()
                    if cpu:
                        await self._serve(cpu)
                    timeout = deadline - self.now
                    if timeout <= 0:  # sleep(idle) returned: the next period
                        if busy:
                            phase, left = CYCLE_COMPUTE, busy
                        else:
                            deadline = self.now + idle
                        continue
                    nxt = stack.context.next_timeout()
                    step = min(timeout, nxt) if nxt else timeout
                    if core:
                        ctx.arm_cycle(CYCLE_KERNEL, phase, busy, idle, 0, step, deadline, *side())
                    wake = await ctx.halt(step)
                if core:
                    phase, left, step, deadline = ctx.cycle_state()
                if phase == CYCLE_COMPUTE:  # as in compute(): the rest goes on after serving
                    left -= step - (wake.work_left if wake.reason in ("interrupt", "start") else 0)
                    cpu = stack.service()
                    if cpu:
                        await self._serve(cpu)
        finally:
            if unwatch is not None:
                unwatch()

    async def wait_for(self, condition, timeout: int | str = "10s", *, what: str | None = None, **fields) -> bool:
        """Serve VMBus until condition() holds (e.g. a device became ready), or the timeout; a
        timeout is logged (`wait_timeout`, with `what` was awaited and `fields`)."""
        ns = timeout if type(timeout) is int and timeout >= 0 else parse_duration(timeout)
        if await self.wait_until(self._now() + ns, condition):
            return True
        self._timed_out(condition, ns, what, fields)
        return False


async def kernel_main(ctx, stack: GuestVmbus, workload=None, state: dict | None = None, *,
                      resume: bool = False) -> None:
    """VP 0's guest: boot the VMBus stack, run the workload (if any), then idle serving VMBus.
    `state` is the workload's `ctx.state`. With `resume` the guest resumes from a saved state in
    a new shell (memory and registers came back; the stack was given its record): the stack
    reconnects, and the workload runs again from its top with the state it had kept."""
    stack.boot(ctx, resume=resume)
    kctx = KernelContext(ctx, stack, state)
    if workload is not None:
        await workload(kctx)
    while True:
        cpu = stack.service()
        if cpu:
            await ctx.compute(cpu)
        elif not stack.pending():
            await ctx.halt(stack.context.next_timeout())


class SecondaryContext(_WorkloadContext):
    """What a workload on another VP of the VM sees: the same steps and devices; VMBus is served
    by VP 0, so waiting for a device polls (every 100 us of simulated time)."""

    POLL_NS = 100_000

    async def compute(self, duration: int | str) -> None:
        await self._ctx.compute(parse_duration(duration))

    async def sleep(self, duration: int | str) -> None:
        await self._ctx.sleep(max(1, parse_duration(duration)))

    async def cycle(self, busy: int, idle: int) -> None:
        """compute(busy) then sleep(idle), for ever (busy + idle > 0), with the same steps; the
        core takes them while no interrupt comes (see KernelContext.cycle)."""
        ctx, core = self._ctx, CYCLES_IN_CORE
        phase = CYCLE_COMPUTE if busy else CYCLE_IDLE
        while True:
            if phase == CYCLE_COMPUTE:
                if core:
                    ctx.arm_cycle(CYCLE_PLAIN, phase, busy, idle, busy, busy, 0)
                await ctx.compute(busy)
            else:
                if core:
                    ctx.arm_cycle(CYCLE_PLAIN, phase, busy, idle, 0, idle, self.now + idle)
                await ctx.sleep(idle)
            if core:
                phase = ctx.cycle_state()[0]
            if phase == CYCLE_COMPUTE:
                phase = CYCLE_IDLE if idle else CYCLE_COMPUTE
            else:
                phase = CYCLE_COMPUTE if busy else CYCLE_IDLE

    async def wait_for(self, condition, timeout: int | str = "10s", *, what: str | None = None, **fields) -> bool:
        ns = parse_duration(timeout)
        deadline = self.now + ns
        while not condition():
            if self.now >= deadline:
                self._timed_out(condition, ns, what, fields)
                return False
            await self._ctx.sleep(min(self.POLL_NS, deadline - self.now))
        return True


async def secondary_main(ctx, stack: GuestVmbus, workload, state: dict | None = None) -> None:
    """Another VP of the VM: runs one workload (with `state` as its ctx.state), then halts."""
    await workload(SecondaryContext(ctx, stack, state))
