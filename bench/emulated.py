"""The same disk workload (4 KiB reads at scattered offsets, one at a time) through the emulated IDE
disk and through storvsc (synthetic), as simulated I/Os per second and parent CPU per I/O: the
seeds' point that synthetic devices beat emulation, reproduced by the simulator's cost model.

Emulated: a native kernel (assembled here with the system gcc) drives the IDE disk
(partitions/native_guest/ide.py) by ATA PIO as an OS driver does: the task file, READ SECTORS for
8 sectors, `sti; hlt` until the drive's IRQ 14 arrives through its IDT (the handler reads the
status, which acknowledges the drive, and EOIs the APIC), then 2,048 `in` instructions for the
data, each an intercept that goes out to the parent (the cost model's 4 us exit plus the device's
time). Its parent CPU is what the VM's intercept bus counts (exits and device time; the medium's
time is waited, not CPU); the interrupt (1 us) and the EOI exit (1 us) are the hypervisor's.

Synthetic: a managed VM whose disk-io workload reads 4 KiB at random offsets, queue depth 1,
through storvsc -> VMBus -> storvsp; its parent CPU is the root partition's run time over the
same stretch (all of the root's work, so if anything it overstates the synthetic path's cost).

The network half: the same two workloads -- request-response with 64-byte frames (one in flight),
and a stream of 1,514-byte frames -- between two VMs through emulated legacy NICs
(partitions/native_guest/tulip.py, driven by tulip_driver.py: rings in guest memory, a transmit poll
demand per frame, the receive interrupt (IRQ 11, woken from halt, EOI) with CSR5 read and
acknowledged in its handler, 100 Mbit/s wire time) and between two VMs
through netvsc -> netvsp -> the virtual switch (raw frames of a local EtherType, answered or counted
by the peer), as simulated packets per second and parent CPU per packet. The legacy path's parent
CPU is what both VMs' intercept buses count (exits and device time) plus the device models'
per-frame work; the synthetic path's is the root partition's run time over the same stretch.

Both figures are simulated, so deterministic: one run gives them. The wall time of the run is not
a figure here.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.timing import Figure, Goal

MS = 1_000_000
DISK_MIB = 16
# (emulated reads, synthetic: boot ms and measured ms of simulated time) per size
PLAN = {"tiny": (4, 10, 40), "default": (25, 50, 250), "long": (100, 50, 1000)}
IOPS_GOAL = Goal(">=", 1.0, "ratio", "synthetic storvsc: more I/Os per simulated second than emulated IDE")
CPU_GOAL = Goal("<=", 1.0, "ratio", "synthetic storvsc: less parent CPU per I/O than emulated IDE")
COUNTER, BUFFER, BASE = 0x210000, 0x220000, 0x100000
# The network half: simulated ms of boot, then of measurement, per size.
NET_PLAN = {"tiny": (5, 10), "default": (5, 50), "long": (5, 200)}
PPS_GOAL = Goal(">=", 1.0, "ratio", "synthetic netvsc: more packets per simulated second than the emulated legacy NIC")
NET_CPU_GOAL = Goal("<=", 1.0, "ratio", "synthetic netvsc: less parent CPU per packet than the emulated legacy NIC")
BENCH_TYPE = 0x88B5          # a local experimental EtherType: the peers only answer or count it
SMALL, BULK = 64, 1514       # frame sizes (without FCS) of request-response and of the stream
WINDOW = 64                  # the stream's frames in flight (an end-to-end window, as bench/network.py)

# The number of reads to make is at COUNTER; each is a 4 KiB READ SECTORS at LBA rbx, its data into
# BUFFER by `inw`, the next LBA a stride away (8-sector aligned, inside the 16 MiB disk's 32,768
# sectors); the simulated time (rdtsc) of the start and of the end go to COUNTER + 16 and + 8.
_KERNEL = f"""
.globl _start
.text
_start:
  lea idt(%rip), %rax              # gate 0x2E (IRQ 14): present interrupt gate to `irq14`
  lea irq14(%rip), %rcx
  mov %cx, 0x2E0(%rax)
  movw $0x08, 0x2E2(%rax)
  movb $0x8e, 0x2E5(%rax)
  shr $16, %rcx
  mov %cx, 0x2E6(%rax)
  shr $16, %rcx
  mov %ecx, 0x2E8(%rax)
  lidt idtr(%rip)
  xor %rbx, %rbx
  mov {COUNTER}, %r12
  rdtsc
  mov %eax, {COUNTER + 16}
  mov %edx, {COUNTER + 20}
