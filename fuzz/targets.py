"""The Python fuzz targets: one function per parser that takes attacker bytes and returns quietly
for anything a hostile guest or a damaged file can send, raising only when hvsim has a defect.

Each target catches exactly the error its parser documents for bad input (RingCorrupt,
ProtocolError, IcError, StorError, NetError, VhdError, SavedStateError, ConfigError); anything
else escaping, or an oracle below failing, is a finding. `make fuzz` runs these under atheris
(coverage-guided); tests/test_fuzz_smoke.py runs them over the seed corpus without it.
"""
from __future__ import annotations

import atexit
import os
import shutil
import struct
import tempfile
import uuid

from drivers.ic import framing
from drivers.ic.heartbeat import protocol as heartbeat
from drivers.ic.kvp import protocol as kvp
from drivers.ic.shutdown import protocol as shutdown
from drivers.ic.timesync import protocol as timesync
from drivers.ic.vss import protocol as vss
from drivers.network import protocol as net
from drivers.storage import protocol as stor
from drivers.storage.vhd import VirtualDisk
from drivers.storage.vhd_format import VhdError
from partitions import config
from partitions.config_schema import ConfigError
from partitions.savedstate import SavedStateError, SavedStateReader
from vmbus import protocol as vp
from vmbus.channel import OfferSpec
from vmbus.ring import CONTROL_SIZE, IncomingRing, OutgoingRing, RingError
from vmbus.server import ChannelManager


class Finding(AssertionError):
    """An oracle failed: the parser accepted something it must refuse, or broke its own rules."""


# -- rings (the Python path; fuzz/c/ring.c is the native one, same input format) -----------------

RING_MAX_DATA = 4096


