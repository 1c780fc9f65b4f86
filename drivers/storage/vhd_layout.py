"""Where the parts of a VHD file sit: the layout of new files, and the checks on existing ones.

A new dynamic or differencing file is, in order: footer copy (0), dynamic header (512), parent
locator data (differencing only), BAT, then the footer. Blocks are appended later, each where the
footer was. Parent locators sit *before* the BAT because qemu appends new blocks after the BAT's
end and the last block only, and would overwrite locators placed after the BAT (Hyper-V's layout)
when it writes to a child.

Opening checks that every part lies inside the file and that no two parts overlap, so a later
write can never land on metadata or on another block, and no read runs past the file.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import uuid
from array import array
from collections.abc import Iterator

from drivers.storage.vhd_format import (
    DYNAMIC_HEADER_SIZE, EMPTY_LOCATOR, FOOTER_SIZE, SECTOR_SIZE, UNALLOCATED, DiskType,
    DynamicHeader, Footer, ParentLocator, PlatformCode, VhdCorruptError, decode_locator_path,
    empty_bat, encode_locator_path, sector_align, unpack_bat,
)

DYNAMIC_HEADER_AT = FOOTER_SIZE
LOCATOR_DATA_AT = DYNAMIC_HEADER_AT + DYNAMIC_HEADER_SIZE


@dataclasses.dataclass(frozen=True)
class Metadata:
    """The checked metadata of an open file; `header` and `bat` are None for a fixed disk."""

    footer: Footer
    header: DynamicHeader | None
    bat: array | None
    file_size: int


@dataclasses.dataclass(frozen=True)
class ParentLink:
    """What a new differencing disk records about its parent."""

    path: str  # absolute
    unique_id: bytes
    timestamp: int  # the parent file's modification time, VHD epoch


# --- new files ---------------------------------------------------------------------------------

def new_file_layout(path: str, footer: Footer, block_size: int,
                    parent: ParentLink | None) -> list[tuple[int, bytes]]:
    """The (offset, bytes) pieces of a new, empty VHD; gaps between pieces read as zeros."""
    if footer.disk_type is DiskType.FIXED:
        return [(footer.current_size, footer.pack())]
    locators: list[ParentLocator] = []
    pieces: list[tuple[int, bytes]] = []
    at = LOCATOR_DATA_AT
    name = ""
    if parent is not None:
        child_dir = os.path.dirname(os.path.abspath(path))
        relative = os.path.relpath(parent.path, child_dir)
        if not relative.startswith(".."):
            relative = os.path.join(".", relative)
        # Windows separators, as Hyper-V writes them: the platform codes say "Windows".
        for code, text in ((PlatformCode.W2RU, relative.replace(os.sep, "\\")),
                           (PlatformCode.W2KU, parent.path)):
            data = encode_locator_path(text)
            space = sector_align(len(data))
            locators.append(ParentLocator(code.value, space // SECTOR_SIZE, len(data), at))
            pieces.append((at, data))
            at += space
        name = os.path.basename(parent.path)
    entries = -(-footer.current_size // block_size)
    header = DynamicHeader(
        table_offset=at, max_table_entries=entries, block_size=block_size,
        parent_unique_id=parent.unique_id if parent else bytes(16),
        parent_timestamp=parent.timestamp if parent else 0,
        parent_name=name,
        locators=tuple(locators) + (EMPTY_LOCATOR,) * (8 - len(locators)),
    )
    bat = empty_bat(entries)
    packed = footer.pack()
    return [(0, packed), (DYNAMIC_HEADER_AT, header.pack()), *pieces, (at, bat), (at + len(bat), packed)]


def write_new_file(path: str, layout: list[tuple[int, bytes]]) -> None:
    """Write (offset, bytes) pieces to a temporary file, then publish it at `path` atomically.

    The file ends at the end of the last piece. Refuses to replace an existing path, and leaves
    nothing behind on failure: the disk appears complete, fsynced, or not at all.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, "refusing to replace an existing file", path)
    # Not tempfile.mkstemp: that creates mode 0600, and a disk should get the umask's mode like
    # any other new file (qemu-img's do).
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        try:
            os.ftruncate(fd, max(at + len(data) for at, data in layout))
            for at, data in layout:
                view = memoryview(data)
                done = 0
                while done < len(view):
                    done += os.pwrite(fd, view[done:], at + done)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if `path` appeared meanwhile: never replaces a file
        except FileExistsError:
            raise
        except OSError:  # file systems without hard links
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, "refusing to replace an existing file", path) from None
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- existing files ----------------------------------------------------------------------------

