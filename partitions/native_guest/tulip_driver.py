"""A guest driver for the emulated 21140 (tulip.py), written as a Python guest would run it: rings in
the guest's own memory, registers through intercept calls (ctx.port_in/port_out), the way a
legacy OS's tulip driver drives the chip.

Bring-up (open): a software reset through CSR0, the station address from the address ROM (a CSR9
write, six reads), the receive ring given to the chip (every descriptor OWN, the last with
end-of-ring) and its base in CSR3, an empty transmit ring's base in CSR4, CSR7's enables, and CSR6
with receive and transmit started: 12 intercepts.

Sending a frame costs one intercept (the transmit poll demand in CSR1): the buffer and the
descriptor are stores to the guest's own memory, and finished transmit descriptors are reclaimed
by looking at their OWN bits there; a frame asks for a transmit interrupt (IC) only when the ring
is half full or more, so a driver keeping up takes none (as Linux's tulip driver does).

Receiving (`interrupts=True`, the default): the driver waits for the chip's interrupt line
(`ctx.wait_irq`, IRQ 11: the VP halts, the frame's arrival wakes it, the interrupt and its APIC EOI
are charged), then its handler reads CSR5 and writes its bits back to acknowledge them (2
intercepts, which lowers the line), takes every finished descriptor, gives them back to the chip,
and writes CSR2 (a receive poll demand, one more) only if the chip had reported RU. So a frame
sent and received one at a time costs 1 + 2 intercepts and one interrupt. With
`interrupts=False` the driver enables no interrupt in CSR7 and polls instead: it looks at its next
receive descriptor in its own memory every `poll_ns` (no exit) and runs the same handler when
frames have come.
"""
from __future__ import annotations

import struct
from collections import deque

from partitions.native_guest import tulip as t

_WORD = struct.Struct("<I")


