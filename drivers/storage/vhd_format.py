"""On-disk layouts of VHD files (Microsoft Virtual Hard Disk Image Format Specification 1.0).

This module is wire format only: the hard disk footer, the dynamic disk header and its parent
locators, the block allocation table (BAT) and the per-block sector bitmap, with packing, parsing
and the checks that need nothing but the bytes themselves. Where the parts sit in a file is
`drivers.storage.vhd_layout`; I/O and the order of updates are `drivers.storage.vhd`.

All multi-byte fields are big-endian. Every parser raises `VhdCorruptError` (a `ValueError`) naming
the file and the field; none returns a value it could not check.
"""
from __future__ import annotations

import dataclasses
import enum
import struct
import uuid
from array import array
from collections.abc import Iterator

SECTOR_SIZE = 512
FOOTER_SIZE = 512
DYNAMIC_HEADER_SIZE = 1024

FOOTER_COOKIE = b"conectix"
DYNAMIC_HEADER_COOKIE = b"cxsparse"
FEATURES_RESERVED = 0x00000002  # the spec requires this bit set in every footer
FORMAT_VERSION = 0x00010000
HEADER_VERSION = 0x00010000
NO_DATA_OFFSET = 0xFFFF_FFFF_FFFF_FFFF  # footer of a fixed disk, and the dynamic header's own
UNALLOCATED = 0xFFFF_FFFF  # BAT entry of a block with no data in this file

# Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
VHD_EPOCH = 946_684_800

# Largest virtual disk the format allows (Hyper-V, qemu and the spec's 32-bit sector counts agree).
MAX_DISK_SIZE = 2040 * 1024**3
DEFAULT_BLOCK_SIZE = 2 * 1024**2
# Block sizes accepted when reading; the spec fixes only "power of two, multiple of a sector".
MIN_BLOCK_SIZE = SECTOR_SIZE
MAX_BLOCK_SIZE = 256 * 1024**2

# CHS limits of the spec's geometry algorithm: 65535 cylinders, 16 heads, 255 sectors per track.
MAX_CHS_SECTORS = 65535 * 16 * 255

_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB427x")
_DYNAMIC_HEADER = struct.Struct(">8sQQIIII16sII512s")
_LOCATOR = struct.Struct(">4sIIIQ")
_LOCATOR_COUNT = 8
_FOOTER_CHECKSUM_AT = 64
_HEADER_CHECKSUM_AT = 36
_LOCATORS_AT = _DYNAMIC_HEADER.size
assert _FOOTER.size == FOOTER_SIZE
assert _LOCATORS_AT + _LOCATOR_COUNT * _LOCATOR.size + 256 == DYNAMIC_HEADER_SIZE


class VhdError(ValueError):
    """A VHD file or a request on it is invalid; the message names the file and what is wrong."""


class VhdCorruptError(VhdError):
    """The file's bytes break the format: bad cookie or checksum, overlapping regions, truncation."""


class VhdParentError(VhdError):
    """A differencing disk's parent cannot be found, or is not the disk the child was made from."""


class VhdRangeError(VhdError, IndexError):
    """A read or write reaches outside the virtual disk."""


class DiskType(enum.IntEnum):
    FIXED = 2
    DYNAMIC = 3
    DIFFERENCING = 4


class PlatformCode(bytes, enum.Enum):
    """Parent locator platforms; hvsim writes the two Windows ones, as Hyper-V does."""

    NONE = b"\0\0\0\0"
    W2RU = b"W2ru"  # UTF-16LE path relative to the child's directory
    W2KU = b"W2ku"  # UTF-16LE absolute path
    WI2R = b"Wi2r"  # deprecated: ANSI relative path
    WI2K = b"Wi2k"  # deprecated: ANSI absolute path
    MAC = b"Mac "  # Mac OS alias blob
    MACX = b"MacX"  # UTF-8 file URL


def checksum(buf: bytes | bytearray | memoryview, field_at: int) -> int:
    """One's complement of the byte sum of `buf`, leaving out the 4-byte checksum field."""
    total = sum(buf) - sum(buf[field_at:field_at + 4])
    return ~total & 0xFFFF_FFFF


def geometry_for(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) per the spec's appendix algorithm (rounds down).

    Only Virtual PC and old qemu take the disk size from this; hvsim records the exact size in
    `current_size` and marks the footer so that readers use that (see `drivers.storage.vhd`).
    """
    total = min(size // SECTOR_SIZE, MAX_CHS_SECTORS)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = total // spt
    else:
        spt = 17
        cyl_heads = total // spt
        heads = max((cyl_heads + 1023) // 1024, 4)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = total // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = total // spt
    return cyl_heads // heads, heads, spt


def vhd_timestamp(unix_time: float) -> int:
    """Seconds since 2000-01-01 UTC, clamped into the field's 32 bits."""
    return min(max(int(unix_time) - VHD_EPOCH, 0), 0xFFFF_FFFF)


