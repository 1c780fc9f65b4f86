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


def disk_io(pattern: str = "sequential", block_size: int | str = "64KiB", queue_depth: int = 4,
            read_fraction: float = 0.5, device: str = "storage", seed: int = 0) -> Workload:
    """Keep `queue_depth` requests of `block_size` in flight on the VM's disk: `pattern`
    "sequential" or "random" offsets, `read_fraction` of them reads. Random choices come from a
    generator seeded from the VM (deterministic)."""
    import random

    from hypervisor.quantities import parse_size
    size = parse_size(block_size, "disk-io block_size")
    if size <= 0 or size % 512:
        raise ValueError(f"disk-io block_size: expected a positive multiple of 512, got {block_size!r}")
    if pattern not in ("sequential", "random"):
        raise ValueError(f"disk-io pattern: expected sequential or random, got {pattern!r}")
    if not 1 <= int(queue_depth) <= 256:
        raise ValueError(f"disk-io queue_depth: expected 1..256, got {queue_depth!r}")
    blocks = size // 512

    async def io(ctx) -> None:
        rng = random.Random(seed)
        if not await ctx.wait_for(lambda: ctx.devices.get(device) is not None and ctx.devices[device].ready, "30s"):
            return  # no disk: nothing to do
        disk = ctx.devices[device]
        span = max(1, disk.capacity // blocks)
        payload = bytes(range(256)) * (size // 256)
        position = 0
        inflight = []
        while True:
            inflight = [r for r in inflight if not r.done]
            while len(inflight) < queue_depth:
                slot = position if pattern == "sequential" else rng.randrange(span)
                position = (position + 1) % span
                lba = slot * blocks
                if rng.random() < read_fraction:
                    inflight.append(disk.read(lba, blocks))
                else:
                    inflight.append(disk.write(lba, payload))
            await ctx.wait_for(lambda: any(r.done for r in inflight), "1s")

    return io


def net_request_response(peer_ip: str | None, port: int = 5000, size: int = 64, interval: int | str = "10ms",
                         device: str = "network") -> Workload:
    """Send a `size`-byte UDP request to `peer_ip`:`port` every `interval`; the peer's echo
    service (udp_echo_service) answers. Counts go in the workload's `stats` dict."""
    interval_ns = parse_duration(interval, "net-request-response interval")
    stats = {"sent": 0, "answered": 0}

    async def client(ctx) -> None:
        if peer_ip is None:
            return
        if not await ctx.wait_for(lambda: getattr(ctx.devices.get(device), "stack", None) is not None, "30s"):
            return
        stack = ctx.devices[device].stack
        sock = stack.udp_socket(0, on_datagram=lambda *_: stats.__setitem__("answered", stats["answered"] + 1))
        payload = bytes(size)
        while True:
            try:
                sock.sendto(payload, (peer_ip, port))
                stats["sent"] += 1
            except OSError:
                pass  # no route yet, ARP pending, queue full: the next period tries again
            await ctx.sleep(interval_ns)

    client.stats = stats  # type: ignore[attr-defined]
    return client


def udp_echo_service(port: int = 5000, device: str = "network"):
    """An on_poll hook for a guest stack: once its network adapter is up, answer every UDP
    datagram to `port` with the same bytes (the server side of net-request-response)."""
    state = {"sock": None}

    def poll(stack) -> None:
        if state["sock"] is not None:
            return
        vsc = stack.devices.get(device)
        netstack = getattr(vsc, "stack", None)
        if netstack is None:
            return
        holder = {}

        def answer(data, addr, *_):
            try:
                holder["sock"].sendto(data, addr)
            except OSError:
                pass
        holder["sock"] = state["sock"] = netstack.udp_socket(port, on_datagram=answer)

    return poll
