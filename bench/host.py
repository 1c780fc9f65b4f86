"""Whole hosts: simulated seconds per wall second in steady state, apart from boot, for the
built-in default host (`hvsim run`), a host of 256 VMs each burning 10 % of a VP, and a host of
1,024 idle VMs with every integration service, a disk and a NIC each.

Each host is built and booted (its first stretch of simulated time, reported as its own figure),
then run for a measured stretch; "real time" is the baseline (1.0: a simulated second per wall
second). The idle host boots until every device of every VM is up (each integration service
negotiated, each disk and NIC ready: ~300 ms of simulated time), then is measured over 10 s, which
holds five heartbeats and two time samples per VM (what an idle host does); the others boot for
a fixed stretch. Wall time on a shared machine includes other processes' time, so each figure is
given per CPU second of this process too. Disks live on a tmpfs when there is one (see the notes).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.timing import Figure, Goal, failed, scratch_dir
from partitions.config import default_config, from_dict
from partitions.management import ManagedHost

MS = 1_000_000
REAL_TIME = "real time"
# name -> (boot ms, measured ms) per size; "long" runs the default host for 20 s as `hvsim run --for 20s`.
# The idle host's boot is the most it may take: it boots until every device is up (devices_up).
PLAN = {
    "default-host": {"tiny": (10, 10), "default": (500, 1000), "long": (500, 19_500)},
    "256-busy": {"tiny": (10, 10), "default": (100, 200), "long": (100, 1000)},
    "1024-idle": {"tiny": (3000, 100), "default": (5000, 10_000), "long": (5000, 30_000)},
}
BOOT_STEP_MS = 100   # the idle host's boot runs in these steps until its devices are up
COUNTS = {"256-busy": {"tiny": 4, "default": 256, "long": 256}, "1024-idle": {"tiny": 4, "default": 1024, "long": 1024}}
_UNBUILDABLE: dict[str, str] = {}  # host label -> why it could not be built, in this process

GOALS = {"default-host": Goal(">=", 20, "value", ">= 20x real time"),
         "256-busy": Goal(">=", 10, "value", ">= 10x real time"),
         "1024-idle": Goal(">=", 20, "value", "builds, and >= 20x real time idle")}


def many(n: int, workdir: Path, *, busy: bool) -> dict:
    """A host of `n` one-VP VMs: 10 % CPU burners, or idle with a disk and a NIC each (every
    integration service is on by default)."""
    vms = []
    for i in range(n):
        vm = {"name": f"vm{i}", "processors": 1, "memory": "64MiB"}
        if busy:
            vm["workload"] = {"kind": "cpu-burn", "duty": 0.1}
        else:
            vm["disks"] = [{"path": str(workdir / f"vm{i}.vhd"), "size": "16MiB", "type": "dynamic"}]
            vm["nics"] = [{"switch": "lan"}]
        vms.append(vm)
    return {"host": {"logical_processors": 64, "smt": 2, "memory": f"{max(64, n // 8)}GiB"}, "vm": vms,
            "switch": [{"name": "lan"}]}


class _NotUp(RuntimeError):
    """A host whose devices did not all come up within its boot."""


def devices_up(managed: ManagedHost) -> tuple[int, int]:
    """(devices up, devices) over every VM: an integration service is up once its versions are
    negotiated, a disk controller or NIC once its guest driver is ready."""
    from drivers.ic.vsp import IcVsp, Negotiation
    up = total = 0
    for vm in managed.vms.values():
        for slot in vm.devices:
            total += 1
            vsp = vm.device_vsp(slot.name)
            if isinstance(vsp, IcVsp):
                up += vsp.negotiation is Negotiation.DONE
            else:
                vsc = vm.device_vsc(slot.name)
                up += bool(vsc is not None and getattr(vsc, "ready", False))
    return up, total


def steady(label: str, build, boot_ms: int, span_ms: int, goal: Goal, note: str, *,
           until_up: bool = False) -> list[Figure]:
    """Build with `build()`, boot for boot_ms (with until_up: until every device is up, in
    BOOT_STEP_MS steps, boot_ms at most), then measure span_ms of simulated time."""
    if label in _UNBUILDABLE:  # building it again would fail the same way, and take as long
        return [failed(f"{label}: steady state", _UNBUILDABLE[label], goal, note)]
    t0 = time.perf_counter()
    try:
        managed = build()
        managed.start()
    except Exception as exc:  # noqa: BLE001 - reported as the figure's result
        _UNBUILDABLE[label] = f"cannot be built: {type(exc).__name__}: {exc}"
        return [failed(f"{label}: steady state", _UNBUILDABLE[label], goal, note)]
    try:
        built, c0 = time.perf_counter() - t0, time.process_time()
        if until_up:
            up, total = devices_up(managed)
            while up < total and managed.host.now < boot_ms * MS:
                managed.run(managed.host.now + BOOT_STEP_MS * MS)
                up, total = devices_up(managed)
            if up < total:
                raise _NotUp(f"{total - up} of {total} devices not up after {boot_ms} ms")
            boot_ms = managed.host.now // MS
            note += f"; every device ({total}) up at {boot_ms} ms, measured from there"
        else:
            managed.run(boot_ms * MS)
        booted, c1 = time.perf_counter(), time.process_time()
        boot_cpu = c1 - c0
        managed.run((boot_ms + span_ms) * MS)
        wall, cpu = time.perf_counter() - booted, time.process_time() - c1
    except _NotUp as exc:
        return [failed(f"{label}: steady state", str(exc), goal, note)]
    finally:
        managed.close()
    boot_rate = (boot_ms / 1000) / (booted - t0 - built)
    sim = span_ms / 1000
    return [
        Figure(f"{label}: steady state", sim / wall, "sim s / wall s", REAL_TIME, sim / wall, goal, note=note,
               extra={"build_s": built, "boot_wall_s": booted - t0 - built}),
        Figure(f"{label}: steady state, per CPU second", sim / cpu, "sim s / CPU s", REAL_TIME, sim / cpu),
        Figure(f"{label}: boot (its first {boot_ms} ms)", boot_rate, "sim s / wall s", REAL_TIME, boot_rate,
               note=f"building the host took {built:.1f} s before that (not counted); "
                    f"the boot took {boot_cpu:.1f} CPU s"),
        # The boot's own cost (the VMBus control plane, the disks' metadata, the NICs' buffers),
        # in CPU seconds of this process: what a shared machine's load does not inflate.
        Figure(f"{label}: boot, CPU seconds", boot_cpu, "CPU s"),
    ]


def run(size: str = "default") -> list[Figure]:
    root, where = scratch_dir()
    figures = []
    with tempfile.TemporaryDirectory(dir=root, prefix="hvsim-bench-") as tmp:
        tmp = Path(tmp)
        boot, span = PLAN["default-host"][size]
        work = tmp / "default"
        work.mkdir()
        figures += steady("default host (hvsim run)", lambda: ManagedHost(default_config(work), workdir=work),
                          boot, span, GOALS["default-host"],
                          f"disks in {where}; measured from {boot} ms to {boot + span} ms of simulated time")
        n = COUNTS["256-busy"][size]
        boot, span = PLAN["256-busy"][size]
        work = tmp / "busy"
        work.mkdir()
        figures += steady(f"{n} VMs at 10 % CPU", lambda: ManagedHost(from_dict(many(n, work, busy=True),
                                                                                 base_dir=work), workdir=work),
                          boot, span, GOALS["256-busy"], "1 VP each, every integration service, 64 LPs")
        n = COUNTS["1024-idle"][size]
        boot, span = PLAN["1024-idle"][size]
        work = tmp / "idle"
        work.mkdir()
        figures += steady(f"{n} idle VMs, ICs + disk + NIC", lambda: ManagedHost(from_dict(many(n, work, busy=False),
                                                                                         base_dir=work), workdir=work),
                          boot, span, GOALS["1024-idle"], f"1 VP each, 64 LPs; disks in {where}", until_up=True)
    return figures
