"""Sizes, rates and durations as users write them; units that Hyper-V users and others read
differently ("512MB") are refused with both readings, never taken one way silently."""
from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from hypervisor.quantities import AmbiguousSizeError, parse_duration, parse_rate, parse_size

BINARY = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


@pytest.mark.parametrize("text, expected", [
    ("4096", 4096), ("512B", 512), ("64GiB", 64 << 30), ("512 mib", 512 << 20), ("1.5GiB", 3 << 29),
    (".5KiB", 512), ("2TiB", 2 << 40), ("1" * 30 + "B", int("1" * 30)),   # exact however long
])
def test_sizes_in_bytes_and_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, binary, decimal", [
    ("512MB", 512 << 20, 512_000_000), ("4G", 4 << 30, 4_000_000_000), ("1.5GB", 3 << 29, 1_500_000_000),
    ("64kb", 64 << 10, 64_000), ("3T", 3 << 40, 3 * 10**12), ("0.0001KB", None, None),
])
def test_units_read_two_ways_are_refused_with_both_readings(text, binary, decimal):
    with pytest.raises(AmbiguousSizeError) as info:
        parse_size(text, "memory")
    err = info.value
    assert isinstance(err, ValueError) and (err.binary, err.decimal) == (binary, decimal)
    assert str(err).startswith(f"memory: {text!r} is ambiguous: write ")
    if binary is not None:
        assert f'"{err.binary_text}" (what Hyper-V means by ' in str(err) and str(binary) in str(err)
        assert parse_size(err.binary_text) == binary   # the suggestion reads back as Hyper-V's size
    if decimal is not None:
        assert f"or {decimal} (bytes)" in str(err)


@pytest.mark.parametrize("text", ["", "-1MiB", "1.1KiB", "4 parsecs", "MiB", "1e3"])
def test_bad_sizes_name_what(text):
    with pytest.raises(ValueError, match="^disk: "):
        parse_size(text, "disk")


@given(st.integers(0, 10**12), st.sampled_from(sorted(BINARY)), st.integers(0, 3))
def test_a_number_with_a_binary_unit_is_its_exact_product(number, unit, decimals):
    value = Fraction(number, 10**decimals)
    text = f"{number // 10**decimals}.{number % 10**decimals:0{decimals}d}" if decimals else str(number)
    expected = value * BINARY[unit]
    if expected.denominator == 1:
        assert parse_size(text + unit) == expected
    else:
        with pytest.raises(ValueError, match="not a whole number of bytes"):
            parse_size(text + unit)


@pytest.mark.parametrize("text, expected", [
    ("500MB/s", 500_000_000), ("1GiB/s", 1 << 30), ("1.5kb/s", 1500), ("4096", 4096), (100, 100),
])
def test_rates_read_decimal_units_as_powers_of_1000(text, expected):
    assert parse_rate(text) == expected


def test_durations():
    assert parse_duration("1.5s") == 1_500_000_000 and parse_duration("250us") == 250_000
    with pytest.raises(ValueError, match="--for"):
        parse_duration("soon", "--for")
