"""The ELF loader of native guests: reads an x86-64 kernel image with pyelftools and writes its
segments into a child partition's memory.

Addresses: a segment goes to GPA = its p_paddr (its physical load address), which hvsim's kernels
link equal to p_vaddr; the executor maps guest-physical memory at the same virtual addresses
(an identity mapping), so a kernel linked at 1 MiB runs at GPA 1 MiB.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PAGE = 4096


class ElfLoadError(ValueError):
    """A kernel file that cannot run as a native guest; the message names the file and why."""

    def __init__(self, path, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = str(path), why


@dataclass(frozen=True)
class Segment:
    gpa: int          # where its first byte goes
    data: bytes       # the file's bytes (p_filesz)
    memsz: int        # bytes in memory: the rest past data is zero (.bss)
    flags: int        # PF_X 1, PF_W 2, PF_R 4

    @property
    def end(self) -> int:
        return self.gpa + self.memsz


@dataclass(frozen=True)
class ElfImage:
    path: str
    entry: int
    segments: tuple[Segment, ...]
    symbols: dict[int, str] = field(default_factory=dict, compare=False)  # address -> function name

    def symbol_at(self, address: int) -> str | None:
        """The name of the function `address` is in (the nearest symbol at or below it)."""
        if not any(s.gpa <= address < s.end and s.flags & 1 for s in self.segments):
            return None
        best = None
        for addr, name in self.symbols.items():
            if addr <= address and (best is None or addr > best[0]):
                best = (addr, name)
        return None if best is None else best[1]


def load_elf(path, memory_bytes: int | None = None) -> ElfImage:
    """Read and check a kernel image: ELF64, x86-64, ET_EXEC, PT_LOAD segments that do not overlap
    and (if `memory_bytes` is given) lie inside the VM's memory, an entry point inside a segment."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ElfLoadError(path, f"cannot be read ({exc.strerror or exc})") from None
    if raw[:4] != b"\x7fELF":
        raise ElfLoadError(path, "is not an ELF file (no \\x7fELF magic)")
    import io
    try:
        elf = ELFFile(io.BytesIO(raw))
        if elf.elfclass != 64:
            raise ElfLoadError(path, f"is ELF{elf.elfclass}; a native guest is ELF64")
        if elf["e_machine"] != "EM_X86_64":
            raise ElfLoadError(path, f"is for machine {elf['e_machine']}; a native guest is EM_X86_64")
        if elf["e_type"] != "ET_EXEC":
            raise ElfLoadError(path, f"is of type {elf['e_type']}; a native guest is a static ET_EXEC "
                                     "(link with -static -nostdlib, no -pie)")
        segments = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            if seg["p_filesz"] > seg["p_memsz"]:
                raise ElfLoadError(path, f"a PT_LOAD segment at {seg['p_paddr']:#x} has more file bytes "
                                         f"({seg['p_filesz']}) than memory bytes ({seg['p_memsz']})")
            segments.append(Segment(seg["p_paddr"], seg.data(), seg["p_memsz"], seg["p_flags"]))
        symbols = {}
        symtab = elf.get_section_by_name(".symtab")
        if symtab is not None:
            for sym in symtab.iter_symbols():
                if sym["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE") and sym.name and sym["st_value"]:
                    symbols.setdefault(sym["st_value"], sym.name)
        entry = elf["e_entry"]
    except ELFError as exc:
        raise ElfLoadError(path, f"is a damaged ELF file ({exc})") from None
    if not segments:
        raise ElfLoadError(path, "has no PT_LOAD segment")
    segments.sort(key=lambda s: s.gpa)
    for a, b in zip(segments, segments[1:]):
        if b.gpa < a.end:
            raise ElfLoadError(path, f"segments overlap: [{a.gpa:#x}, {a.end:#x}) and [{b.gpa:#x}, {b.end:#x})")
    if memory_bytes is not None:
        for s in segments:
            if s.end > memory_bytes:
                raise ElfLoadError(path, f"the segment [{s.gpa:#x}, {s.end:#x}) lies outside the VM's memory "
                                         f"(GPA 0 to {memory_bytes:#x})")
    if entry == 0:
        raise ElfLoadError(path, "has no entry point (e_entry is 0)")
    if not any(s.gpa <= entry < s.end and s.flags & 1 for s in segments):
        raise ElfLoadError(path, f"its entry point {entry:#x} is in no executable segment")
    return ElfImage(str(path), entry, tuple(segments), symbols)


def write_image(partition, image: ElfImage) -> None:
    """Write the image's segments into the partition's memory (file bytes, then zeros to memsz)."""
    for s in image.segments:
        partition.write(s.gpa, s.data + bytes(s.memsz - len(s.data)))
