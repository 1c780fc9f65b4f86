"""The management service: a simulated host built from a configuration (its switches, its VMs
with their devices and workloads) and run through its scenario timeline; the Get-VM view.

    managed = ManagedHost(config, seed=0, workdir=Path("run"))
    managed.run(until="5s", on_progress=print)
    managed.summary()
"""
from __future__ import annotations

import dataclasses
import zlib
from collections import deque
from pathlib import Path
from typing import Any, Callable

from drivers.ic import HEARTBEAT, KVP, SHUTDOWN, TIMESYNC, VSS
from drivers.registry import discover
from hypervisor import Host
from hypervisor.quantities import parse_duration
from partitions.config_schema import (Config, CpuBurnWorkload, DiskIoWorkload, IdleWorkload,
                                      NetRequestResponseWorkload, PythonWorkload, VmConfig)
from partitions.vm import DeviceSlot, VirtualMachine, VmState
from partitions.worker import VmSpec
from partitions import workloads as wl
from partitions.vmbus_parent import ParentVmbus
from partitions.events import HostEvents

IC_DEVICES = {"heartbeat": HEARTBEAT, "shutdown": SHUTDOWN, "timesync": TIMESYNC, "kvp": KVP, "vss": VSS}
SUPPORTED_ACTIONS = ("start", "stop", "turn-off", "pause", "resume", "quick-reset", "save", "restore",
                     "checkpoint", "apply-checkpoint", "delete-checkpoint")


#: Get-VM's CPUUsage is the use over this much recent simulated time (Hyper-V shows recent use).
CPU_WINDOW_NS = 1_000_000_000


class ScenarioError(RuntimeError):
    """A timeline action that cannot be carried out (the message names the time, VM and action)."""


