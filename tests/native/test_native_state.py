"""A native VM's state is data: its CPU (registers, descriptor tables, control registers, halted
flag, interrupts not yet taken) and its executor's state go in the guest record, so the counter
kernel saves and restores in one process and into a new shell, and moves live and post-copy,
counting on each time from where it stood."""
import subprocess
from pathlib import Path

import msgpack
import pytest
from elftools.elf.elffile import ELFFile

from partitions.config import loads
from partitions.management import ManagedHost
from partitions.savedstate import SavedStateError
from tests.native.kernels import two_hosts

GUEST = Path(__file__).resolve().parents[2] / "native" / "guest"
PAGE = 4096
MS = 1_000_000


@pytest.fixture(scope="module")
def counter() -> tuple[Path, list[int]]:
    """The counter kernel's ELF and the GPA pages of its 64-page region."""
    subprocess.run(["make", "-s", "-C", str(GUEST)], check=True)
    elf = GUEST / "build" / "counter.elf"
    with open(elf, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        sym = symtab.get_symbol_by_name("counter_region")[0]
    first = sym["st_value"] // PAGE
    return elf, list(range(first, first + sym["st_size"] // PAGE))


def host_text(elf: Path) -> str:
    return f'''
[host]
logical_processors = 1
memory = "128MiB"
[[vm]]
name = "n"
memory = "8MiB"
kernel = "{elf}"
'''


def counters(vm, region) -> list[int]:
    return [int.from_bytes(vm.partition.read(page * PAGE, 8), "little") for page in region]


def qemu_check(values: list[int]) -> bool:
    """Every page's counter equals its neighbour's, or is one less at a single edge."""
    edges = [i for i in range(1, len(values)) if values[i] != values[i - 1]]
    return not edges or (len(edges) == 1 and values[edges[0]] == values[edges[0] - 1] - 1)


def test_the_cpu_record_is_plain_data_and_holds_the_cpu(counter, tmp_path):
    from partitions.native_guest.cpu import check_state
    elf, _ = counter
    m = ManagedHost(loads(host_text(elf)), workdir=tmp_path)
    try:
        m.run(10 * MS)
        vm = m.vms["n"]
        vm.freeze()
        record = vm.capture()["guest"]["native"]
        cpu = vm._native_cpu
        assert msgpack.unpackb(msgpack.packb(record)) == record and check_state(record) is None
        assert record["registers"] == cpu.registers() and record["instructions"] == cpu.instructions > 0
        assert record["idtr"][1] > 0          # start.S loaded its IDT
        assert record["overlay"] is not None  # the hypercall page is enabled
        assert record["halted"] is True       # the counter waits for its timer almost always
        vm.thaw()
    finally:
        m.close()


def test_a_cpu_built_from_a_record_gives_the_same_record_back(counter):
    from partitions.native_guest.cpu import NativeCpu
    from tests.native.kernels import Booted
    elf, _ = counter
    b = Booted(elf).run(5 * MS)
    record = b.cpu.save_state()
    # Values the counter kernel leaves at their reset values, so that each is seen to travel.
    record["control"]["fs_base"], record["control"]["gs_base"] = 0x12345000, 0x6789A000
    record["gdtr"] = [0x2000, 0x27]
    record["pending"], record["raised_sints"] = [0x31], 1 << 3
    record["uart"]["partial"] = b"half a li"
    record["exits"]["io"] += 7
    again = NativeCpu.from_state(b.child.vp(0), record)
    again.ctx = b.cpu.ctx            # native_guest gives it its context (and adds the raised SINTs)
    b.cpu.ctx.raised_sints |= record["raised_sints"]
    assert again.save_state() == record
    with pytest.raises(ValueError, match="registers"):
        NativeCpu.from_state(b.child.vp(0), {**record, "registers": {"rip": 0}})


def test_save_and_restore_in_one_process_counts_on(counter, tmp_path):
    elf, region = counter
    m = ManagedHost(loads(host_text(elf)), workdir=tmp_path)
    try:
        m.run(20 * MS)
        vm = m.vms["n"]
        vm.save(tmp_path / "n.hvsav")
        m.run(25 * MS)
        vm.restore()
        at = counters(vm, region)
        assert qemu_check(at) and at[0] > 0
        m.run(45 * MS)
        values = counters(vm, region)
        assert vm.state.value == "Running" and qemu_check(values) and min(values) > max(at)
    finally:
        m.close()


@pytest.mark.parametrize("how", ["restore_vm", "vm.restore"])
def test_restore_into_a_new_shell_continues_the_kernel(counter, tmp_path, how):
    elf, region = counter
    old = ManagedHost(loads(host_text(elf)), workdir=tmp_path / "old")
    old.run(20 * MS)
    vm = old.vms["n"]
    vm.freeze()
    saved_cpu = vm.capture()["guest"]["native"]
    vm.thaw()
    vm.save(tmp_path / "n.hvsav")
    old.close()

    new = ManagedHost(loads(host_text(elf)), workdir=tmp_path / "new")
    try:
        vm = new.vms["n"]
        if vm.state.value != "Off":
            vm.turn_off()
        if how == "restore_vm":
            new.restore_vm(tmp_path / "n.hvsav")
        else:
            vm.restore(tmp_path / "n.hvsav")
        at = counters(vm, region)
        assert qemu_check(at) and at[0] > 0
        # The guest's reference time is the host's clock (no per-partition offset yet): this host
        # starts at 0, and the kernel's one-shot timer, armed before the save at ~20 ms, fires
        # when this clock passes that time.
        new.run(45 * MS)
        values = counters(vm, region)
        assert vm.state.value == "Running" and qemu_check(values) and min(values) > max(at)
        # The kernel went on: it did not start again from _start (its banner is not written again),
        # and its CPU counted on from the saved instruction count.
        assert not any(line.startswith("counter: 64 pages") for line in vm.console)
        assert vm._native_cpu.instructions > saved_cpu["instructions"]
    finally:
        new.close()


def test_a_bad_cpu_record_is_refused_and_the_vm_stays_off(counter, tmp_path):
    from partitions.savedstate import SavedStateReader, SavedStateWriter
    elf, _ = counter
    old = ManagedHost(loads(host_text(elf)), workdir=tmp_path / "old")
    old.run(10 * MS)
    old.vms["n"].save(tmp_path / "n.hvsav")
    old.close()
    # The same file with its CPU record's RIP missing.
    with SavedStateReader(tmp_path / "n.hvsav", kind="saved-state") as r:
        meta = r.meta
        sections = {name: r.load(name) for name in ("vps", "devices", "host_visibility", "config", "guest",
                                                     "measured")}
        memory = list(r.records("memory"))
    del sections["guest"]["native"]["registers"]["rip"]
    with SavedStateWriter(tmp_path / "bad.hvsav", "saved-state", meta) as w:
        for name, value in sections.items():
            w.section(name, value)
        mem = w.stream("memory")
        for rec in memory:
            mem.write_record(rec)
        mem.close()
    new = ManagedHost(loads(host_text(elf)), workdir=tmp_path / "new")
    try:
        vm = new.vms["n"]
        if vm.state.value != "Off":
            vm.turn_off()
        with pytest.raises(SavedStateError, match="guest.native: registers"):
            vm.restore(tmp_path / "bad.hvsav")
        assert vm.state.value == "Off" and vm.partition is None
    finally:
        new.close()


@pytest.mark.parametrize("kind", ["live", "post-copy"])
def test_a_native_counter_vm_moves_and_counts_on_on_the_target(counter, tmp_path, kind):
    from partitions.datacenter import Datacenter
    elf, region = counter
    text = two_hosts(f'[[host.vm]]\nname = "n"\nmemory = "8MiB"\nkernel = "{elf}"\n')
    dc = Datacenter(loads(text), seed=1, workdir=tmp_path)
    dc.run("30ms")
    source = dc.hosts["a"].managed.vms["n"]
    before = counters(source, region)
    record = source.move(to="b", kind=kind)
    dc.run("300ms")
    assert record.outcome == "completed", record.reason
    target = dc.hosts["b"].managed.vms["n"]
    assert target.state.value == "Running"
    values = counters(target, region)
    assert qemu_check(values), values
    assert min(values) > max(before) > 0
    assert not any(line.startswith("counter: 64 pages") for line in target.console)
