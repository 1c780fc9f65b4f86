"""Sizes ("64GiB", "512MiB", 4096), rates ("500MB/s") and durations ("1.5s", "10ms", 2_000_000) as users
write them."""
from __future__ import annotations

import re
from fractions import Fraction

_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
# Units that people read two ways. Hyper-V's PowerShell takes 512MB as 512 MiB (and qemu-img,
# truncate and dd take a bare 4G as 4 GiB); disk makers and the SI take 512MB as 512,000,000
# bytes. hvsim takes neither reading silently: it refuses these and says what to write instead.
_AMBIGUOUS_UNITS = {"k": "KiB", "kb": "KiB", "m": "MiB", "mb": "MiB", "g": "GiB", "gb": "GiB",
                    "t": "TiB", "tb": "TiB"}
_TIME_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
               "m": 60_000_000_000, "min": 60_000_000_000, "h": 3_600_000_000_000}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Zµ]*)\s*$")


class AmbiguousSizeError(ValueError):
    """A size in a unit read two ways, such as "512MB". `binary` is Hyper-V's reading in bytes
    (512 MiB), `decimal` the SI one (512,000,000); either is None when it is not a whole number of
    bytes. `binary_text` is the same size written unambiguously ("512MiB")."""

    def __init__(self, what: str, value: str, binary: int | None, binary_text: str, decimal: int | None):
        self.value, self.binary, self.binary_text, self.decimal = value, binary, binary_text, decimal
        hyper_v = binary_text[:-2] + "B"   # "512MiB" -> "512MB", as PowerShell writes it
        choices = [f'"{binary_text}" (what Hyper-V means by {hyper_v}: {binary} bytes)'] if binary is not None else []
        if decimal is not None:
            choices.append(f"{decimal} (bytes)")
        super().__init__(f"{what}: {value!r} is ambiguous: write " + (" or ".join(choices) or "a whole number of bytes"))


def parse_size(value: int | str, what: str = "size") -> int:
    """Bytes from an int or a string with a binary unit: "64GiB", "1.5MiB", "512B", "4096".

    KB, MB, GB, TB and bare K, M, G, T are refused with AmbiguousSizeError (a ValueError) naming
    both readings: Hyper-V users mean 512 MiB by "512MB", others 512,000,000 bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a size such as 4096 or \"64GiB\", got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: a size cannot be negative, got {value}")
        return value
    m = _NUMBER.match(str(value))
    unit = m.group(2).lower() if m else None
    if m and unit in _AMBIGUOUS_UNITS:
        number = Fraction(m.group(1))
        binary_unit = _AMBIGUOUS_UNITS[unit]
        binary = number * _SIZE_UNITS[binary_unit.lower()]
        decimal = number * 1000 ** (1 + "kmgt".index(unit[0]))
        raise AmbiguousSizeError(what, str(value), _whole(binary), f"{m.group(1)}{binary_unit}", _whole(decimal))
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"{what}: expected a size such as 4096 or \"64GiB\" (units B, KiB, MiB, GiB, TiB), "
                         f"got {value!r}")
    n = _whole(Fraction(m.group(1)) * _SIZE_UNITS[unit])   # Fraction: exact, however many digits
    if n is None:
        raise ValueError(f"{what}: {value!r} is not a whole number of bytes")
    return n


def parse_rate(value: int | str, what: str = "rate") -> int:
    """Bytes per second from an int or a string such as "500MB/s", "1GiB/s" or "4096".

    Unlike sizes, rates read KB, MB, GB, TB (and K, M, G, T) as powers of 1000: storage and
    network rates are quoted that way (a 500 MB/s disk moves 500,000,000 bytes a second)."""
    if isinstance(value, (bool, int)):
        return parse_size(value, what)
    text = str(value).strip().removesuffix("/s")
    m = _NUMBER.match(text)
    unit = m.group(2).lower() if m else None
    if m and unit in _AMBIGUOUS_UNITS:
        n = _whole(Fraction(m.group(1)) * 1000 ** (1 + "kmgt".index(unit[0])))
        if n is None:
            raise ValueError(f"{what}: {value!r} is not a whole number of bytes per second")
        return n
    return parse_size(text, what)


def _whole(n: Fraction) -> int | None:
    return int(n) if n.denominator == 1 else None


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
