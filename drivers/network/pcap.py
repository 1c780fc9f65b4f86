"""Classic libpcap capture files: the format tcpdump, tshark and Wireshark read.

Written with nanosecond timestamps (magic 0xa1b23c4d, host byte order as libpcap does it; readers
accept either order) and link type 1 (Ethernet), so 802.1Q tags appear as they were forwarded.
Times are simulated nanoseconds since the simulation started: a capture shows them as seconds
since the epoch of 1970, which is only a label.

The format is two fixed headers (24 bytes per file, 16 per record); it is written here rather than
taken from a packet library so that the switch does not depend on one. `read` exists for tests and
tools; tshark is the reference reader the tests compare against.

Durability: the file header is flushed as soon as the file is created, every record goes out in one
write, and `close` flushes and fsyncs. A crash can lose buffered records and leave the last one
cut short; standard readers report such a file as truncated and still show every whole record.
"""
from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from typing import BinaryIO

MAGIC_NS = 0xA1B23C4D       # timestamps in seconds + nanoseconds
MAGIC_US = 0xA1B2C3D4       # seconds + microseconds
VERSION = (2, 4)
LINKTYPE_ETHERNET = 1
DEFAULT_SNAPLEN = 262144    # libpcap's default: no Ethernet frame is cut

_ORDER = "<" if sys.byteorder == "little" else ">"
_FILE_HEADER = struct.Struct(_ORDER + "IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, linktype
_RECORD = struct.Struct(_ORDER + "IIII")          # ts_sec, ts_frac, incl_len, orig_len


class PcapError(ValueError):
    """A file that is not a classic pcap capture, or a record that breaks the format."""


class PcapWriter:
    """Writes one capture file. Use as a context manager, or call `close`."""

    def __init__(self, path: str | os.PathLike, *, snaplen: int = DEFAULT_SNAPLEN,
                 linktype: int = LINKTYPE_ETHERNET) -> None:
        if not 0 < snaplen <= 0x7FFFFFFF:
            raise ValueError(f"snaplen {snaplen} is not a positive 31-bit value")
        self.path = os.fspath(path)
        self.snaplen = snaplen
        self.records = 0
        self._file: BinaryIO | None = open(self.path, "wb")
        try:
            self._file.write(_FILE_HEADER.pack(MAGIC_NS, *VERSION, 0, 0, snaplen, linktype))
            self._file.flush()
        except BaseException:
            self._file.close()
            raise

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(self, frame: bytes, time_ns: int) -> None:
        """One record: the frame (cut to snaplen) stamped with simulated time `time_ns`."""
        if self._file is None:
            raise ValueError(f"{self.path}: the capture is closed")
        if time_ns < 0 or time_ns >= (1 << 32) * 1_000_000_000:
            raise ValueError(f"timestamp {time_ns} ns does not fit a pcap record")
        seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
        data = frame[:self.snaplen]
        self._file.write(_RECORD.pack(seconds, nanoseconds, len(data), len(frame)) + data)
        self.records += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Flush and fsync, then close. Closing twice is harmless."""
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Record:
    time_ns: int
    data: bytes
    orig_len: int


@dataclass(frozen=True)
class Capture:
    linktype: int
    snaplen: int
    nanosecond: bool
    records: list[Record]


def read(path: str | os.PathLike) -> Capture:
    """Every record of a classic pcap file (either magic, either byte order). Raises PcapError for
    a file that breaks the format, a truncated last record included."""
    with open(path, "rb") as file:
        blob = file.read()
    if len(blob) < _FILE_HEADER.size:
        raise PcapError(f"{path}: {len(blob)} bytes is shorter than a pcap file header")
    for order in "<>":
        (magic,) = struct.unpack_from(order + "I", blob)
        if magic in (MAGIC_NS, MAGIC_US):
            break
    else:
        raise PcapError(f"{path}: not a classic pcap file (magic {blob[:4].hex()})")
    header = struct.Struct(order + "IHHiIII")
    record = struct.Struct(order + "IIII")
    _, major, _, _, _, snaplen, linktype = header.unpack_from(blob)
    if major != VERSION[0]:
        raise PcapError(f"{path}: pcap version {major} is not {VERSION[0]}")
    scale = 1 if magic == MAGIC_NS else 1000
    records, at = [], header.size
    while at < len(blob):
        if at + record.size > len(blob):
            raise PcapError(f"{path}: record {len(records) + 1} is cut short in its header")
        seconds, fraction, incl, orig = record.unpack_from(blob, at)
        at += record.size
        if incl > snaplen or incl > orig or at + incl > len(blob):
            raise PcapError(f"{path}: record {len(records) + 1} has length {incl} (original {orig}) "
                            f"that does not fit the file or snaplen {snaplen}")
        records.append(Record(seconds * 1_000_000_000 + fraction * scale, blob[at:at + incl], orig))
        at += incl
    return Capture(linktype, snaplen, magic == MAGIC_NS, records)
