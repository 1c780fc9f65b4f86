"""The network data plane's Python face: a virtual switch's MAC table and port facts kept in C
(SwitchPlane), a netvsp adapter's receive sections and data-path facts kept in C (AdapterPlane,
beside `Sections`, the pure-Python reference), and `forward`, which hands a batch of packets a
guest sent to native/netplane.c and folds back what it did.

The C path takes, in one crossing per batch, the packets whose whole path it knows: a well-formed
RNDIS data message from an access port to a learned unicast MAC behind another netvsp, or flooded
(broadcast, multicast, not learned) to a VLAN whose every other port is such a netvsp, and
completions of receive transfers. The first packet that is anything else (control, malformed,
flooded, dropped by the switch, a capture running, a ring Python must write) stops it, Python
handles that packet with its own code (vsp.py and vswitch.py are the reference), and the C path
goes on after it. Behaviour, counters, ring bytes and signals are the same either way; the
simulated costs are too, since the parent charges per packet read, whichever path handles it.

The plane is on for a switch when the core has it and HVSIM_NETPLANE is not "0" (or as
VirtualSwitch(data_plane=...) says): tests run both ways and compare.
"""
from __future__ import annotations

import os
import struct
from collections import deque

from drivers.network.frames import VLAN_NONE, tag
from vmbus.ring import Packet

_DESC = struct.Struct("<HHHHQ")   # a ring record's descriptor: type, offset8, len8, flags, trans_id

try:
    from hypervisor import _binding as _core
except ImportError:   # a tree without the built core: the Python path alone
    _core = None


def enabled() -> bool:
    """Whether new switches use the C data plane by default."""
    return _core is not None and os.environ.get("HVSIM_NETPLANE", "1") != "0"


ADOPT = 0xFFFFFFFF   # AdapterPlane.c.w: no write_index published yet (adopt the ring's)


def _mac_int(mac: bytes) -> int:
    return int.from_bytes(mac, "big")


class Sections:
    """A netvsp's receive sections, in Python (the reference): free ones in FIFO order and the
    transfers in flight by trans_id (never 0, counting up and wrapping below 2**63)."""

    def __init__(self) -> None:
        self._free: deque[int] = deque()
        self._in_flight: dict[int, int] = {}
        self._next = 1

    def reset(self, count: int) -> None:
        self._free = deque(range(count))
        self._in_flight.clear()

    def free_count(self) -> int:
        return len(self._free)

    def take(self) -> int:
        return self._free.popleft()

    def put_front(self, section: int) -> None:
        self._free.appendleft(section)

    def put_back(self, section: int) -> None:
        self._free.append(section)

    def begin(self, section: int) -> int:
        trans_id = self._next
        self._next = trans_id + 1 if trans_id < (1 << 63) else 1
        self._in_flight[trans_id] = section
        return trans_id

    def complete(self, trans_id: int) -> int | None:
        return self._in_flight.pop(trans_id, None)

    def free_list(self) -> list[int]:
        return list(self._free)

    def in_flight(self) -> dict[int, int]:
        return dict(self._in_flight)


class AdapterPlane:
    """A netvsp's sections and data-path facts in C (the same interface as Sections). The
    owner keeps the C fields in step with its own state (vsp.py says where)."""

    def __init__(self, vsp) -> None:
        self.vsp = vsp
        self.c = _core.hv_np_adapter_new()
        self._pins: dict[str, object] = {}

    def reset(self, count: int) -> None:
        _core.hv_np_sections_reset(self.c, count)

    def free_count(self) -> int:
        return self.c.free_len

    def take(self) -> int:
        section = _core.hv_np_take(self.c)
        if section < 0:
            raise IndexError("no free receive section")
        return section

    def put_front(self, section: int) -> None:
        _core.hv_np_put_front(self.c, section)

    def put_back(self, section: int) -> None:
        _core.hv_np_put_back(self.c, section)

    def begin(self, section: int) -> int:
        return _core.hv_np_begin(self.c, section)

    def complete(self, trans_id: int) -> int | None:
        section = _core.hv_np_complete(self.c, trans_id)
        return None if section < 0 else section

    def free_list(self) -> list[int]:
        return _core.hv_np_free_list(self.c)

    def in_flight(self) -> dict[int, int]:
        return _core.hv_np_in_flight(self.c)

    def pin(self, field: str, memory) -> bool:
        """Point `recv`, `send` or `ring` at memory (None: at nothing); False if the memory
        cannot be pinned (the C path then leaves that part to Python)."""
        pin = None if memory is None else _core.ring_pin(memory)
        _core.hv_np_attach(self.c, field, pin)
        self._pins[field] = pin
        return memory is None or pin is not None

    def sync_ring(self, ring) -> None:
        """After Python wrote the ring: the write_index it published, for C's tamper check."""
        self.c.w = ADOPT if ring._w is None else ring._w


