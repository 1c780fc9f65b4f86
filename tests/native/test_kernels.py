"""The example kernels of native/guest/ build with the system gcc (`make guests`) into ELF files
the loader takes: static x86-64 executables linked at 1 MiB, entered at _start, whose PT_LOAD
segments are page aligned, do not overlap and are never both writable and executable."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

GUEST = Path(__file__).resolve().parents[2] / "native" / "guest"
KERNELS = ("hello", "echo", "counter")
BASE = 0x100000


@pytest.fixture(scope="module")
def kernels() -> dict[str, Path]:
    subprocess.run(["make", "-s", "-C", str(GUEST)], check=True)
    return {name: GUEST / "build" / f"{name}.elf" for name in KERNELS}


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_is_a_static_x86_64_executable_at_1_mib(kernels, name):
    with open(kernels[name], "rb") as f:
        elf = ELFFile(f)
        assert (elf.elfclass, elf.little_endian) == (64, True)
        assert (elf["e_machine"], elf["e_type"]) == ("EM_X86_64", "ET_EXEC")
        kinds = {seg["p_type"] for seg in elf.iter_segments()}
        assert kinds == {"PT_LOAD"}  # no interpreter, no dynamic section, no notes
        symbols = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()}
        assert elf["e_entry"] == symbols["_start"] == BASE

        loads = sorted((s["p_paddr"], s["p_memsz"], s["p_filesz"], s["p_flags"], s["p_vaddr"])
                       for s in elf.iter_segments())
        end = 0
        for paddr, memsz, filesz, flags, vaddr in loads:
            assert paddr == vaddr and paddr % 4096 == 0 and filesz <= memsz
            assert paddr >= max(end, BASE)            # in order and apart
            assert not (flags & P_FLAGS.PF_W and flags & P_FLAGS.PF_X)
            end = paddr + memsz
        assert end <= 2 << 20  # the whole kernel, .bss included, below 2 MiB
        assert any(flags & P_FLAGS.PF_X and paddr <= BASE < paddr + memsz
                   for paddr, memsz, _, flags, _ in loads)

        # What the SDK keeps in .bss must be page aligned for the MSRs that name it.
        for page in ("hvg_hypercall_page", "hvg_sim_page", "hvg_sief_page"):
            assert symbols[page] % 4096 == 0, page


def test_counter_exports_its_region(kernels):
    with open(kernels["counter"], "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        region = symtab.get_symbol_by_name("counter_region")[0]
        assert region["st_value"] % 4096 == 0 and region["st_size"] == 64 * 4096
        assert symtab.get_symbol_by_name("counter_pages")[0]["st_size"] == 4


# -- the kernels running on hvsim ----------------------------------------------------------------

MS = 1_000_000


def test_hello_calls_the_hypervisor_and_takes_timer_interrupts(kernels):
    from partitions.native_guest.cpu import VENDOR_ID
    from tests.native.kernels import Booted
    b = Booted(kernels["hello"]).run(20 * MS)
    lines = b.uart.lines
    assert lines[0] == f'hello: hypervisor "{VENDOR_ID.decode()}", leaves to 40000006'
    assert lines[1] == f"hello: privileges {b.child.privileges:016x}"
    assert lines[2] == f"hello: GetPartitionId status 0 partition {b.child.id}"
    assert lines[3] == "hello: CreatePartition status 6"       # ACCESS_DENIED: the parent's call
    ticks = [line.split() for line in lines[4:7]]
    assert [t[:5] for t in ticks] == [["hello:", "tick", str(n), "timer", "0"] for n in (1, 2, 3)]
    due = [int(t[-1]) for t in ticks]
    assert due[1] - due[0] == due[2] - due[1] == 10_000        # the 1 ms period, in 100 ns
    assert lines[7:] == ["hello: 3 timer interrupts, done"]
    assert b.cpu.exits["interrupt"] == 3 and b.cpu.exits["hypercall"] == 2


def test_echo_kernel_exchanges_packets_with_the_python_echo_vsp(kernels, tmp_path):
    from partitions.config import loads
    from partitions.management import ManagedHost
    config = loads(f'''
[host]
logical_processors = 1
memory = "256MiB"

[[vm]]
name = "c"
memory = "16MiB"
kernel = "{kernels["echo"]}"
devices = [ {{ type = "echo" }} ]
''', base_dir=tmp_path)
    m = ManagedHost(config, workdir=tmp_path / "work")
    try:
        m.run(100 * MS)
        vm = m.vms["c"]
        assert vm.console[0].startswith("echo: VMBus version 50003, message connection ")
        assert vm.console[-6:] == ["echo: version 20000 accepted"] + [
            f"echo: reply {i}: hello from C #{i}" for i in range(4)] + [
            "echo: 4 echoes and 60 patterned echoes of up to 3072 bytes, done"]
        vsp = vm.device_vsp("echo")
        assert (vsp.version, vsp.echoed, vsp.rejected) == (0x00020000, 64, 0)
    finally:
        m.close()


def test_counter_kernel_writes_every_page_round_after_round(kernels):
    from tests.native.kernels import Booted
    with open(kernels["counter"], "rb") as f:
        region = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name("counter_region")[0]["st_value"]
    b = Booted(kernels["counter"]).run(20 * MS)
    values = [b.u64(region + i * 4096) for i in range(64)]
    first = values[0]
    # A round every ~1 ms (its timer) for 20 ms; a round cut by the end of the run leaves its
    # pages ahead of the rest by one.
    assert 10 <= first <= 21
    assert set(values) <= {first, first - 1} and values == sorted(values, reverse=True)
    assert b.uart.lines[0].startswith("counter: 64 pages at 0x")
