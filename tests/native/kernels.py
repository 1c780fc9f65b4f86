"""Tiny native kernels for the tests, assembled at test time with the system gcc and ld, and a
small ELF writer for the malformed images the loader must refuse."""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

BASE = 0x100000  # where the kernels are linked: GPA 1 MiB

#: Set the guest OS id and enable the hypercall page at GPA 0x300000 (RAX, RCX, RDX clobbered).
HYPERCALL_SETUP = r'''
  mov $0x40000000, %ecx
  mov $1, %eax
  xor %edx, %edx
  wrmsr
  mov $0x40000001, %ecx
  mov $0x300001, %eax
  wrmsr
'''
HALT_FOREVER = "9: hlt\n  jmp 9b\n"


def build(tmp_path: Path, name: str, body: str) -> Path:
    """Assemble `body` (the code after `_start:`) into a static x86-64 ELF linked at BASE."""
    if shutil.which("gcc") is None or shutil.which("ld") is None:
        raise RuntimeError("the native-guest tests need the system gcc and ld (Debian: build-essential)")
    src = tmp_path / f"{name}.S"
    src.write_text(".globl _start\n.text\n_start:\n" + body)
    obj, elf = tmp_path / f"{name}.o", tmp_path / f"{name}.elf"
    subprocess.run(["gcc", "-c", str(src), "-o", str(obj)], check=True)
    subprocess.run(["ld", "-static", "-nostdlib", f"-Ttext={BASE:#x}", "-e", "_start", str(obj), "-o", str(elf)],
                   check=True)
    return elf


def elf_bytes(segments, *, entry: int = BASE, cls: int = 2, machine: int = 62, etype: int = 2) -> bytes:
    """An ELF file with `segments` [(paddr, data, memsz, flags)] as PT_LOAD program headers; cls 2 is
    ELF64, machine 62 EM_X86_64, etype 2 ET_EXEC."""
    phoff, phnum = 64, len(segments)
    data_off = phoff + 56 * phnum
    ident = b"\x7fELF" + bytes([cls, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", etype, machine, 1, entry, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    phdrs, blobs, off = b"", b"", data_off
    for paddr, data, memsz, flags in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, flags, off, paddr, paddr, len(data), memsz, 0x1000)
        blobs += data
        off += len(data)
    return header + phdrs + blobs


class Booted:
    """A host with one child running a native kernel: the child, its CPU, its console."""

    def __init__(self, elf: Path, *, memory: str = "4MiB", seed: int = 3):
        from hypervisor.host import Host
        from partitions.native_guest.cpu import Uart16550, native_guest
        from partitions.native_guest.loader import load_elf
        from partitions.worker import VmSpec, VmWorker
        self.host = Host(logical_processors=2, memory="256MiB", seed=seed)
        self.child = VmWorker(self.host, VmSpec("n", memory=memory)).build()
        self.uart = Uart16550()
        cpus = []
        self.child.vp(0).run(native_guest(load_elf(elf), uart=self.uart, on_start=cpus.append))
        self.host.root.resume_partition(self.child)
        self._cpus = cpus

    @property
    def cpu(self):
        return self._cpus[0]

    def run(self, until: int) -> "Booted":
        self.host.run(until=until)
        return self

    def u64(self, gpa: int) -> int:
        return int.from_bytes(self.child.read(gpa, 8), "little")


#: A host file of a native VM (its kernel's file name in {kernel}) beside a Python VM that burns
#: half of the only LP: what a hostile kernel's tests check runs on.
BESIDE_A_BURNER = '''
[host]
logical_processors = 1
memory = "512MiB"

[[vm]]
name = "native"
memory = "4MiB"
kernel = "{kernel}"

[[vm]]
name = "other"
memory = "64MiB"
workload = {{ kind = "cpu-burn", duty = 0.5 }}
'''


def two_hosts(vm: str) -> str:
    """A datacenter file: hosts "a" and "b" (2 LPs, 256 MiB each) on a 10 Gbit/s, 50 us link, with
    the [[host.vm]] table `vm` on "a" (the native tests' live and post-copy moves)."""
    host = 'logical_processors = 2\nmemory = "256MiB"\n'
    return (f'[[host]]\nname = "a"\n{host}\n{vm}\n[[host]]\nname = "b"\n{host}\n'
            '[[link]]\nhosts = ["a", "b"]\nbandwidth = "10Gbit/s"\nlatency = "50us"\n')
