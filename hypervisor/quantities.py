"""Sizes ("64GiB", "512MiB", 4096) and durations ("1.5s", "10ms", 2_000_000) as users write them."""
from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
               "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2,
               "gib": 1024**3, "tib": 1024**4}
_TIME_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
               "m": 60_000_000_000, "min": 60_000_000_000, "h": 3_600_000_000_000}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Zµ]*)\s*$")


def parse_size(value: int | str, what: str = "size") -> int:
    """Bytes from an int or a string such as "64GiB", "512MiB", "10MB" (binary and decimal units)."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a size such as 4096 or \"64GiB\", got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: a size cannot be negative, got {value}")
        return value
    m = _NUMBER.match(str(value))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"{what}: expected a size such as 4096 or \"64GiB\", got {value!r}")
    n = float(m.group(1)) * _SIZE_UNITS[unit]
    if n != int(n):
        raise ValueError(f"{what}: {value!r} is not a whole number of bytes")
    return int(n)


def parse_duration(value: int | float | str, what: str = "duration") -> int:
    """Nanoseconds from an int (already ns) or a string such as "1.5s", "10ms", "250us"."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration such as \"1.5s\" or nanoseconds, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: a duration cannot be negative, got {value}")
        return value
    if isinstance(value, float):
        raise ValueError(f"{what}: give nanoseconds as an int or a string with a unit, got {value!r}")
    m = _NUMBER.match(str(value))
    unit = m.group(2) if m else None
    if not m or unit not in _TIME_UNITS:
        raise ValueError(f"{what}: expected a duration such as \"1.5s\", \"10ms\", \"250us\", got {value!r}")
    return round(float(m.group(1)) * _TIME_UNITS[unit])


def format_size(n: int) -> str:
    """"64GiB", "15.5GiB", "512MiB", "100B": whole units where exact, one decimal otherwise."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n // scale}{unit}" if n % scale == 0 else f"{n / scale:.1f}{unit}"
    return f"{n}B"
