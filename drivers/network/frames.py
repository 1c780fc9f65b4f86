"""Ethernet II frames with an optional 802.1Q tag: the bytes the virtual switch carries.

A frame here is what a NIC hands over without preamble and FCS: destination MAC, source MAC,
then either the EtherType or an 802.1Q tag (TPID 0x8100, then the TCI: priority 3 bits, DEI 1 bit,
VLAN id 12 bits) followed by the EtherType, then the payload.

`parse` checks the lengths and nothing else: deciding what a well-formed frame may carry (VLAN
ids, MAC kinds, sizes) is the switch's and the guest stack's job.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

MAC_LEN = 6
HEADER_LEN = 14            # dst + src + EtherType
TAG_LEN = 4                # TPID + TCI
MIN_FRAME = 60             # Ethernet minimum without the FCS; shorter frames are padded by `build`
MTU = 1500                 # default payload size an untagged frame may carry

TPID_8021Q = 0x8100
# TPIDs some equipment reads as VLAN tags (802.1Q, 802.1ad, the pre-standard QinQ value).
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806

VLAN_NONE = 0              # VID 0: a priority tag, no VLAN; the switch's untagged network
VLAN_MAX = 4094            # 4095 is reserved

BROADCAST = b"\xff" * MAC_LEN
ZERO_MAC = b"\x00" * MAC_LEN

_TAG = struct.Struct("!HH")
_U16 = struct.Struct("!H")


class FrameError(ValueError):
    """Bytes that are not an Ethernet frame (too short, or a tag cut off)."""


def mac_bytes(mac: str | bytes) -> bytes:
    """A MAC address as 6 bytes, from "02:00:5e:10:00:01" (or "-" separators) or from 6 bytes."""
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != MAC_LEN:
            raise ValueError(f"a MAC address is {MAC_LEN} bytes, got {len(mac)}")
        return bytes(mac)
    parts = mac.replace("-", ":").split(":")
    try:
        if len(parts) != MAC_LEN or not all(len(p) == 2 for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"{mac!r} is not a MAC address like 02:00:5e:10:00:01") from None


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def is_group(mac: bytes) -> bool:
    """Broadcast or multicast: the I/G bit of the first octet."""
    return bool(mac[0] & 1)


@dataclass(frozen=True)
class Frame:
    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes          # everything after the EtherType, padding included
    vlan: int | None = None  # None: untagged; 0: priority-tagged
    priority: int = 0       # PCP and DEI: the top 4 bits of the TCI


def parse(frame: bytes) -> Frame:
    """Split a frame into its fields. Raises FrameError when it is too short for its headers."""
    if len(frame) < HEADER_LEN:
        raise FrameError(f"an Ethernet frame has a {HEADER_LEN}-byte header, got {len(frame)} bytes")
    (ethertype,) = _U16.unpack_from(frame, 12)
    if ethertype != TPID_8021Q:
        return Frame(frame[0:6], frame[6:12], ethertype, bytes(frame[HEADER_LEN:]))
    if len(frame) < HEADER_LEN + TAG_LEN:
        raise FrameError(f"an 802.1Q frame has an {HEADER_LEN + TAG_LEN}-byte header, got {len(frame)} bytes")
    tci, ethertype = _TAG.unpack_from(frame, 14)
    return Frame(frame[0:6], frame[6:12], ethertype, bytes(frame[HEADER_LEN + TAG_LEN:]),
                 vlan=tci & 0xFFF, priority=tci >> 12)


def build(dst: bytes, src: bytes, ethertype: int, payload: bytes, *, vlan: int | None = None,
          priority: int = 0) -> bytes:
    """A frame, padded with zeros to the Ethernet minimum (before the tag is counted, as a NIC
    pads before a switch tags)."""
    frame = dst + src + _U16.pack(ethertype) + payload
    if len(frame) < MIN_FRAME:
        frame += bytes(MIN_FRAME - len(frame))
    return frame if vlan is None else tag(frame, vlan, priority)


def tag(frame: bytes, vlan: int, priority: int = 0) -> bytes:
    """Insert an 802.1Q tag after the source MAC of an untagged frame."""
    if not 0 <= vlan <= VLAN_MAX:
        raise ValueError(f"VLAN id {vlan} is outside 0..{VLAN_MAX}")
    return frame[:12] + _TAG.pack(TPID_8021Q, (priority & 0xF) << 12 | vlan) + frame[12:]


def untag(frame: bytes) -> tuple[int | None, int, bytes]:
    """(VLAN id or None, priority, the frame without its outer 802.1Q tag)."""
    if len(frame) < HEADER_LEN:
        raise FrameError(f"an Ethernet frame has a {HEADER_LEN}-byte header, got {len(frame)} bytes")
    if _U16.unpack_from(frame, 12)[0] != TPID_8021Q:
        return None, 0, frame
    if len(frame) < HEADER_LEN + TAG_LEN:
        raise FrameError(f"an 802.1Q frame has an {HEADER_LEN + TAG_LEN}-byte header, got {len(frame)} bytes")
    (tci,) = _U16.unpack_from(frame, 14)
    return tci & 0xFFF, tci >> 12, frame[:12] + frame[16:]