class SwitchPlane:
    """A switch's MAC table and, per port, what forwarding in C needs to know of it."""

    def __init__(self, settings) -> None:
        self.sw = _core.hv_np_switch_new(settings.ageing_ns, settings.window_ns, settings.max_frames_per_window,
                                         settings.max_macs_per_port, settings.mtu)
        self.ports: dict[int, object] = {}     # index -> Port
        self.batch, self._capture_buffer, self._view = _core.hv_np_batch_new()
        self.handled = 0                       # packets the C path took (frames and completions)

    # ports
    def add(self, port) -> None:
        port._np = _core.hv_np_port_add(self.sw)
        self.ports[port._np] = port
        self.set_vlan(port, port.vlan)

    def remove(self, port) -> None:
        _core.hv_np_port_remove(self.sw, port._np)
        del self.ports[port._np]
        port._np = -1

    def set_vlan(self, port, config) -> None:
        from drivers.network.vswitch import VlanMode   # (vswitch imports this module)
        _core.hv_np_port_at(self.sw, port._np).vlan = config.vlan if config.mode is VlanMode.ACCESS else -1

    def bind(self, port, adapter: AdapterPlane | None) -> None:
        """The netvsp behind a port (None: frames for it are Python's to deliver)."""
        _core.hv_np_bind(self.sw, port._np, None if adapter is None else adapter.c)
        if adapter is not None:
            adapter.c.port = port._np

    def undeliverable(self, port) -> None:
        """The port's receiver changed or broke: frames for it go through Python."""
        if port._np >= 0:
            _core.hv_np_port_at(self.sw, port._np).deliverable = 0

    # the MAC table (vswitch.py's _learn, _lookup, _expire, _forget_port, on the C table)
    def learn(self, vlan: int, mac: bytes, port, now: int) -> int:
        return _core.hv_np_learn(self.sw, vlan, _mac_int(mac), port._np, now)

    def lookup(self, vlan: int, mac: bytes, now: int):
        index = _core.hv_np_lookup(self.sw, vlan, _mac_int(mac), now)
        return None if index < 0 else self.ports[index]

    def expire(self, port, now: int) -> None:
        _core.hv_np_expire(self.sw, -1 if port is None else port._np, now)

    def forget(self, port) -> None:
        _core.hv_np_forget_port(self.sw, port._np)

    def entries(self) -> list[tuple[int, bytes, object, int]]:
        return [(vlan, mac.to_bytes(6, "big"), self.ports[port], seen)
                for vlan, mac, port, seen in _core.hv_np_mac_entries(self.sw)]


def packet_at(records, pos: int) -> tuple[Packet, int]:
    """The packet whose record starts at `pos` of a batch's records, and where the next starts
    (as PacketBatch parses it)."""
    ptype, offset8, len8, flags, trans_id = _DESC.unpack_from(records, pos)
    start, end = pos + offset8 * 8, pos + len8 * 8
    return Packet(ptype, flags, trans_id, bytes(records[start:end]), offset8, len8,
                  bytes(records[pos + 16:start])), end


def forward(vsp, plane: SwitchPlane, records, offset: int, count: int) -> tuple[int, int]:
    """Hand up to `count` packets from `offset` of a batch's records to C for `vsp` (the sender);
    fold back what C did, signal the rings it wrote as the ring rules said, and queue a completion
    the sender's ring did not take. Returns (packets handled, offset of the next)."""
    port = vsp.port
    switch = port._switch
    b = plane.batch
    b.now = now = switch._now()
    b.capture = switch._capture is not None
    b.window_start, b.window_count = port._window_start, port._window_count
    (_, window_start, window_count, handled, next_offset, pending, pending_tid, rx_frames, rx_bytes, forwarded,
     filtered, moves, refused, tx_frames, tx_bytes, flooded, ntouched, nsignals) = _core.hv_np_forward(
        plane.sw, vsp._np.c, records, offset, count, b, plane._view)
    if not handled:
        return 0, offset
    plane.handled += handled
    # Everything is read out of the batch record before any callback (a signal may re-enter).
    touched = b.touched[0:ntouched] if ntouched else ()
    signals = b.signals[0:nsignals] if nsignals else ()
    captured = _core.hv_np_captured(b, plane._capture_buffer) if b.capture and b.ncap else ()
    if rx_frames:
        port._window_start, port._window_count = window_start, window_count
        st = port.stats
        st.rx_frames += rx_frames
        st.rx_bytes += rx_bytes
        sw = switch.stats
        sw.forwarded += forwarded
        sw.flooded += flooded
        if filtered or moves or refused:
            sw.filtered += filtered
            sw.mac_moves += moves
            sw.learn_refused += refused
        vst = vsp.stats
        vst["tx_frames"] += tx_frames
        vst["tx_bytes"] += tx_bytes
    ports = plane.ports
    for index in touched:
        out = ports[index]
        c = _core.hv_np_port_at(plane.sw, index)
        ost = out.stats
        ost.tx_frames += c.d_tx_frames
        ost.tx_bytes += c.d_tx_bytes
        ost.dropped_refused += c.d_dropped_refused
        c.d_tx_frames = c.d_tx_bytes = c.d_dropped_refused = 0
        _fold_adapter(out._np_vsp)
    c = vsp._np.c
    if c.wrote:
        c.wrote = 0
        vsp.channel.outgoing._after_publish(c.w)
    if captured:
        # As _ingress records them: once per frame the switch took, tagged with its VLAN.
        vlan = port.vlan.vlan
        for frame in captured:
            if switch._capture is None:   # a failing disk stopped the capture
                break
            switch._record(tag(frame, vlan, 0) if vlan != VLAN_NONE else frame, now)
    for index in signals:
        ports[index]._np_vsp.channel._signal()
    if pending:
        vsp._reply_success(pending_tid)
    return handled, next_offset


def _fold_adapter(vsp) -> None:
    """A receiving adapter's counters and ring, after C delivered to it."""
    c = vsp._np.c
    st = vsp.stats
    if c.d_rx_frames:
        st["rx_frames"] += c.d_rx_frames
        st["rx_bytes"] += c.d_rx_bytes
        c.d_rx_frames = c.d_rx_bytes = 0
    if c.d_rx_filtered or c.d_rx_no_buffer or c.d_rx_ring_full:
        for key in ("rx_filtered", "rx_no_buffer", "rx_ring_full"):
            value = getattr(c, "d_" + key)
            if value:
                st[key] += value
                setattr(c, "d_" + key, 0)
    if c.wrote:
        c.wrote = 0
        vsp.channel.outgoing._after_publish(c.w)
