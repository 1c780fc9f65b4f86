"""A VM's emulated devices are part of its state: the IDE drive (task file, status, the PIO buffer
and how far the guest got through it) and the 16550's unfinished line go into the image's
"emulated" section, so a native kernel saved in the middle of a multi-sector PIO read reads on
from the word it stopped at: restored in the same shell, into a new shell, in a new process, and
moved live to another host."""
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from drivers.storage.vhd import VirtualDisk
from partitions.config import loads
from partitions.management import ManagedHost
from partitions.savedstate import SavedStateError, SavedStateReader, SavedStateWriter
from tests.native.kernels import build, two_hosts

MS = 1_000_000
READS, SECTORS = 24, 4                  # 24 reads of 4 sectors (2 KiB, 1,024 words) each
BUFFER, DONE = 0x200000, 0x1F0000       # where the kernel puts what it read, and its count of reads

# Reads sectors 0.. in commands of SECTORS, one word per `in`, into BUFFER; counts each read at DONE.
PIO_READER = f"""
  xor %rbx, %rbx
  mov ${BUFFER:#x}, %rdi
next:
  mov $0x1f6, %dx
  mov $0xe0, %al
  out %al, %dx
  mov $0x1f2, %dx
  mov ${SECTORS}, %al
  out %al, %dx
  mov %rbx, %rax
  shl $2, %rax
  mov $0x1f3, %dx
  out %al, %dx
  shr $8, %rax
  mov $0x1f4, %dx
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
  jnz stop
  mov $0x1f0, %dx
  mov ${SECTORS * 256}, %rcx
word:
  in %dx, %ax
  mov %ax, (%rdi)
  add $2, %rdi
  dec %rcx
  jnz word
  inc %rbx
  mov %rbx, {DONE:#x}
  cmp ${READS}, %rbx
  jne next
stop:
  hlt
  jmp stop
"""


