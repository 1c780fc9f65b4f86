"""The management service: a simulated host built from a configuration (its switches, its VMs
with their devices and workloads) and run through its scenario timeline; the Get-VM view.

    managed = ManagedHost(config, seed=0, workdir=Path("run"))
    managed.run(until="5s", on_progress=print)
    managed.summary()
"""
from __future__ import annotations

import dataclasses
import gc
import os
import zlib
from collections import deque
from pathlib import Path
from typing import Any, Callable

from drivers.ic import HEARTBEAT, KVP, SHUTDOWN, TIMESYNC, VSS
from drivers.registry import discover
from hypervisor import Host, _binding
from hypervisor.quantities import parse_duration
from partitions import run_files
from partitions.config_schema import dump as config_schema_dump
from partitions.config_schema import (DEVICES_WITH_KEYS, MAX_DISKS, MAX_NICS, Config, ConfigError, CpuBurnWorkload,
                                      DiskIoWorkload, IdleWorkload, MemoryCounterWorkload, NetRequestResponseWorkload,
                                      PythonWorkload,
                                      VmConfig)
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
#: A host of at least this many VMs keeps its objects out of the garbage collector's full passes
#: while it runs (ManagedHost.run): see _freeze_gc.
FREEZE_GC_VMS = 64


@dataclasses.dataclass
class _VmPlan:
    """A VM checked and ready to be built: its configuration, device slots, the workload runners
    of its VPs and the guest services (echo servers) its peers need."""
    config: VmConfig
    slots: list
    runners: list
    services: list
    ide: str | None = None          # the run file its emulated IDE disk serves
    legacy_nic: dict | None = None  # its emulated legacy NIC: {"switch": VirtualSwitch, "mac": bytes}


def _unique(base: str, taken: set[str]) -> str:
    """`base`, or base1, base2, ... : the first name not taken (which it then is)."""
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}{n}"
    taken.add(name)
    return name


def _facing(vm: VmConfig, peer: VmConfig) -> tuple[int, int] | None:
    """(our adapter, theirs): the first pair of adapters with addresses on the same switch and
    VLAN, in adapter order; None if the two VMs share no network."""
    for i, ours in enumerate(vm.nics):
        for j, theirs in enumerate(peer.nics):
            if ours.ip and theirs.ip and (ours.switch, ours.vlan) == (theirs.switch, theirs.vlan):
                return i, j
    return None


class ScenarioError(RuntimeError):
    """A timeline action that cannot be carried out (the message names the time, VM and action)."""