next:
  mov $0x1f6, %dx
  mov $0xe0, %al
  out %al, %dx
  mov $0x1f2, %dx
  mov $8, %al
  out %al, %dx
  mov $0x1f3, %dx
  mov %bl, %al
  out %al, %dx
  mov $0x1f4, %dx
  mov %bh, %al
  out %al, %dx
  mov $0x1f5, %dx
  xor %al, %al
  out %al, %dx
  movq $-1, {COUNTER + 24}
  cli                              # the command, then `sti; hlt`: the interrupt cannot slip between
  mov $0x1f7, %dx
  mov $0x20, %al
  out %al, %dx
wait:
  sti
  hlt
  cli
  cmpq $-1, {COUNTER + 24}
  je wait
  testq $0x01, {COUNTER + 24}
  jnz fail
  mov $0x1f0, %dx
  mov ${BUFFER}, %rdi
  mov $2048, %rcx
word:
  in %dx, %ax
  mov %ax, (%rdi)
  add $2, %rdi
  dec %rcx
  jnz word
  add $776, %rbx
  and $0x7ff8, %rbx
  dec %r12
  jnz next
  rdtsc
  mov %eax, {COUNTER + 8}
  mov %edx, {COUNTER + 12}
fail:
  hlt
  jmp fail
irq14:                             # read the status (acknowledges INTRQ), keep it, EOI
  push %rax
  push %rcx
  push %rdx
  mov $0x1f7, %dx
  in %dx, %al
  movzbq %al, %rax
  mov %rax, {COUNTER + 24}
  mov $0x80b, %ecx
  xor %eax, %eax
  xor %edx, %edx
  wrmsr
  pop %rdx
  pop %rcx
  pop %rax
  iretq
.data
.balign 16
idtr: .word 4095
      .quad idt
.balign 4096
idt: .fill 4096, 1, 0
"""


def _kernel(tmp: Path) -> Path:
    if shutil.which("gcc") is None or shutil.which("ld") is None:
        raise RuntimeError("the emulated-disk bench assembles its kernel with the system gcc and ld")
    src, obj, elf = tmp / "pio.S", tmp / "pio.o", tmp / "pio.elf"
    src.write_text(_KERNEL)
    subprocess.run(["gcc", "-c", str(src), "-o", str(obj)], check=True)
    subprocess.run(["ld", "-static", "-nostdlib", f"-Ttext={BASE:#x}", "-e", "_start", str(obj), "-o", str(elf)],
                   check=True)
    return elf


def emulated(tmp: Path, reads: int) -> dict:
    """Reads, simulated ns they took (first command to last word), parent CPU ns and medium ns of
    the PIO kernel making `reads` reads."""
    from drivers.storage.vhd import VirtualDisk
    from hypervisor.host import Host
    from partitions.native_guest.cpu import native_guest
    from partitions.native_guest.devices import bus_of
    from partitions.native_guest.ide import IdeDisk
    from partitions.native_guest.loader import load_elf
    from partitions.worker import VmSpec, VmWorker
    elf = _kernel(tmp)
    with VirtualDisk.create(tmp / "ide.vhd", DISK_MIB << 20, "fixed", created_at=0) as disk:
        host = Host(logical_processors=2, memory="256MiB", seed=7)
        child = VmWorker(host, VmSpec("ide", memory="4MiB")).build()
        device = IdeDisk(disk)
        bus = bus_of(child)
        bus.attach(device)
        image = load_elf(elf)

        def start(_cpu) -> None:
            child.write(COUNTER, reads.to_bytes(8, "little"))   # after the loader, before the first instruction
        child.vp(0).run(native_guest(image, on_start=start))
        host.root.resume_partition(child)
        host.run(until=reads * 20 * MS)   # a read takes about 9 ms of simulated time
        end, begin = (int.from_bytes(child.read(COUNTER + k, 8), "little") for k in (8, 16))
        if device.completed["read"] != reads or device.completed["aborted"] or not end:
            raise RuntimeError(f"the PIO kernel did not make its {reads} reads: {device.completed}")
        if bus.eois["ide"] != reads:
            raise RuntimeError(f"the PIO kernel took {bus.eois['ide']} interrupts for its {reads} reads")
        return {"ios": reads, "ns": end - begin, "parent_ns": bus.parent_ns["ide"], "medium_ns": bus.medium_ns["ide"],
                "accesses": bus.accesses["ide"], "interrupts": bus.eois["ide"]}


def synthetic(tmp: Path, boot_ms: int, span_ms: int) -> dict:
    """I/Os and the root's run time of a storvsc VM reading 4 KiB at random offsets, QD 1."""
    from partitions.config import from_dict
    from partitions.management import ManagedHost
    cfg = {"host": {"logical_processors": 2, "memory": "1GiB"},
           "vm": [{"name": "io", "processors": 1, "memory": "64MiB",
                   "disks": [{"path": str(tmp / "syn.vhd"), "size": f"{DISK_MIB}MiB", "type": "fixed"}],
                   "workload": {"kind": "disk-io", "pattern": "random", "block_size": 4096,
                                "read_fraction": 1.0, "queue_depth": 1}}]}
    managed = ManagedHost(from_dict(cfg, base_dir=tmp), workdir=tmp)
    try:
        managed.start()
        vm, host = managed.vms["io"], managed.host
        managed.run(boot_ms * MS)
        ios0, root0 = vm.measure()["disk_read_bytes"] // 4096, host.introspect.run_time_ns(host.root)
        if not ios0:
            raise RuntimeError(f"the storvsc guest read nothing in {boot_ms} ms of boot")
        managed.run((boot_ms + span_ms) * MS)
        return {"ios": vm.measure()["disk_read_bytes"] // 4096 - ios0,
                "parent_ns": host.introspect.run_time_ns(host.root) - root0}
    finally:
        managed.close()


