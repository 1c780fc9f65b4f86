"""Sample disks for the VHD tests: recognisable data, a fixed set of ragged writes, a builder."""
from __future__ import annotations

import hashlib
from pathlib import Path

from drivers.storage.vhd import VirtualDisk

MiB = 1024 * 1024
SMALL_BLOCK = 64 * 1024  # small blocks make block boundaries cheap to cross
ODD_SIZE = 3 * MiB + 7 * 512  # not a whole number of blocks


def pattern(seed: int, length: int) -> bytes:
    """Bytes that differ at every offset and from seed to seed, so misplaced data shows."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.blake2b(f"{seed}:{counter}".encode(), digest_size=64).digest()
        counter += 1
    return bytes(out[:length])


# Writes at unaligned offsets: inside one sector, across sectors, across 64 KiB and 2 MiB blocks.
WRITES = [
    (1, 100),
    (511, 2),
    (SMALL_BLOCK - 300, 1000),
    (2 * MiB - 1234, 5000),
    (5 * SMALL_BLOCK + 17, 3 * SMALL_BLOCK + 513),
    (ODD_SIZE - 700, 700),
    (200, 50),  # overwrite inside an earlier write
]


def apply(disk: VirtualDisk, model: bytearray, writes=WRITES) -> None:
    for seed, (offset, length) in enumerate(writes):
        data = pattern(seed, length)
        disk.write(offset, data)
        model[offset:offset + length] = data


def make(path: Path, kind: str, size: int = ODD_SIZE, parent: Path | None = None, **kw) -> VirtualDisk:
    if kind != "fixed" and "block_size" not in kw:
        kw["block_size"] = SMALL_BLOCK
    return VirtualDisk.create(path, size if parent is None else None, kind, parent=parent, **kw)