def ring_from(data: bytes) -> tuple[bytearray, int, int, int] | None:
    """The ring an input describes: size:u8 max_packets:u8 out_cap:u16 control[16] feature:u8 data.
    Returns (ring memory, data size, max packets, out_cap) or None if the input is too short."""
    if len(data) < 21:
        return None
    dsize = 32 + data[0] % ((RING_MAX_DATA - 32) // 8 + 1) * 8
    ring = bytearray(CONTROL_SIZE + dsize)
    ring[0:16] = data[4:20]
    ring[64] = data[20]
    body = data[21:21 + dsize]
    ring[CONTROL_SIZE:CONTROL_SIZE + len(body)] = body
    return ring, dsize, max(1, data[1]), data[2] | data[3] << 8


def ring_py(data: bytes) -> None:
    parsed = ring_from(data)
    if parsed is None:
        return
    ring, dsize, max_packets, _ = parsed
    reader = IncomingRing(ring)
    try:
        for _ in range(3):
            packets, _signal = reader.read_batch(max_packets)
            for p in packets:
                if len(p.payload) > dsize:
                    raise Finding(f"a {len(p.payload)}-byte packet from a {dsize}-byte ring")
            if not packets:
                break
    except RingError:
        pass
    try:
        OutgoingRing(ring).write(bytes(data[3] % 64), trans_id=1)
    except RingError:
        pass


# -- VMBus control messages ------------------------------------------------------------------------

class _Notifier:
    """The server's effects, answered plausibly and checked for consistency: a GPADL is torn down
    only once it was created, a channel closed only once it was opened."""

    def __init__(self, answers: bytes):
        self.answers = answers or b"\0"
        self.turn = 0
        self.grants: dict[int, int] = {}
        self.open: set[int] = set()

    def _answer(self) -> int:
        self.turn += 1
        return self.answers[self.turn % len(self.answers)]

    def send(self, message: bytes, target_vp: int, sint: int) -> None:
        vp.decode(message)  # what the server sends must itself decode

    def connect(self, version, target_vp, sint, monitor_pages) -> bool:
        return self._answer() % 4 != 0

    def disconnect(self) -> None:
        pass

    def create_gpadl(self, relid, gpadl_id, ranges) -> int:
        if gpadl_id in self.grants:
            raise Finding(f"GPADL {gpadl_id} created twice")
        status = 0 if self._answer() % 5 else 0xC000009A
        if status == 0:
            self.grants[gpadl_id] = relid
        return status

    def teardown_gpadl(self, relid, gpadl_id) -> None:
        if self.grants.pop(gpadl_id, None) != relid:
            raise Finding(f"teardown of GPADL {gpadl_id} (relid {relid}) that was never created for it")

    def open_channel(self, request):
        if request.relid in self.open:
            raise Finding(f"channel {request.relid} opened twice")
        status = (0, 0, None, 1)[self._answer() % 4]
        if status in (0, None):
            self.open.add(request.relid)
        return status

    def close_channel(self, relid) -> None:
        if relid not in self.open:
            raise Finding(f"close of channel {relid} that is not open")
        self.open.remove(relid)

    def log(self, event, **fields) -> None:
        pass


_OFFERS = tuple(OfferSpec(uuid.UUID(int=0xC1A55 + n), uuid.UUID(int=n)) for n in (1, 2))


def vmbus_control(data: bytes) -> None:
    """A conversation: answers:u8[4], then records of len:u8 conn:u8 message[len] (the manager
    has two channels offered; conn selects the connection id the message arrives on)."""
    notifier = _Notifier(data[:4])
    # A new server per input (its relids, GPADLs and state start the same every time); the offers
    # are immutable and made once. handle_message decodes every message itself and lets only
    # ProtocolError pass, so the harness does not decode them a second time.
    manager = ChannelManager(notifier, max_gpadls=8)
    for spec in _OFFERS:
        manager.offer(spec)
    at = 4
    while at + 2 <= len(data):
        n, conn = data[at], data[at + 1]
        raw = data[at + 2:at + 2 + n]
        at += 2 + n
        manager.handle_message(raw, (None, 1, 4, conn)[conn % 4])


# -- integration services ------------------------------------------------------------------------

def ic(data: bytes) -> None:
    try:
        header, body = framing.decode(data)
    except framing.IcError:
        return
    parsers = {
        framing.NEGOTIATE: framing.parse_negotiate,
        framing.HEARTBEAT: heartbeat.parse,
        framing.KVP_EXCHANGE: kvp.parse_request,
        framing.SHUTDOWN: shutdown.parse,
        framing.TIMESYNC: lambda b: timesync.parse(b, header.version),
        framing.VSS: vss.parse,
    }
    parse = parsers.get(header.msgtype)
    if parse is None:
        return
    try:
        parse(body)
    except framing.IcError:
        pass
    if header.msgtype == framing.NEGOTIATE:
        try:
            framing.negotiate_reply(body, framing.FRAMEWORK_VERSIONS, kvp.VERSIONS)
        except framing.IcError:
            pass


# -- storage (vstor) -----------------------------------------------------------------------------

def vstor(data: bytes) -> None:
    try:
        packet = stor.decode_packet(data)
    except stor.StorError:
        packet = None
    if packet is not None:
        for parse in (stor.ScsiRequest.decode, stor.ChannelProperties.decode, stor.decode_version,
                      stor.decode_pool):
            try:
                parse(packet.body)
            except stor.StorError:
                pass
    try:
        ranges = stor.decode_gpa_direct(data)
    except stor.StorError:
        return
    for r in ranges:
        if not r.pfns or r.byte_count == 0:
            raise Finding(f"decode_gpa_direct accepted an empty range {r!r}")


# -- network (NVSP, RNDIS) -----------------------------------------------------------------------

def nvsp(data: bytes) -> None:
    try:
        net.decode_nvsp(data)
    except net.NetError:
        pass
    try:
        # (page set id, ranges[, what follows]): the message after the ranges is the VSP's business
        ranges = net.decode_transfer_pages(data, 16)[1]
    except net.NetError:
        return
    if not 1 <= len(ranges) <= 16:
        raise Finding(f"decode_transfer_pages gave {len(ranges)} ranges")


def rndis(data: bytes) -> None:
    try:
        message = net.decode_rndis(data)
    except net.NetError:
        return
    if isinstance(message, net.RndisPacket) and max(len(message.data), len(message.per_packet_info)) > len(data):
        raise Finding("an RNDIS packet's data or per-packet info is longer than the message")


# -- files: VHD, saved state, configuration ------------------------------------------------------

# The images live on a tmpfs when there is one (no disk behind them), one file per name, made once
# and rewritten in place for every input; the readers still open it by path, as a user's file.
_scratch = tempfile.mkdtemp(prefix="hvsim-fuzz-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
atexit.register(shutil.rmtree, _scratch, ignore_errors=True)  # a tmpfs is memory: leave nothing behind
_images: dict[str, tuple[str, int]] = {}


def _image(name: str, data: bytes) -> str:
    if name not in _images:
        path = os.path.join(_scratch, name)
        _images[name] = path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    path, fd = _images[name]
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))  # exactly the input's bytes, whatever the previous input's length
    return path


def vhd(data: bytes) -> None:
    """A VHD image, opened read-only and read where its geometry says there is data."""
    path = _image("disk.vhd", data)
    try:
        disk = VirtualDisk.open(path, read_only=True)
    except VhdError:
        return
    try:
        size = disk.size
        for offset in (0, size // 2, max(0, size - 512)):
            offset -= offset % 512
            n = min(4096, size - offset)
            if n > 0:
                if len(disk.read(offset, n)) != n:
                    raise Finding(f"read of {n} bytes at {offset} returned another length")
        for start, length in disk.own_ranges():
            if start < 0 or length < 0 or start + length > size:
                raise Finding(f"own range {start}+{length} outside a {size}-byte disk")
            break
    except VhdError:
        pass
    finally:
        disk.close()


def savedstate(data: bytes) -> None:
    path = _image("vm.hvsav", data)
    try:
        reader = SavedStateReader(path)
    except SavedStateError:
        return
    try:
        for name in reader.sections():
            try:
                reader.load(name)
            except SavedStateError:
                pass
    finally:
        reader.close()


def config_loader(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        config.loads(text, file="fuzz.toml", base_dir=_scratch)
    except ConfigError:
        pass


#: target name -> harness; the names are the corpus and dictionary names under fuzz/.
TARGETS = {
    "ring_py": ring_py,
    "vmbus_control": vmbus_control,
    "ic": ic,
    "vstor": vstor,
    "nvsp": nvsp,
    "rndis": rndis,
    "vhd": vhd,
    "savedstate": savedstate,
    "config": config_loader,
}
