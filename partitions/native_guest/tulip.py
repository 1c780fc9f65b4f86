"""An emulated legacy network adapter: a documented subset of the DEC 21140A ("Tulip") Fast Ethernet
controller, as Virtual Server 2005, Virtual PC and Hyper-V's "legacy network adapter" gave guests
that have no VMBus driver, on a VM's intercept bus and a port of a virtual switch.

Registers. PCI is not modelled: the sixteen CSRs sit at fixed I/O ports, CSRn at BASE + 8 * n
(BASE = 0xEC00, the 8-byte stride of the 21140's I/O space), each read or write an intercept (the
exit to the parent plus ACCESS_NS, devices.py). CSRs are 32 bits; a 1- or 2-byte access reads or
writes the low bytes of the register at its offset. What each does here:
  CSR0  bus mode: SWR (bit 0) resets the chip; DSL (bits 6:2) is ring mode's descriptor skip.
  CSR1  transmit poll demand: any write makes a suspended transmit process look at its list.
  CSR2  receive poll demand: the same for a suspended receive process.
  CSR3  receive list base, CSR4 transmit list base (the next descriptor goes back to the base).
  CSR5  status: TI, TPS, TU, RI, RU, RPS, FBE, the summaries NIS and AIS (the OR of the normal and
        abnormal bits CSR7 enables), the processes' states (RS, TS); bits 0-16 are cleared by
        writing 1s (write-1-to-clear).
  CSR6  operation mode: SR (bit 1) starts/stops receive, ST (bit 13) transmit, PR (bit 6)
        promiscuous, PM (bit 7) all multicast.
  CSR7  interrupt enable (the same bit layout as CSR5).
  CSR8  missed frames: frames dropped for want of a receive descriptor (bits 15:0, bit 16 set on
        overflow), cleared by the read.
  CSR9  station address: the 21040's byte-wide address ROM interface rather than the 21140's
        Microwire serial ROM: a write resets the ROM pointer, each read returns the next byte of
        the MAC address in bits 7:0 (bit 31 clear: the byte is valid), cycling after six. A driver
        gets its MAC with one write and six reads.
  CSR10-15 read 0 and ignore writes (no general-purpose timer, port or watchdog).

Interrupts. The chip asserts its interrupt line (IRQ 11 on the intercept bus, vector 0x2B:
devices.py) while CSR5 has a summary bit CSR7 enables (NIS for TI, TU, RI; AIS for TPS, RU, RPS,
FBE), level-triggered: it stays up until the guest clears the bits by writing them to CSR5, as a
21140's INTA does. `interrupt` says whether it is up. With CSR7 at 0 the chip raises nothing and a
guest polls (CSR5, or its descriptors in its own memory), as before interrupts were modelled.

Descriptors (4 little-endian 32-bit words, 4-byte aligned, in guest memory). Word 0 holds OWN (bit
31: the chip's) and the status, word 1 the control bits and two buffer sizes (bits 10:0 and 21:11,
at most 2047 bytes each), words 2 and 3 the buffer addresses; word 3 is the next descriptor's
address when word 1 has the chained bit (24), else the next descriptor follows at 16 + 4 * DSL
bytes; the end-of-ring bit (25) sends the chip back to the list's base. Transmit: FS (29) and LS
(30) mark a frame's first and last descriptors, IC (31) asks for TI when the frame is done, SET
(27) marks a setup frame (192 bytes: 16 perfect-filter addresses, each in the low 16 bits of three
words), which sets the receive filter instead of going on the wire. Receive: the chip writes word
0 back with OWN clear, FS (9), LS (8), MF (10, multicast) and the frame length with its CRC (bits
29:16) in the last descriptor.

The receive filter is the station address and broadcast until a setup frame replaces it with that
frame's addresses; PR takes everything and PM every multicast frame.

Memory. The chip reads and writes guest memory through the core's batched page access (the
parent's read_range/write_range of its child's GPA map, whole pages per crossing, never Python per
byte). Each transmit frame and each receive frame is decoded fully (every descriptor read, checked
and its buffers read) before anything is written, so a refused one changes nothing in the guest.
A malformed list -- a descriptor or buffer outside the guest's RAM, a misaligned descriptor, a
buffer size of 0 (receive) or a frame of 0 or more than MAX_FRAME bytes (transmit), a frame that
runs through more than MAX_SEGMENTS descriptors or comes back to one it already used -- stops this
chip with a fatal bus error (CSR5 FBE and AIS, both processes stopped), as a 21140 that gets a bus
error stops until a software reset; it never raises into the host.

The wire. Frames go to and come from a virtual switch port, like netvsp's, so the switch, its
capture and the other VMs see them. A transmitted frame (padded to 60 bytes, as the chip pads)
reaches the switch during the poll demand (or CSR6 write) that sends it, and that access also waits
out the frame's time on a 100 Mbit/s wire (preamble, CRC and inter-frame gap included) as medium
time (busy_ns). A received frame goes into the next free receive descriptors when the switch
delivers it (the sender paid the wire); with none free, or receive stopped, it is dropped and
counted in CSR8, and RU is set. Besides the intercepts' parent CPU the bus counts, the device
model's per-frame work (descriptor walk, copy, switch hand-off: FRAME_NS) is parent CPU too,
counted in `work_ns` (a received frame's happens outside any intercept).

State. save_state() is plain data (CSRs, ring positions, ROM pointer, filter, counters and the
frames held while quiesced); load_state() puts it back. quiesce() makes the chip hold the frames
the switch brings (up to HOLD_FRAMES, the rest missed) until resume(), so a saved VM's memory and
the chip's state stay consistent; close() leaves the switch.
"""
from __future__ import annotations