# ---- the network half -----------------------------------------------------------------------------

def _bench_frame(dst: bytes, src: bytes, size: int, n: int = 0) -> bytes:
    from drivers.network import frames
    return frames.build(dst, src, BENCH_TYPE, (n & 0xFF).to_bytes(1, "little") * (size - 14))


def legacy(kind: str, boot_ms: int, span_ms: int) -> dict:
    """Packets and the parent CPU (ns) of two VMs doing `kind` ("rr" or "stream") through legacy NICs
    for `span_ms` of simulated time after `boot_ms`."""
    from drivers.network.vswitch import VirtualSwitch
    from hypervisor.host import Host
    from partitions.native_guest.devices import bus_of
    from partitions.native_guest.tulip import Tulip21140
    from partitions.native_guest.tulip_driver import TulipDriver
    from partitions.worker import VmSpec, VmWorker
    host = Host(logical_processors=4, memory="256MiB", seed=7)
    switch = VirtualSwitch("legacy", now=lambda: host.now)
    macs = [bytes([2, 0, 0x5E, 0, 0x0C, i]) for i in (1, 2)]
    vms, nics = [], []
    for i, mac in enumerate(macs):
        vm = VmWorker(host, VmSpec(f"legacy{i}", memory="4MiB")).build()
        nic = Tulip21140(vm, switch, mac=mac)
        nic.attach(bus_of(vm))
        vms.append(vm)
        nics.append(nic)
    done = {"packets": 0}

    async def client(ctx) -> None:
        d = TulipDriver(ctx)
        mac = await d.open()
        n = 0
        while True:
            if kind == "rr":
                await d.send(_bench_frame(macs[1], mac, SMALL, n))
                if await d.receive(timeout_ns=10 * MS) is not None:
                    done["packets"] += 2
            else:
                await d.send(_bench_frame(macs[1], mac, BULK, n))
            n += 1

    async def server(ctx) -> None:
        d = TulipDriver(ctx)
        mac = await d.open()
        while True:
            frame = await d.receive()
            if kind == "rr":
                await d.send(frame[6:12] + mac + frame[12:])
            else:
                done["packets"] += 1

    vms[0].vp(0).run(client)
    vms[1].vp(0).run(server)
    for vm in vms:
        host.root.resume_partition(vm)

    def cpu() -> int:
        return sum(bus_of(vm).parent_ns[nic.name] + nic.work_ns for vm, nic in zip(vms, nics))
    def accesses() -> int:
        return sum(bus_of(vm).accesses[nic.name] for vm, nic in zip(vms, nics))
    def interrupts() -> int:
        return sum(bus_of(vm).eois[nic.name] for vm, nic in zip(vms, nics))
    host.run(until=boot_ms * MS)
    packets0, cpu0, accesses0, irqs0 = done["packets"], cpu(), accesses(), interrupts()
    host.run(until=(boot_ms + span_ms) * MS)
    packets = done["packets"] - packets0
    if not packets:
        raise RuntimeError(f"no {kind} packets went through the legacy NICs")
    return {"packets": packets, "parent_ns": cpu() - cpu0, "accesses": accesses() - accesses0,
            "interrupts": interrupts() - irqs0, "missed": sum(nic.stats["missed"] for nic in nics)}


