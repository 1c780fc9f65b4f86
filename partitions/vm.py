"""A virtual machine as the parent's management sees it: Hyper-V's states and the transitions
between them, carried out by a VM worker, the parent's VMBus service and the guest kernel.

States (Hyper-V's): Off, Starting, Running, Paused, Saving, Saved, Stopping, Resetting, and
Migrating (a VM being moved: frozen on its source, or arriving on its target).
    start       Off -> Starting -> Running        build the partition, offer devices, run the guest
    stop        Running -> Stopping -> Off        graceful: the shutdown integration service asks
                                                  the guest, which stops; then the partition goes
    turn_off    Running|Paused|Stopping|Saved -> Off   at once, the guest is not asked (a saved
                                                  state is discarded)
    pause       Running -> Paused                 its VPs stop being scheduled
    resume      Paused -> Running
    quick_reset Running|Paused -> Resetting -> Running   turn off and start again
    save        Running|Paused -> Saving -> Saved  devices quiesced, then memory, VP state and
                                                  device records to a file (partitions/savedstate.py);
                                                  the partition's memory is wiped, its shell and
                                                  devices wait, and nothing touches it
    restore     Saved -> Starting -> Running      the file is checked whole first, then memory
                                                  and VP state come back from it, then the
                                                  devices resume
    checkpoint  Running|Paused|Off                a production checkpoint of its disks (VSS when
                                                  the guest offers it), disks fork (partitions/checkpoints.py)
    apply_checkpoint   Off                        continue from a checkpoint
    freeze      Running|Paused -> Migrating       VPs suspended, devices quiesced: its memory is still
    thaw        Migrating -> Running|Paused       a move that failed: it runs on, unchanged
    release     Migrating -> Off                  moved: channels rescinded, partition torn down, it
                                                  leaves its host
    resume_from Migrating -> Running              (a VM made by ManagedHost.incoming) an image applied:
                                                  the guest resumes in this new shell
    restore     Off -> Migrating -> Running       a saved-state file restored into a new shell
                                                  (another process, another host)

A VM's state is data (`capture()`, the sections of a saved-state file): memory, VP registers, host
visibility, device records, its configuration and the guest record (the guest kernel's page
allocator and channels, each VSC's record, each workload's `ctx.state`). Restored into a new shell
the guest resumes as Linux does after hibernation: the VMBus reconnects, devices open afresh and
each workload goes on from its state (docs/guest-state.md). A restore into the shell that saved it
(the VM Saved in this process) stays transparent: the shell, the guest's coroutines and the devices
continue where they stood.
    delete_checkpoint  Running|Paused|Off         merge its disk
Anything else raises InvalidTransition, which names the VM, its state and the action.
"""
from __future__ import annotations

import enum
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from drivers.device import DeviceType
from drivers.registry import Registry
from hypervisor import Host
from partitions.checkpoints import CheckpointError, CheckpointTree
from partitions.kernel import kernel_main, secondary_main
from partitions.worker import VmSpec, VmWorker
from partitions.vmbus_guest import GuestVmbus
from partitions.vmbus_parent import ParentVmbus


#: What VirtualMachine.measure() counts (Measure-VM's figures, in bytes and operations).
MEASURED = ("disk_read_bytes", "disk_written_bytes", "disk_normalized_ios", "network_in_bytes",
            "network_out_bytes")


class VmState(enum.Enum):
    OFF = "Off"
    STARTING = "Starting"
    RUNNING = "Running"
    PAUSED = "Paused"
    SAVING = "Saving"
    SAVED = "Saved"
    STOPPING = "Stopping"
    RESETTING = "Resetting"
    MIGRATING = "Migrating"


class InvalidTransition(RuntimeError):
    """An action the VM's current state does not allow."""

    def __init__(self, vm: str, state: VmState, action: str, allowed: tuple[VmState, ...]):
        super().__init__(f"vm {vm!r} is {state.value}: cannot {action} "
                         f"(allowed from {', '.join(s.value for s in allowed)})")
        self.vm, self.state, self.action = vm, state, action


class DiskUnavailable(RuntimeError):
    """A VM's start refused because one of its disks cannot be opened as its device needs."""

    def __init__(self, message: str, *, vm: str):
        super().__init__(message)
        self.vm = vm


@dataclass
class DeviceSlot:
    """A device of the VM: its type, the VSP's and the VSC's config, and the name it goes by
    (`device_vsp(name)`, `device_vsc(name)`, the guest's `devices[name]`); by default the type's
    name. A VM's slots have names of their own: its second adapter is "network1", say. The one
    storage slot holds every disk of the VM (`host_config["disks"]`, LUN order)."""
    device: DeviceType
    host_config: dict = field(default_factory=dict)
    guest_config: dict = field(default_factory=dict)
    instance: str | None = None

    @property
    def name(self) -> str:
        return self.instance or self.device.name


#: Where the instance ids of a VM's device offers come from: stable per VM and slot name, so that
#: a device is the same device to the guest after a reset, as Hyper-V keeps them.
_INSTANCE_NAMESPACE = uuid.UUID("5d2b7c1e-8f43-4a0e-9b6d-2c1f0e7a9b31")


def instance_id(vm: str, slot: str) -> uuid.UUID:
    return uuid.uuid5(_INSTANCE_NAMESPACE, f"{vm}/{slot}")


