"""`hvsim tcb`: the size of the compiled hypervisor core (its trusted computing base), read from
its ELF with pyelftools, beside the ≈600 KB Microsoft quoted for Hyper-V's hypervisor.

The shared library holds more than the hypervisor: cffi's generated wrappers and the Python
module's init function (the "glue"), and the C runtime start-up code and compiler support every
shared library carries (the "runtime"). Each symbol is given to one of the three owners from the
compile unit DWARF places it in (the core is built with -g), else from the symbol table's FILE
entries (local symbols only), else from its name; whatever no symbol covers is reported as unattributed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

# Microsoft's figure for the Hyper-V hypervisor. Only its order of magnitude is compared.
REFERENCE_BYTES = 600 * 1024

HYPERVISOR, GLUE, RUNTIME = "hypervisor", "glue", "runtime"
OWNERS = (HYPERVISOR, GLUE, RUNTIME)

# Where a symbol's bytes are counted, by the section it lives in.
_KIND_OF_SECTION = {".text": "code", ".rodata": "rodata", ".data": "data", ".data.rel.ro": "data", ".bss": "bss"}
KINDS = ("code", "rodata", "data", "bss")

# Toolchain symbols (crti/crtn, crtstuff.c) of a build without DWARF, where names are all we have.
_RUNTIME_NAMES = frozenset({"_init", "_fini", "frame_dummy", "register_tm_clones", "deregister_tm_clones",
                            "__do_global_dtors_aux", "completed.0"})

NOTES = (
    "Static functions the compiler inlined (-O2) have no symbol of their own: their code is counted "
    "in the functions they were inlined into.",
    "Compiler clones (.cold, .isra, .part, .constprop) are counted with the function they came from.",
    "Unattributed bytes are those no symbol covers: string literals and jump tables in .rodata, "
    "alignment padding between functions.",
    "glue = cffi's generated wrappers (_cffi_*) and the Python module init (PyInit__hvcore); "
    "runtime = C start-up code and compiler support every shared library carries.",
)
COMPARISON_NOTE = (
    "This compares orders of magnitude only. hvsim's core simulates a hypervisor's partitions, "
    "hypercalls, memory, scheduling and messages; it leaves out everything a real hypervisor needs "
    "for hardware (VT-x/AMD-V and nested paging, interrupt controllers and the IOMMU, boot, "
    "power management, processor errata, crash dumps), which is most of a real one."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tcb", help="the compiled hypervisor core's code and data sizes",
        description="Read the compiled hypervisor core's ELF and report its code and data sizes, "
                    "its functions (the largest, and per C source file), kept apart from the cffi "
                    "glue and the C runtime, beside the ≈600 KB Microsoft quoted for Hyper-V's "
                    "hypervisor.")
    parser.add_argument("--library", metavar="PATH",
                        help="ELF file to read (default: the core this Python loads)")
    parser.add_argument("--top", type=int, default=10, metavar="N",
                        help="how many of the largest functions to list (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=tcb_command)


@dataclass
class _Symbol:
    name: str
    address: int
    size: int
    kind: str           # one of KINDS
    source: str | None  # C source file, when known
    owner: str          # one of OWNERS


def measure(stream: BinaryIO, top: int = 10) -> dict[str, Any]:
    """The size report of one ELF shared library (the layout `--json` prints)."""
    elf = ELFFile(stream)
    sections = {s.name: s for s in elf.iter_sections()}
    symtab = sections.get(".symtab") or sections.get(".dynsym")
    if symtab is None:
        raise ELFError("it has neither a .symtab nor a .dynsym symbol table")
    dwarf = _DwarfSources.load(elf)
    symbols, file_symbols = _symbols(elf, symtab, dwarf)

    owners: dict[str, dict[str, int]] = {o: dict.fromkeys(KINDS, 0) for o in OWNERS}
    functions: dict[tuple[str, str | None, str], int] = defaultdict(int)
    for sym in symbols:
        owners[sym.owner][sym.kind] += sym.size
        if sym.kind == "code":
            # Clones such as `pump.cold` or `find_port.isra.0` belong to the function they came from.
            functions[(sym.owner, sym.source, sym.name.split(".")[0])] += sym.size
    for owner, sizes in owners.items():
        sizes["total"] = sum(sizes[k] for k in KINDS)
        sizes["functions"] = sum(1 for key in functions if key[0] == owner)

    section_sizes = {name: sections[name]["sh_size"] for name in (".text", ".rodata", ".data", ".data.rel.ro", ".bss")
                     if name in sections}
    covered: dict[str, int] = defaultdict(int)
    for sym in symbols:
        covered[sym.kind] += sym.size
    unattributed = dict.fromkeys(KINDS, 0)
    for name, size in section_sizes.items():
        unattributed[_KIND_OF_SECTION[name]] += size
    for kind in KINDS:
        unattributed[kind] = max(0, unattributed[kind] - covered[kind])

    files: dict[str, dict[str, int]] = defaultdict(lambda: {"functions": 0, "code": 0, "data": 0})
    for (owner, source, _), size in functions.items():
        if owner == HYPERVISOR:
            files[source or "?"]["functions"] += 1
            files[source or "?"]["code"] += size
    for sym in symbols:
        if sym.owner == HYPERVISOR and sym.kind != "code":
            files[sym.source or "?"]["data"] += sym.size
    largest = sorted(((size, name, source) for (owner, source, name), size in functions.items() if owner == HYPERVISOR),
                     key=lambda f: (-f[0], f[1]))[:max(0, top)]

    hv_total = owners[HYPERVISOR]["total"]
    ratio = REFERENCE_BYTES / hv_total if hv_total else math.inf
    return {
        "symbol_table": symtab.name,
        "attribution": "dwarf" if dwarf else ("file-symbols" if file_symbols else "names"),
        "sections": section_sizes,
        "image": sum(s["sh_size"] for s in elf.iter_sections() if s["sh_flags"] & 0x2),  # SHF_ALLOC
        "hypervisor": owners[HYPERVISOR],
        "glue": owners[GLUE],
        "runtime": owners[RUNTIME],
        "unattributed": unattributed,
        "files": [{"file": name, **sizes} for name, sizes in sorted(files.items())],
        "largest": [{"name": name, "size": size, "file": source} for size, name, source in largest],
        "reference": {"what": "Hyper-V's hypervisor, as quoted by Microsoft", "bytes": REFERENCE_BYTES,
                      "ratio": round(ratio, 1),
                      "orders_of_magnitude": round(math.log10(ratio), 1) if hv_total else None,
                      "note": COMPARISON_NOTE},
        "notes": list(NOTES),
    }


class _DwarfSources:
    """The C source file of an address, from the DWARF compile units' address ranges (code) and
    their top-level variables' locations (data)."""

    @classmethod
    def load(cls, elf: ELFFile) -> _DwarfSources | None:
        # N.B. not elf.has_dwarf_info(), which is true of any file with an .eh_frame. Without
        # .debug_aranges, addresses cannot be placed cheaply: fall back to the symbol table.
        if elf.get_section_by_name(".debug_info") is None:
            return None
        info = elf.get_dwarf_info()
        aranges = info.get_aranges()
        return cls(info, aranges, elf.little_endian) if aranges is not None else None

    def __init__(self, info, aranges, little_endian: bool):
        self._names: dict[int, str] = {}
        self._data: dict[int, str] = {}
        for cu in info.iter_CUs():
            top = cu.get_top_DIE()
            name = _cu_name(top)
            self._names[cu.cu_offset] = name
            for die in top.iter_children():
                location = die.attributes.get("DW_AT_location") if die.tag == "DW_TAG_variable" else None
                # DW_OP_addr <address>: a variable with static storage.
                if location and isinstance(location.value, list) and location.value[:1] == [0x03]:
                    raw = bytes(location.value[1:1 + cu["address_size"]])
                    self._data[int.from_bytes(raw, "little" if little_endian else "big")] = name
        self._aranges = aranges

    def code(self, address: int) -> str | None:
        return self._names.get(self._aranges.cu_offset_at_addr(address))

    def data(self, address: int) -> str | None:
        return self._data.get(address)

    def unit_named(self, base: str) -> str:
        """The compile unit whose source has this base name (a FILE symbol's), else the name."""
        return next((name for name in self._names.values() if os.path.basename(name) == base), base)