def pattern(size: int) -> bytes:
    """Every sector different, every word of it too: sector n holds n and the word's index."""
    return b"".join(bytes((n * 7 + i) & 0xFF for i in range(512)) for n in range(size // 512))


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    """The PIO reader's ELF and the VHD (1 MiB, patterned) its emulated IDE disk serves."""
    elf = build(tmp_path, "pio_reader", PIO_READER)
    base = tmp_path / "legacy.vhd"
    with VirtualDisk.create(base, 1 << 20, "dynamic", created_at=0) as disk:
        disk.write(0, pattern(1 << 20))
    return elf, base


def host_text(elf: Path, base: Path) -> str:
    return f'''
[host]
logical_processors = 1
memory = "128MiB"
[[vm]]
name = "n"
memory = "4MiB"
kernel = "{elf}"
ide = "{base}"
'''


def run_to_mid_transfer(m: ManagedHost, at: int = 30 * MS) -> dict:
    """Run to `at` and check that the drive is in the middle of a read's PIO data (some words of
    its buffer taken, not all); its state then."""
    m.run(at)
    ide = m.vms["n"].emulated["ide"]
    assert ide.buffer and 0 < ide.pos < len(ide.buffer), (ide.pos, len(ide.buffer))
    return ide.save_state()


def read_back(vm) -> tuple[int, bool]:
    """(reads the kernel counted, whether what it read is the disk's contents)."""
    done = int.from_bytes(vm.partition.read(DONE, 8), "little")
    got = vm.partition.read(BUFFER, READS * SECTORS * 512)
    return done, got == pattern(1 << 20)[:READS * SECTORS * 512]


def test_the_emulated_record_holds_the_drive_mid_transfer(files, tmp_path):
    elf, base = files
    m = ManagedHost(loads(host_text(elf, base)), workdir=tmp_path / "run")
    try:
        drive = run_to_mid_transfer(m)
        vm = m.vms["n"]
        vm.freeze()
        record = vm.capture()["emulated"]
        vm.thaw()
        assert record["format"] == 1 and sorted(record["devices"]) == ["ide", "uart"]
        ide = record["devices"]["ide"]
        assert msgpack.unpackb(msgpack.packb(ide)) == ide
        assert (ide["pos"], ide["buffer"], ide["status"]) == (drive["pos"], drive["buffer"], drive["status"])
        assert ide["buffer"] == pattern(1 << 20)[len(ide["buffer"]) * (ide["completed"]["read"] - 1):][:len(ide["buffer"])]
        assert record["devices"]["uart"] == {"partial": b""}
    finally:
        m.close()


@pytest.mark.parametrize("where", ["same shell", "new shell"])
def test_a_save_in_the_middle_of_a_pio_read_reads_on_after_the_restore(files, tmp_path, where):
    elf, base = files
    old = ManagedHost(loads(host_text(elf, base)), workdir=tmp_path / "old")
    run_to_mid_transfer(old)
    old.vms["n"].save(tmp_path / "n.hvsav")
    if where == "same shell":
        old.run(40 * MS)
        vm, host = old.vms["n"], old
        vm.restore()
    else:
        old.close()
        host = ManagedHost(loads(host_text(elf, base)), workdir=tmp_path / "new")
        vm = host.restore_vm(tmp_path / "n.hvsav")
    try:
        host.run(host.host.now + 200 * MS)
        assert vm.state.value == "Running"
        assert read_back(vm) == (READS, True)
        assert vm.emulated["ide"].completed["aborted"] == 0
    finally:
        host.close()
        if host is not old:
            old.close()


RESTORE = """
import sys
from partitions.config import load
from partitions.management import ManagedHost
from tests.native.test_emulated_state import read_back
config, workdir, saved, out = sys.argv[1:]
host = ManagedHost(load(config), workdir=workdir)
vm = host.restore_vm(saved)
host.run(200_000_000)
done, same = read_back(vm)
open(out, "w").write(f"{vm.state.value} {done} {same}")
host.close()
"""


def test_a_save_in_the_middle_of_a_pio_read_reads_on_in_a_new_process(files, tmp_path):
    elf, base = files
    config = tmp_path / "host.toml"
    config.write_text(host_text(elf, base))
    old = ManagedHost(loads(host_text(elf, base)), workdir=tmp_path / "old")
    run_to_mid_transfer(old)
    old.vms["n"].save(tmp_path / "n.hvsav")
    old.close()
    out = tmp_path / "report.txt"
    subprocess.run([sys.executable, "-c", RESTORE, str(config), str(tmp_path / "new"), str(tmp_path / "n.hvsav"),
                    str(out)], check=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert out.read_text() == f"Running {READS} True"


@pytest.mark.parametrize("kind", ["live", "post-copy"])
def test_a_vm_moved_in_the_middle_of_a_pio_read_reads_on_on_the_target(files, tmp_path, kind):
    from partitions.datacenter import Datacenter
    elf, base = files
    text = two_hosts(f'[[host.vm]]\nname = "n"\nmemory = "4MiB"\nkernel = "{elf}"\nide = "{base}"\n')
    dc = Datacenter(loads(text), seed=1, workdir=tmp_path)
    dc.run("30ms")
    source = dc.hosts["a"].managed.vms["n"]
    assert 0 < source.emulated["ide"].pos < len(source.emulated["ide"].buffer)
    record = source.move(to="b", kind=kind)
    dc.run("300ms")
    assert record.outcome == "completed", record.reason
    target = dc.hosts["b"].managed.vms["n"]
    assert target.state.value == "Running"
    assert read_back(target) == (READS, True)


def test_a_bad_drive_record_is_refused_and_the_vm_stays_off(files, tmp_path):
    elf, base = files
    old = ManagedHost(loads(host_text(elf, base)), workdir=tmp_path / "old")
    run_to_mid_transfer(old)
    old.vms["n"].save(tmp_path / "n.hvsav")
    old.close()
    with SavedStateReader(tmp_path / "n.hvsav", kind="saved-state") as r:
        meta = r.meta
        sections = {name: r.load(name) for name in r.sections() if name != "memory"}
        memory = list(r.records("memory"))
    sections["emulated"]["devices"]["ide"]["pos"] = len(sections["emulated"]["devices"]["ide"]["buffer"]) + 2
    with SavedStateWriter(tmp_path / "bad.hvsav", "saved-state", meta) as w:
        for name, value in sections.items():
            w.section(name, value)
        mem = w.stream("memory")
        for rec in memory:
            mem.write_record(rec)
        mem.close()
    new = ManagedHost(loads(host_text(elf, base)), workdir=tmp_path / "new")
    try:
        vm = new.vms["n"]
        with pytest.raises(SavedStateError, match="emulated.devices.ide: pos"):
            vm.restore(tmp_path / "bad.hvsav")
        assert vm.state.value == "Off" and vm.partition is None and vm.emulated == {}
    finally:
        new.close()
