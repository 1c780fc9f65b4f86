"""Built-in guest workloads, and user workloads given by import path. A workload is an
`async def workload(ctx)` run by the guest kernel on VP 0 (see partitions/kernel.py); `ctx` has
compute/sleep/wait_for, the VM's devices (`ctx.devices["storage"]`, ...) and `ctx.now`."""
from __future__ import annotations

import importlib
from typing import Any, Awaitable, Callable

from hypervisor.quantities import parse_duration

Workload = Callable[[Any], Awaitable[None]]


async def idle(ctx) -> None:
    """Nothing but the kernel's own work (VMBus, integration services)."""


def cpu_burn(duty: float = 1.0, period: int | str = "10ms") -> Workload:
    """Busy `duty` of every `period`."""
    if not 0.0 <= duty <= 1.0:
        raise ValueError(f"cpu-burn duty: expected 0..1, got {duty!r}")
    period_ns = parse_duration(period, "cpu-burn period")
    busy = round(period_ns * duty)

    async def burn(ctx) -> None:
        while True:
            if busy:
                await ctx.compute(busy)
            if period_ns - busy:
                await ctx.sleep(period_ns - busy)

    return burn


def python_workload(target: str, args: dict | None = None) -> Workload:
    """A user's workload: "package.module:function", an async function taking (ctx, **args)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"python workload: expected 'package.module:function', got {target!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"python workload {target!r}: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"python workload {target!r} is not callable")
    kwargs = dict(args or {})
    return lambda ctx: fn(ctx, **kwargs)