def _cu_name(top) -> str:
    name = top.attributes["DW_AT_name"].value.decode(errors="replace") if "DW_AT_name" in top.attributes else "?"
    # The generated cffi source is compiled from a temporary build directory; its name says enough.
    return os.path.basename(name) if "_hvcore" in os.path.basename(name) else name


def _symbols(elf: ELFFile, symtab, dwarf: _DwarfSources | None) -> tuple[list[_Symbol], bool]:
    """The sized functions and data objects, and whether the table had FILE symbols."""
    out: list[_Symbol] = []
    file_symbols = False
    seen: set[tuple[int, int]] = set()
    file_symbol: str | None = None  # local symbols follow the FILE symbol of their source
    for sym in symtab.iter_symbols():
        kind_of_symbol = sym["st_info"]["type"]
        if kind_of_symbol == "STT_FILE":
            file_symbol = sym.name or None
            file_symbols = True
            continue
        if kind_of_symbol not in ("STT_FUNC", "STT_OBJECT") or not isinstance(sym["st_shndx"], int):
            continue
        size, address = sym["st_size"], sym["st_value"]
        kind = _KIND_OF_SECTION.get(elf.get_section(sym["st_shndx"]).name)
        if not size or kind is None or (address, size) in seen:  # aliases are counted once
            continue
        seen.add((address, size))
        local = sym["st_info"]["bind"] == "STB_LOCAL"
        if dwarf is not None:
            source = dwarf.code(address) if kind == "code" else dwarf.data(address)
        else:
            source = None
        if source is None and local and file_symbol:
            # A FILE symbol gives only a base name; a compile unit says where the file is (a local
            # table GCC makes of a switch, CSWTCH.n, has no DWARF of its own).
            source = dwarf.unit_named(file_symbol) if dwarf is not None else file_symbol
        out.append(_Symbol(sym.name, address, size, kind, source, _owner(sym.name, source, dwarf is not None)))
    return out, file_symbols