class _Tap:
    """Stands in for a netvsc's interface in the guest stack: keeps the frames it is given."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def receive(self, frame: bytes) -> None:
        self.frames.append(frame)


def netvsc_pair(count: int = 2, responder_only: bool = False, kind: str = "rr", seed: int = 7):
    """A host with `count` netvsc VMs on one switch: VM 0 answers every BENCH_TYPE frame with its
    source and destination swapped (kind "rr") or counts it ("stream"); VM 1, unless
    `responder_only`, sends (one request in flight, or a stream of BULK frames with WINDOW in
    flight). Returns (host, switch, {"taps", "done"}, macs); the host has run its boot (5 ms)."""
    from drivers.network import DEVICE as NETWORK
    from drivers.network.vswitch import VirtualSwitch
    from drivers.registry import discover
    from hypervisor.host import Host
    from partitions.vmbus_guest import GuestVmbus
    from partitions.vmbus_parent import ParentVmbus
    from partitions.worker import VmSpec, VmWorker
    host = Host(logical_processors=4, memory="256MiB", seed=seed)
    parent = ParentVmbus(host, vp_index=1)
    switch = VirtualSwitch("synthetic", now=lambda: host.now)
    registry = discover()
    macs = [bytes([2, 0, 0x5E, 0, 0x0D, i + 1]) for i in range(count)]
    state = {"taps": [], "done": {"packets": 0, "sent": 0}, "answered": 0}

    def vm(index: int, role) -> None:
        child = VmWorker(host, VmSpec(f"netvsc{index}", memory="1MiB")).build()
        manager = parent.attach(child, [(NETWORK, {"switch": switch, "mac": macs[index]})])
        (relid,) = manager.relids
        tap = _Tap()
        state["taps"].append(tap)

        def poll(stack) -> None:
            vsc = stack.devices.get("network")
            if vsc is None or not vsc.ready:
                return
            if vsc.interface is None:
                vsc.interface = tap       # no IP stack here: the frames come to the tap
            role(vsc, tap)

        stack = GuestVmbus(child, registry, ring_pages=(16, 48), on_poll=poll, configs={
            "network": {"relid": relid, "buffer_pages": range(64, 160)}})
        child.vp(0).run(stack.run)
        host.root.resume_partition(child)

    done = state["done"]

    def responder(vsc, tap) -> None:
        for frame in tap.frames:
            if kind == "rr":
                vsc.transmit(frame[6:12] + vsc.mac + frame[12:])
            else:
                done["packets"] += 1
        tap.frames.clear()

    def sender(vsc, tap) -> None:
        if kind == "rr":
            # The next request once the answer came (or the first); one the ring refused is owed.
            if tap.frames or not done["sent"]:
                done["packets"] += 2 * len(tap.frames)
                tap.frames.clear()
                state["owed"] = True
            if state.get("owed") and vsc.transmit(_bench_frame(macs[0], vsc.mac, SMALL, done["sent"])):
                done["sent"] += 1
                state["owed"] = False
        else:
            if not state["announced"]:
                return
            while done["sent"] - done["packets"] < WINDOW and vsc.transmit(_bench_frame(macs[0], vsc.mac, BULK)):
                done["sent"] += 1

    def announcing(vsc, tap) -> None:
        # Once, as a NIC does at link-up: the switch learns the responder's MAC, so the stream is
        # switched to its port rather than flooded.
        if not state.get("announced") and vsc.transmit(_bench_frame(b"\xff" * 6, vsc.mac, SMALL)):
            state["announced"] = True
        responder(vsc, tap)

    state["announced"] = False
    vm(0, announcing)
    if not responder_only and count > 1:
        vm(1, sender)
    host.run(5 * MS)
    return host, switch, state, macs


def synthetic_net(kind: str, boot_ms: int, span_ms: int) -> dict:
    """Packets and the root's run time over `span_ms` of two netvsc VMs doing `kind`."""
    host, _switch, state, _macs = netvsc_pair(kind=kind)
    done = state["done"]
    host.run(max(boot_ms * MS, host.now))
    packets0, root0, start = done["packets"], host.introspect.run_time_ns(host.root), host.now
    host.run(start + span_ms * MS)
    packets = done["packets"] - packets0
    if not packets:
        raise RuntimeError(f"no {kind} packets went through netvsc")
    return {"packets": packets, "parent_ns": host.introspect.run_time_ns(host.root) - root0}