@dataclasses.dataclass(frozen=True)
class Footer:
    """The hard disk footer: at the end of every VHD, and also at offset 0 of dynamic ones."""

    disk_type: DiskType
    current_size: int
    original_size: int
    geometry: tuple[int, int, int]
    unique_id: bytes
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_host_os: bytes
    data_offset: int = NO_DATA_OFFSET
    features: int = FEATURES_RESERVED
    format_version: int = FORMAT_VERSION
    saved_state: int = 0

    def pack(self) -> bytes:
        cylinders, heads, spt = self.geometry
        raw = bytearray(_FOOTER.pack(
            FOOTER_COOKIE, self.features, self.format_version, self.data_offset, self.timestamp,
            self.creator_app, self.creator_version, self.creator_host_os,
            self.original_size, self.current_size, cylinders, heads, spt,
            int(self.disk_type), 0, self.unique_id, self.saved_state,
        ))
        struct.pack_into(">I", raw, _FOOTER_CHECKSUM_AT, checksum(raw, _FOOTER_CHECKSUM_AT))
        return bytes(raw)

    @classmethod
    def unpack(cls, raw: bytes, where: str) -> Footer:
        """Parse and check a footer; `where` names the file and position for error messages."""
        if len(raw) != FOOTER_SIZE:
            raise VhdCorruptError(f"{where}: footer is {len(raw)} bytes, not {FOOTER_SIZE} (file truncated?)")
        (cookie, features, version, data_offset, timestamp, app, creator_version, host_os,
         original_size, current_size, cylinders, heads, spt, disk_type, stored_sum, unique_id,
         saved_state) = _FOOTER.unpack(raw)
        if cookie != FOOTER_COOKIE:
            raise VhdCorruptError(f"{where}: footer cookie is {cookie!r}, not {FOOTER_COOKIE!r}")
        computed = checksum(raw, _FOOTER_CHECKSUM_AT)
        if stored_sum != computed:
            raise VhdCorruptError(
                f"{where}: footer checksum is {stored_sum:#010x}, the footer's bytes give {computed:#010x}")
        if version >> 16 != FORMAT_VERSION >> 16:
            raise VhdCorruptError(f"{where}: footer format version {version:#010x} is not 1.x")
        try:
            kind = DiskType(disk_type)
        except ValueError:
            raise VhdCorruptError(
                f"{where}: disk type {disk_type} is not fixed (2), dynamic (3) or differencing (4)") from None
        check_disk_size(current_size, f"{where}: footer current size")
        return cls(kind, current_size, original_size, (cylinders, heads, spt), unique_id, timestamp,
                   app, creator_version, host_os, data_offset, features, version, saved_state)


@dataclasses.dataclass(frozen=True)
class ParentLocator:
    """One parent locator entry; the locator's data sits elsewhere in the file."""

    platform: bytes
    data_space: int  # as stored: sectors per the spec, though some writers store bytes
    data_length: int
    data_offset: int

    @property
    def region_size(self) -> int:
        """Bytes reserved in the file for the locator data.

        N.B. the spec says `data_space` counts sectors, yet some Windows versions store bytes;
        like other readers, treat values under 512 as sectors and larger ones as bytes.
        """
        reserved = self.data_space * SECTOR_SIZE if self.data_space < SECTOR_SIZE else self.data_space
        return max(reserved, self.data_length)


EMPTY_LOCATOR = ParentLocator(PlatformCode.NONE.value, 0, 0, 0)