def _owner(name: str, source: str | None, has_dwarf: bool) -> str:
    if name.startswith(("_cffi_", "PyInit_")):
        return GLUE
    if source is not None:
        base = os.path.basename(source)
        if "_hvcore" in base:
            return GLUE
        return RUNTIME if base.startswith("crt") else HYPERVISOR
    if has_dwarf:
        # hvsim's own C files are all compiled with debug information; what lies outside every
        # compile unit came from the toolchain (crti.o, crtstuff.c, libgcc).
        return RUNTIME
    if name.startswith("hv_"):
        return HYPERVISOR
    return RUNTIME if name in _RUNTIME_NAMES or name.startswith("__") else HYPERVISOR


def tcb_command(args: argparse.Namespace) -> int:
    if args.top < 0:
        print("hvsim tcb: --top must be 0 or more", file=sys.stderr)
        return 2
    if args.library is None:
        from hypervisor._binding import core_library_path
        path = core_library_path()
    else:
        path = args.library
    try:
        with open(path, "rb") as stream:
            report = {"library": os.path.abspath(path), **measure(stream, args.top)}
    except (ELFError, OSError) as exc:
        print(f"hvsim tcb: {path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or captured: no terminal width to fit, so do not fold
        console.width = max(console.width, 160)
    return console


def _print(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{escape(report['library'])}[/bold]  (symbols from {report['symbol_table']}, "
                  f"source files from {report['attribution']}; loadable image {_kib(report['image'])})")

    owners = Table(title="Who owns the bytes")
    for column in ("", *KINDS, "total", "functions"):
        owners.add_column(column, justify="left" if not column else "right")
    for owner in (*OWNERS, "unattributed"):
        sizes = report[owner]
        owners.add_row(owner, *(f"{sizes[k]:,}" for k in KINDS),
                       f"{sum(sizes[k] for k in KINDS):,}", f"{sizes['functions']:,}" if "functions" in sizes else "")
    console.print(owners)

    files = Table(title="Hypervisor code per C source file")
    for column, justify in (("file", "left"), ("functions", "right"), ("code", "right"), ("data", "right")):
        files.add_column(column, justify=justify)
    for row in report["files"]:
        files.add_row(row["file"], str(row["functions"]), f"{row['code']:,}", f"{row['data']:,}")
    console.print(files)

    if report["largest"]:
        largest = Table(title=f"The {len(report['largest'])} largest hypervisor functions")
        for column, justify in (("function", "left"), ("bytes", "right"), ("file", "left")):
            largest.add_column(column, justify=justify)
        for f in report["largest"]:
            largest.add_row(f["name"], f"{f['size']:,}", f["file"] or "?")
        console.print(largest)

    ref = report["reference"]
    hv = report["hypervisor"]["total"]
    orders = ref["orders_of_magnitude"]
    if orders is None:
        console.print(f"No hypervisor code or data found. {ref['what']}: ≈{ref['bytes'] // 1024} KB.")
    else:
        console.print(
            f"hvsim's hypervisor: {_kib(hv)} of code and data; {ref['what']}: ≈{ref['bytes'] // 1024} KB, "
            f"about {ref['ratio']:g}× as much ({orders:g} orders of magnitude). Even the whole loadable "
            f"image, glue and symbol tables included, is {_kib(report['image'])}.")
    console.print(ref["note"], style="dim")
    for note in report["notes"]:
        console.print(f"N.B. {note}", style="dim")