class ManagedHost:
    """A host built from `config`. The simulation's seed is `seed` when given (`hvsim run --seed`:
    the command line wins over the file), else the file's `[host] seed`, else 0; `self.seed` is
    the one used."""

    def __init__(self, config: Config, *, seed: int | None = None, workdir: Path | str = ".",
                 event_log=None, record_scheduling: bool = False, pcap: Path | str | None = None, storage=None):
        self.config = config
        # A datacenter's shared storages as this host sees them (partitions.datacenter.storage.
        # HostStorage): a disk on one is taken for this host, and its requests cross the host's
        # link to it. None: every disk is the host's own.
        self.storage = storage
        self.workdir = Path(workdir)
        self.log = event_log
        h = config.host
        self.seed = seed if seed is not None else h.seed if h.seed is not None else 0   # the caller's wins
        costs = {name: ns for name, ns in h.costs.items()}
        self.host = Host(logical_processors=h.logical_processors, smt=h.smt, memory=h.memory, seed=self.seed,
                         scheduler=h.scheduler, costs=costs)
        if record_scheduling:
            self.host.introspect.record_scheduling()
        # The parent's VMBus service runs on the root's last VP (the first ones do other work); the
        # root has a VP per LP up to the core's 64 VPs per partition.
        self.vmbus = ParentVmbus(self.host, vp_index=len(self.host.root.vps) - 1)
        if record_scheduling:
            self.vmbus.message_trace = []
        # Failures stay with their VM: a guest that raises turns its own VM off; what the
        # parent's VMBus service and the devices log goes to the event log with the VM's name.
        self.events = HostEvents(event_log, self._vm_name, self.vmbus)
        self._names: dict[int, str] = {}          # partition id -> VM name (kept after the partition goes)
        # CPU samples of the last CPU_WINDOW, every VM at once: (time, layout, run times), where
        # run times is an array the core filled (one crossing, no Python object per VM) and
        # layout the (partition ids, earlier incarnations' CPU time) it was read with. A layout
        # changes only when some VM changes state (_state_changed), so a sample costs O(1)
        # Python however many VMs there are; the per-VM figure is worked out when looked at.
        self._cpu: deque = deque()
        self._cpu_layout = None                   # the current layout; None: make it afresh
        self._froze_gc = False                    # run() moved objects out of the collector's reach
        self.host.on_guest_error = self._guest_crashed
        self.vmbus.on_log = self.events.from_vmbus
        # A child the VMBus service had to stop serving crashes; the service tells it from its
        # own VP, so the crash waits until host.run returns (nothing of the VM runs then).
        self._vmbus_failed: list[tuple[int, str]] = []
        self.vmbus.on_child_failed = lambda pid, why: self._vmbus_failed.append((pid, why))
        # VMs whose emulated device failed in an access the guest survived (it caught the
        # error): crashed, like those of the VMBus service, when host.run returns.
        self._devices_failed: list[tuple[VirtualMachine, int]] = []
        self.registry = discover()
        for err in self.registry.errors:
            self._event("driver.load_failed", entry_point=err.entry_point, error=err.message)
        self.switches = {}
        for sw in config.switches:
            from drivers.network.vswitch import VirtualSwitch
            self.switches[sw.name] = VirtualSwitch(sw.name, sw.type, now=lambda: self.host.now)
        # Check first, then create: every VM is planned (devices, disks, adapters, workloads)
        # before any file is made, so a host that cannot be built leaves nothing behind.
        self._file = str(config.path) if config.path is not None else "(configuration)"
        disks = run_files.plan_disks(config, self.workdir, self._file)
        plans = [self._plan_vm(i, vm, disks[vm.name]) for i, vm in enumerate(config.vms)]
        run_files.make_disks(disks, self.workdir, self._event)
        if pcap is not None:
            for sw in self.switches.values():
                sw.capture(str(pcap) if len(self.switches) == 1 else f"{pcap}.{sw.name}")
        self.vms: dict[str, VirtualMachine] = {}
        for plan in plans:
            self.vms[plan.config.name] = self._make_vm(plan)
        for vm in self.vms.values():
            vm.on_event = self._vm_event   # checkpoint and saved-state files, into the event log
        self._cpu_vms = {name: i for i, name in enumerate(self.vms)}   # VM -> its index in a sample
        self._cpu.append((0, self._layout(), [0] * len(self.vms)))
        self.timeline = sorted(config.timeline, key=lambda a: a.time)  # stable: file order at equal times
        for at in self.timeline:
            if at.action not in SUPPORTED_ACTIONS:
                raise ScenarioError(f"at {at.time / 1e9:g}s: {at.action} of vm {at.vm!r} is not available in this "
                                    f"version of hvsim (supported: {', '.join(SUPPORTED_ACTIONS)})")
        self._next_action = 0
        #: Whether the host's autostart has run (start()); run() autostarts a host only once.
        self.started = False

    # ---- building -------------------------------------------------------------------------------
    def _event(self, name: str, **fields: Any) -> None:
        self.events.emit(name, **fields)

    def event(self, name: str, **fields: Any) -> None:
        """Log an event of the host's (docs/events.md), with the host's simulated time: for a
        caller that drives the host from outside (the management service)."""
        self._event(name, **fields)

    def _vm_name(self, partition_id: int) -> str | None:
        """The name of the VM a partition is (or was) the partition of; None for the root."""
        name = self._names.get(partition_id)
        if name is None:
            vm = next((v for v in self.vms.values() if v.partition is not None and v.partition.id == partition_id),
                      None)
            if vm is not None:
                name = self._names[partition_id] = vm.name
        return name

    def _plan_vm(self, index: int, cfg: VmConfig, disks: list) -> _VmPlan:
        """Everything the VM needs, checked, with nothing created: its device slots (named
        uniquely: "network", "network1", ...; the storage slot holds every disk, as LUNs), its
        workloads and the guest services its peers need. ConfigError names the file and key."""
        key = f"vm[{index}]"
        ide = next((os.path.abspath(d.run_path) for d in disks if d.ide), None)
        disks = [d for d in disks if not d.ide]
        if len(cfg.disks) > MAX_DISKS:
            self._refuse(f"{key}.disks", f"at most {MAX_DISKS} disks (the LUNs of a SCSI controller)",
                         f"{len(cfg.disks)} disks")
        if len(cfg.nics) > MAX_NICS:
            self._refuse(f"{key}.nics", f"at most {MAX_NICS} network adapters", f"{len(cfg.nics)} adapters")
        slots = [DeviceSlot(dev) for name, dev in IC_DEVICES.items() if getattr(cfg.integration_services, name)]
        taken = {slot.name for slot in slots}
        if disks:
            from drivers.storage import DEVICE as STORAGE
            # The run disks are working copies that the next run makes afresh: write barriers
            # (the ordering that keeps a VHD valid through a power cut) would buy nothing there.
            links = self.storage.attach(cfg.name, [d.base.path for d in disks]) if self.storage is not None else None
            slots.append(DeviceSlot(STORAGE, {"disks": [str(d.run_path) for d in disks], "write_barriers": False,
                                              **({"links": links} if links else {})},
                                    instance=_unique("storage", taken)))
        adapters = []
        for j, nic in enumerate(cfg.nics):
            from drivers.network import DEVICE as NETWORK
            if nic.switch not in self.switches:
                self._refuse(f"{key}.nics[{j}].switch", f"the name of a switch ({', '.join(self.switches) or 'none'})",
                             repr(nic.switch))
            name = _unique("network", taken)
            adapters.append(name)
            slots.append(DeviceSlot(NETWORK, {"switch": self.switches[nic.switch], "mac": nic.mac, "vlan": nic.vlan},
                                    {"address": nic.ip, "gateway": nic.gateway, "mac": nic.mac,
                                     "interface": f"eth{j}"}, instance=name))
        for j, dev in enumerate(cfg.devices):
            slots.append(self._device_slot(f"{key}.devices[{j}]", dev, taken))
        services, bound = [], set()
        for other in self.config.vms:
            for w in other.workloads:
                if isinstance(w, NetRequestResponseWorkload) and w.peer == cfg.name and w.port not in bound:
                    facing = _facing(cfg, other)   # our adapter on the requester's network
                    if facing is not None:
                        bound.add(w.port)
                        services.append(wl.udp_echo_service(w.port, device=adapters[facing[0]]))
        runners = [self._workload(cfg, w, f"{key}.workload" + (f"[{k}]" if len(cfg.workloads) > 1 else ""), adapters)
                   for k, w in enumerate(cfg.workloads)] or [wl.idle]
        # A CPU burn burns on every VP no other workload of the VM takes (a multi-threaded burner).
        burn = next((w for w in cfg.workloads if isinstance(w, CpuBurnWorkload)), None)
        while burn is not None and len(runners) < cfg.processors:
            runners.append(wl.cpu_burn(burn.duty, burn.period))
        legacy = None
        if cfg.legacy_nic is not None:
            if cfg.legacy_nic.switch not in self.switches:
                self._refuse(f"{key}.legacy_nic.switch", f"the name of a switch ({', '.join(self.switches) or 'none'})",
                             repr(cfg.legacy_nic.switch))
            legacy = {"switch": self.switches[cfg.legacy_nic.switch],
                      "mac": bytes.fromhex(cfg.legacy_nic.mac.replace(":", ""))}
        return _VmPlan(cfg, slots, runners, services, ide, legacy)

    def _device_slot(self, key: str, dev, taken: set[str]) -> DeviceSlot:
        """An installed device from `devices`: its type must be in the registry, and its VSP
        config is what the device makes of the settings (it checks them: Vsp.validate_config)."""
        from drivers.device import DeviceConfigError
        device = self.registry.devices.get(dev.type)
        if device is None or dev.type in DEVICES_WITH_KEYS:
            self._refuse(f"{key}.type", "an installed device without a key of its own",
                         self.registry.missing(dev.type) if device is None else repr(dev.type))
        try:
            config = device.validate_config(dict(dev.settings))
        except DeviceConfigError as exc:
            self._refuse(f"{key}.{exc.key}" if exc.key else key, f'{exc.expected} (device "{dev.type}")',
                         exc.got or repr(dev.settings.get(exc.key, dict(dev.settings))))
        except (ValueError, TypeError) as exc:
            self._refuse(key, f'settings device "{dev.type}" accepts: {exc}', repr(dict(dev.settings)))
        return DeviceSlot(device, config, instance=_unique(dev.type, taken))

    def _refuse(self, key: str, expected: str, got: str):
        raise ConfigError(self._file, key, expected, got)

    def _make_vm(self, plan: _VmPlan) -> VirtualMachine:
        cfg = plan.config
        spec = VmSpec(cfg.name, memory=cfg.memory, processors=cfg.processors, cpu_reserve=cfg.cpu.reserve,
                      cpu_limit=cfg.cpu.limit, cpu_weight=cfg.cpu.weight)
        vm = VirtualMachine(self.host, self.vmbus, self.registry, spec, devices=plan.slots,
                            workload=plan.runners[0], more_workloads=plan.runners[1:],
                            guest_services=plan.services, on_state=self._state_changed,
                            ide=plan.ide, legacy_nic=plan.legacy_nic)
        vm.config = cfg
        vm.on_release = self._released
        vm.on_device_failed = self._device_failed
        return vm

    # ---- VMs that arrive and leave (a restore into a new shell, a move) ----------------------------
    def incoming(self, config_data: dict) -> VirtualMachine:
        """A VM built on this host from the configuration of a capture (`capture()["config"]`):
        its adapters on this host's switches of the same names, its storage serving the disk files
        the configuration names (storage the hosts share). It joins this host's VMs Migrating: its
        partition and RAM built, its devices offered, its VPs not running and no guest code yet,
        ready for write_pages and resume_from. A configuration this host cannot take (a switch it
        lacks, a VM of that name here already) raises SavedStateError naming the key."""
        from partitions.config import from_dict
        from partitions.run_files import DiskPlan
        from partitions.savedstate import SavedStateError
        import tomllib
        if not isinstance(config_data, dict) or not isinstance(config_data.get("vm"), dict) \
                or not isinstance(config_data.get("storage"), list):
            raise SavedStateError("incoming VM: expected a configuration with its table 'vm' and 'storage' files")
        host_table = tomllib.loads(config_schema_dump(Config(self.config.host)))["host"]
        document = {"host": host_table, "vm": [config_data["vm"]], "switch": list(config_data.get("switches", []))}
        try:
            cfg = from_dict(document, file="(incoming vm)").vms[0]
            if cfg.name in self.vms:
                self._refuse("vm[0].name", "the name of a VM this host does not have", repr(cfg.name))
            storage = [str(path) for path in config_data["storage"]]
            if len(storage) != len(cfg.disks):
                self._refuse("vm[0].disks", f"a disk for each of the {len(storage)} storage files", str(len(cfg.disks)))
            disks = [DiskPlan(cfg.name, f"vm[0].disks[{i}]", d, False, Path(path))
                     for i, (d, path) in enumerate(zip(cfg.disks, storage))]
            if cfg.ide is not None:
                if not isinstance(config_data.get("ide"), str):
                    self._refuse("ide", "the file its emulated IDE disk served", repr(config_data.get("ide")))
                disks.append(DiskPlan(cfg.name, "vm[0].ide", cfg.ide, False, Path(config_data["ide"]), ide=True))
            plan = self._plan_vm(len(self.vms), cfg, disks)
        except ConfigError as exc:
            raise SavedStateError(f"incoming vm: {exc}") from None
        vm = self._make_vm(plan)
        vm.on_event = self._vm_event
        self._vms_changed(add=vm)
        vm.arrive()
        return vm

    def restore_vm(self, path: Path | str) -> VirtualMachine:
        """Restore a saved-state file into its VM of this host (Off: its shell is built anew)."""
        from partitions.savedstate import SavedStateError, SavedStateReader
        with SavedStateReader(path, kind="saved-state") as reader:
            name = reader.meta.get("vm")
        if name not in self.vms:
            raise SavedStateError(f"{path}: saved from vm {name!r}, which this host does not have")
        vm = self.vms[name]
        vm.restore(path)
        return vm

    def add_vm(self, cfg: VmConfig) -> VirtualMachine:
        """A VM added to the running host (the management service's create), Off: planned as at
        construction (its devices, disks and switch ports; ConfigError names the key), its disks
        made, then built. A VM the host's other VMs send requests to gets no echo service for them
        (theirs were planned without it)."""
        if cfg.name in self.vms:
            raise ValueError(f"vm {cfg.name!r}: this host has a VM of that name already")
        alone = dataclasses.replace(self.config, vms=(cfg,), timeline=())
        disks = run_files.plan_disks(alone, self.workdir, self._file)
        plan = self._plan_vm(len(self.config.vms), cfg, disks[cfg.name])
        run_files.make_disks(disks, self.workdir, self._event)
        vm = self._make_vm(plan)
        vm.on_event = self._vm_event
        self.config = dataclasses.replace(self.config, vms=self.config.vms + (cfg,))
        self._vms_changed(add=vm)
        return vm

    def remove_vm(self, name: str) -> None:
        """Remove VM `name`, which must be Off (its files stay in the run directory)."""
        vm = self.vms[name]
        if vm.state is not VmState.OFF:
            from partitions.vm import InvalidTransition
            raise InvalidTransition(name, vm.state, "remove", (VmState.OFF,))
        self.config = dataclasses.replace(self.config, vms=tuple(v for v in self.config.vms if v.name != name))
        self._vms_changed(remove=vm)

    def _released(self, vm: VirtualMachine, reason: str) -> None:
        """A VM moved away (VirtualMachine.release): it is no longer one of this host's."""
        if self.vms.get(vm.name) is vm:
            self._event("vm.released", vm=vm.name, reason=reason)
            self._vms_changed(remove=vm)

    def _vms_changed(self, *, add: VirtualMachine | None = None, remove: VirtualMachine | None = None) -> None:
        """The host's VMs changed: the CPU samples start afresh (their layout is by VM)."""
        if add is not None:
            self.vms[add.name] = add
        if remove is not None:
            del self.vms[remove.name]
        self._cpu_vms = {name: i for i, name in enumerate(self.vms)}
        self._cpu_layout = layout = self._layout()
        self._cpu.clear()
        self._cpu.append((self.host.now, layout,
                          _binding.hv_partitions_run_time_array(self.host._h, layout[0], len(self.vms))))

    def _workload(self, cfg: VmConfig, w, key: str, adapters: list[str]):
        if isinstance(w, IdleWorkload):
            return wl.idle
        if isinstance(w, CpuBurnWorkload):
            return wl.cpu_burn(w.duty, w.period)
        if isinstance(w, DiskIoWorkload):
            if w.disk >= len(cfg.disks):
                self._refuse(f"{key}.disk", f"the index of one of the VM's {len(cfg.disks)} disks", str(w.disk))
            return wl.disk_io(w.pattern, w.block_size, w.queue_depth, w.read_fraction, disk=w.disk,
                              seed=self.seed ^ zlib.crc32(cfg.name.encode()))  # stable across processes
        if isinstance(w, MemoryCounterWorkload):
            return wl.memory_counter(w.pages, w.interval, w.page_work)
        if isinstance(w, NetRequestResponseWorkload):
            peer = next((v for v in self.config.vms if v.name == w.peer), None)
            facing = _facing(cfg, peer) if peer is not None else None
            if facing is None:
                self._refuse(f"{key}.peer", "another VM with an address on a switch and VLAN where this VM has one",
                             repr(w.peer))
            ours, theirs = facing
            return wl.net_request_response(peer.nics[theirs].ip.split("/")[0], w.port, w.size, w.interval,
                                           device=adapters[ours])
        if isinstance(w, PythonWorkload):
            return wl.python_workload(w.target, dict(w.args))
        raise ValueError(f"vm {cfg.name!r}: workload {w!r} has no runner")

    def _state_changed(self, vm: VirtualMachine, old: VmState, new: VmState) -> None:
        self._cpu_layout = None   # its partition or its earlier incarnations' CPU time may have changed
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
        failure = vm.device_failure
        if failure is not None:
            # An emulated device's own code raised during the guest's access: the device's fault,
            # named as such (the guest only stopped because its access could not complete).
            reason = f"{failure} (on VP {vp_index})"
            self._event("vm.crashed", vm=vm.name, vp=vp_index, device=failure.device, error=str(failure))
        else:
            reason = f"guest crashed: {error.detail} on VP {vp_index}"
            self._event("vm.crashed", vm=vm.name, vp=vp_index, error=error.detail)
        # Called between two batches of guest steps: nothing of this VM is running now, so it can
        # be torn down at once.
        vm.crash(reason)

    def _device_failed(self, vm: VirtualMachine, failure) -> None:
        """An emulated device of `vm` raised (VirtualMachine.on_device_failed), inside a guest's
        step: the access raises too, which normally crashes the VM at once (_guest_crashed); if
        the guest caught it, the VM is crashed when host.run returns."""
        self._devices_failed.append((vm, vm.partition.id))

    def _crash_devices_failed(self) -> None:
        failed, self._devices_failed = self._devices_failed, []
        for vm, pid in failed:
            if vm.partition is not None and vm.partition.id == pid and vm.device_failure is not None:
                failure = vm.device_failure
                self._event("vm.crashed", vm=vm.name, device=failure.device, error=str(failure))
                vm.crash(str(failure))

    def _crash_vmbus_failed(self) -> None:
        """Crash each VM the parent's VMBus service stopped serving (ParentVmbus.on_child_failed)."""
        failed, self._vmbus_failed = self._vmbus_failed, []
        for pid, why in failed:
            name = self._vm_name(pid)
            vm = self.vms.get(name) if name is not None else None
            if vm is not None and vm.partition is not None and vm.partition.id == pid:
                vm.crash(f"VMBus failed: {why}")

    # ---- running ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every VM that starts with the host (autostart). One that cannot start (a disk
        that cannot be opened) stays Off with the reason, logged as vm.start_failed; the host
        and the other VMs go on, as Hyper-V's automatic start does."""
        from partitions.vm import DiskUnavailable
        self.started = True
        for cfg in self.config.vms:
            if cfg.autostart:
                try:
                    self.vms[cfg.name].start()
                except DiskUnavailable as exc:
                    self._event("vm.start_failed", vm=cfg.name, error=str(exc))

    def run(self, until: int | str, *, step: int | str = "100ms",
            on_progress: Callable[[ManagedHost], None] | None = None) -> None:
        """Run to `until`, carrying out the timeline's actions at their times; `on_progress` is
        called every `step` of simulated time (for a live view)."""
        end = parse_duration(until, "until")
        step_ns = max(1, parse_duration(step, "step"))
        if not self.started and self.host.now == 0 and all(vm.state is VmState.OFF for vm in self.vms.values()):
            self.start()
        while self.host.now < end:
            nxt = min(end, (self.host.now // step_ns + 1) * step_ns)
            if self._next_action < len(self.timeline):
                nxt = min(nxt, max(self.host.now, self.timeline[self._next_action].time))
            self._freeze_gc()
            self.host.run(nxt)
            self._crash_vmbus_failed()
            self._crash_devices_failed()
            self._sample_cpu()
            self.events.hypercalls(self.host.introspect, self.host.root.id)
            while self._next_action < len(self.timeline) and self.timeline[self._next_action].time <= self.host.now:
                self._act(self.timeline[self._next_action])
                self._next_action += 1
            if on_progress is not None:
                on_progress(self)

    def _freeze_gc(self) -> None:
        """A host of many VMs holds about a thousand long-lived objects per VM (channels, rings,
        devices, timers), nearly all made during boot. CPython's full collections scan every one
        of them (at 1,024 idle VMs, ~0.4 s per pass, about one pass per 15 simulated seconds: a
        quarter of the steady state), while what an idle host makes and drops is acyclic or
        dies young. So before each step what exists is moved out of the collector's generations
        (gc.freeze, O(1)); reference counting still frees it, and close() gives the collector
        everything back (gc.unfreeze). Small hosts (tests, the default host) are left alone."""
        if len(self.vms) >= FREEZE_GC_VMS:
            gc.freeze()
            self._froze_gc = True

    def _saved_state_path(self, vm: VirtualMachine) -> Path:
        """Where a save of `vm` goes: <workdir>/<vm>.hvsav (the run directory is made if need be)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir / f"{vm.name}.hvsav"

    def saved_state_path(self, vm: VirtualMachine) -> Path:
        """Where a save of `vm` goes (as the timeline's save puts it)."""
        return self._saved_state_path(vm)

    def skip_due_action(self) -> None:
        """Step past the timeline action due now (one that failed, so that the next run does not
        try it again); nothing if none is due."""
        i = self._next_action
        if i < len(self.timeline) and self.timeline[i].time <= self.host.now:
            self._next_action = i + 1

    def _act(self, at) -> None:
        vm = self.vms[at.vm]
        action = {"start": vm.start, "stop": vm.stop, "turn-off": vm.turn_off, "pause": vm.pause,
                  "resume": vm.resume, "quick-reset": vm.quick_reset,
                  "save": lambda: vm.save(self._saved_state_path(vm)), "restore": vm.restore,
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

    def _layout(self) -> tuple:
        """(partition ids, earlier incarnations' CPU time) of every VM in sample order: id 0 names
        no partition (a VM that is Off), whose figure is then its earlier CPU time alone."""
        vms = self.vms.values()
        ids = _binding.partition_id_array([vm.partition.id if vm.partition is not None else 0 for vm in vms])
        return ids, [vm._run_time_before for vm in vms]

    def _sample_cpu(self) -> None:
        """Read every VM's partition's CPU time in one crossing into a fresh array (O(VMs) in C,
        O(1) in Python), and drop the samples older than the window needs."""
        now = self.host.now
        if self._cpu[-1][0] >= now:
            return
        if self._cpu_layout is None:
            self._cpu_layout = self._layout()
        ids, _ = layout = self._cpu_layout
        self._cpu.append((now, layout, _binding.hv_partitions_run_time_array(self.host._h, ids, len(self.vms))))
        # Keep the newest sample at least a window old, and the ones after it.
        while len(self._cpu) > 2 and self._cpu[1][0] <= now - CPU_WINDOW_NS:
            self._cpu.popleft()

    def _cpu_sample(self, vm: VirtualMachine, k: int) -> tuple[int, int]:
        """(time, CPU time) of `vm` in the k-th sample kept (-1: the newest): the figure of
        VirtualMachine.run_time_ns, earlier incarnations' CPU time plus the live partition's."""
        now, (_, before), times = self._cpu[k]
        i = self._cpu_vms[vm.name]
        t = times[i]
        return now, before[i] + (0 if t == _NO_PARTITION else t)

    def _cpu_usage(self, vm: VirtualMachine) -> float:
        (t0, cpu0), (t1, cpu1) = self._cpu_sample(vm, 0), self._cpu_sample(vm, -1)
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
        """The host is done: every VM that still has a partition is turned off (its devices close
        and let go of their disk files) and the switches' captures are closed. Take the summary
        first: afterwards every VM is Off."""
        for vm in self.vms.values():
            if vm.partition is not None and vm.state in _TURN_OFF_FROM:
                vm.turn_off()
        for sw in self.switches.values():
            sw.stop_capture()
        if self._froze_gc:
            self._froze_gc = False
            gc.unfreeze()


_NO_PARTITION = 0xFFFF_FFFF_FFFF_FFFF   # hv_partitions_run_time's figure for an id that names none
_TURN_OFF_FROM = (VmState.RUNNING, VmState.PAUSED, VmState.STOPPING, VmState.SAVED, VmState.MIGRATING)


def _uptime(ns: int) -> str:
    total_ms = ns // 1_000_000
    s, ms = divmod(total_ms, 1000)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"