import struct
import zlib

from drivers.network.frames import BROADCAST, mac_bytes, mac_text
from hypervisor.status import HvError
from partitions.native_guest.devices import NIC_IRQ

BASE = 0xEC00            # CSR0's port; CSRn is at BASE + 8 * n
CSR_STRIDE, CSRS = 8, 16
PORTS = CSR_STRIDE * CSRS
#: The device model's own time per register access.
ACCESS_NS = 200
#: The device model's work per frame it moves (descriptors, copy, the switch): parent CPU.
FRAME_NS = 1_000
WIRE_BITS_PER_S = 100_000_000      # Fast Ethernet
WIRE_OVERHEAD = 8 + 4 + 12         # preamble and SFD, CRC, inter-frame gap (bytes)
MIN_FRAME = 60                     # without CRC: shorter frames are padded
MAX_FRAME = 2048                   # a frame longer than this is a malformed list
MAX_SEGMENTS = 32                  # descriptors one frame may use
BUFFER_MAX = 2047                  # an 11-bit buffer size
HOLD_FRAMES = 64                   # frames held while quiesced
SETUP_LEN = 192

# CSR5 (status) and CSR7 (enable) bits.
TI, TPS, TU, RI, RU, RPS, FBE, AIS, NIS = 1 << 0, 1 << 1, 1 << 2, 1 << 6, 1 << 7, 1 << 8, 1 << 13, 1 << 15, 1 << 16
NIE, AIE = NIS, AIS                # CSR7: the summaries' enables (the same bits)
NORMAL = TI | TU | RI
ABNORMAL = TPS | RU | RPS | FBE
CLEARABLE = 0x1FFFF
RS_SHIFT, TS_SHIFT = 17, 20
RS_STOPPED, RS_WAITING, RS_SUSPENDED = 0, 3, 4
TS_STOPPED, TS_SUSPENDED = 0, 6
# CSR6 bits, CSR0 bits.
SR, PR, PM, ST = 1 << 1, 1 << 6, 1 << 7, 1 << 13
SWR = 1 << 0
# Descriptor bits.
OWN = 1 << 31
RDES0_FS, RDES0_LS, RDES0_MF = 1 << 9, 1 << 8, 1 << 10
TDES1_IC, TDES1_LS, TDES1_FS, TDES1_SET = 1 << 31, 1 << 30, 1 << 29, 1 << 27
DES1_END, DES1_CHAINED = 1 << 25, 1 << 24
CSR0_RESET = 0xFE00_0000           # the 21140A's reset value of CSR0

