"""VHD on-disk layouts: footer and dynamic header parsing, geometry, BAT and sector bitmaps."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from drivers.storage.vhd_format import (
    DYNAMIC_HEADER_SIZE, FOOTER_SIZE, MAX_CHS_SECTORS, MAX_DISK_SIZE, SECTOR_SIZE, DiskType,
    DynamicHeader, Footer, ParentLocator, VhdCorruptError, bitmap_from_disk, bitmap_runs,
    bitmap_to_disk, checksum, geometry_for, unpack_bat,
)

u32 = st.integers(0, 2**32 - 1)
sizes = st.integers(1, MAX_DISK_SIZE // SECTOR_SIZE).map(lambda n: n * SECTOR_SIZE)

footers = st.builds(
    Footer,
    disk_type=st.sampled_from(DiskType),
    current_size=sizes,
    original_size=st.integers(0, 2**64 - 1),
    geometry=st.tuples(st.integers(0, 65535), st.integers(0, 255), st.integers(0, 255)),
    unique_id=st.binary(min_size=16, max_size=16),
    timestamp=u32,
    creator_app=st.binary(min_size=4, max_size=4),
    creator_version=u32,
    creator_host_os=st.binary(min_size=4, max_size=4),
    data_offset=st.integers(0, 2**64 - 1),
    features=u32,
    format_version=st.integers(0x10000, 0x1FFFF),
    saved_state=st.integers(0, 1),
)

locators = st.builds(ParentLocator, platform=st.binary(min_size=4, max_size=4), data_space=u32,
                     data_length=u32, data_offset=st.integers(0, 2**64 - 1))
headers = st.builds(
    DynamicHeader,
    table_offset=st.integers(0, 2**64 - 1),
    max_table_entries=st.integers(0, 4096),
    block_size=st.integers(9, 28).map(lambda bits: 1 << bits),
    parent_unique_id=st.binary(min_size=16, max_size=16),
    parent_timestamp=u32,
    parent_name=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=60),
    locators=st.lists(locators, min_size=8, max_size=8).map(tuple),
)


@given(footers)
def test_footer_round_trips(footer):
    raw = footer.pack()
    assert len(raw) == FOOTER_SIZE
    assert Footer.unpack(raw, "f") == footer


@given(footers, st.data())
def test_any_single_byte_change_in_a_footer_is_detected(footer, data):
    raw = bytearray(footer.pack())
    at = data.draw(st.integers(0, FOOTER_SIZE - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises(VhdCorruptError):
        Footer.unpack(bytes(raw), "f")


def test_footer_checksum_is_ones_complement_of_byte_sum():
    raw = Footer(DiskType.FIXED, 1 << 20, 1 << 20, (1, 2, 3), bytes(16), 0, b"win ", 1, b"Wi2k").pack()
    stored, = struct.unpack_from(">I", raw, 64)
    assert stored == ~(sum(raw[:64]) + sum(raw[68:])) & 0xFFFFFFFF
    assert checksum(raw, 64) == stored


def test_footer_errors_name_the_place_and_the_problem():
    good = Footer(DiskType.FIXED, 1 << 20, 1 << 20, (1, 2, 3), bytes(16), 0, b"win ", 1, b"Wi2k").pack()
    with pytest.raises(VhdCorruptError, match=r"^disk\.vhd: footer cookie"):
        Footer.unpack(b"x" * 8 + good[8:], "disk.vhd")
    with pytest.raises(VhdCorruptError, match=r"truncated"):
        Footer.unpack(good[:100], "disk.vhd")


@pytest.mark.parametrize("field_at, value, complaint", [
    (60, struct.pack(">I", 7), "disk type 7"),
    (48, struct.pack(">Q", 1000), "current size 1000"),
    (48, struct.pack(">Q", MAX_DISK_SIZE + 512), "current size"),
    (48, struct.pack(">Q", 0), "current size 0"),
    (12, struct.pack(">I", 0x20000), "version"),
])
def test_footer_with_valid_checksum_but_bad_field_is_refused(field_at, value, complaint):
    raw = bytearray(Footer(DiskType.DYNAMIC, 1 << 20, 1 << 20, (1, 2, 3), bytes(16), 0, b"win ", 1,
                           b"Wi2k", data_offset=512).pack())
    raw[field_at:field_at + len(value)] = value
    struct.pack_into(">I", raw, 64, checksum(raw, 64))
    with pytest.raises(VhdCorruptError, match=complaint):
        Footer.unpack(bytes(raw), "d.vhd")


@given(headers)
def test_dynamic_header_round_trips(header):
    raw = header.pack()
    assert len(raw) == DYNAMIC_HEADER_SIZE
    assert DynamicHeader.unpack(raw, "h") == header


@given(headers, st.data())
def test_any_single_byte_change_in_a_dynamic_header_is_detected(header, data):
    raw = bytearray(header.pack())
    at = data.draw(st.integers(0, DYNAMIC_HEADER_SIZE - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises(VhdCorruptError):
        DynamicHeader.unpack(bytes(raw), "h")


@pytest.mark.parametrize("block_size", [0, 256, 3 << 20, 1 << 29])
def test_dynamic_header_refuses_odd_block_sizes(block_size):
    raw = bytearray(DynamicHeader(1536, 4, 1 << 21).pack())
    struct.pack_into(">I", raw, 32, block_size)
    struct.pack_into(">I", raw, 36, checksum(raw, 36))
    with pytest.raises(VhdCorruptError, match=f"block size {block_size}"):
        DynamicHeader.unpack(bytes(raw), "h")


def test_dynamic_header_refuses_absurd_table_sizes():
    raw = bytearray(DynamicHeader(1536, 4, 1 << 21).pack())
    struct.pack_into(">I", raw, 28, 0xFFFFFFF0)
    struct.pack_into(">I", raw, 36, checksum(raw, 36))
    with pytest.raises(VhdCorruptError, match="BAT entries"):
        DynamicHeader.unpack(bytes(raw), "h")


def test_bitmap_size_is_one_bit_per_sector_padded_to_a_sector():
    assert DynamicHeader(0, 0, 2 << 20).bitmap_size == 512  # 4096 sectors → 512 bytes
    assert DynamicHeader(0, 0, 64 << 10).bitmap_size == 512  # 128 sectors → 16 bytes, padded
    assert DynamicHeader(0, 0, 16 << 20).bitmap_size == 4096
    assert DynamicHeader(0, 0, 512).bitmap_size == 512


@pytest.mark.parametrize("data_space, length, expected", [
    (1, 40, 512),  # sectors, as the spec says
    (512, 40, 512),  # bytes, as some Windows versions write
    (0, 700, 700),
])
def test_locator_region_accepts_both_units_of_data_space(data_space, length, expected):
    assert ParentLocator(b"W2ru", data_space, length, 0).region_size == expected


# --- geometry ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size, expected", [
    (8 << 20, (240, 4, 17)),  # 16384 sectors
    (1 << 30, (2080, 16, 63)),
    (127 << 30, (65278, 16, 255)),  # 266338304 sectors
    (MAX_CHS_SECTORS * 512, (65535, 16, 255)),
    (2040 << 30, (65535, 16, 255)),  # capped
])
def test_geometry_follows_the_spec_algorithm(size, expected):
    assert geometry_for(size) == expected


@given(sizes)
def test_geometry_never_exceeds_the_disk_or_the_chs_limits(size):
    cylinders, heads, spt = geometry_for(size)
    assert cylinders * heads * spt <= size // SECTOR_SIZE
    assert cylinders <= 65535 and 4 <= heads <= 16 and spt in (17, 31, 63, 255)


# --- BAT and bitmaps ---------------------------------------------------------------------------

def test_bat_entries_are_big_endian():
    assert list(unpack_bat(bytes.fromhex("00000003ffffffff12345678"))) == [3, 0xFFFFFFFF, 0x12345678]


def test_bitmap_sector_zero_is_the_most_significant_bit_of_byte_zero():
    raw = b"\x80\x01" + bytes(510)
    bits = bitmap_from_disk(raw)
    assert bits == (1 << 0) | (1 << 15)
    assert bitmap_to_disk(bits, 512) == raw


@given(st.binary(min_size=512, max_size=512))
def test_bitmap_round_trips(raw):
    assert bitmap_to_disk(bitmap_from_disk(raw), 512) == raw


@given(st.integers(0, 2**300 - 1), st.integers(0, 280), st.integers(1, 300))
def test_bitmap_runs_partition_the_range_exactly(bits, first, count):
    runs = list(bitmap_runs(bits, first, count))
    at = first
    for i, (present, start, length) in enumerate(runs):
        assert start == at and length > 0
        assert all(bool(bits >> s & 1) == present for s in range(start, start + length))
        if i:
            assert runs[i - 1][0] != present  # maximal: neighbours differ
        at += length
    assert at == first + count