class ManagedHost:
    """A host built from `config`. The simulation's seed is `seed` when given (`hvsim run --seed`:
    the command line wins over the file), else the file's `[host] seed`, else 0; `self.seed` is
    the one used."""

    def __init__(self, config: Config, *, seed: int | None = None, workdir: Path | str = ".",
                 event_log=None, record_scheduling: bool = False, pcap: Path | str | None = None):
        self.config = config
        self.workdir = Path(workdir)
        self.log = event_log
        h = config.host
        self.seed = seed if seed is not None else h.seed if h.seed is not None else 0   # the caller's wins
        costs = {name: ns for name, ns in h.costs.items()}
        self.host = Host(logical_processors=h.logical_processors, smt=h.smt, memory=h.memory, seed=self.seed,
                         scheduler=h.scheduler, costs=costs)
        if record_scheduling:
            self.host.introspect.record_scheduling()
        # The parent's VMBus service runs on the root's last VP (the first ones do other work).
        self.vmbus = ParentVmbus(self.host, vp_index=h.logical_processors - 1)
        if record_scheduling:
            self.vmbus.message_trace = []
        # Failures stay with their VM: a guest that raises turns its own VM off; what the
        # parent's VMBus service and the devices log goes to the event log with the VM's name.
        self.events = HostEvents(event_log, self._vm_name, self.vmbus)
        self._names: dict[int, str] = {}          # partition id -> VM name (kept after the partition goes)
        self._cpu: dict[str, deque] = {}          # VM -> (time, CPU time) samples of the last CPU_WINDOW
        self.host.on_guest_error = self._guest_crashed
        self.vmbus.on_log = self.events.from_vmbus
        self.registry = discover()
        for err in self.registry.errors:
            self._event("driver.load_failed", entry_point=err.entry_point, error=err.message)
        self.switches = {}
        for sw in config.switches:
            from drivers.network.vswitch import VirtualSwitch
            self.switches[sw.name] = VirtualSwitch(sw.name, sw.type, now=lambda: self.host.now)
        if pcap is not None:
            for sw in self.switches.values():
                sw.capture(str(pcap) if len(self.switches) == 1 else f"{pcap}.{sw.name}")
        self.vms: dict[str, VirtualMachine] = {}
        for vm in config.vms:
            self.vms[vm.name] = self._make_vm(vm)
        for vm in self.vms.values():
            vm.on_event = self._vm_event   # checkpoint and saved-state files, into the event log
        self.timeline = sorted(config.timeline, key=lambda a: a.time)  # stable: file order at equal times
        for at in self.timeline:
            if at.action not in SUPPORTED_ACTIONS:
                raise ScenarioError(f"at {at.time / 1e9:g}s: {at.action} of vm {at.vm!r} is not available in this "
                                    f"version of hvsim (supported: {', '.join(SUPPORTED_ACTIONS)})")
        self._next_action = 0

    # ---- building -------------------------------------------------------------------------------
    def _event(self, name: str, **fields: Any) -> None:
        self.events.emit(name, **fields)

    def _vm_name(self, partition_id: int) -> str | None:
        """The name of the VM a partition is (or was) the partition of; None for the root."""
        name = self._names.get(partition_id)
        if name is None:
            vm = next((v for v in self.vms.values() if v.partition is not None and v.partition.id == partition_id),
                      None)
            if vm is not None:
                name = self._names[partition_id] = vm.name
        return name

    def _make_vm(self, cfg: VmConfig) -> VirtualMachine:
        spec = VmSpec(cfg.name, memory=cfg.memory, processors=cfg.processors, cpu_reserve=cfg.cpu.reserve,
                      cpu_limit=cfg.cpu.limit, cpu_weight=cfg.cpu.weight)
        if len(cfg.disks) > 1 or len(cfg.nics) > 1:
            raise ValueError(f"vm {cfg.name!r}: this version of hvsim runs one disk and one network adapter per VM; "
                             f"it has {len(cfg.disks)} disks and {len(cfg.nics)} adapters")
        slots = [DeviceSlot(dev) for name, dev in IC_DEVICES.items() if getattr(cfg.integration_services, name)]
        if cfg.disks:
            from drivers.storage import DEVICE as STORAGE
            disk = cfg.disks[0]
            self._ensure_disk(disk, cfg.name)
            slots.append(DeviceSlot(STORAGE, {"path": str(disk.path)}))
        if cfg.nics:
            from drivers.network import DEVICE as NETWORK
            nic = cfg.nics[0]
            slots.append(DeviceSlot(NETWORK, {"switch": self.switches[nic.switch], "mac": nic.mac, "vlan": nic.vlan},
                                    {"address": nic.ip, "gateway": nic.gateway, "mac": nic.mac}))
        services = []
        ports = {w.port for other in self.config.vms for w in other.workloads
                 if isinstance(w, NetRequestResponseWorkload) and w.peer == cfg.name}
        for port in sorted(ports):
            services.append(wl.udp_echo_service(port))
        runners = [self._workload(cfg, w) for w in cfg.workloads] or [wl.idle]
        # A CPU burn burns on every VP no other workload of the VM takes (a multi-threaded burner).
        burn = next((w for w in cfg.workloads if isinstance(w, CpuBurnWorkload)), None)
        while burn is not None and len(runners) < cfg.processors:
            runners.append(wl.cpu_burn(burn.duty, burn.period))
        vm = VirtualMachine(self.host, self.vmbus, self.registry, spec, devices=slots, workload=runners[0],
                            more_workloads=runners[1:], guest_services=services, on_state=self._state_changed)
        return vm

    def _ensure_disk(self, disk, vm: str | None = None) -> None:
        from drivers.storage.vhd import VirtualDisk
        path = Path(disk.path)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        parent = str(disk.parent) if disk.parent else None
        VirtualDisk.create(str(path), disk.size, disk.type, parent=parent).close()
        self._event("disk.created", vm=vm, path=str(path), size=disk.size, type=disk.type)

    def _workload(self, cfg: VmConfig, w):
        if isinstance(w, IdleWorkload):
            return wl.idle
        if isinstance(w, CpuBurnWorkload):
            return wl.cpu_burn(w.duty, w.period)
        if isinstance(w, DiskIoWorkload):
            return wl.disk_io(w.pattern, w.block_size, w.queue_depth, w.read_fraction,
                              seed=self.seed ^ zlib.crc32(cfg.name.encode()))  # stable across processes
        if isinstance(w, NetRequestResponseWorkload):
            peer = next(v for v in self.config.vms if v.name == w.peer)
            peer_ip = peer.nics[0].ip.split("/")[0] if peer.nics and peer.nics[0].ip else None
            return wl.net_request_response(peer_ip, w.port, w.size, w.interval)
        if isinstance(w, PythonWorkload):
            return wl.python_workload(w.target, dict(w.args))
        raise ValueError(f"vm {cfg.name!r}: workload {w!r} has no runner")

    def _state_changed(self, vm: VirtualMachine, old: VmState, new: VmState) -> None:
        if vm.partition is not None:
            self._names[vm.partition.id] = vm.name
        if new is VmState.RUNNING and vm.stack is not None and self.events.enabled:
            vm.stack.on_log = lambda event, fields, name=vm.name: self.events.from_guest(name, event, fields)
        fields = {"reason": vm.off_reason} if new is VmState.OFF and vm.off_reason else {}
        self._event("vm.state", vm=vm.name, old=old.value, new=new.value, **fields)

    def _vm_event(self, vm: VirtualMachine, name: str, fields: dict) -> None:
        self._event(name, vm=vm.name, **fields)

    def _guest_crashed(self, partition_id: int, vp_index: int, error) -> None:
        """A guest raised (Host.on_guest_error): its VM goes Off with the reason; the run goes on.
        The parent's own guests (its VMBus service) are the host itself: their failure ends the run."""
        name = self._vm_name(partition_id)
        vm = self.vms.get(name) if name is not None else None
        if vm is None or vm.partition is None or vm.partition.id != partition_id:
            raise error
        reason = f"guest crashed: {error.detail} on VP {vp_index}"
        self._event("vm.crashed", vm=vm.name, vp=vp_index, error=error.detail)
        # Called between two batches of guest steps: nothing of this VM is running now, so it can
        # be torn down at once.
        vm.crash(reason)

    # ---- running ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every VM that starts with the host (autostart)."""
        for cfg in self.config.vms:
            if cfg.autostart:
                self.vms[cfg.name].start()

    def run(self, until: int | str, *, step: int | str = "100ms",
            on_progress: Callable[[ManagedHost], None] | None = None) -> None:
        """Run to `until`, carrying out the timeline's actions at their times; `on_progress` is
        called every `step` of simulated time (for a live view)."""
        end = parse_duration(until, "until")
        step_ns = max(1, parse_duration(step, "step"))
        if self.host.now == 0 and all(vm.state is VmState.OFF for vm in self.vms.values()):
            self.start()
        while self.host.now < end:
            nxt = min(end, (self.host.now // step_ns + 1) * step_ns)
            if self._next_action < len(self.timeline):
                nxt = min(nxt, max(self.host.now, self.timeline[self._next_action].time))
            self.host.run(nxt)
            self._sample_cpu()
            self.events.hypercalls(self.host.introspect, self.host.root.id)
            while self._next_action < len(self.timeline) and self.timeline[self._next_action].time <= self.host.now:
                self._act(self.timeline[self._next_action])
                self._next_action += 1
            if on_progress is not None:
                on_progress(self)

    def _act(self, at) -> None:
        vm = self.vms[at.vm]
        action = {"start": vm.start, "stop": vm.stop, "turn-off": vm.turn_off, "pause": vm.pause,
                  "resume": vm.resume, "quick-reset": vm.quick_reset,
                  "save": lambda: vm.save(self.workdir / f"{vm.name}.hvsav"), "restore": vm.restore,
                  "checkpoint": lambda: vm.checkpoint(at.name or f"checkpoint-{self.host.now // 1_000_000}ms"),
                  "apply-checkpoint": lambda: vm.apply_checkpoint(at.name),
                  "delete-checkpoint": lambda: vm.delete_checkpoint(at.name)}[at.action]
        self._event("vm.action", vm=at.vm, action=at.action)
        try:
            action()
        except Exception as exc:
            self._event("vm.action_failed", vm=at.vm, action=at.action, error=str(exc))
            raise ScenarioError(f"at {at.time / 1e9:g}s: {at.action} of vm {at.vm!r} failed: {exc}") from exc

    # ---- what it shows ---------------------------------------------------------------------------
    def get_vm(self) -> list[dict[str, Any]]:
        """The Get-VM view: Name, State, CPUUsage(%) (of the host's LPs over the last CPU_WINDOW of
        simulated time, as Hyper-V shows recent use, not the average since boot),
        MemoryAssigned(M), Uptime (zero while Off or Saved), Status (a crashed VM's reason)."""
        self._sample_cpu()
        rows = []
        for vm in self.vms.values():
            s = vm.summary()
            status = {"OK": "Operating normally", "Lost Communication": "Lost communication (heartbeat)",
                      "No Contact": "No contact (heartbeat)", "Unknown": "Operating normally"}.get(s["status"], "")
            rows.append({"Name": vm.name, "State": s["state"], "CPUUsage(%)": round(self._cpu_usage(vm), 1),
                         "MemoryAssigned(M)": s["memory_assigned_mib"], "Uptime": _uptime(s["uptime_ns"]),
                         "Status": s["reason"] or status})
        return rows

    def _sample_cpu(self) -> None:
        now = self.host.now
        for vm in self.vms.values():
            samples = self._cpu.setdefault(vm.name, deque([(0, 0)]))
            if samples[-1][0] < now:
                samples.append((now, vm.run_time_ns()))
            # Keep the newest sample at least a window old, and the ones after it.
            while len(samples) > 2 and samples[1][0] <= now - CPU_WINDOW_NS:
                samples.popleft()

    def _cpu_usage(self, vm: VirtualMachine) -> float:
        (t0, cpu0), (t1, cpu1) = self._cpu[vm.name][0], self._cpu[vm.name][-1]
        return 100.0 * (cpu1 - cpu0) / (t1 - t0) / self.host.logical_processors if t1 > t0 else 0.0

    def measure(self) -> list[dict[str, Any]]:
        """Measure-VM's figures per VM, since the host started: disk data read and written (MB,
        10^6 bytes), normalized disk operations (8 KiB each, as Hyper-V counts them) and their
        average rate, network bytes in and out (MB)."""
        seconds = self.host.now / 1e9
        rows = []
        for vm in self.vms.values():
            m = vm.measure()
            rows.append({"VMName": vm.name,
                         "AggregatedDiskDataRead(M)": round(m["disk_read_bytes"] / 1e6, 3),
                         "AggregatedDiskDataWritten(M)": round(m["disk_written_bytes"] / 1e6, 3),
                         "AggregatedNormalizedIOCount": m["disk_normalized_ios"],
                         "AggregatedAverageNormalizedIOPS": round(m["disk_normalized_ios"] / seconds) if seconds else 0,
                         "NetworkInbound(M)": round(m["network_in_bytes"] / 1e6, 3),
                         "NetworkOutbound(M)": round(m["network_out_bytes"] / 1e6, 3)})
        return rows

    def summary(self) -> dict[str, Any]:
        intro = self.host.introspect
        partitions = []
        for pid in intro.partition_ids():
            info = intro.partition_info(pid)
            name = "root" if pid == self.host.root.id else next(
                (vm.name for vm in self.vms.values() if vm.partition is not None and vm.partition.id == pid), str(pid))
            partitions.append({"partition": pid, "name": name, "hypercalls": info["hypercalls"],
                               "hypercalls_failed": info["hypercalls_failed"],
                               "cpu_ms": round(info["run_time_ns"] / 1e6, 3),
                               "vmbus": self.vmbus.traffic(pid) if pid != self.host.root.id else None})
        checkpoints = {vm.name: [{"time_ns": t, "checkpoint": n, "what": w} for t, n, w in vm.checkpoint_log]
                       for vm in self.vms.values() if vm.checkpoint_log}
        return {"simulated_ns": self.host.now, "seed": self.seed, "vms": self.get_vm(), "measure": self.measure(),
                "partitions": partitions,
                "checkpoints": checkpoints,
                "switches": {name: dataclasses.asdict(sw.stats) for name, sw in self.switches.items()},
                "trace_digest": self.host.trace_digest().hex()}

    def close(self) -> None:
        for sw in self.switches.values():
            sw.stop_capture()


def _uptime(ns: int) -> str:
    total_ms = ns // 1_000_000
    s, ms = divmod(total_ms, 1000)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"