class VirtualMachine:
    def __init__(self, host: Host, vmbus: ParentVmbus, registry: Registry, spec: VmSpec, *,
                 devices: list[DeviceSlot] = (), workload: Callable | None = None,
                 more_workloads: list[Callable] = (),
                 guest_services: list[Callable] = (),
                 on_state: Callable[[VirtualMachine, VmState, VmState], None] | None = None,
                 ide: str | None = None, legacy_nic: dict | None = None):
        self.host, self.vmbus, self.registry, self.spec = host, vmbus, registry, spec
        self.devices = list(devices)
        names = [slot.name for slot in self.devices]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"vm {spec.name!r}: device names {twice} are used more than once; give the slots "
                             "names of their own (DeviceSlot(..., instance=...))")
        self.workload = workload
        self.more_workloads = list(more_workloads)  # one per further VP: VP 1, VP 2, ...
        if len(self.more_workloads) >= spec.processors:
            raise ValueError(f"vm {spec.name!r}: {1 + len(self.more_workloads)} workloads need as many "
                             f"processors, it has {spec.processors}")
        self.guest_services = list(guest_services)  # on_poll hooks of the guest's stack (e.g. an echo service)
        self.on_state = on_state
        self.state = VmState.OFF
        self.worker: VmWorker | None = None
        self.stack: GuestVmbus | None = None
        self.started_at: int | None = None
        self._relids: dict[str, int] = {}
        self._run_time_before = 0   # CPU time of earlier incarnations (before a reset)
        storage = next((d for d in self.devices if d.device.name == "storage"
                        and ("disks" in d.host_config or "path" in d.host_config)), None)
        self._storage_slot = storage
        self._checkpoints: CheckpointTree | None = None
        if storage is not None:
            from drivers.storage.vhd import VhdInUseError
            try:
                self._checkpoints = CheckpointTree(self.name, self._storage_files())
            except VhdInUseError:
                pass   # a VM arriving from a host that still serves its disks: made on first use
        self.checkpoint_log: list[tuple[int, str, str]] = []  # (time, checkpoint, what happened)
        self._saved_path: str | None = None
        self.off_reason: str | None = None     # why it went Off, if not asked to (a crash), until it starts
        self.console: list[str] = []            # lines its native guest wrote to its serial console
        #: on_console(vm, line): each line as its native guest writes it (hvsim run --console)
        self.on_console: Callable[[VirtualMachine, str], None] | None = None
        #: on_event(vm, name, fields): files it made or changed (checkpoints, saved state), for the event log
        self.on_event: Callable[[VirtualMachine, str, dict], None] | None = None
        self._measured_before: Counter[str] = Counter()   # Measure-VM figures of earlier incarnations
        #: The VmConfig the VM was built from (ManagedHost sets it): what capture() carries as its config.
        self.config = None
        #: Each workload's ctx.state (VP 0's first, then one per further VP): what the guest keeps.
        self.workload_states: list[dict] = []
        self._frozen_from: VmState | None = None   # what freeze() found (thaw goes back to it)
        self._carried: dict[str, dict] = {}       # device records of an image, until the device opens again
        self._native_cpu = None                   # a native guest's CPU (NativeCpu), once its VP ran
        self._native_state: dict | None = None    # the native CPU record it (re)started from, None: its ELF
        #: on_release(vm, reason): the VM left this host (moved); its host drops it.
        self.on_release: Callable[[VirtualMachine, str], None] | None = None
        # Emulated devices on its intercept bus (partitions/native_guest): the file its IDE disk
        # serves, its legacy NIC's {"switch": VirtualSwitch, "mac": bytes}; the device objects of
        # the running incarnation by name ("uart", "ide", "legacy-nic"), and the records an image
        # brought for them (loaded as they are made at the resume).
        self.ide_path = str(ide) if ide is not None else None
        self.legacy_nic = legacy_nic
        self.emulated: dict[str, Any] = {}
        self._emulated_records: dict[str, Any] | None = None
        #: The first failure of one of its emulated devices (DeviceFailed), until it starts again.
        self.device_failure = None
        #: on_device_failed(vm, failure): one of its emulated devices raised (a device model bug);
        #: the VM's host crashes it (ManagedHost), outside the guest's step.
        self.on_device_failed: Callable[[VirtualMachine, Any], None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def checkpoints(self) -> CheckpointTree | None:
        """The checkpoint tree of the VM's disks (None without a disk). A VM arriving on a host (a
        move) whose source still serves its disks gets it when it is first looked at."""
        if self._checkpoints is None and self._storage_slot is not None:
            self._checkpoints = CheckpointTree(self.name, self._storage_files())
        return self._checkpoints

    @property
    def partition(self):
        return self.worker.partition if self.worker else None

    # ---- transitions ----------------------------------------------------------------------------
    def _require(self, action: str, *allowed: VmState) -> None:
        if self.state not in allowed:
            raise InvalidTransition(self.name, self.state, action, allowed)

    def _set(self, state: VmState) -> None:
        old, self.state = self.state, state
        # Uptime counts while Running and Paused; it is zero while Saved and starts again at the
        # restore (a new VM worker resumes it), as at a start.
        if state is VmState.SAVED:
            self.started_at = None
            self._emit("savedstate.written", path=self._saved_path)
        elif state is VmState.RUNNING and self.started_at is None:
            self.started_at = self.host.now
        if self.on_state is not None and old is not state:
            self.on_state(self, old, state)

    def start(self) -> None:
        self._require("start", VmState.OFF)
        self._check_disks()
        self.off_reason = None
        self._set(VmState.STARTING)
        self._build()
        self._set(VmState.RUNNING)

    def _check_disks(self) -> None:
        """Refuse to start (the VM stays Off, with the reason) unless every disk of every storage
        device opens as its VSP will open it: a VM never runs with a LUN silently missing."""
        for slot in self.devices:
            if slot.device.name != "storage":
                continue
            problems = slot.device.vsp.disk_problems(slot.host_config)
            if problems:
                why = "; ".join(f"{slot.name}.disks[{lun}] {disk}: {what}" for lun, disk, what in problems)
                self.off_reason = f"a disk cannot be opened: {why}"
                raise DiskUnavailable(f"vm {self.name!r} cannot start: {why}", vm=self.name)
        if self.ide_path is not None:
            from drivers.storage.vhd import VhdError, VirtualDisk
            try:
                VirtualDisk.open(self.ide_path).close()
            except (VhdError, OSError) as exc:
                why = f"ide {self.ide_path}: {exc}"
                self.off_reason = f"a disk cannot be opened: {why}"
                raise DiskUnavailable(f"vm {self.name!r} cannot start: {why}", vm=self.name) from None

    def _build(self) -> None:
        self._build_shell()
        self.workload_states = [{} for _ in range(1 + len(self.more_workloads))]
        self._carried = {}
        self._start_guest(resume=False)

    def _build_shell(self) -> None:
        """The partition, its VMBus and device offers and the guest's stack, no guest code yet."""
        self.worker = VmWorker(self.host, self.spec)
        part = self.worker.build()
        self.vmbus.attach(part)
        self._relids = {}
        names = {}
        for slot in self.devices:
            config = dict(slot.host_config)
            offer_id = instance_id(self.name, slot.name)
            self._relids[slot.name] = self.vmbus.offer(part, slot.device, config, instance_id=offer_id)
            names[offer_id] = slot.name
        guest_configs = {slot.name: self._guest_config(slot) for slot in self.devices}
        services = list(self.guest_services)
        self.stack = GuestVmbus(part, self.registry, configs=guest_configs, names=names,
                                on_poll=(lambda stack: [svc(stack) for svc in services]) if services else None)
        adapters = [slot for slot in self.devices if slot.device.name == "network"]
        if adapters:
            # One IP stack in the guest, an interface per adapter (drivers/network/netstack.py).
            from drivers.network.netstack import NetStack
            shared = NetStack(clock=self.stack.context)
            for slot in adapters:
                self.stack.configs[slot.name].setdefault("netstack", shared)

    def _start_guest(self, *, resume: bool) -> None:
        """The emulated devices, the guest kernel on VP 0 and the further workloads on their VPs,
        then the VPs run."""
        part, stack, workload, states = self.partition, self.stack, self.workload, self.workload_states
        self._attach_emulated(resume=resume)
        kernel = getattr(self.config, "kernel", None)
        if kernel is not None:
            self._start_native(kernel, resume=resume)
        else:
            part.vp(0).run(lambda ctx: kernel_main(ctx, stack, workload, states[0], resume=resume))
        for i, extra in enumerate(self.more_workloads, start=1):
            part.vp(i).run(lambda ctx, extra=extra, i=i: secondary_main(ctx, stack, extra, states[i]))
        self.host.root.resume_partition(part)
        self.started_at = self.host.now

    def _start_native(self, kernel, *, resume: bool) -> None:
        """A native guest on VP 0: the ELF kernel loaded into the VM's memory and run by the
        emulator (partitions/native_guest); its serial console's lines go to the event log."""
        from partitions.native_guest.cpu import native_guest
        from partitions.native_guest.loader import ElfLoadError, load_elf
        state = self._native_state if resume else None
        self._native_cpu = None
        if not resume:
            self._native_state = None
        try:
            image = load_elf(kernel, self.spec_memory_bytes())
        except (ElfLoadError, OSError):
            if state is None:
                raise
            image = None   # resuming: memory holds the kernel; the ELF only names functions in faults

        def started(cpu) -> None:
            self._native_cpu = cpu
        self.partition.vp(0).run(native_guest(image, uart=self.emulated["uart"], state=state, on_start=started))

    def _console_line(self, text: str) -> None:
        self.console.append(text)
        if self.on_console is not None:
            self.on_console(self, text)
        if self.on_event is not None:
            self.on_event(self, "guest.console", {"line": text})

    # ---- emulated devices ----------------------------------------------------------------------------
    def _attach_emulated(self, *, resume: bool) -> None:
        """Make the VM's emulated devices and put them on its intercept bus: the 16550 console of
        a native guest, the IDE disk (`ide`), the legacy NIC (`legacy_nic`). Resuming from an
        image, each goes on from the record the image brought (checked already by _check_image).
        A VM without any gets no bus (a Python guest's intercept call then says it has none)."""
        self.emulated, self.device_failure = {}, None
        native = getattr(self.config, "kernel", None) is not None
        if not (native or self.ide_path is not None or self.legacy_nic is not None):
            return      # the common VM: nothing emulated, nothing imported (unicorn is not light)
        from partitions.native_guest.devices import bus_of
        from partitions.savedstate import SavedStateError
        if native:
            from partitions.native_guest.cpu import Uart16550
            self.emulated["uart"] = Uart16550(on_line=self._console_line)
        if self.ide_path is not None:
            from drivers.storage.vhd import VirtualDisk
            from partitions.native_guest.ide import IdeDisk
            # No write barriers: the VHD's ordering through a power cut buys nothing for a run disk
            # the next run makes afresh (as the storage slot's disks).
            self.emulated["ide"] = IdeDisk(VirtualDisk.open(self.ide_path, write_barriers=False))
        if self.legacy_nic is not None:
            from partitions.native_guest.tulip import Tulip21140
            self.emulated["legacy-nic"] = Tulip21140(self.partition, self.legacy_nic["switch"],
                                                     mac=self.legacy_nic["mac"], name="legacy-nic")
        bus = bus_of(self.partition)
        bus.on_failure = self._device_failed
        nic = self.emulated.get("legacy-nic")
        if nic is not None and nic.port is not None:
            nic.port.attach(self._guarded_receive(bus, nic))
        for device in self.emulated.values():
            bus.attach(device)
        records, self._emulated_records = self._emulated_records, None
        if resume and records is not None:
            for name, device in self.emulated.items():
                try:
                    device.load_state(records[name])
                except Exception as exc:  # noqa: BLE001 - checked already: what is left is the device's own failure
                    raise SavedStateError(f"vm {self.name!r}: emulated device {name!r} refused its record "
                                          f"({type(exc).__name__}: {exc})") from None

    def _guarded_receive(self, bus, nic):
        """The legacy NIC's receive path as its switch port calls it, guarded: frames arrive
        outside any access of this VM's guest (in the sender's step), so a bug there must not
        raise into the sender. It fails the device as a failed access does (the bus keeps it,
        the VM's host crashes the VM) and the switch counts the frame as not taken."""
        from partitions.native_guest.devices import DeviceFailed
        receive = nic._from_switch   # the port's deliver, which Tulip21140 gave add_port

        def guarded(frame) -> bool:
            if bus.failed is not None:
                return False
            try:
                return receive(frame)
            except Exception as exc:  # noqa: BLE001 - the device model's bug, named as its failure
                bus.failed = DeviceFailed(nic.name, f"{type(exc).__name__}: {exc}")
                self._device_failed(bus.failed)
                return False
        return guarded

    def _emulated_hook(self, name: str, hook) -> None:
        """A lifecycle hook of an emulated device (quiesce, resume), guarded: one that raises is
        that device's failure (its VM is crashed, as for a failed access), not the caller's."""
        from partitions.native_guest.devices import DeviceFailed, bus_of
        try:
            hook()
        except Exception as exc:  # noqa: BLE001 - a device model's bug, named as its failure
            bus = bus_of(self.partition)
            failure = DeviceFailed(name, f"{type(exc).__name__}: {exc}")
            if bus.failed is None:
                bus.failed = failure
            self._device_failed(failure)

    def _device_failed(self, failure) -> None:
        # Told by the bus from inside the failing access (a guest's step): the VM's host crashes
        # it afterwards; the access itself raises, so the guest's VP stops at once.
        self.device_failure = failure
        if self.on_device_failed is not None:
            self.on_device_failed(self, failure)

    def _close_emulated(self) -> list[str]:
        """Close the emulated devices (their files and switch ports); what failed, as text (a
        close that raises must not keep the others open)."""
        problems = []
        for name, device in self.emulated.items():
            close = getattr(device, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - the device's own failure, reported by name
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
        self.emulated = {}
        return problems

    def _check_emulated(self, record, where: str) -> None:
        """An image's "emulated" section: None (an image from before emulated devices were
        saved: they start afresh), or {"format": 1, "devices": {name: record}} with a record for
        exactly the emulated devices this VM has, each of the shape its device saves."""
        from partitions.savedstate import SavedStateError
        if record is None:
            return
        names = sorted(({"uart"} if getattr(self.config, "kernel", None) is not None else set())
                       | ({"ide"} if self.ide_path is not None else set())
                       | ({"legacy-nic"} if self.legacy_nic is not None else set()))
        if not isinstance(record, dict) or record.get("format") != 1 or not isinstance(record.get("devices"), dict):
            raise SavedStateError(f"{where}: section 'emulated': expected a map with format 1 and its 'devices'")
        if sorted(record["devices"]) != names:
            raise SavedStateError(f"{where}: section 'emulated': devices {sorted(record['devices'])}, vm "
                                  f"{self.name!r} has {names}")
        for name, state in record["devices"].items():
            if name == "uart":
                from partitions.native_guest.cpu import Uart16550
                problem = Uart16550.check_state(state)
            elif name == "ide":
                from partitions.native_guest import ide
                problem = ide.check_state(state)
            else:
                from partitions.native_guest import tulip
                problem = tulip.check_state(state, self.legacy_nic["mac"])
            if problem is not None:
                raise SavedStateError(f"{where}: emulated.devices.{name}: {problem}")

    def spec_memory_bytes(self) -> int:
        from hypervisor.quantities import parse_size
        memory = self.spec.memory
        return memory if isinstance(memory, int) else parse_size(memory)

    def _guest_config(self, slot: DeviceSlot) -> dict:
        config = dict(slot.guest_config)
        if slot.device.name == "shutdown":
            config.setdefault("on_shutdown", self._guest_shut_down)
        return config

    def _guest_shut_down(self, restart: bool = False) -> None:
        # The guest kernel finished stopping: the worker turns the partition off, from the
        # parent's side and outside the guest's own step.
        self.vmbus.context.call_later(0, lambda: self._finish_stop(restart))

    def _finish_stop(self, restart: bool) -> None:
        if self.state is VmState.STOPPING:
            self._teardown()
            self._set(VmState.OFF)
            if restart:
                self.start()

    def _teardown(self) -> None:
        part = self.partition
        if part is not None:
            self._run_time_before += self.host.introspect.run_time_ns(part)
            self._measured_before.update(self._device_figures())
            self.host._guests.detach(part.id)
            self.vmbus.detach(part)
            for problem in self._close_emulated():
                self._emit("emulated.close_failed", error=problem)
            self.worker.destroy()
        self.worker = self.stack = None
        self.started_at = None

    def turn_off(self) -> None:
        """Off at once; the guest is not asked. A Saved VM's saved state is discarded (its next
        start boots afresh), as Hyper-V deletes it."""
        self._require("turn off", VmState.RUNNING, VmState.PAUSED, VmState.STOPPING, VmState.SAVED,
                      VmState.MIGRATING)
        self._frozen_from = None
        self._teardown()
        self._saved_path = None
        self._set(VmState.OFF)

    def stop(self, *, force: bool = False) -> None:
        """Ask the guest to shut down (the shutdown integration service); it goes Off when the
        guest has stopped. Without the service this is an error: use turn_off."""
        self._require("stop", VmState.RUNNING)
        vsp = self.device_vsp("shutdown")
        if vsp is None:
            raise InvalidTransition(self.name, self.state, "stop without the shutdown integration service",
                                    (VmState.RUNNING,))
        self._set(VmState.STOPPING)
        vsp.request_shutdown(force=force)

    def pause(self) -> None:
        self._require("pause", VmState.RUNNING)
        self.host.root.suspend_partition(self.partition)
        self._set(VmState.PAUSED)

    def resume(self) -> None:
        self._require("resume", VmState.PAUSED)
        self.host.root.resume_partition(self.partition)
        self._set(VmState.RUNNING)

    def quick_reset(self) -> None:
        self._require("quick reset", VmState.RUNNING, VmState.PAUSED)
        self._set(VmState.RESETTING)
        self._teardown()
        self._build()
        self._set(VmState.RUNNING)

    # ---- saved state ----------------------------------------------------------------------------
    # Registers a save carries: every settable one hvsim implements (read-only ones and the EOM
    # trigger are not state).
    _NOT_SAVED = ("VP_INDEX", "VP_RUNTIME", "TIME_REF_COUNT", "SVERSION", "EOM")

    def _saved_registers(self) -> list[int]:
        from hypervisor import Register
        # GUEST_OS_ID before HYPERCALL: the core refuses to enable the hypercall page of a VP
        # without a guest OS id, and a restore sets (and checks) them in this order.
        return sorted((r for r in Register if r.name not in self._NOT_SAVED),
                      key=lambda r: r is not Register.GUEST_OS_ID)

    def memory_digest(self) -> str:
        """A digest of the partition's memory contents (GPA order): what save/restore preserves."""
        pages, contents = self._memory_contents()
        zero = bytes(PAGE)
        return _memory_digest((gpa, contents.get(gpa, zero)) for gpa in pages)

    def _memory_contents(self) -> tuple[list[int], dict[int, bytes]]:
        """The VM's RAM pages (GPA order) and the contents of those that are not zero (GPA order),
        read in batches through the core (nonzero_pages, read_pages): a page the core never wrote
        is neither read nor listed, so a big VM that is mostly zero costs little."""
        part = self.partition
        pages = self.memory_pages()
        if not pages:
            return pages, {}
        root, zero, contents = self.host.root, bytes(PAGE), {}
        candidates = root.nonzero_pages(part, pages[0], pages[-1] - pages[0] + 1)
        for i in range(0, len(candidates), 1024):
            batch = candidates[i:i + 1024]
            data = root.read_pages(part, batch)
            for j, gpa in enumerate(batch):
                page = data[j * PAGE:(j + 1) * PAGE]
                if page != zero:
                    contents[gpa] = page
        return pages, contents

    def save(self, path) -> None:
        """Save the VM to `path`, in Hyper-V's order: its VPs stop, its devices are quiesced (each
        VSP stops producing into the guest's memory; the VSPs' and the guest's device timers stand
        still), then VP state, device records and memory go to the file. While Saved its memory
        lives only in the file (the partition's pages are wiped) and nothing reaches the
        partition: the parent holds what would, and its SynIC pages and synthetic timers are off.
        N.B. hvsim keeps the partition's shell (VPs, ports, device objects) in the parent
        meanwhile, so a restore continues in this process; device records are written for the
        devices that can save, the others are named in the file as not saved. A save that fails
        leaves the VM as it was, its devices resumed."""
        from partitions.savedstate import SavedStateWriter
        self._require("save", VmState.RUNNING, VmState.PAUSED)
        was = self.state
        part = self.partition
        if was is VmState.RUNNING:
            self.host.root.suspend_partition(part)
        self._set(VmState.SAVING)
        self._quiesce_devices()
        try:
            image = self._capture()
            pages, contents = self._memory_contents()
            zero = bytes(PAGE)
            meta = {"vm": self.name, "memory_bytes": self.worker.memory_bytes, "processors": self.spec.processors,
                    "time_ns": self.host.now, "pages": len(pages),
                    "memory_digest": _memory_digest((gpa, contents.get(gpa, zero)) for gpa in pages)}
            with SavedStateWriter(path, "saved-state", meta) as w:
                for name in IMAGE_SECTIONS:
                    w.section(name, image[name])
                mem = w.stream("memory")
                for gpa, data in contents.items():   # the pages that are not zero, in GPA order
                    mem.write_record([gpa, data])
                mem.close()
        except Exception:
            self._resume_devices()
            self._set(was)
            if was is VmState.RUNNING:
                self.host.root.resume_partition(part)
            raise
        for gpa in contents:  # the state now lives in the file (the other pages are zero already)
            part.write(gpa * PAGE, bytes(PAGE))
        self._synic_off(part)
        self._saved_path = str(path)
        self._set(VmState.SAVED)

    def restore(self, path=None) -> None:
        """Restore from a saved-state file (by default the one saved last). The whole file is
        checked before anything changes; a corrupt or foreign file leaves the VM Saved.
        A VM that is Off (no shell: a fresh process, another host) restores `path` into a new
        shell (_restore_new_shell): the guest resumes as from hibernation."""
        from hypervisor import HvError
        from partitions.savedstate import SavedStateError, SavedStateReader
        if self.state is VmState.OFF and path is not None:
            self._restore_new_shell(path)
            return
        self._require("restore", VmState.SAVED)
        path = path or self._saved_path
        reader = SavedStateReader(path, kind="saved-state")  # validates everything, or raises
        meta = reader.meta
        part = self.partition
        if meta.get("vm") != self.name or meta.get("memory_bytes") != self.worker.memory_bytes:
            raise SavedStateError(f"{path}: saved from vm {meta.get('vm')!r} with {meta.get('memory_bytes')} "
                                  f"bytes of memory, not vm {self.name!r} with {self.worker.memory_bytes}")
        vps = reader.load("vps")
        mapped = set(self.host.introspect.reach(part))
        if not _is_int(meta.get("time_ns")) or meta["time_ns"] < 0 or meta.get("pages") != len(mapped):
            raise SavedStateError(f"{path}: header says time {meta.get('time_ns')!r} and {meta.get('pages')!r} pages; "
                                  f"expected a time in ns and vm {self.name!r}'s {len(mapped)} pages")
        memory = self._restore_memory(path, reader, mapped, meta.get("memory_digest"))
        self._check_device_records(path, reader.load("devices"))
        self._check_host_visibility(path, reader)
        registers = self._restore_registers(path, vps)
        # Decode, then apply: every VP's registers are checked by the core as SetVpRegisters would
        # check them, so nothing below can fail on the file's account and a bad file leaves the
        # VM Saved with its memory still in that file.
        for index, values in registers.items():
            try:
                self.host.root.check_vp_registers(part, index, values)
            except HvError as e:
                raise SavedStateError(f"{path}: vm {self.name!r} VP {index}: the saved registers are "
                                      f"refused ({e})") from None
        self._set(VmState.STARTING)
        for gpa, data in memory.items():
            part.write(gpa * 4096, data)
        from hypervisor import Register
        for index, values in registers.items():  # SynIC pages and synthetic timers on again, as they were
            self.host.root.set_vp_registers(part, index, values)
            # An EOM delivers what the hypervisor queued for the VP meanwhile (its slots were off).
            self.host.root.set_vp_registers(part, index, {Register.EOM: 0})
        self._resume_devices()
        self.host.root.resume_partition(part)
        self._set(VmState.RUNNING)

    def _restore_memory(self, path, reader, mapped: set[int], digest) -> dict[int, bytes]:
        """The "memory" stream as {GPA page: its 4 KiB}: every record a [page, bytes] pair for a
        page of the VM, each page once, and the whole image (unlisted pages zero) matching the
        digest the header recorded; else a SavedStateError."""
        from partitions.savedstate import SavedStateError
        memory: dict[int, bytes] = {}
        for n, record in enumerate(reader.records("memory")):
            ok = (isinstance(record, (list, tuple)) and len(record) == 2 and _is_int(record[0])
                  and isinstance(record[1], bytes) and len(record[1]) == 4096)
            if not ok or record[0] not in mapped or record[0] in memory:
                raise SavedStateError(f"{path}: memory record {n}: expected a [page, 4 KiB] pair for a page of "
                                      f"vm {self.name!r}, each page once")
            memory[record[0]] = record[1]
        zero = bytes(4096)
        if _memory_digest((gpa, memory.get(gpa, zero)) for gpa in sorted(mapped)) != digest:
            raise SavedStateError(f"{path}: the memory records do not match the header's memory digest")
        return memory

    def _check_host_visibility(self, path, reader) -> None:
        """The "host_visibility" section: the pages the guest had made host-visible when it was
        saved, as [GPA page, visibility] pairs. The marks are partition state the core keeps with
        the partition, which outlives its Saved state in hvsim (as its grants do), so a restore
        finds them in place: the file must agree with them. (A file written before the section
        existed has none.)"""
        from partitions.savedstate import SavedStateError
        if "host_visibility" not in reader:
            return
        saved = reader.load("host_visibility")
        if not isinstance(saved, list) or not all(
                isinstance(e, list) and len(e) == 2 and all(map(_is_int, e)) and e[1] in (1, 3) for e in saved):
            raise SavedStateError(f"{path}: section 'host_visibility' is not a list of [GPA page, 1 or 3] pairs")
        now = {gpa: int(vis) for gpa, vis in self.host.grants.host_visible(self.partition).items()}
        if dict(map(tuple, saved)) != now or len(saved) != len(now):
            raise SavedStateError(f"{path}: vm {self.name!r} was saved with {len(saved)} host-visible pages "
                                  f"that do not match the {len(now)} its partition shows now")

    def _check_device_records(self, path, devices) -> None:
        """The "devices" section: for devices of this VM only, each {"saved": record} or
        {"not_saved": why}."""
        from partitions.savedstate import SavedStateError
        names = {slot.name for slot in self.devices}
        if not isinstance(devices, dict):
            raise SavedStateError(f"{path}: section 'devices' is a {type(devices).__name__}, expected a map")
        for name, record in devices.items():
            if name not in names or not isinstance(record, dict) or len(record) != 1 or not (
                    "saved" in record or isinstance(record.get("not_saved"), str)):
                raise SavedStateError(f"{path}: section 'devices' entry {name!r}: expected one of vm {self.name!r}'s "
                                      "devices with {'saved': record} or {'not_saved': reason}")

    def _restore_registers(self, path, vps) -> dict[int, dict[int, int]]:
        """The "vps" section of a saved state as {VP index: {register: value}}, one entry for each
        of the VM's VPs, or a SavedStateError saying what is wrong with it."""
        from partitions.savedstate import SavedStateError

        is_int = _is_int
        out: dict[int, dict[int, int]] = {}
        if not isinstance(vps, list):
            raise SavedStateError(f"{path}: section 'vps' is a {type(vps).__name__}, expected a list")
        for n, v in enumerate(vps):
            where = f"{path}: section 'vps' entry {n}"
            if not isinstance(v, dict) or not is_int(v.get("index")) or not isinstance(v.get("registers"), list):
                raise SavedStateError(f"{where}: expected a map with an integer 'index' and a list 'registers'")
            values: dict[int, int] = {}
            for pair in v["registers"]:
                if (not isinstance(pair, list) or len(pair) != 2 or not all(map(is_int, pair))
                        or not 0 <= pair[0] < 1 << 32 or not 0 <= pair[1] < 1 << 64 or pair[0] in values):
                    raise SavedStateError(f"{where}: register {pair!r}: expected a [name, value] pair of a "
                                          "32-bit name, given once, and a 64-bit value")
                values[pair[0]] = pair[1]
            if v["index"] in out:
                raise SavedStateError(f"{where}: VP {v['index']} appears twice")
            out[v["index"]] = values
        if sorted(out) != list(range(self.spec.processors)):
            raise SavedStateError(f"{path}: VPs {sorted(out)} do not match vm {self.name!r}'s "
                                  f"{list(range(self.spec.processors))}")
        return out

    def _quiesce_devices(self) -> None:
        # The VSPs first: a quiesce hook may still complete work into its ring. A hook that
        # fails breaks its own channel (the parent's service logs it); the save goes on.
        self.vmbus.quiesce(self.partition)
        if self.stack is not None:
            self.stack.quiesce()
        for name, device in self.emulated.items():   # the legacy NIC holds the frames that arrive meanwhile
            if hasattr(device, "quiesce"):
                self._emulated_hook(name, device.quiesce)

    def _resume_devices(self) -> None:
        for name, device in self.emulated.items():
            if hasattr(device, "resume"):
                self._emulated_hook(name, device.resume)
        if self.stack is not None:
            self.stack.resume()
        self.vmbus.resume(self.partition)

    def _synic_off(self, part) -> None:
        """While Saved, the hypervisor has nowhere in the partition to put a message or an event
        flag (its pages would land in wiped memory and be lost on restore): the SynIC pages and
        synthetic timers of every VP go off; the registers in the file turn them back on."""
        from hypervisor import Register
        from hypervisor.synic import STIMER_COUNT
        timers_off = {Register[f"STIMER{n}_CONFIG"]: 0 for n in range(STIMER_COUNT)}
        for vp in part.vps:
            simp, siefp = self.host.root.get_vp_registers(part, vp.index, [Register.SIMP, Register.SIEFP])
            page_enable = 1  # bit 0 of SIMP and SIEFP (TLFS)
            self.host.root.set_vp_registers(part, vp.index, {
                Register.SIMP: simp & ~page_enable, Register.SIEFP: siefp & ~page_enable, **timers_off})

    # ---- the VM's state as data: freeze, capture, arrive, resume, release ------------------------
    def freeze(self) -> None:
        """Stop the VM for a capture (a move): its VPs are suspended and its devices quiesced (the
        VSPs stop producing into its memory, device timers stand still), so nothing changes its
        memory any more. Running|Paused -> Migrating; thaw() undoes it."""
        self._require("freeze", VmState.RUNNING, VmState.PAUSED)
        was = self.state
        if was is VmState.RUNNING:
            self.host.root.suspend_partition(self.partition)
        self._frozen_from = was
        self._set(VmState.MIGRATING)
        self._quiesce_devices()
        # The emulated IDE disk lets go of its file (flushed): the target of a move opens it as
        # it resumes, while this shell still waits for its release. thaw() takes it back.
        ide = self.emulated.get("ide")
        if ide is not None:
            ide.disk.close()

    def thaw(self) -> None:
        """A move that failed: the frozen VM runs on (or stays Paused) as it was."""
        self._require("thaw", VmState.MIGRATING)
        if self._frozen_from is None:
            raise InvalidTransition(self.name, self.state, "thaw a VM that arrived (turn it off, or resume_from)",
                                    (VmState.MIGRATING,))
        was, self._frozen_from = self._frozen_from, None
        ide = self.emulated.get("ide")
        if ide is not None and ide.disk.closed:
            from drivers.storage.vhd import VirtualDisk
            ide.disk = VirtualDisk.open(self.ide_path, write_barriers=False)
        self._resume_devices()
        if was is VmState.RUNNING:
            self.host.root.resume_partition(self.partition)
        self._set(was)

    def capture(self) -> dict:
        """The VM's whole state but its memory contents, as plain data (see IMAGE_SECTIONS and
        docs/guest-state.md): what a saved-state file holds beside its memory, and what a move
        sends. The VM must be frozen."""
        self._require("capture", VmState.MIGRATING)
        if self._frozen_from is None:
            raise InvalidTransition(self.name, self.state, "capture a VM that is not frozen", (VmState.MIGRATING,))
        return self._capture()

    def _capture(self) -> dict:
        part = self.partition
        names = self._saved_registers()
        vps = [{"index": vp.index, "registers": [[int(n), v] for n, v in zip(
                    names, self.host.root.get_vp_registers(part, vp.index, names))]}
               for vp in part.vps]
        devices = {}
        for slot in self.devices:
            vsp = self.device_vsp(slot.name)
            if vsp is None and slot.name in self._carried:   # restored, not open again yet: as it came
                devices[slot.name] = self._carried[slot.name]
                continue
            try:
                devices[slot.name] = {"saved": vsp.save() if vsp is not None else None}
            except Exception as exc:  # SaveUnsupported and friends: recorded, not fatal here
                devices[slot.name] = {"not_saved": f"{type(exc).__name__}: {exc}"}
        shown = [[gpa, int(vis)] for gpa, vis in sorted(self.host.grants.host_visible(part).items())]
        guest = {"format": 1, "kernel": self.stack.save() if self.stack is not None else None,
                 "workloads": self.workload_states}
        if getattr(self.config, "kernel", None) is not None:
            # A native guest's CPU (docs/native-guests.md); before its VP first ran, the record it
            # was started from (None: from its ELF).
            guest["native"] = self._native_cpu.save_state() if self._native_cpu is not None else self._native_state
        emulated = {}
        for name, device in self.emulated.items():
            try:
                emulated[name] = device.save_state()
            except Exception as exc:  # noqa: BLE001 - the device's failure: the save is refused, the VM runs on
                from partitions.savedstate import SavedStateError
                raise SavedStateError(f"vm {self.name!r}: emulated device {name!r} cannot save its state "
                                      f"({type(exc).__name__}: {exc})") from None
        image = {"format": IMAGE_FORMAT, "vm": self.name, "config": self.config_data(), "time_ns": self.host.now,
                 "memory_bytes": self.worker.memory_bytes, "processors": self.spec.processors, "vps": vps,
                 "host_visibility": shown, "guest": guest, "devices": devices, "measured": self.measure(),
                 "emulated": {"format": 1, "devices": emulated}}
        return _plain(image, f"vm {self.name!r}")

    def config_data(self) -> dict | None:
        """The VM's configuration as plain data, enough for another host to build it
        (ManagedHost.incoming): its [[vm]] table as a host file would have it, the switches its
        adapters are on, and the disk files its storage serves now (its run disks, by LUN:
        whoever builds it serves those, as a move of the VM moves its storage). None for a VM
        not built from a configuration."""
        if self.config is None:
            return None
        import tomllib
        from partitions.config_schema import Config, SwitchConfig, dump
        kinds = {slot.host_config["switch"].name: slot.host_config["switch"].kind.value for slot in self.devices
                 if slot.device.name == "network" and hasattr(slot.host_config.get("switch"), "kind")}
        if self.legacy_nic is not None and hasattr(self.legacy_nic["switch"], "kind"):
            kinds.setdefault(self.legacy_nic["switch"].name, self.legacy_nic["switch"].kind.value)
        legacy = [self.config.legacy_nic.switch] if getattr(self.config, "legacy_nic", None) is not None else []
        switches = tuple(SwitchConfig(name, kinds.get(name, "private"))
                         for name in dict.fromkeys([*(nic.switch for nic in self.config.nics), *legacy]))
        doc = tomllib.loads(dump(Config(vms=(self.config,), switches=switches)))
        return {"vm": doc["vm"][0], "switches": doc.get("switch", []),
                "storage": self._storage_files() if self._storage_slot is not None else [],
                **({"ide": self.ide_path} if self.ide_path is not None else {})}

    def memory_pages(self) -> list[int]:
        """The GPA page numbers of the VM's RAM, in order."""
        return sorted(self.host.introspect.reach(self.partition))

    def write_pages(self, pages, data) -> None:
        """Write memory a move (or a restore) brought: `pages` is the first GPA page of a run, or a
        list of GPA pages; `data` holds 4 KiB for each, in that order. Consecutive pages go in one
        write each."""
        if self.partition is None:
            raise InvalidTransition(self.name, self.state, "write pages without a partition", (VmState.MIGRATING,))
        view = memoryview(data).cast("B")
        count = len(view) // PAGE
        if len(view) % PAGE:
            raise ValueError(f"vm {self.name!r}: {len(view)} bytes of pages: expected a multiple of {PAGE}")
        if isinstance(pages, int):
            runs = [(pages, count)]
        else:
            pages = list(pages)
            if len(pages) != count:
                raise ValueError(f"vm {self.name!r}: {len(pages)} pages and {count} pages of data")
            runs = []
            for gpa in pages:
                if runs and runs[-1][0] + runs[-1][1] == gpa:
                    runs[-1][1] += 1
                else:
                    runs.append([gpa, 1])
        limit = self.worker.memory_bytes // PAGE
        if any(first < 0 or first + n > limit for first, n in runs):
            raise ValueError(f"vm {self.name!r}: pages outside its {limit} pages of memory")
        part, at = self.partition, 0
        for first, n in runs:
            part.write(first * PAGE, view[at:at + n * PAGE])
            at += n * PAGE

    def arrive(self) -> None:
        """Off -> Migrating: the shell of a VM about to receive an image (ManagedHost.incoming):
        partition, RAM, VMBus and device offers, VPs not running, no guest code yet."""
        self._require("arrive", VmState.OFF)
        self.off_reason = None
        self._build_shell()
        self._frozen_from = None
        self._set(VmState.MIGRATING)

    def resume_from(self, image: dict) -> None:
        """Apply a capture to a VM that arrived (its memory written already): VP registers, host
        visibility, the guest record, device records (carried until each device opens again) and
        Measure-VM's figures; then the guest kernel starts on VP 0 in resume mode and the VM is
        Running. Everything is checked first: a bad image raises SavedStateError and leaves the
        VM Migrating, unchanged (its caller tears it down)."""
        from hypervisor import HvError, Register
        from hypervisor.abi import HostVisibility
        from hypervisor.grants import modify_host_visibility
        from partitions.savedstate import SavedStateError
        self._require("resume from an image", VmState.MIGRATING)
        if self._frozen_from is not None or self.stack is None:
            raise InvalidTransition(self.name, self.state, "resume a frozen VM from an image (thaw it)",
                                    (VmState.MIGRATING,))
        where = f"image of vm {image.get('vm')!r}" if isinstance(image, dict) else "image"
        image = _plain(image, where)
        registers = self._check_image(image, where)
        part = self.partition
        # The core checks a batch against the state before it, and enables the hypercall page
        # only for a VP with a guest OS id (a native guest's): HYPERCALL goes in a second batch,
        # after GUEST_OS_ID, and is checked here against the image's id and the VM's pages.
        later: dict[int, dict[int, int]] = {}
        pages = set(self.memory_pages())
        for index, values in registers.items():
            call = values.get(int(Register.HYPERCALL))
            if call is not None:
                values = {n: v for n, v in values.items() if n != int(Register.HYPERCALL)}
                registers[index] = values
                later[index] = {int(Register.HYPERCALL): call}
            try:
                self.host.root.check_vp_registers(part, index, values)
                if call is not None:
                    self.host.root.check_vp_registers(part, index, {int(Register.HYPERCALL): call & ~1})
                    if call & 1 and (not values.get(int(Register.GUEST_OS_ID)) or call >> 12 not in pages):
                        raise ValueError(f"HYPERCALL {call:#x}: enabled without a guest OS id, or outside its "
                                         "memory")
            except (HvError, ValueError) as e:
                raise SavedStateError(f"{where}: vm {self.name!r} VP {index}: the saved registers are refused "
                                      f"({e})") from None
        for index, values in registers.items():
            self.host.root.set_vp_registers(part, index, values)
            if index in later:
                self.host.root.set_vp_registers(part, index, later[index])
            self.host.root.set_vp_registers(part, index, {Register.EOM: 0})
        # Host visibility is the partition's state in the core: the guest had shown these pages
        # (the old shell's bounce buffers); its kernel hides and reuses them as it resumes.
        for vis in (int(HostVisibility.READ_ONLY), int(HostVisibility.READ_WRITE)):
            pages = [gpa for gpa, v in image["host_visibility"] if v == vis]
            if pages:
                modify_host_visibility(part, pages, vis)
        guest = image["guest"]
        self.stack.load(guest["kernel"])
        self._native_state = guest.get("native")
        self._emulated_records = (image.get("emulated") or {}).get("devices")
        self.workload_states = [dict(state) for state in guest["workloads"]]
        self._carried = dict(image["devices"])
        self._measured_before = Counter(image["measured"])
        self._start_guest(resume=True)
        self._emit("vm.resumed_from_image", time_ns=image["time_ns"])
        self._set(VmState.RUNNING)

    def release(self, reason: str = "moved") -> None:
        """After a successful move: the VM's channels are rescinded (logged), its partition is torn
        down (its VSPs close and let go of its disks) and it leaves its host (on_release)."""
        self._require("release", VmState.MIGRATING)
        part = self.partition
        child = self.vmbus.children.get(part.id) if part is not None else None
        for relid, ch in sorted(child.channels.items()) if child is not None else ():
            self.vmbus.record(part.id, "channel rescinded", {"relid": relid, "reason": reason})
        self._teardown()
        self._frozen_from = None
        self._saved_path = None
        self.off_reason = reason
        self._set(VmState.OFF)
        if self.on_release is not None:
            self.on_release(self, reason)

    def _check_image(self, image: dict, where: str) -> dict[int, dict[int, int]]:
        """Everything in an image (plain data) that can be checked without the partition; returns
        the VP registers. SavedStateError says what is wrong."""
        from partitions.savedstate import SavedStateError
        from partitions.vmbus_guest import GuestVmbus
        if not isinstance(image, dict) or image.get("format") != IMAGE_FORMAT:
            raise SavedStateError(f"{where}: expected a map with format {IMAGE_FORMAT}")
        missing = [k for k in ("vm", "time_ns", "memory_bytes", "processors", *IMAGE_SECTIONS)
                   if k not in image and k not in OPTIONAL_SECTIONS]
        if missing:
            raise SavedStateError(f"{where}: no {', '.join(missing)} (a saved state from an hvsim that did not "
                                  "keep a VM's whole state?)")
        memory_bytes = self.worker.memory_bytes if self.worker is not None else _memory_bytes(self.spec)
        if image["vm"] != self.name or image["memory_bytes"] != memory_bytes \
                or image["processors"] != self.spec.processors:
            raise SavedStateError(f"{where}: vm {image['vm']!r} with {image['memory_bytes']!r} bytes and "
                                  f"{image['processors']!r} processors, not vm {self.name!r} with {memory_bytes} "
                                  f"and {self.spec.processors}")
        if not _is_int(image["time_ns"]) or image["time_ns"] < 0:
            raise SavedStateError(f"{where}: time_ns {image['time_ns']!r}: expected a time in ns")
        self._check_config(image["config"], where)
        registers = self._restore_registers(where, image["vps"])
        shown = image["host_visibility"]
        if not isinstance(shown, list) or not all(
                isinstance(e, list) and len(e) == 2 and all(map(_is_int, e)) and e[1] in (1, 3)
                and 0 <= e[0] < memory_bytes // PAGE for e in shown):
            raise SavedStateError(f"{where}: section 'host_visibility' is not a list of [GPA page, 1 or 3] pairs")
        self._check_device_records(where, image["devices"])
        guest = image["guest"]
        if not isinstance(guest, dict) or guest.get("format") != 1:
            raise SavedStateError(f"{where}: section 'guest': expected a map with format 1")
        try:
            GuestVmbus.check_record(guest.get("kernel"), "guest.kernel")
        except ValueError as e:
            raise SavedStateError(f"{where}: section {e}") from None
        if getattr(self.config, "kernel", None) is not None:
            from partitions.native_guest.cpu import check_state
            problem = None if guest.get("native") is None else check_state(guest["native"])
            if problem is not None:
                raise SavedStateError(f"{where}: guest.native: {problem}")
        states = guest.get("workloads")
        if not isinstance(states, list) or len(states) != 1 + len(self.more_workloads):
            raise SavedStateError(f"{where}: guest.workloads: expected a list of {1 + len(self.more_workloads)} "
                                  "states, one per workload of the VM")
        for n, state in enumerate(states):
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise SavedStateError(f"{where}: guest.workloads[{n}]: expected a map with string keys (the "
                                      "workload's ctx.state)")
        self._check_emulated(image.get("emulated"), where)
        measured = image["measured"]
        if not isinstance(measured, dict) or sorted(measured) != sorted(MEASURED) \
                or not all(_is_int(v) and v >= 0 for v in measured.values()):
            raise SavedStateError(f"{where}: measured: expected {', '.join(MEASURED)} as counts")
        return registers

    def _check_config(self, config, where: str) -> None:
        """The image's configuration is this VM's (ManagedHost.incoming built it from it, or the
        host's file has the same [[vm]] table); a VM not built from a configuration takes any."""
        from partitions.savedstate import SavedStateError
        ours = self.config_data()
        if config is None and ours is None:
            return
        if not isinstance(config, dict) or not isinstance(config.get("vm"), dict) \
                or not isinstance(config.get("storage"), list) or not all(isinstance(d, str) for d in config["storage"]):
            raise SavedStateError(f"{where}: section 'config': expected a map with the VM's table 'vm' and its "
                                  "'storage' files")
        if ours is None:
            return
        for key in sorted(set(ours["vm"]) | set(config["vm"])):
            if ours["vm"].get(key) != config["vm"].get(key):
                raise SavedStateError(f"{where}: config: vm.{key} is {config['vm'].get(key)!r} in the image, "
                                      f"{ours['vm'].get(key)!r} for vm {self.name!r} here")

    def _restore_new_shell(self, path) -> None:
        """Off -> Migrating -> Running: a saved-state file restored into a new shell. The file is
        checked whole, then the shell is built, the memory written and the image applied
        (resume_from); the storage serves the disk files the VM ran on when it was saved. A bad
        file leaves the VM Off, as it was."""
        from partitions.savedstate import SavedStateError, SavedStateReader
        self._require("restore into a new shell", VmState.OFF)
        reader = SavedStateReader(path, kind="saved-state")
        try:
            meta = reader.meta
            missing = [name for name in IMAGE_SECTIONS if name not in reader and name not in OPTIONAL_SECTIONS]
            if missing:
                raise SavedStateError(f"{path}: no section {', '.join(map(repr, missing))}: it cannot be restored "
                                      "into a new shell (only into the one that saved it)")
            image = {"format": IMAGE_FORMAT, "vm": meta.get("vm"), "time_ns": meta.get("time_ns"),
                     "memory_bytes": meta.get("memory_bytes"), "processors": meta.get("processors"),
                     **{name: reader.load(name) if name in reader else None for name in IMAGE_SECTIONS}}
            self._check_image(image, str(path))
            mapped = set(range(image["memory_bytes"] // PAGE))
            if meta.get("pages") != len(mapped):
                raise SavedStateError(f"{path}: header says {meta.get('pages')!r} pages; vm {self.name!r} has "
                                      f"{len(mapped)}")
            memory = self._restore_memory(path, reader, mapped, meta.get("memory_digest"))
        finally:
            reader.close()
        if self.ide_path is not None and image["config"] is not None:
            # The emulated IDE disk serves the file it served when it was saved, as the storage does.
            if not isinstance(image["config"].get("ide"), str):
                raise SavedStateError(f"{path}: config: no 'ide' file, and vm {self.name!r} has an emulated IDE disk")
        ide = image["config"]["ide"] if self.ide_path is not None and image["config"] is not None else self.ide_path
        storage = image["config"]["storage"] if image["config"] is not None else None
        slot = self._storage_slot if storage is not None else None   # no configuration: its own disks
        before = dict(slot.host_config) if slot is not None else None
        if slot is not None:
            problems = slot.device.vsp.disk_problems({**slot.host_config, "disks": storage})
            if len(storage) != len(self._storage_files()) or problems:
                why = "; ".join(f"disks[{lun}] {disk}: {what}" for lun, disk, what in problems) or \
                    f"{len(storage)} disks, vm {self.name!r} has {len(self._storage_files())}"
                raise SavedStateError(f"{path}: the disks vm {self.name!r} ran on cannot be served here: {why}")
            slot.host_config.pop("path", None)
            slot.host_config["disks"] = list(storage)
        ide_before, self.ide_path = self.ide_path, ide
        checkpoints = self._checkpoints
        try:
            if slot is not None:   # checkpoints fork the files it serves now (read before they are open)
                self._checkpoints = CheckpointTree(self.name, list(storage))
            self.arrive()
            for gpa in sorted(memory):
                self.partition.write(gpa * PAGE, memory[gpa])
            self.resume_from(image)
        except BaseException:
            if self.partition is not None:
                self._teardown()
            if slot is not None:
                slot.host_config.clear()
                slot.host_config.update(before)
            self.ide_path = ide_before
            self._checkpoints = checkpoints
            self._frozen_from = None
            self._set(VmState.OFF)
            raise

    # ---- checkpoints ----------------------------------------------------------------------------
    def _storage_files(self) -> list[str]:
        """The files the storage slot serves, by LUN."""
        config = self._storage_slot.host_config
        return [str(d) for d in config["disks"]] if "disks" in config else [str(config["path"])]

    def _storage_follows(self, tree: CheckpointTree) -> None:
        # The next time the VM starts, its storage VSP opens the live files (every disk forked).
        config = self._storage_slot.host_config
        if "disks" in config:
            config["disks"] = list(tree.live_disks)
        else:
            config["path"] = tree.live_disk

    def _require_disks(self, action: str) -> CheckpointTree:
        if self.checkpoints is None:
            raise CheckpointError(f"vm {self.name!r} has no disk: nothing to {action}")
        return self.checkpoints

    def checkpoint(self, name: str) -> None:
        """Take a production checkpoint. Running with the backup service: the guest freezes its
        writes, the disks fork, the guest thaws (it happens as the exchange runs, in simulated
        time); if the guest refuses or has no backup service, the checkpoint is taken at once,
        crash-consistent (as Hyper-V falls back to a standard checkpoint)."""
        self._require("checkpoint", VmState.RUNNING, VmState.PAUSED, VmState.OFF)
        tree = self._require_disks("checkpoint")
        if name in tree.checkpoints:
            raise CheckpointError(f"vm {self.name!r} already has a checkpoint named {name!r}")

        def take(consistent: bool):
            cp = tree.take(name, self.host.now, consistent=consistent,
                           serving=self.device_vsp(self._storage_slot.name))
            self._storage_follows(tree)
            self._checkpoint_note(name, "consistent" if consistent else "crash-consistent")
            return cp

        vss = self.device_vsp("vss") if self.state is VmState.RUNNING else None
        if vss is None:
            take(False)
            return

        def done(backup) -> None:
            if backup.point is None and name not in tree.checkpoints:
                take(False)  # refused or failed: fall back to a crash-consistent point
        vss.backup(lambda: take(True), on_done=done)

    def apply_checkpoint(self, name: str) -> None:
        self._require("apply a checkpoint", VmState.OFF)
        tree = self._require_disks("apply")
        tree.apply(name)
        self._storage_follows(tree)
        self._checkpoint_note(name, "applied")

    def delete_checkpoint(self, name: str) -> None:
        self._require("delete a checkpoint", VmState.RUNNING, VmState.PAUSED, VmState.OFF)
        tree = self._require_disks("delete")
        merged_into = tree.checkpoints[name].disk if name in tree.checkpoints else None
        tree.delete(name, serving=self.device_vsp(self._storage_slot.name))
        self._storage_follows(tree)
        self._checkpoint_note(name, "deleted", merged_into=merged_into)

    def _checkpoint_note(self, name: str, what: str, **fields) -> None:
        self.checkpoint_log.append((self.host.now, name, what))
        tree = self.checkpoints
        if what == "applied":
            self._emit("checkpoint.applied", checkpoint=name, disk=tree.live_disk)
        elif what == "deleted":
            self._emit("checkpoint.deleted", checkpoint=name, disk=tree.live_disk, **fields)
        else:
            self._emit("checkpoint.created", checkpoint=name, consistent=what == "consistent",
                       frozen=tree.checkpoints[name].disk, disk=tree.live_disk)

    def _emit(self, name: str, **fields) -> None:
        if self.on_event is not None:
            self.on_event(self, name, fields)

    # ---- moving to another host -------------------------------------------------------------------
    def move(self, to: str, kind: str = "live"):
        """Move-VM: move this VM to host `to` of its datacenter, "live" (pre-copy), "post-copy" or
        "quick"; returns the migration's record (partitions/datacenter/migration.py), which the
        datacenter's run fills in. Only a VM of a datacenter has somewhere to go."""
        mover = getattr(self, "mover", None)
        if mover is None:
            raise RuntimeError(f"vm {self.name!r} is not on a host of a datacenter: there is no host to move it to")
        return mover(to, kind)

    # ---- a guest that crashed -------------------------------------------------------------------
    def crash(self, reason: str) -> None:
        """The guest crashed (code on one of its VPs raised): the VM goes Off at once, as with
        turn_off, and `off_reason` says why until it is started again."""
        if self.state is VmState.OFF:
            return
        self._teardown()
        self._saved_path = None
        self.off_reason = reason
        self._set(VmState.OFF)

    # ---- what management shows ------------------------------------------------------------------
    def device_vsp(self, name: str):
        relid = self._relids.get(name)
        return None if relid is None or self.partition is None else self.vmbus.vsp(self.partition, relid)

    def device_vsc(self, name: str):
        return self.stack.devices.get(name) if self.stack else None

    @property
    def uptime_ns(self) -> int:
        """Time since it started (or was restored); zero while Off or Saved. Pausing does not stop it."""
        if self.started_at is None or self.state in (VmState.OFF, VmState.SAVED):
            return 0
        return self.host.now - self.started_at

    def measure(self) -> dict[str, int]:
        """Measure-VM's figures since the host started, over every incarnation of the VM: disk
        bytes read and written, normalized disk operations (8 KiB units, as Hyper-V counts them),
        network bytes in and out (as the VM sees them)."""
        total = self._measured_before + self._device_figures()
        return {key: total[key] for key in MEASURED}

    def _device_figures(self) -> Counter[str]:
        """The figures of the devices open now (their VSPs count them)."""
        figures: Counter[str] = Counter()
        part = self.partition
        child = self.vmbus.children.get(part.id) if part is not None else None
        for channel in (child.channels.values() if child is not None else ()):
            vsp = channel.vsp
            if vsp is None:
                continue
            counters = _counters(vsp)   # storvsp: what each LUN moved; netvsp: its traffic
            figures["network_in_bytes"] += counters.get("bytes_in", 0)
            figures["network_out_bytes"] += counters.get("bytes_out", 0)
            for lun in counters.get("luns", ()):
                figures["disk_read_bytes"] += lun["read_bytes"]
                figures["disk_written_bytes"] += lun["write_bytes"]
                # Hyper-V counts an operation as one per 8 KiB it moves, at least one; from the
                # totals that is exact while a LUN's operations are of one size.
                ops, moved = lun["read_ops"] + lun["write_ops"], lun["read_bytes"] + lun["write_bytes"]
                figures["disk_normalized_ios"] += max(ops, -(-moved // 8192))
        ide = self.emulated.get("ide")
        if ide is not None:      # the emulated IDE disk counts as a disk of the VM, as on Hyper-V
            figures.update(ide.measured)
        return figures

    def run_time_ns(self) -> int:
        part = self.partition
        return self._run_time_before + (self.host.introspect.run_time_ns(part) if part is not None else 0)

    def heartbeat_status(self) -> str:
        vsp = self.device_vsp("heartbeat")
        if self.state is not VmState.RUNNING:
            return ""
        return {"ok": "OK", "lost contact": "Lost Communication", "no contact": "No Contact"}.get(
            getattr(vsp, "status", ""), "No Contact") if vsp is not None else "Unknown"

    def summary(self) -> dict[str, Any]:
        part = self.partition
        info = self.host.introspect.partition_info(part) if part is not None else None
        return {"name": self.name, "state": self.state.value,
                "reason": self.off_reason if self.state is VmState.OFF else None,
                "memory_assigned_mib": (info["pages_owned"] * 4096 // 2**20) if info else 0,
                "uptime_ns": self.uptime_ns, "status": self.heartbeat_status(),
                "partition_id": part.id if part is not None else None,
                "hypercalls": info["hypercalls"] if info else 0}


#: The sections of a VM's image beside its memory (a capture's keys, a saved-state file's sections).
IMAGE_SECTIONS = ("vps", "devices", "host_visibility", "config", "guest", "measured", "emulated")
#: Sections an image from an earlier hvsim may lack: without "emulated" the emulated devices start afresh.
OPTIONAL_SECTIONS = ("emulated",)
IMAGE_FORMAT = 1
PAGE = 4096


def _memory_bytes(spec: VmSpec) -> int:
    from hypervisor.quantities import parse_size
    return parse_size(spec.memory, f"vm {spec.name!r} memory")


def _plain(image: dict, where: str) -> dict:
    """`image` as msgpack gives it back (tuples become lists): plain data, or a SavedStateError
    naming the part that is not (a workload's ctx.state, a device's record, ...)."""
    import msgpack
    from partitions.savedstate import SavedStateError

    def round_trip(value, what):
        try:
            return msgpack.unpackb(msgpack.packb(value, use_bin_type=True, datetime=False), raw=False,
                                   strict_map_key=True)
        except (TypeError, ValueError, OverflowError) as e:
            raise SavedStateError(f"{where}: {what} is not plain data (msgpack: {e})") from None

    if not isinstance(image, dict):
        raise SavedStateError(f"{where}: expected a map, got {type(image).__name__}")
    guest = image.get("guest")
    if isinstance(guest, dict) and isinstance(guest.get("workloads"), list):
        for n, state in enumerate(guest["workloads"]):
            round_trip(state, f"guest.workloads[{n}] (the workload's ctx.state)")
    return {key: round_trip(value, str(key)) for key, value in image.items()}


def _counters(vsp) -> dict:
    """A VSP's counters() (storvsp's, netvsp's), or {} if it has none or they fail: figures
    for a view must not take the host down."""
    try:
        counters = vsp.counters() if callable(getattr(vsp, "counters", None)) else {}
    except Exception:
        return {}
    return counters if isinstance(counters, dict) else {}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _memory_digest(pages) -> str:
    """The digest of a memory image given as (GPA page, 4 KiB) in GPA order."""
    import hashlib
    h = hashlib.blake2b(digest_size=16)
    for gpa, data in pages:
        h.update(gpa.to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()
