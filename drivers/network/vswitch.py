"""The virtual switch in the parent: a learning Ethernet switch with 802.1Q VLANs that connects VM
network adapters (and, by switch type, the parent and an external network) — on Hyper-V the only
way VMs reach each other.

Switch types, as on Hyper-V: "private" connects VMs only; "internal" adds a port for the parent
(`switch.parent`); "external" adds that and an endpoint standing for the host's physical network
(`switch.external`), which a test or user sends to and receives from.

Ports. A VM adapter's port comes from `add_port(name, deliver, mac=..., vlan=...)`. Its owner
puts frames into the switch with `port.send(frame)`; the switch hands each frame for the port to
`deliver(frame)`, which returns False when it could not take the frame (a full receive ring).
`switch.parent` and `switch.external` are `Endpoint`s: ports that keep what they receive in a
bounded inbox until something `attach`es a callback instead.

VLANs (Hyper-V's Set-VMNetworkAdapterVlan). Inside the switch every frame belongs to one VLAN
(0 is the untagged network, 1..4094 are 802.1Q VLANs) and is kept untagged with its VLAN beside
it; ports take the tag off on the way in and put it on on the way out. An *access* port belongs to one VLAN: it sends and receives untagged frames, and a
tagged frame from it is dropped. A *trunk* port carries the VLANs in its allowed set, tagged, and
its native VLAN untagged (untagged or priority-tagged frames it sends join the native VLAN).
Invariants:
- a frame is delivered only to ports that carry its VLAN, never back to the port it came from,
  and flooding respects VLANs like unicast does;
- a frame that still looks VLAN-tagged after its outer tag is removed (802.1Q, 802.1ad or 0x9100
  TPID) is dropped, so double tagging cannot hop VLANs on a trunk's native VLAN or outside;
- a port with a MAC address and without `allow_mac_spoofing` (Hyper-V's default) may only send
  from that address, so a VM cannot take over another's MAC entry.

Learning and ageing. The switch learns (VLAN, source MAC) → port from every accepted frame; an
entry not refreshed for `ageing_ns` of simulated time is forgotten; a MAC seen on another port
moves there. Destinations that are broadcast, multicast or not (or no longer) learned are flooded
in their VLAN. Each port may own at most `max_macs_per_port` entries, so no port can push the
others out of the table.

Bounds, so that one port cannot starve the others:
- rate: a port gets at most `max_frames_per_window` frames into the switch per `window_ns` of
  simulated time (default 10 000 frames per 1 ms); the rest are dropped and counted. The window
  restarts with the first frame after it ends. All frames count, malformed ones included.
- queue: delivery is synchronous, except that frames sent while the switch is delivering (a
  receiver answering from its callback) wait in one FIFO until the current delivery returns, so
  callbacks never recurse into each other; at most `queue_frames` frames may wait per port.
Delivery order is deterministic: FIFO, and floods go to ports in the order they were added.

Time is whatever `now()` returns (simulated ns); the switch never reads the wall clock.

The data plane in C (drivers/network/netplane.py, native/netplane.c). Unless built with
`data_plane=False` (or HVSIM_NETPLANE=0 in the environment), a switch keeps its MAC table in C
and netvsp adapters forward their data frames there, a batch per crossing: the same decisions,
counters and capture records as the code below, which stays the reference and handles every
frame the C path leaves to it (tagged, dropped, to a port that is not a netvsp's or flooded to a
VLAN with one, sent while the switch is delivering). Learning, lookups and ageing on the C table follow `_learn`,
`_lookup` and `_expire` step for step.

Counters, per port (`port.stats`): rx_* are frames the switch took from the port, tx_* frames it
delivered to the port, dropped_* why frames were refused. A receiver that raises is recorded in
`port.error` and gets nothing more: a broken port fails alone.
"""
from __future__ import annotations

import enum
import os
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from drivers.network import netplane, pcap
from drivers.network.frames import (
    HEADER_LEN, MTU, TAG_LEN, TPID_8021Q, VLAN_MAX, VLAN_NONE, VLAN_TPIDS, ZERO_MAC, mac_bytes, mac_text, tag,
)

