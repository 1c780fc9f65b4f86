"""Built-in guest workloads, and user workloads given by import path. A workload is an
`async def workload(ctx)` run by the guest kernel on VP 0 (see partitions/kernel.py); `ctx` has
compute/sleep/wait_for, the VM's devices (`ctx.devices["storage"]`, `await ctx.device("echo")`,
...) and `ctx.now`. A VM's disks are the LUNs of its storage device (`.disk(n)`); its network
adapters ("network", "network1", ...) are interfaces of one guest IP stack, which routes by
destination."""
from __future__ import annotations

import importlib
from typing import Any, Awaitable, Callable

from hypervisor.abi import PAGE_SIZE
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
        cycle = getattr(ctx, "cycle", None)
        if cycle is not None and period_ns:  # the guest kernel's contexts: the core takes the steps
            await cycle(busy, period_ns - busy)
            return
        while True:
            if busy:
                await ctx.compute(busy)
            if period_ns - busy:
                await ctx.sleep(period_ns - busy)

    return burn


def memory_counter(pages: int = 64, interval: int | str = "1ms", page_work: int | str = "1us") -> Workload:
    """Keep an incrementing counter in every page of a region of the guest's own memory: round r
    (1, 2, ...) stores r, a u64 little-endian, at the start of each of `pages` pages in turn, with
    `page_work` of computation between two pages (so a save, or a migration copying memory, can
    fall inside a round), then waits `interval`. The pages come from the guest kernel's page
    allocator, so nothing else writes them, and the round is read back from guest memory (the
    first page), so the count goes on from whatever memory a restore or a migration brought back.
    It keeps its region and the page its round goes on with in `ctx.state`: resumed in a new
    shell, it finishes the round it was in, in the same pages, and counts on.

    What it wrote stays visible for checks: `workload.region` (the GPA pages, once allocated) and
    `workload.written` (the value it last stored in each page). A page must always hold its
    written value: one lower is a write the VM lost."""
    if not 1 <= int(pages) <= 65536:
        raise ValueError(f"memory-counter pages: expected 1..65536, got {pages!r}")
    pages = int(pages)
    interval_ns = parse_duration(interval, "memory-counter interval")
    page_ns = parse_duration(page_work, "memory-counter page_work")
    region: list[int] = []
    written: list[int] = []

    async def count(ctx) -> None:
        state = ctx.state
        if "region" in state:   # resumed in a new shell: the same pages, the count from memory
            region[:] = state["region"]
            written[:] = [int.from_bytes(ctx.partition.read(page * PAGE_SIZE, 8), "little") for page in region]
        else:
            region[:] = ctx.stack.pages.allocate(pages)
            written[:] = [0] * pages
            state["region"], state["next"] = list(region), 0
        while True:
            # `next` is the page the round goes on with: 0 between rounds. A round a save cut
            # goes on where it stopped, with the value its first page already holds, so the
            # pages never hold more than two values (QEMU's check).
            first = state.get("next", 0)
            value = int.from_bytes(ctx.partition.read(region[0] * PAGE_SIZE, 8), "little") + (first == 0)
            for i in range(first, pages):
                ctx.partition.write(region[i] * PAGE_SIZE, value.to_bytes(8, "little"))
                written[i] = value
                state["next"] = i + 1 if i + 1 < pages else 0
                if page_ns and i + 1 < pages:
                    await ctx.compute(page_ns)
            await ctx.sleep(interval_ns)

    count.region, count.written = region, written  # type: ignore[attr-defined]
    return count


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
            read_fraction: float = 0.5, device: str = "storage", seed: int = 0, disk: int = 0) -> Workload:
    """Keep `queue_depth` requests of `block_size` in flight on disk number `disk` of the VM (the
    LUN of its storage controller): `pattern` "sequential" or "random" offsets, `read_fraction`
    of them reads. Random choices come from a generator seeded from the VM (deterministic).

    It keeps in `ctx.state` its position, the number of requests it issued (`issued`), its
    generator's state and the requests in flight (`inflight`: request number -> [block, is a
    read]). Resumed in a new shell it issues those in flight again first (the old shell's VSP
    never completed them to the guest), then goes on with its sequence where it stopped."""
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
        state = ctx.state
        rng = random.Random(seed)
        if "rng" in state:   # resumed from a saved state (docs/guest-state.md)
            version, internal, gauss = state["rng"]
            rng.setstate((version, tuple(internal), gauss))

        def target():
            controller = ctx.devices.get(device)
            return controller.disk(disk) if controller is not None and controller.ready else None

        if not await ctx.wait_for(lambda: target() is not None, "30s", what=f"disk {disk} of {device!r}",
                                  device_name=device):
            return  # no disk: nothing to do (the wait's timeout is logged)
        lun = target()
        span = max(1, lun.capacity // blocks)
        payload = bytes(range(256)) * (size // 256)
        position, issued = state.get("position", 0), state.get("issued", 0)
        flying = state.setdefault("inflight", {})   # str(request number) -> [block, is a read]
        inflight = 0    # requests issued and not yet seen done by this loop
        finished = 0    # requests done since the loop last looked (counted by their callback)
        second = parse_duration("1s")   # parsed once, not on every wait
        read, write, sequential, randrange, draw = lun.read, lun.write, pattern == "sequential", rng.randrange, rng.random

        def issue(key: str, slot: int, is_read: bool) -> None:
            def done(_request) -> None:
                nonlocal finished
                finished += 1
                flying.pop(key, None)
            if is_read:
                read(slot * blocks, blocks, done, copy=False)
            else:
                write(slot * blocks, payload, done)

        def any_done() -> int:
            return finished

        # Requests in flight when the VM was saved, if it resumed in a new shell: first again.
        for key, (slot, is_read) in list(flying.items()):
            issue(key, slot, is_read)
            inflight += 1
        # Nothing here needs what a read brings: it stays in storvsc's bounce pages (copy=False),
        # and a request's completion is counted by its callback rather than looked for.
        while True:
            inflight -= finished
            finished = 0
            if inflight < queue_depth:
                while inflight < queue_depth:
                    slot = position if sequential else randrange(span)
                    position = (position + 1) % span
                    key, is_read = str(issued), draw() < read_fraction
                    issued += 1
                    flying[key] = [slot, is_read]
                    issue(key, slot, is_read)
                    inflight += 1
                state["position"], state["issued"], state["rng"] = position, issued, rng.getstate()
            await ctx.wait_for(any_done, second)

    return io


def net_request_response(peer_ip: str | None, port: int = 5000, size: int = 64, interval: int | str = "10ms",
                         device: str = "network") -> Workload:
    """Send a `size`-byte UDP request to `peer_ip`:`port` every `interval`; the peer's echo
    service (udp_echo_service) answers. `device` is the adapter on the peer's network: the
    requests start once its interface is up and is the guest stack's route to the peer (they
    leave by it, with its address). Counts go in the workload's `stats` dict, and in `ctx.state`
    (so a VM resumed in a new shell counts on)."""
    interval_ns = parse_duration(interval, "net-request-response interval")
    stats = {"sent": 0, "answered": 0}

    async def client(ctx) -> None:
        if peer_ip is None:
            return
        state = ctx.state      # the counts, kept with the VM's state (docs/guest-state.md)
        stats.update({"sent": state.setdefault("sent", 0), "answered": state.setdefault("answered", 0)})

        def count(what: str) -> None:
            stats[what] += 1
            state[what] = stats[what]
        def route():
            adapter = ctx.devices.get(device)
            iface = getattr(adapter, "interface", None)
            stack = getattr(adapter, "stack", None)
            return stack if iface is not None and stack.connected(peer_ip) is iface else None

        if not await ctx.wait_for(lambda: route() is not None, "30s", what=f"a route to {peer_ip} by {device!r}",
                                  device_name=device):
            return
        stack = route()
        sock = stack.udp_socket(0, on_datagram=lambda *_: count("answered"))
        payload = bytes(size)
        while True:
            try:
                sock.sendto(payload, (peer_ip, port))
                count("sent")
            except OSError:
                pass  # no route yet, ARP pending, queue full: the next period tries again
            await ctx.sleep(interval_ns)

    client.stats = stats  # type: ignore[attr-defined]
    return client


def udp_echo_service(port: int = 5000, device: str = "network"):
    """An on_poll hook for a guest stack: once network adapter `device` is up, answer every UDP
    datagram to `port` with the same bytes (the server side of net-request-response). The port
    is bound on the guest's IP stack, so on every adapter it has."""
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