@dataclasses.dataclass(frozen=True)
class DynamicHeader:
    """The dynamic disk header of dynamic and differencing disks (1024 bytes)."""

    table_offset: int
    max_table_entries: int
    block_size: int
    parent_unique_id: bytes = bytes(16)
    parent_timestamp: int = 0
    parent_name: str = ""
    locators: tuple[ParentLocator, ...] = (EMPTY_LOCATOR,) * _LOCATOR_COUNT
    data_offset: int = NO_DATA_OFFSET
    header_version: int = HEADER_VERSION

    @property
    def bitmap_size(self) -> int:
        """Bytes of sector bitmap in front of each block: one bit per sector, sector-padded."""
        return sector_align(self.block_size // SECTOR_SIZE // 8 or 1)

    def pack(self) -> bytes:
        name = self.parent_name.encode("utf-16-be")
        if len(name) > 512:
            raise VhdError(f"parent name {self.parent_name!r} is longer than the header's 256 characters")
        if len(self.locators) != _LOCATOR_COUNT:
            raise VhdError(f"a dynamic header holds exactly {_LOCATOR_COUNT} parent locators")
        raw = bytearray(DYNAMIC_HEADER_SIZE)
        _DYNAMIC_HEADER.pack_into(
            raw, 0, DYNAMIC_HEADER_COOKIE, self.data_offset, self.table_offset, self.header_version,
            self.max_table_entries, self.block_size, 0, self.parent_unique_id,
            self.parent_timestamp, 0, name)
        for i, loc in enumerate(self.locators):
            _LOCATOR.pack_into(raw, _LOCATORS_AT + i * _LOCATOR.size,
                               loc.platform, loc.data_space, loc.data_length, 0, loc.data_offset)
        struct.pack_into(">I", raw, _HEADER_CHECKSUM_AT, checksum(raw, _HEADER_CHECKSUM_AT))
        return bytes(raw)

    @classmethod
    def unpack(cls, raw: bytes, where: str) -> DynamicHeader:
        if len(raw) != DYNAMIC_HEADER_SIZE:
            raise VhdCorruptError(
                f"{where}: dynamic header is {len(raw)} bytes, not {DYNAMIC_HEADER_SIZE} (file truncated?)")
        (cookie, data_offset, table_offset, version, entries, block_size, stored_sum,
         parent_id, parent_time, _reserved, name) = _DYNAMIC_HEADER.unpack_from(raw)
        if cookie != DYNAMIC_HEADER_COOKIE:
            raise VhdCorruptError(
                f"{where}: dynamic header cookie is {cookie!r}, not {DYNAMIC_HEADER_COOKIE!r}")
        computed = checksum(raw, _HEADER_CHECKSUM_AT)
        if stored_sum != computed:
            raise VhdCorruptError(
                f"{where}: dynamic header checksum is {stored_sum:#010x}, its bytes give {computed:#010x}")
        if version >> 16 != HEADER_VERSION >> 16:
            raise VhdCorruptError(f"{where}: dynamic header version {version:#010x} is not 1.x")
        if (block_size & (block_size - 1) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE):
            raise VhdCorruptError(
                f"{where}: block size {block_size} is not a power of two in "
                f"[{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]")
        if entries > MAX_DISK_SIZE // block_size + 1:
            raise VhdCorruptError(
                f"{where}: {entries} BAT entries of {block_size} bytes exceed the largest VHD")
        locators = tuple(ParentLocator(*_unpack_locator(raw, i)) for i in range(_LOCATOR_COUNT))
        text = name.decode("utf-16-be", errors="replace").split("\0", 1)[0]
        return cls(table_offset, entries, block_size, parent_id, parent_time, text, locators,
                   data_offset, version)


def _unpack_locator(raw: bytes, index: int) -> tuple[bytes, int, int, int]:
    platform, space, length, _reserved, offset = _LOCATOR.unpack_from(raw, _LOCATORS_AT + index * _LOCATOR.size)
    return platform, space, length, offset


def check_disk_size(size: int, what: str) -> None:
    if size <= 0 or size % SECTOR_SIZE or size > MAX_DISK_SIZE:
        raise VhdCorruptError(
            f"{what} {size} is not a positive multiple of {SECTOR_SIZE} up to {MAX_DISK_SIZE} (2040 GiB)")


def sector_align(n: int) -> int:
    return -(-n // SECTOR_SIZE) * SECTOR_SIZE


def encode_locator_path(path: str) -> bytes:
    """Locator data for W2ku / W2ru: the path in UTF-16LE, no terminator (as Windows writes it)."""
    return path.encode("utf-16-le")


def decode_locator_path(data: bytes) -> str:
    return data.decode("utf-16-le", errors="replace").split("\0", 1)[0]


# --- block allocation table --------------------------------------------------------------------

def unpack_bat(raw: bytes) -> array:
    """BAT bytes → array of native uint32 entries (sector offsets of blocks, or UNALLOCATED)."""
    table = array("I")
    if table.itemsize != 4:  # pragma: no cover - every platform CPython supports has 4-byte "I"
        table = array("L")
    table.frombytes(raw)
    if struct.pack("=I", 1) != struct.pack(">I", 1):
        table.byteswap()
    return table


def pack_bat_entry(sector: int) -> bytes:
    return struct.pack(">I", sector)


def empty_bat(entries: int) -> bytes:
    """A BAT with every block unallocated, padded to a whole number of sectors."""
    return b"\xff" * sector_align(entries * 4)


# --- sector bitmaps ----------------------------------------------------------------------------
#
# On disk, sector 0 of a block is the most significant bit of the bitmap's first byte. In memory a
# bitmap is a Python int whose bit i is sector i, so that ranges are plain shifts and masks.

_REVERSE_BITS = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def bitmap_from_disk(raw: bytes) -> int:
    return int.from_bytes(raw.translate(_REVERSE_BITS), "little")


def bitmap_to_disk(bits: int, size: int) -> bytes:
    return bits.to_bytes(size, "little").translate(_REVERSE_BITS)


def bitmap_runs(bits: int, first: int, count: int) -> Iterator[tuple[bool, int, int]]:
    """Split sectors [first, first + count) into maximal runs: (present, start, length)."""
    window = (bits >> first) & ((1 << count) - 1)
    if window == 0:
        yield False, first, count
        return
    if window == (1 << count) - 1:
        yield True, first, count
        return
    pos = 0
    while pos < count:
        rest = window >> pos
        present = bool(rest & 1)
        # Length of the run of equal bits at the bottom of `rest`: count trailing ones or zeros.
        flip = ~rest if present else rest
        length = (flip & -flip).bit_length() - 1 if flip else count - pos
        length = min(length, count - pos)
        yield present, first + pos, length
        pos += length


def sector_mask(first: int, count: int) -> int:
    return ((1 << count) - 1) << first


def uuid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes=raw))