def read_metadata(fd: int, path: str, file_size: int) -> Metadata:
    """Read and check footer(s), dynamic header, BAT and the placement of every part."""
    if file_size < FOOTER_SIZE:
        raise VhdCorruptError(f"{path}: file is {file_size} bytes, too small to hold a VHD footer")
    footer_at = file_size - FOOTER_SIZE
    footer = _read_trailing_footer(fd, path, footer_at)
    size = footer.current_size
    if footer.disk_type is DiskType.FIXED:
        if footer_at != size:
            raise VhdCorruptError(
                f"{path}: fixed disk of {size} bytes needs a file of {size + FOOTER_SIZE} bytes, "
                f"found {file_size}" + (" (truncated?)" if footer_at < size else ""))
        return Metadata(footer, None, None, file_size)

    copy = Footer.unpack(_read_exact(fd, path, FOOTER_SIZE, 0, "footer copy"),
                         f"{path}: footer copy at offset 0")
    for field in ("disk_type", "current_size", "unique_id", "data_offset"):
        if getattr(copy, field) != getattr(footer, field):
            raise VhdCorruptError(f"{path}: footer copy at offset 0 disagrees with the footer at "
                                  f"offset {footer_at} on {field}")
    regions = _Regions(path, file_size)
    regions.add(0, FOOTER_SIZE, "the footer copy")
    regions.add(footer_at, FOOTER_SIZE, "the footer")
    header_at = footer.data_offset
    regions.add(header_at, DYNAMIC_HEADER_SIZE, "dynamic header")
    header = DynamicHeader.unpack(_read_exact(fd, path, DYNAMIC_HEADER_SIZE, header_at, "dynamic header"),
                                  f"{path}: dynamic header at offset {header_at}")
    needed = -(-size // header.block_size)
    if header.max_table_entries < needed:
        raise VhdCorruptError(f"{path}: BAT has {header.max_table_entries} entries; a disk of {size} "
                              f"bytes in {header.block_size}-byte blocks needs {needed}")
    bat_bytes = header.max_table_entries * 4
    regions.add(header.table_offset, bat_bytes, "BAT")
    bat = unpack_bat(_read_exact(fd, path, bat_bytes, header.table_offset, "BAT"))
    if footer.disk_type is DiskType.DIFFERENCING:  # a dynamic disk's locators are never read
        for i, loc in enumerate(header.locators):
            if loc.platform != PlatformCode.NONE.value:
                regions.add(loc.data_offset, loc.region_size,
                            f"parent locator {i} ({loc.platform.decode('latin-1')!r})")
    span = header.bitmap_size + header.block_size
    for index, entry in enumerate(bat):
        if entry != UNALLOCATED:
            regions.add(entry * SECTOR_SIZE, span, f"block {index} (BAT entry {entry:#x})")
    regions.check_disjoint()
    return Metadata(footer, header, bat, file_size)


def parent_locator_paths(fd: int, header: DynamicHeader) -> Iterator[str]:
    """Where a differencing disk says its parent is, best guess first: the relative (W2ru) and
    absolute (W2ku) locators, then the parent name in the header. Paths are as stored."""
    by_platform = {loc.platform: loc for loc in header.locators}
    for code in (PlatformCode.W2RU, PlatformCode.W2KU):
        loc = by_platform.get(code.value)
        if loc is not None and loc.data_length:
            text = locator_text(fd, loc)
            if text:
                yield text
    if header.parent_name:
        yield header.parent_name


def locator_text(fd: int, loc: ParentLocator) -> str:
    # Only called for locators `read_metadata` placed inside the file.
    return decode_locator_path(os.pread(fd, loc.data_length, loc.data_offset))


def _read_trailing_footer(fd: int, path: str, footer_at: int) -> Footer:
    try:
        return Footer.unpack(os.pread(fd, FOOTER_SIZE, footer_at), f"{path}: footer at offset {footer_at}")
    except VhdCorruptError as exc:
        try:
            copy = Footer.unpack(os.pread(fd, FOOTER_SIZE, 0), path)
        except VhdCorruptError:
            raise exc from None
        if copy.disk_type is DiskType.FIXED:
            raise
        raise VhdCorruptError(
            f"{exc}; the footer copy at offset 0 is intact, so the file was probably truncated "
            "or its end overwritten") from None


def _read_exact(fd: int, path: str, size: int, at: int, what: str) -> bytes:
    raw = os.pread(fd, size, at)
    if len(raw) != size:
        raise VhdCorruptError(f"{path}: {what} at offset {at} is cut short by the end of the file")
    return raw


class _Regions:
    """The byte ranges a file's parts claim; each must fit in the file and none may overlap."""

    def __init__(self, path: str, file_size: int) -> None:
        self._path = path
        self._file_size = file_size
        self._ranges: list[tuple[int, int, str]] = []

    def add(self, start: int, length: int, name: str) -> None:
        end = start + length
        if end > self._file_size:
            raise VhdCorruptError(f"{self._path}: {name} at [{start}, {end}) lies past the end of the "
                                  f"{self._file_size}-byte file (truncated, or a bad offset)")
        self._ranges.append((start, end, name))

    def check_disjoint(self) -> None:
        self._ranges.sort()
        for (start_a, end_a, name_a), (start_b, end_b, name_b) in zip(self._ranges, self._ranges[1:]):
            if start_b < end_a:
                raise VhdCorruptError(f"{self._path}: {name_b} at [{start_b}, {end_b}) overlaps "
                                      f"{name_a} at [{start_a}, {end_a})")