SECOND = 1_000_000_000

Deliver = Callable[[bytes], "bool | None"]


class SwitchType(str, enum.Enum):
    PRIVATE = "private"    # VMs only
    INTERNAL = "internal"  # VMs and the parent
    EXTERNAL = "external"  # VMs, the parent and the external network


@dataclass(frozen=True)
class SwitchSettings:
    ageing_ns: int = 300 * SECOND          # 802.1D's default ageing time
    max_frames_per_window: int = 10_000    # per port
    window_ns: int = 1_000_000             # 1 ms
    queue_frames: int = 256                # per port, frames waiting for delivery
    max_macs_per_port: int = 1024
    mtu: int = MTU                         # largest payload of an untagged frame

    def __post_init__(self) -> None:
        for name in ("ageing_ns", "max_frames_per_window", "window_ns", "queue_frames", "max_macs_per_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"switch setting {name} must be a positive integer, got {value!r}")
        if not isinstance(self.mtu, int) or not 46 <= self.mtu <= 9000:
            raise ValueError(f"switch setting mtu must be an integer in 46..9000, got {self.mtu!r}")


class VlanMode(str, enum.Enum):
    ACCESS = "access"
    TRUNK = "trunk"


@dataclass(frozen=True)
class VlanConfig:
    """A port's VLAN membership. Build with `VlanConfig.access(vlan)` or `VlanConfig.trunk(...)`."""

    mode: VlanMode = VlanMode.ACCESS
    vlan: int = VLAN_NONE                  # access: the port's VLAN (0: the untagged network)
    allowed: frozenset[int] = frozenset()  # trunk: VLANs carried tagged
    native: int | None = VLAN_NONE         # trunk: VLAN carried untagged; None: untagged frames dropped

    @classmethod
    def access(cls, vlan: int = VLAN_NONE) -> VlanConfig:
        if not isinstance(vlan, int) or not 0 <= vlan <= VLAN_MAX:
            raise ValueError(f"access VLAN {vlan!r} is outside 0..{VLAN_MAX}")
        return cls(VlanMode.ACCESS, vlan)

    @classmethod
    def trunk(cls, allowed: Iterable[int], native: int | None = VLAN_NONE) -> VlanConfig:
        allowed = frozenset(allowed)
        bad = sorted(v for v in allowed if not isinstance(v, int) or not 1 <= v <= VLAN_MAX)
        if bad:
            raise ValueError(f"trunk VLANs {bad[:5]} are outside 1..{VLAN_MAX}")
        if native is not None and (not isinstance(native, int) or not 0 <= native <= VLAN_MAX):
            raise ValueError(f"native VLAN {native!r} is outside 0..{VLAN_MAX}")
        return cls(VlanMode.TRUNK, VLAN_NONE, allowed, native)

    def carries(self, vlan: int) -> bool:
        if self.mode is VlanMode.ACCESS:
            return vlan == self.vlan
        return vlan == self.native or vlan in self.allowed


ALL_VLANS = frozenset(range(1, VLAN_MAX + 1))


@dataclass
class PortStats:
    rx_frames: int = 0          # frames the switch accepted from this port
    rx_bytes: int = 0
    tx_frames: int = 0          # frames the switch delivered to this port
    tx_bytes: int = 0
    dropped_malformed: int = 0  # from the port: too short, too long, bad source MAC
    dropped_vlan: int = 0       # from the port: a VLAN it does not carry, or a stacked tag
    dropped_spoofed: int = 0    # from the port: a source MAC other than the port's
    dropped_rate: int = 0       # from the port: over its frames-per-window bound
    dropped_queue: int = 0      # for the port: its delivery queue was full
    dropped_refused: int = 0    # for the port: its receiver refused, is missing or broke

    @property
    def rx_dropped(self) -> int:
        return self.dropped_malformed + self.dropped_vlan + self.dropped_spoofed + self.dropped_rate

    @property
    def tx_dropped(self) -> int:
        return self.dropped_queue + self.dropped_refused


@dataclass
class SwitchStats:
    forwarded: int = 0      # frames accepted and sent on (to one port, to several, or to none)
    flooded: int = 0        # of those, flooded to the VLAN
    filtered: int = 0       # of those, addressed to a MAC learned on the port they came from
    mac_moves: int = 0      # live MAC entries that moved to another port
    learn_refused: int = 0  # MACs not learned because their port owned max_macs_per_port


@dataclass(frozen=True)
class MacEntry:
    vlan: int
    mac: str
    port: str
    age_ns: int


class _Learned:
    __slots__ = ("port", "seen")

    def __init__(self, port: Port, seen: int) -> None:
        self.port, self.seen = port, seen


class Port:
    """One port of a switch. Created by the switch; its owner sends with `send`."""

    def __init__(self, switch: VirtualSwitch, name: str, kind: str, deliver: Deliver | None,
                 vlan: VlanConfig, mac: bytes | None, allow_mac_spoofing: bool) -> None:
        self.name = name
        self.kind = kind                  # "vm", "parent" or "external"
        self.mac = mac                    # the adapter's address, or None for a port of many MACs
        self.allow_mac_spoofing = allow_mac_spoofing
        self.stats = PortStats()
        self.error: BaseException | None = None   # what its receiver raised, if it did
        self._switch: VirtualSwitch | None = switch
        self._deliver = deliver
        self._vlan = vlan
        self._window_start = 0
        self._window_count = 0
        self._queued = 0                  # frames waiting in the switch's delivery FIFO
        self._learned = 0                 # MAC entries pointing at this port
        self._next_expiry = 0             # no entry of this port ages before this time
        self._np = -1                     # its index in the switch's C data plane (-1: none)
        self._np_vsp = None               # the netvsp whose AdapterPlane is bound to it

    @property
    def connected(self) -> bool:
        return self._switch is not None

    @property
    def vlan(self) -> VlanConfig:
        return self._vlan

    def send(self, frame: bytes) -> bool:
        """Put a frame into the switch; True if the switch accepted it (it may still reach no one)."""
        switch = self._switch
        return False if switch is None else switch._ingress(self, frame)

    def attach(self, deliver: Deliver | None) -> None:
        """Give the port its receiver (or take it away: frames for it are then dropped). Clears
        the error a previous receiver left."""
        self._deliver = deliver
        self.error = None
        if self._switch is not None and self._switch._plane is not None:
            self._switch._plane.undeliverable(self)

    def set_vlan(self, config: VlanConfig) -> None:
        """Change the port's VLAN membership; what it had learned is forgotten."""
        if not isinstance(config, VlanConfig):
            raise TypeError("set_vlan takes a VlanConfig (VlanConfig.access(...) or VlanConfig.trunk(...))")
        if self._switch is not None:
            self._switch._forget_port(self)
        self._vlan = config
        if self._switch is not None and self._switch._plane is not None:
            self._switch._plane.set_vlan(self, config)

    def disconnect(self) -> None:
        """Leave the switch: its MAC entries and waiting frames go; sending returns False."""
        if self._switch is not None:
            self._switch._remove(self)

    def __repr__(self) -> str:
        return f"<Port {self.name!r} {self.kind} {self._vlan.mode.value}>"


class Endpoint(Port):
    """A port that keeps what it receives in a bounded inbox until a callback is attached: the
    parent's port and the external network's."""

    def __init__(self, switch: VirtualSwitch, name: str, kind: str, vlan: VlanConfig,
                 inbox_frames: int = 1024) -> None:
        super().__init__(switch, name, kind, None, vlan, None, True)
        self.inbox: deque[bytes] = deque()
        self.inbox_frames = inbox_frames
        self._deliver = self._keep

    def _keep(self, frame: bytes) -> bool:
        if len(self.inbox) >= self.inbox_frames:
            return False
        self.inbox.append(frame)
        return True

    def receive(self) -> bytes | None:
        """The oldest frame in the inbox, or None."""
        return self.inbox.popleft() if self.inbox else None

    def received(self) -> list[bytes]:
        """Every frame in the inbox, oldest first; the inbox is emptied."""
        frames = list(self.inbox)
        self.inbox.clear()
        return frames


class VirtualSwitch:
    def __init__(self, name: str, kind: SwitchType | str = SwitchType.PRIVATE, *,
                 now: Callable[[], int], settings: SwitchSettings | None = None,
                 data_plane: bool | None = None) -> None:
        self.name = name
        self.kind = SwitchType(kind)
        self.settings = settings or SwitchSettings()
        self.stats = SwitchStats()
        self.capture_error: OSError | None = None  # why the last capture stopped by itself
        self._now = now
        self._ports: dict[str, Port] = {}
        self._macs: dict[tuple[int, bytes], _Learned] = {}
        self._members: dict[int, list[Port]] = {}  # VLAN -> ports carrying it (a cache)
        self._pending: deque[tuple[Port, bytes]] = deque()
        self._delivering = False
        self._capture: pcap.PcapWriter | None = None
        # The C data plane (drivers/network/netplane.py): with it the MAC table lives in C and
        # netvsp ports forward frames there; without it (data_plane=False) all is Python.
        use_plane = netplane.enabled() if data_plane is None else bool(data_plane)
        self._plane: netplane.SwitchPlane | None = netplane.SwitchPlane(self.settings) if use_plane else None
        self.parent: Endpoint | None = None
        self.external: Endpoint | None = None
        if self.kind is not SwitchType.PRIVATE:
            self.parent = self._attach(Endpoint(self, "parent", "parent", VlanConfig.access()))
        if self.kind is SwitchType.EXTERNAL:
            # The physical network: every VLAN, tagged, and the untagged network untagged.
            self.external = self._attach(Endpoint(self, "external", "external", VlanConfig.trunk(ALL_VLANS)))

    # --- ports -----------------------------------------------------------------------------

    def add_port(self, name: str, deliver: Deliver | None = None, *, mac: str | bytes | None = None,
                 vlan: VlanConfig | None = None, allow_mac_spoofing: bool = False) -> Port:
        """Connect a VM network adapter. `mac` is its address (frames from other source MACs are
        dropped unless `allow_mac_spoofing`); `vlan` defaults to the untagged network."""
        if vlan is not None and not isinstance(vlan, VlanConfig):
            raise TypeError("vlan must be a VlanConfig (VlanConfig.access(...) or VlanConfig.trunk(...))")
        address = None if mac is None else mac_bytes(mac)
        if address is not None and (address[0] & 1 or address == ZERO_MAC):
            raise ValueError(f"port {name!r}: {mac_text(address)} is not a unicast MAC address")
        return self._attach(Port(self, name, "vm", deliver, vlan or VlanConfig.access(), address,
                                 allow_mac_spoofing))

    def _attach(self, port: Port) -> Port:
        if not isinstance(port.name, str) or not port.name:
            raise ValueError("a port needs a non-empty name")
        if port.name in self._ports:
            raise ValueError(f"switch {self.name!r} already has a port named {port.name!r}")
        self._ports[port.name] = port
        self._members.clear()
        if self._plane is not None:
            self._plane.add(port)
        return port

    @property
    def ports(self) -> tuple[Port, ...]:
        return tuple(self._ports.values())

    def port(self, name: str) -> Port:
        return self._ports[name]

    def _remove(self, port: Port) -> None:
        self._forget_port(port)
        if self._plane is not None:
            self._plane.remove(port)
        del self._ports[port.name]
        port._switch = None
        self._members.clear()
        if port._queued:
            self._pending = deque(item for item in self._pending if item[0] is not port)
            port._queued = 0

    def _forget_port(self, port: Port) -> None:
        if self._plane is not None:
            self._plane.forget(port)
            self._members.clear()
            return
        for key in [key for key, entry in self._macs.items() if entry.port is port]:
            del self._macs[key]
        port._learned = 0
        self._members.clear()

    def _members_of(self, vlan: int) -> list[Port]:
        members = self._members.get(vlan)
        if members is None:
            members = [p for p in self._ports.values() if p._vlan.carries(vlan)]
            self._members[vlan] = members
        return members

    # --- the MAC table ---------------------------------------------------------------------

    def _learn(self, vlan: int, mac: bytes, port: Port, now: int) -> None:
        if self._plane is not None:   # the same policy, on the C table
            bits = self._plane.learn(vlan, mac, port, now)
            self.stats.mac_moves += bits & 1
            self.stats.learn_refused += bits >> 1 & 1
            return
        key = (vlan, mac)
        entry = self._macs.get(key)
        if entry is not None:
            if entry.port is port:
                entry.seen = now
                return
            if now - entry.seen < self.settings.ageing_ns:
                self.stats.mac_moves += 1
            entry.port._learned -= 1
            del self._macs[key]
        if port._learned >= self.settings.max_macs_per_port:
            # Scan for aged entries only when one can have aged since the last scan: a port that
            # keeps offering new MACs must not cost a table scan per frame.
            if now >= port._next_expiry:
                self._expire(port, now)
            if port._learned >= self.settings.max_macs_per_port:
                self.stats.learn_refused += 1
                return
        self._macs[key] = _Learned(port, now)
        port._learned += 1

    def _lookup(self, vlan: int, mac: bytes, now: int) -> Port | None:
        if self._plane is not None:
            return self._plane.lookup(vlan, mac, now)
        entry = self._macs.get((vlan, mac))
        if entry is None:
            return None
        if now - entry.seen >= self.settings.ageing_ns:
            entry.port._learned -= 1
            del self._macs[(vlan, mac)]
            return None
        return entry.port

    def _expire(self, port: Port | None, now: int) -> None:
        """Forget aged entries (of one port, or all)."""
        if self._plane is not None:
            self._plane.expire(port, now)
            return
        ageing = self.settings.ageing_ns
        oldest_kept = now
        for key, entry in list(self._macs.items()):
            if port is None or entry.port is port:
                if now - entry.seen >= ageing:
                    entry.port._learned -= 1
                    del self._macs[key]
                else:
                    oldest_kept = min(oldest_kept, entry.seen)
        if port is not None:
            port._next_expiry = oldest_kept + ageing

    def mac_table(self) -> list[MacEntry]:
        """The live entries, by VLAN then MAC."""
        now = self._now()
        self._expire(None, now)
        if self._plane is not None:
            live = [(vlan, mac, port, seen) for vlan, mac, port, seen in self._plane.entries()]
        else:
            live = [(vlan, mac, e.port, e.seen) for (vlan, mac), e in self._macs.items()]
        return sorted((MacEntry(vlan, mac_text(mac), port.name, now - seen) for vlan, mac, port, seen in live),
                      key=lambda e: (e.vlan, e.mac))

    # --- forwarding ------------------------------------------------------------------------

    def _ingress(self, port: Port, frame: bytes) -> bool:
        settings, stats = self.settings, port.stats
        now = self._now()
        if now - port._window_start >= settings.window_ns:
            port._window_start, port._window_count = now, 0
        if port._window_count >= settings.max_frames_per_window:
            stats.dropped_rate += 1
            return False
        port._window_count += 1

        # A private copy: the sender's buffer may change after send() returns (or during it).
        frame = bytes(frame)
        size = len(frame)
        if size < HEADER_LEN:
            stats.dropped_malformed += 1
            return False
        config = port._vlan
        priority = 0
        if (frame[12] << 8 | frame[13]) == TPID_8021Q:
            if size < HEADER_LEN + TAG_LEN:
                stats.dropped_malformed += 1
                return False
            if config.mode is VlanMode.ACCESS:
                stats.dropped_vlan += 1        # no VLAN hopping from an access port
                return False
            tci = frame[14] << 8 | frame[15]
            vid, priority = tci & 0xFFF, tci >> 12
            inner = frame[:12] + frame[16:]
            if vid == VLAN_NONE:
                vlan = config.native      # a priority tag: the frame is untagged for VLAN purposes
            elif vid in config.allowed or vid == config.native:
                vlan = vid
            else:
                vlan = None
        else:
            inner = frame
            vlan = config.vlan if config.mode is VlanMode.ACCESS else config.native
        if vlan is None:
            stats.dropped_vlan += 1
            return False
        if len(inner) > HEADER_LEN + settings.mtu:
            stats.dropped_malformed += 1
            return False
        if (inner[12] << 8 | inner[13]) in VLAN_TPIDS:
            stats.dropped_vlan += 1
            return False
        src = inner[6:12]
        if src[0] & 1 or src == ZERO_MAC:
            stats.dropped_malformed += 1
            return False
        if port.mac is not None and not port.allow_mac_spoofing and src != port.mac:
            stats.dropped_spoofed += 1
            return False

        stats.rx_frames += 1
        stats.rx_bytes += size
        self.stats.forwarded += 1
        self._learn(vlan, src, port, now)
        tagged = None                     # the frame with its VLAN tag, made when first needed
        if self._capture is not None:
            tagged = tag(inner, vlan, priority) if vlan != VLAN_NONE else inner
            self._record(tagged, now)

        dst = inner[:6]
        target = None if dst[0] & 1 else self._lookup(vlan, dst, now)
        if target is None:
            self.stats.flooded += 1
            targets = self._members_of(vlan)
        elif target is port:
            self.stats.filtered += 1
            return True
        else:
            targets = (target,)
        queue_bound = settings.queue_frames
        for out in targets:
            if out is port or not out._vlan.carries(vlan):
                continue
            if out._queued >= queue_bound:
                out.stats.dropped_queue += 1
                continue
            config = out._vlan
            if config.mode is VlanMode.ACCESS or vlan == config.native:
                self._pending.append((out, inner))
            else:
                if tagged is None:
                    tagged = tag(inner, vlan, priority)
                self._pending.append((out, tagged))
            out._queued += 1
        if not self._delivering:
            self._deliver_pending()
        return True

    def _deliver_pending(self) -> None:
        self._delivering = True
        try:
            while self._pending:
                port, frame = self._pending.popleft()
                port._queued -= 1
                deliver = port._deliver
                if deliver is None or port.error is not None:
                    port.stats.dropped_refused += 1
                    continue
                try:
                    taken = deliver(frame)
                except Exception as exc:  # a broken receiver fails alone  # noqa: BLE001
                    port.error = exc
                    if self._plane is not None:
                        self._plane.undeliverable(port)
                    port.stats.dropped_refused += 1
                    continue
                if taken is False:
                    port.stats.dropped_refused += 1
                else:
                    port.stats.tx_frames += 1
                    port.stats.tx_bytes += len(frame)
        finally:
            self._delivering = False

    # --- packet capture --------------------------------------------------------------------

    def capture(self, path: str | os.PathLike, *, snaplen: int = pcap.DEFAULT_SNAPLEN) -> pcap.PcapWriter:
        """Write every frame the switch forwards from now on to a pcap file at `path`, as it is
        inside the switch: tagged with its VLAN (untagged for VLAN 0), once per frame however
        many ports it goes to, stamped with simulated time. Frames the switch drops are not in it."""
        if self._capture is not None:
            raise RuntimeError(f"switch {self.name!r} is already capturing to {self._capture.path}")
        self._capture = pcap.PcapWriter(path, snaplen=snaplen)
        self.capture_error = None
        return self._capture

    def stop_capture(self) -> int:
        """Close the capture file (flushed and fsynced); returns the number of frames written."""
        writer, self._capture = self._capture, None
        if writer is None:
            return 0
        writer.close()
        return writer.records

    def _record(self, frame: bytes, now: int) -> None:
        try:
            self._capture.write(frame, now)
        except OSError as exc:
            # A full disk stops the capture, never the switch.
            writer, self._capture = self._capture, None
            self.capture_error = exc
            try:
                writer.close()
            except OSError:
                pass