def network_figures(size: str) -> list[Figure]:
    boot_ms, span_ms = NET_PLAN[size]
    out = []
    for kind, what in (("rr", f"request-response, {SMALL} B frames, one in flight"),
                       ("stream", f"a stream of {BULK} B frames")):
        emu, syn = legacy(kind, boot_ms, span_ms), synthetic_net(kind, boot_ms, span_ms)
        emu_pps, syn_pps = emu["packets"] / (span_ms / 1000), syn["packets"] / (span_ms / 1000)
        emu_cpu, syn_cpu = emu["parent_ns"] / emu["packets"] / 1000, syn["parent_ns"] / syn["packets"] / 1000
        base_pps = f"emulated legacy NIC (21140): {what}"
        base_cpu = f"emulated legacy NIC: parent CPU per packet, {what}"
        out += [
            Figure(base_pps, emu_pps, "packets per simulated s", base_pps, 1.0,
                   note=f"over {span_ms} ms; {emu['accesses'] / emu['packets']:.2f} intercepts and "
                        f"{emu['interrupts'] / emu['packets']:.2f} interrupts (each 1 us + a 1 us EOI exit) a packet "
                        "(both VMs); simulated, deterministic",
                   extra={"packets": emu["packets"], "missed": emu["missed"]}),
            Figure(f"synthetic netvsc -> netvsp: {what}", syn_pps, "packets per simulated s", base_pps,
                   syn_pps / emu_pps, PPS_GOAL, note=f"over {span_ms} ms after {boot_ms} ms of boot; simulated",
                   extra={"packets": syn["packets"]}),
            Figure(base_cpu, emu_cpu, "us", base_cpu, 1.0,
                   note="both VMs' intercept buses (exits, device time) and the device models' frame work"),
            Figure(f"synthetic netvsc: parent CPU per packet, {what}", syn_cpu, "us", base_cpu, syn_cpu / emu_cpu,
                   NET_CPU_GOAL, note="the root partition's whole run time over the stretch"),
        ]
    return out


def run(size: str = "default") -> list[Figure]:
    reads, boot_ms, span_ms = PLAN[size]
    with tempfile.TemporaryDirectory(prefix="hvsim-bench-emulated-") as tmp:
        tmp = Path(tmp)
        emu, syn = emulated(tmp, reads), synthetic(tmp, boot_ms, span_ms)
    emu_iops, syn_iops = emu["ios"] / (emu["ns"] / 1e9), syn["ios"] / (span_ms / 1000)
    emu_cpu, syn_cpu = emu["parent_ns"] / emu["ios"] / 1000, syn["parent_ns"] / syn["ios"] / 1000
    base_iops = "emulated IDE (ATA PIO, a word per intercept): 4 KiB reads, QD 1"
    base_cpu = "emulated IDE: parent CPU per 4 KiB read"
    disk = [
        Figure(base_iops, emu_iops, "I/O per simulated s", base_iops, 1.0,
               note=f"{reads} reads, {emu['accesses'] // reads} intercepts and {emu['interrupts'] // reads} interrupt "
                    "(IRQ 14, 1 us + a 1 us EOI exit) each; simulated, deterministic",
               extra={"ios": emu["ios"], "medium_us_per_io": emu["medium_ns"] / emu["ios"] / 1000}),
        Figure("synthetic storvsc -> storvsp: the same reads", syn_iops, "I/O per simulated s", base_iops,
               syn_iops / emu_iops, IOPS_GOAL, note=f"over {span_ms} ms after {boot_ms} ms of boot; simulated",
               extra={"ios": syn["ios"]}),
        Figure(base_cpu, emu_cpu, "us", base_cpu, 1.0, note="the VM's intercept bus: exits and device time"),
        Figure("synthetic storvsc: parent CPU per 4 KiB read", syn_cpu, "us", base_cpu, syn_cpu / emu_cpu, CPU_GOAL,
               note="the root partition's whole run time over the stretch"),
    ]
    return disk + network_figures(size)


if __name__ == "__main__":
    for f in run("tiny"):
        print(f"{f.name}: {f.value:.1f} {f.unit} (x{f.ratio:.4g})")