class TulipDriver:
    """The driver of the chip at `base` for the guest of `ctx`, with its rings and buffers in the
    guest's memory from `memory` on (rx_count + tx_count descriptors of 16 bytes, then a
    `buffer`-byte buffer each, page aligned)."""

    def __init__(self, ctx, *, base: int = t.BASE, memory: int = 0x10_0000, rx_count: int = 16,
                 tx_count: int = 16, buffer: int = 1536, poll_ns: int = 5_000, cpu_per_frame: int = 1_000,
                 interrupts: bool = True):
        self.ctx, self.base = ctx, base
        self.rx_count, self.tx_count, self.buffer = rx_count, tx_count, buffer
        self.rx_ring = memory
        self.tx_ring = memory + 16 * rx_count
        buffers = -(-(self.tx_ring + 16 * tx_count) // t.PAGE) * t.PAGE
        self.rx_buffers = buffers
        self.tx_buffers = buffers + buffer * rx_count
        self.poll_ns, self.cpu_per_frame = poll_ns, cpu_per_frame
        self.interrupts = interrupts
        self.mac = b""
        self.rx_at = self.tx_at = 0           # next receive descriptor to look at, next to fill
        self.tx_busy = 0                      # transmit descriptors given and not yet reclaimed
        self.tx_reclaim = 0
        self.received: deque[bytes] = deque()
        self.stats = {"sent": 0, "received": 0, "acks": 0, "rx_polls": 0, "irqs": 0, "errors": 0}

    # ---- registers -------------------------------------------------------------------------------
    async def csr_read(self, n: int) -> int:
        return await self.ctx.port_in(self.base + t.CSR_STRIDE * n, 4)

    async def csr_write(self, n: int, value: int) -> None:
        await self.ctx.port_out(self.base + t.CSR_STRIDE * n, 4, value)

    # ---- bring-up --------------------------------------------------------------------------------
    async def open(self, *, promiscuous: bool = False) -> bytes:
        ctx = self.ctx
        await self.csr_write(0, t.SWR)
        await self.csr_write(9, 0)
        self.mac = bytes([await self.csr_read(9) & 0xFF for _ in range(6)])
        for i in range(self.rx_count):
            ctx.write(self.rx_ring + 16 * i, self._rx_descriptor(i))
        for i in range(self.tx_count):
            end = t.DES1_END if i == self.tx_count - 1 else 0
            ctx.write(self.tx_ring + 16 * i, struct.pack("<IIII", 0, end, self.tx_buffers + self.buffer * i, 0))
        self.rx_at = self.tx_at = self.tx_busy = self.tx_reclaim = 0
        await self.csr_write(3, self.rx_ring)
        await self.csr_write(4, self.tx_ring)
        await self.csr_write(7, t.NIS | t.AIS | t.TI | t.RI | t.RU | t.FBE if self.interrupts else 0)
        await self.csr_write(6, t.SR | t.ST | (t.PR if promiscuous else 0))
        return self.mac

    def _rx_descriptor(self, i: int) -> bytes:
        end = t.DES1_END if i == self.rx_count - 1 else 0
        return struct.pack("<IIII", t.OWN, end | self.buffer, self.rx_buffers + self.buffer * i, 0)

    # ---- transmit --------------------------------------------------------------------------------
    def _reclaim(self) -> None:
        while self.tx_busy:
            gpa = self.tx_ring + 16 * self.tx_reclaim
            if _WORD.unpack(self.ctx.read(gpa, 4))[0] & t.OWN:
                return
            self.tx_busy -= 1
            self.tx_reclaim = (self.tx_reclaim + 1) % self.tx_count

    async def send(self, frame: bytes) -> bool:
        """Give one frame to the chip and demand a transmit poll; False if the ring is full (the
        chip stopped: every descriptor still its own)."""
        if len(frame) > self.buffer:
            raise ValueError(f"a frame of {len(frame)} bytes does not fit a {self.buffer}-byte buffer")
        self._reclaim()
        if self.tx_busy == self.tx_count:
            return False
        ctx, i = self.ctx, self.tx_at
        address, gpa = self.tx_buffers + self.buffer * i, self.tx_ring + 16 * i
        ctx.write(address, frame)
        end = t.DES1_END if i == self.tx_count - 1 else 0
        ic = t.TDES1_IC if 2 * self.tx_busy >= self.tx_count else 0   # room left: no TI wanted
        control = ic | t.TDES1_FS | t.TDES1_LS | end | len(frame)
        ctx.write(gpa + 4, struct.pack("<II", control, address))
        ctx.write(gpa, _WORD.pack(t.OWN))     # last: the descriptor is the chip's from here on
        self.tx_at, self.tx_busy = (i + 1) % self.tx_count, self.tx_busy + 1
        if self.cpu_per_frame:
            await ctx.compute(self.cpu_per_frame)
        await self.csr_write(1, 0)
        self.stats["sent"] += 1
        return True

    async def setup_filter(self, addresses: list[bytes]) -> None:
        """Send a setup frame: the chip's perfect filter becomes `addresses` (at most 16; the rest
        of the table repeats the first)."""
        table = (list(addresses) + [addresses[0]] * 16)[:16]
        words = b"".join(struct.pack("<III", *(a[k] | a[k + 1] << 8 for k in (0, 2, 4))) for a in table)
        ctx, i = self.ctx, self.tx_at
        self._reclaim()
        address, gpa = self.tx_buffers + self.buffer * i, self.tx_ring + 16 * i
        ctx.write(address, words)
        end = t.DES1_END if i == self.tx_count - 1 else 0
        ctx.write(gpa + 4, struct.pack("<II", t.TDES1_SET | t.TDES1_FS | t.TDES1_LS | end | t.SETUP_LEN, address))
        ctx.write(gpa, _WORD.pack(t.OWN))
        self.tx_at, self.tx_busy = (i + 1) % self.tx_count, self.tx_busy + 1
        await self.csr_write(1, 0)

    # ---- receive ---------------------------------------------------------------------------------
    def _ready(self) -> bool:
        return not _WORD.unpack(self.ctx.read(self.rx_ring + 16 * self.rx_at, 4))[0] & t.OWN

    async def _service(self) -> None:
        """What the interrupt handler does: acknowledge CSR5, take the finished frames, give the
        descriptors back, and restart a suspended receive process."""
        status = await self.csr_read(5)
        await self.csr_write(5, status & t.CLEARABLE)
        self.stats["acks"] += 1
        if status & t.FBE:
            self.stats["errors"] += 1
        ctx = self.ctx
        while self._ready():
            gpa = self.rx_ring + 16 * self.rx_at
            des0 = _WORD.unpack(ctx.read(gpa, 4))[0]
            length = (des0 >> 16 & 0x3FFF) - 4            # without the CRC
            if des0 & t.RDES0_FS and des0 & t.RDES0_LS and length > 0:
                self.received.append(ctx.read(self.rx_buffers + self.buffer * self.rx_at, length))
                self.stats["received"] += 1
                if self.cpu_per_frame:
                    await ctx.compute(self.cpu_per_frame)
            else:
                self.stats["errors"] += 1                 # a frame over two buffers: not this driver's
            ctx.write(gpa, self._rx_descriptor(self.rx_at))
            self.rx_at = (self.rx_at + 1) % self.rx_count
        if status & t.RU:
            await self.csr_write(2, 0)

    async def receive(self, timeout_ns: int | None = None) -> bytes | None:
        """The next frame received (its bytes, without the CRC), or None after `timeout_ns`."""
        if self.interrupts:
            deadline = None if timeout_ns is None else self.ctx.now + timeout_ns
            while not self.received:
                left = None if deadline is None else deadline - self.ctx.now
                if left is not None and left <= 0 or not await self.ctx.wait_irq(t.NIC_IRQ, left):
                    return None
                self.stats["irqs"] += 1
                await self._service()
            return self.received.popleft()
        waited = 0
        while not self.received:
            if self._ready():
                await self._service()
                continue
            if timeout_ns is not None and waited >= timeout_ns:
                return None
            self.stats["rx_polls"] += 1
            await self.ctx.sleep(self.poll_ns)
            waited += self.poll_ns
        return self.received.popleft()