_DESC = struct.Struct("<IIII")
PAGE = 4096


class TulipFault(Exception):
    """A malformed descriptor list: the chip stops with a fatal bus error (never seen outside)."""


def wire_ns(length: int) -> int:
    """The time a frame of `length` bytes (without CRC) takes on a 100 Mbit/s wire."""
    return (max(length, MIN_FRAME) + WIRE_OVERHEAD) * 8 * 1_000_000_000 // WIRE_BITS_PER_S


class Tulip21140:
    """The legacy network adapter of `partition` on `switch` (a VirtualSwitch, or None for an
    unplugged cable), with station address `mac`. Its ports are counted on the bus as `name`."""

    def __init__(self, partition, switch, *, mac: bytes | str, name: str = "legacy-nic"):
        self.partition, self.switch, self.name = partition, switch, name
        self.mac = mac_bytes(mac)
        self.port = None
        if switch is not None:
            self.port = switch.add_port(f"{name}-{mac_text(self.mac)}", self._from_switch, mac=self.mac)
        self.fatal: str | None = None       # why the chip stopped with FBE
        self.stats = {"tx_frames": 0, "tx_bytes": 0, "rx_frames": 0, "rx_bytes": 0, "missed": 0,
                      "filtered": 0, "setup_frames": 0}
        self.work_ns = 0                    # the device model's per-frame parent CPU
        self.wire_ns = 0                    # wire time spent transmitting
        self._busy = 0
        self.quiesced = False
        self.held: list[bytes] = []         # frames the switch brought while quiesced
        self.bus = None                     # the intercept bus its interrupt line is on (connect)
        self.irq = NIC_IRQ
        self._reset()

    # ---- the bus ---------------------------------------------------------------------------------
    def claims(self):
        yield (self.name, BASE, PORTS, self.read, self.write, ACCESS_NS)

    def attach(self, bus) -> None:
        bus.attach(self)

    def connect(self, bus) -> None:
        """Its interrupt line is on `bus` (IoBus.attach calls this)."""
        self.bus = bus
        self._sync_irq()

    def _sync_irq(self) -> None:
        # The line follows CSR5 & CSR7 (level): called after anything that changes either.
        if self.bus is not None:
            if self.interrupt:
                self.bus.raise_irq(self.name, self.irq)
            else:
                self.bus.lower_irq(self.name, self.irq)

    def busy_ns(self) -> int:
        ns, self._busy = self._busy, 0
        return ns

    @property
    def interrupt(self) -> bool:
        """Whether the chip would assert its interrupt line (CSR5's summaries CSR7 enables)."""
        return bool(self._status() & self.csr7 & (NIS | AIS))

    def _reset(self) -> None:
        self.csr0, self.csr3, self.csr4, self.csr5, self.csr6, self.csr7 = CSR0_RESET, 0, 0, 0, 0, 0
        self.missed, self.missed_overflow = 0, False
        self.rx_next, self.tx_next = 0, 0         # the current descriptors' GPAs
        self.rx_suspended, self.tx_suspended = False, False
        self.rom = 0
        self.filter: list[bytes] | None = None    # None: station address and broadcast
        self.fatal = None

    # ---- registers -------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        csr, byte = divmod(offset, CSR_STRIDE)
        return self._read_csr(csr) >> 8 * byte if byte < 4 else 0

    def write(self, offset: int, size: int, value: int) -> None:
        csr, byte = divmod(offset, CSR_STRIDE)
        if byte >= 4:
            return
        if byte or size < 4:   # a narrow write changes only its bytes of the register
            mask = ((1 << 8 * size) - 1) << 8 * byte
            value = (self._shadow(csr) & ~mask | value << 8 * byte & mask) & 0xFFFF_FFFF
            if csr == 5:       # write-1-to-clear: only the written bytes' ones count
                value &= mask
        self._write_csr(csr, value)
        self._sync_irq()

    def _shadow(self, csr: int) -> int:
        return {0: self.csr0, 3: self.csr3, 4: self.csr4, 6: self.csr6, 7: self.csr7}.get(csr, 0)

    def _status(self) -> int:
        s = self.csr5 & CLEARABLE & ~(NIS | AIS)
        if s & NORMAL & self.csr7:
            s |= NIS
        if s & ABNORMAL & self.csr7:
            s |= AIS
        rs = RS_STOPPED if not self.csr6 & SR or self.fatal else RS_SUSPENDED if self.rx_suspended else RS_WAITING
        ts = TS_STOPPED if not self.csr6 & ST or self.fatal else TS_SUSPENDED
        return s | rs << RS_SHIFT | ts << TS_SHIFT

    def _read_csr(self, csr: int) -> int:
        if csr == 5:
            return self._status()
        if csr == 8:
            value = self.missed | (1 << 16 if self.missed_overflow else 0)
            self.missed, self.missed_overflow = 0, False
            return value
        if csr == 9:
            byte = self.mac[self.rom]
            self.rom = (self.rom + 1) % 6
            return byte
        return self._shadow(csr)

    def _write_csr(self, csr: int, value: int) -> None:
        if csr == 0:
            if value & SWR:
                self._reset()
            else:
                self.csr0 = value
        elif csr == 1:
            self._transmit()
        elif csr == 2:
            self.rx_suspended = False
        elif csr == 3:
            self.csr3 = self.rx_next = value & ~3
        elif csr == 4:
            self.csr4 = self.tx_next = value & ~3
        elif csr == 5:
            self.csr5 &= ~(value & CLEARABLE)
        elif csr == 6:
            was, self.csr6 = self.csr6, value
            if was & ST and not value & ST:
                self.csr5 |= TPS
            if was & SR and not value & SR:
                self.csr5 |= RPS
            if value & SR and not was & SR:
                self.rx_suspended = False
            if value & ST and not was & ST:
                self._transmit()
        elif csr == 7:
            self.csr7 = value & CLEARABLE
        elif csr == 9:
            self.rom = 0

    # ---- guest memory ----------------------------------------------------------------------------
    def _read_mem(self, gpa: int, length: int) -> bytes:
        if gpa < 0 or length <= 0:
            raise TulipFault(f"bad range {gpa:#x}+{length}")
        first, last = gpa // PAGE, (gpa + length - 1) // PAGE
        try:
            data = self.partition.host.root.read_range(self.partition, first, last - first + 1)
        except HvError as exc:
            raise TulipFault(f"GPA {gpa:#x}+{length} is outside the guest's RAM ({exc})") from None
        start = gpa - first * PAGE
        return data[start:start + length]

    def _write_mem(self, writes: list[tuple[int, bytes]]) -> None:
        """Store each (gpa, bytes); every range was read (so is RAM) before this is called."""
        root = self.partition.host.root
        for gpa, data in writes:
            first, last = gpa // PAGE, (gpa + len(data) - 1) // PAGE
            pages = bytearray(root.read_range(self.partition, first, last - first + 1))
            start = gpa - first * PAGE
            pages[start:start + len(data)] = data
            root.write_range(self.partition, first, pages)

    def _descriptor(self, gpa: int) -> tuple[int, int, int, int]:
        if gpa & 3:
            raise TulipFault(f"descriptor at {gpa:#x} is not 4-byte aligned")
        return _DESC.unpack(self._read_mem(gpa, 16))

    def _after(self, gpa: int, des1: int, des3: int, base: int) -> int:
        if des1 & DES1_END:
            return base
        if des1 & DES1_CHAINED:
            return des3
        return gpa + 16 + 4 * (self.csr0 >> 2 & 0x1F)

    def _fail(self, why: str) -> None:
        self.fatal = why
        self.csr5 |= FBE
        self.rx_suspended = self.tx_suspended = False

    # ---- transmit --------------------------------------------------------------------------------
    def _transmit(self) -> None:
        """Send every complete frame the guest gave the chip, then suspend (TU)."""
        if self.fatal or not self.csr6 & ST:
            return
        while True:
            try:
                frame = self._take_tx()
            except TulipFault as exc:
                return self._fail(f"transmit list: {exc}")
            if frame is None:
                self.tx_suspended = True
                self.csr5 |= TU
                return
            self._send(*frame)

    def _take_tx(self):
        """The next frame on the transmit list, decoded and checked: (data, is_setup, ic, writes,
        next), or None if the list's next frame is not (wholly) the chip's."""
        gpa, seen, parts, size = self.tx_next, set(), [], 0
        des1 = 0
        while True:
            if gpa in seen or len(seen) >= MAX_SEGMENTS:
                raise TulipFault(f"a frame runs through {len(seen)} descriptors back to {gpa:#x}")
            seen.add(gpa)
            des0, des1, des2, des3 = self._descriptor(gpa)
            if not des0 & OWN:
                return None                      # the guest has not finished giving it
            if not parts and not des1 & TDES1_FS:
                raise TulipFault(f"descriptor at {gpa:#x} starts a frame without FS")
            sizes = (des1 & 0x7FF, des1 >> 11 & 0x7FF)
            addresses = (des2, None if des1 & DES1_CHAINED else des3)
            for length, address in zip(sizes, addresses):
                if length and address is not None:
                    parts.append(self._read_mem(address, length))
                    size += length
                    if size > MAX_FRAME:
                        raise TulipFault(f"a frame of more than {MAX_FRAME} bytes")
            nxt = self._after(gpa, des1, des3, self.csr4)
            if des1 & TDES1_LS:
                break
            gpa = nxt
        if size == 0:
            raise TulipFault(f"a frame of 0 bytes ending at descriptor {gpa:#x}")
        writes = [(d, struct.pack("<I", 0)) for d in sorted(seen)]   # OWN clear, no errors
        return b"".join(parts), bool(des1 & TDES1_SET), bool(des1 & TDES1_IC), writes, nxt

    def _send(self, data: bytes, setup: bool, ic: bool, writes, nxt: int) -> None:
        self._write_mem(writes)
        self.tx_next = nxt
        self.work_ns += FRAME_NS
        if ic:
            self.csr5 |= TI
        if setup:
            self.stats["setup_frames"] += 1
            if len(data) >= SETUP_LEN:
                words = struct.unpack("<48I", data[:SETUP_LEN])
                self.filter = [b"".join(struct.pack("<H", w & 0xFFFF) for w in words[i:i + 3])
                               for i in range(0, 48, 3)]
            return
        frame = data.ljust(MIN_FRAME, b"\0")
        self.stats["tx_frames"] += 1
        self.stats["tx_bytes"] += len(frame)
        ns = wire_ns(len(frame))
        self._busy += ns
        self.wire_ns += ns
        if self.port is not None:
            self.port.send(frame)

    # ---- receive ---------------------------------------------------------------------------------
    def _accepts(self, frame: bytes) -> bool:
        dst = frame[:6]
        if self.csr6 & PR or (dst[0] & 1 and self.csr6 & PM):
            return True
        if self.filter is None:
            return dst == self.mac or dst == BROADCAST
        return dst in self.filter

    def _from_switch(self, frame: bytes) -> bool:
        """The switch's deliver callback: False when the chip dropped the frame."""
        if len(frame) < 14 or not self._accepts(frame):
            self.stats["filtered"] += 1
            return True                          # taken, as a NIC takes what its filter drops (netvsp too)
        if self.quiesced:
            if len(self.held) >= HOLD_FRAMES:
                self._miss()
                return False
            self.held.append(bytes(frame))
            return True
        taken = self._receive(frame)
        self._sync_irq()
        return taken

    def _miss(self) -> None:
        self.stats["missed"] += 1
        if self.missed == 0xFFFF:
            self.missed_overflow = True
        else:
            self.missed += 1

    def _receive(self, frame: bytes) -> bool:
        if self.fatal or not self.csr6 & SR:
            self._miss()
            return False
        data = frame.ljust(MIN_FRAME, b"\0")
        data += zlib.crc32(data).to_bytes(4, "little")      # the chip stores the FCS with the frame
        try:
            plan = self._place_rx(data)
        except TulipFault as exc:
            self._fail(f"receive list: {exc}")
            self._miss()
            return False
        if plan is None:
            self.rx_suspended = True
            self.csr5 |= RU
            self._miss()
            return False
        writes, nxt = plan
        self._write_mem(writes)
        self.rx_next, self.rx_suspended = nxt, False
        self.csr5 |= RI
        self.work_ns += FRAME_NS
        self.stats["rx_frames"] += 1
        self.stats["rx_bytes"] += len(frame)
        return True

    def _place_rx(self, data: bytes):
        """Where `data` goes: (writes, next descriptor), or None if the chip owns too few
        descriptors for it (then nothing is written)."""
        gpa, seen, writes, done, descs = self.rx_next, set(), [], 0, []
        while done < len(data):
            if gpa in seen or len(seen) >= MAX_SEGMENTS:
                raise TulipFault(f"a frame runs through {len(seen)} descriptors back to {gpa:#x}")
            seen.add(gpa)
            des0, des1, des2, des3 = self._descriptor(gpa)
            if not des0 & OWN:
                return None
            sizes = (des1 & 0x7FF, 0 if des1 & DES1_CHAINED else des1 >> 11 & 0x7FF)
            if not sizes[0] and not sizes[1]:
                raise TulipFault(f"receive descriptor at {gpa:#x} has no buffer")
            for length, address in zip(sizes, (des2, des3)):
                if length and done < len(data):
                    piece = data[done:done + length]
                    self._read_mem(address, len(piece))           # RAM, or the fault, before any write
                    writes.append((address, piece))
                    done += len(piece)
            descs.append(gpa)
            gpa = self._after(gpa, des1, des3, self.csr3)
        for i, d in enumerate(descs):
            status = (RDES0_FS if i == 0 else 0) | (RDES0_MF if data[0] & 1 else 0)
            if i == len(descs) - 1:
                status |= RDES0_LS | len(data) << 16
            writes.append((d, struct.pack("<I", status)))
        return writes, gpa

    # ---- lifecycle -------------------------------------------------------------------------------
    def quiesce(self) -> None:
        """Hold the frames the switch brings (the VM is being saved)."""
        self.quiesced = True

    def resume(self) -> None:
        """Put the held frames into the receive ring, as if they arrived now."""
        self.quiesced = False
        held, self.held = self.held, []
        for frame in held:
            self._receive(frame)
        self._sync_irq()

    def close(self) -> None:
        """Leave the switch (frames for this adapter are then dropped by the switch)."""
        if self.port is not None:
            self.port.disconnect()
            self.port = None

    def save_state(self) -> dict:
        return {"format": STATE_FORMAT, "mac": self.mac, "csr0": self.csr0, "csr3": self.csr3,
                "csr4": self.csr4, "csr5": self.csr5, "csr6": self.csr6, "csr7": self.csr7,
                "missed": self.missed, "missed_overflow": self.missed_overflow,
                "rx_next": self.rx_next, "tx_next": self.tx_next, "rx_suspended": self.rx_suspended,
                "tx_suspended": self.tx_suspended, "rom": self.rom,
                "filter": None if self.filter is None else list(self.filter), "fatal": self.fatal,
                "stats": dict(self.stats), "work_ns": self.work_ns, "wire_ns": self.wire_ns,
                "held": list(self.held)}

    def load_state(self, state: dict) -> None:
        """Go on from a save_state() record (check_state first: a bad one raises ValueError and
        changes nothing)."""
        problem = check_state(state, self.mac)
        if problem is not None:
            raise ValueError(f"legacy NIC state: {problem}")
        for k in _STATE_INTS:
            setattr(self, k, state[k])
        self.work_ns, self.wire_ns = state["work_ns"], state["wire_ns"]
        self.missed_overflow = state["missed_overflow"]
        self.rx_suspended, self.tx_suspended = state["rx_suspended"], state["tx_suspended"]
        self.filter = None if state["filter"] is None else [bytes(a) for a in state["filter"]]
        self.fatal = state["fatal"]
        self.stats = dict(state["stats"])
        self.held = [bytes(f) for f in state["held"]]
        self._sync_irq()      # the line is CSR5 & CSR7's: up again if it was up when saved


