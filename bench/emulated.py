"""The same disk workload (4 KiB reads at scattered offsets, one at a time) through the emulated IDE
disk and through storvsc (synthetic), as simulated I/Os per second and parent CPU per I/O: the
seeds' point that synthetic devices beat emulation, reproduced by the simulator's cost model.

Emulated: a native kernel (assembled here with the system gcc) drives the IDE disk
(partitions/native_guest/ide.py) by ATA PIO: the task file, READ SECTORS for 8 sectors, a status
poll, then 2,048 `in` instructions for the data, each an intercept that goes out to the parent
(the cost model's 4 us exit plus the device's time). Its parent CPU is what the VM's intercept bus
counts (exits and device time; the medium's time is waited, not CPU).

Synthetic: a managed VM whose disk-io workload reads 4 KiB at random offsets, queue depth 1,
through storvsc -> VMBus -> storvsp; its parent CPU is the root partition's run time over the
same stretch (all of the root's work, so if anything it overstates the synthetic path's cost).

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

# The number of reads to make is at COUNTER; each is a 4 KiB READ SECTORS at LBA rbx, its data into
# BUFFER by `inw`, the next LBA a stride away (8-sector aligned, inside the 16 MiB disk's 32,768
# sectors); the simulated time (rdtsc) of the start and of the end go to COUNTER + 16 and + 8.
_KERNEL = f"""
.globl _start
.text
_start:
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
  mov $0x1f7, %dx
  mov $0x20, %al
  out %al, %dx
poll:
  in %dx, %al
  test $0x80, %al
  jnz poll
  test $0x01, %al
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
        return {"ios": reads, "ns": end - begin, "parent_ns": bus.parent_ns["ide"], "medium_ns": bus.medium_ns["ide"],
                "accesses": bus.accesses["ide"]}


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


def run(size: str = "default") -> list[Figure]:
    reads, boot_ms, span_ms = PLAN[size]
    with tempfile.TemporaryDirectory(prefix="hvsim-bench-emulated-") as tmp:
        tmp = Path(tmp)
        emu, syn = emulated(tmp, reads), synthetic(tmp, boot_ms, span_ms)
    emu_iops, syn_iops = emu["ios"] / (emu["ns"] / 1e9), syn["ios"] / (span_ms / 1000)
    emu_cpu, syn_cpu = emu["parent_ns"] / emu["ios"] / 1000, syn["parent_ns"] / syn["ios"] / 1000
    base_iops = "emulated IDE (ATA PIO, a word per intercept): 4 KiB reads, QD 1"
    base_cpu = "emulated IDE: parent CPU per 4 KiB read"
    return [
        Figure(base_iops, emu_iops, "I/O per simulated s", base_iops, 1.0,
               note=f"{reads} reads, {emu['accesses'] // reads} intercepts each; simulated, deterministic",
               extra={"ios": emu["ios"], "medium_us_per_io": emu["medium_ns"] / emu["ios"] / 1000}),
        Figure("synthetic storvsc -> storvsp: the same reads", syn_iops, "I/O per simulated s", base_iops,
               syn_iops / emu_iops, IOPS_GOAL, note=f"over {span_ms} ms after {boot_ms} ms of boot; simulated",
               extra={"ios": syn["ios"]}),
        Figure(base_cpu, emu_cpu, "us", base_cpu, 1.0, note="the VM's intercept bus: exits and device time"),
        Figure("synthetic storvsc: parent CPU per 4 KiB read", syn_cpu, "us", base_cpu, syn_cpu / emu_cpu, CPU_GOAL,
               note="the root partition's whole run time over the stretch"),
    ]


if __name__ == "__main__":
    for f in run("tiny"):
        print(f"{f.name}: {f.value:.1f} {f.unit} (x{f.ratio:.4g})")
