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