STATE_FORMAT = 1
_STATE_INTS = ("csr0", "csr3", "csr4", "csr5", "csr6", "csr7", "missed", "rx_next", "tx_next", "rom")
_STATS = ("tx_frames", "tx_bytes", "rx_frames", "rx_bytes", "missed", "filtered", "setup_frames")


def check_state(state, mac: bytes | None = None) -> str | None:
    """What is wrong with a Tulip21140.save_state() record (for the adapter with station address
    `mac`, if given), or None: checked before a restore changes anything."""
    def uint(x, bits: int = 32) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << bits

    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return f"expected a map with format {STATE_FORMAT}"
    if not (isinstance(state.get("mac"), bytes) and len(state["mac"]) == 6):
        return "mac: expected 6 bytes"
    if mac is not None and state["mac"] != mac:
        return f"saved for MAC {mac_text(state['mac'])}, this adapter is {mac_text(mac)}"
    bad = [k for k in _STATE_INTS if not uint(state.get(k))]
    if bad:
        return f"{', '.join(bad)}: expected 32-bit unsigned integers"
    if not uint(state["missed"], 16):
        return "missed: expected a 16-bit count"
    if state["rom"] >= 6:
        return "rom: expected the address ROM's pointer, 0-5"
    if not all(isinstance(state.get(k), bool) for k in ("missed_overflow", "rx_suspended", "tx_suspended")):
        return "missed_overflow, rx_suspended, tx_suspended: expected booleans"
    filt = state.get("filter", ())
    if filt is not None and not (isinstance(filt, list) and len(filt) <= 16
                                 and all(isinstance(a, bytes) and len(a) == 6 for a in filt)):
        return "filter: expected None or at most 16 MAC addresses of 6 bytes"
    if state.get("fatal", 0) is not None and not isinstance(state.get("fatal"), str):
        return "fatal: expected None or why the chip stopped"
    stats = state.get("stats")
    if not (isinstance(stats, dict) and sorted(stats) == sorted(_STATS) and all(uint(v, 64) for v in stats.values())):
        return f"stats: expected counts {', '.join(_STATS)}"
    if not (uint(state.get("work_ns"), 64) and uint(state.get("wire_ns"), 64)):
        return "work_ns, wire_ns: expected nanoseconds"
    held = state.get("held")
    if not (isinstance(held, list) and len(held) <= HOLD_FRAMES
            and all(isinstance(f, bytes) and 14 <= len(f) <= MAX_FRAME for f in held)):
        return f"held: expected at most {HOLD_FRAMES} frames"
    return None
