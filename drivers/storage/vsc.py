"""storvsc, the guest side of the synthetic SCSI controller, and the block devices it gives guest
workloads: negotiate (BEGIN_INITIALIZATION, QUERY_PROTOCOL_VERSION newest first,
QUERY_PROPERTIES, END_INITIALIZATION, as Linux's storvsc_channel_init does), discover the disks (REPORT LUNS to LUN
0, then INQUIRY and READ CAPACITY (16), falling back to (10), on each LUN; LUN 0 alone when the
target does not answer REPORT LUNS, or lists nothing, as Linux's scan does), then carry reads,
writes and flushes as EXECUTE_SRBs addressed to a disk's LUN.

Data is bounced through pages the guest shows the host (protocol.py), as a confidential Linux
guest bounces storvsc I/O through its shared swiotlb pages: at open, the `share_pages(count)` hook
in the config, which the guest's VMBus stack supplies, allocates `count` of the guest's pages,
makes them host-visible read-write with HvCallModifySparseGpaPageHostVisibility and returns
(GPA pages, a view of them), or raises if it cannot; the stack hides and frees them when the
channel closes. A write is copied into bounce pages before its SRB goes out; a read is copied out
when it completes. Nothing is granted or announced: the host finds the pages by the SRB's ranges.

Config: share_pages (required, above); pool_pages 64 (the bounce pages, and so the largest
transfer, 256 KiB); max_outstanding 64 (SRBs in flight); cpu_per_request "1us" (guest CPU charged
per SRB sent); keep_completed 10000; native true (false: every I/O takes the Python path below).

The per-I/O path is one crossing each way (native/storvsc.c, through vmbus.ring's write_call and
read_call): sending fills the bounce pages and packs and writes the SRB; a signal's completions
are read and decoded in C into compact records, and a good one is finished from its record. The
Python path (_send_reference, _on_packet) is the reference: it sends the same bytes and ends each
request the same way, and it takes what C leaves (bounce pages that are not consecutive, a full
ring, an initialization reply, an error with sense).

The block devices, for a workload driven by the guest stack's loop (it polls, or is called back):

    disk = vsc.disk(lun)                              # a Disk, or None; vsc.luns: {LUN: Disk}
    request = disk.read(lba, count, callback=None)    # IoRequest; count blocks of 512 bytes
    request = disk.read(lba, count, copy=False)       # the bytes stay in the bounce pages
    request = disk.write(lba, data, callback=None)    # data: a multiple of 512 bytes
    request = disk.flush(callback=None)               # SYNCHRONIZE CACHE: writes made durable
    request.done, request.ok, request.data, request.error, request.sense

`vsc.read`, `vsc.write`, `vsc.flush`, `vsc.execute`, `vsc.capacity` and `vsc.inquiry` are LUN 0's.
`vsc.ready` once discovery is over with at least one disk (a LUN that cannot be used is left out,
its reason in `vsc.lun_errors`); then each disk's `capacity` (blocks), and `vsc.max_blocks` (the
largest single transfer, the same for every disk: the controller's bounce pages and the host's
limit). The disks share the controller's bounce pages, ring and max_outstanding. Requests beyond
max_outstanding, or that find the bounce pages or the ring full, wait in `vsc.pending` and go out in order as completions
free room; finished requests are appended to `vsc.completed` (the last `keep_completed`). The
host is not trusted: completions for unknown transaction ids are dropped, a read returns only the
bytes the host reports, and a LUN list longer than its data is cut to what the data holds.
"""
from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from drivers.device import Vsc
from drivers.storage import protocol as p
from drivers.storage.protocol import (
    BLOCK_SIZE, PKT_GPA_DIRECT, NtStatus, Operation, ScsiRequest, SrbStatus, StorError,
)
from hypervisor.quantities import parse_duration
from vmbus.protocol import PAGE_SIZE
from vmbus.ring import (
    FLAG_COMPLETION_REQUESTED, PKT_COMP, PKT_DATA_INBAND, Packet, PacketBatch, RingError, RingFull,
)

try:  # the one-crossing path (native/storvsc.c); without the core, the reference path does all
    from hypervisor import _binding as _native
except ImportError:  # pragma: no cover - the core is always built in this repository
    _native = None

INIT_TRANS_ID = (1 << 64) - 3  # Linux's VMBUS_RQST_INIT: init requests never collide with I/O ids


class State(enum.Enum):
    NEGOTIATING = "negotiating"
    DISCOVERING = "discovering"
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(eq=False)
class IoRequest:
    """One I/O of the block device (or a raw SCSI command), from submission to completion."""

    id: int
    kind: str                     # "read", "write", "flush" or "scsi"
    lun: int = 0                  # the disk it is for
    lba: int = 0
    count: int = 0                # blocks
    callback: Callable[[IoRequest], None] | None = None
    done: bool = False
    data: bytes | None = None     # a read's (or a data-in command's) bytes once done
    copy: bool = True             # False: a read's bytes stay in the bounce pages (data stays None)
    error: str | None = None
    srb_status: int | None = None
    scsi_status: int | None = None
    sense: tuple[int, int, int] | None = None  # (key, ASC, ASCQ) when the host sent sense
    transferred: int = 0
    cdb: bytes = b""
    data_in: int = p.DATA_UNKNOWN
    length: int = 0               # bytes the request moves through the bounce pages
    out: bytes = field(default=b"", repr=False)  # data to write
    pages: list[int] = field(default_factory=list, repr=False)  # bounce pages while outstanding

    @property
    def ok(self) -> bool:
        return self.done and self.error is None


class Disk:
    """One disk of the controller, as the guest's block layer sees it: a LUN with its INQUIRY data
    and capacity, and the block-device calls, which go out on the controller's channel."""

    def __init__(self, controller: StorVsc, lun: int, inquiry: bytes, capacity: int):
        self.controller, self.lun, self.inquiry, self.capacity = controller, lun, inquiry, capacity
        self.block_size = BLOCK_SIZE

    @property
    def ready(self) -> bool:
        return self.controller.ready and self.controller.luns.get(self.lun) is self

    @property
    def max_blocks(self) -> int:
        return self.controller.max_blocks

    def read(self, lba: int, count: int, callback=None, *, copy: bool = True) -> IoRequest:
        """Read `count` blocks from `lba`; request.data holds them once done (with copy=False
        they are not copied out of the bounce pages: request.transferred says how many came)."""
        return self.controller._read(self.lun, lba, count, callback, copy)

    def write(self, lba: int, data, callback=None) -> IoRequest:
        """Write `data` (a multiple of 512 bytes) from `lba`."""
        return self.controller._write(self.lun, lba, data, callback)

    def flush(self, callback=None) -> IoRequest:
        """Make every completed write of this disk durable (SYNCHRONIZE CACHE)."""
        return self.controller._flush(self.lun, callback)

    def execute(self, cdb: bytes, *, data_in: int = 0, data_out: bytes = b"", callback=None) -> IoRequest:
        """A raw SCSI command to this disk: receive up to data_in bytes, or send data_out."""
        return self.controller.execute(cdb, data_in=data_in, data_out=data_out, callback=callback, lun=self.lun)

    def __repr__(self) -> str:
        return f"<Disk LUN {self.lun}: {self.capacity} blocks>"


MAX_REPORTED_LUNS = 256   # what REPORT LUNS data with peripheral device addressing can name


class StorVsc(Vsc):
    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        cfg = self.config
        self.pool_pages = int(cfg.get("pool_pages", 64))
        self.max_outstanding = max(1, int(cfg.get("max_outstanding", 64)))
        self.cpu_per_request = parse_duration(cfg.get("cpu_per_request", "1us"), "cpu_per_request")
        self.state = State.NEGOTIATING
        self.error: str | None = None       # why the device failed
        self.version: int | None = None
        self.properties: p.ChannelProperties | None = None
        self.luns: dict[int, Disk] = {}     # the disks discovered, by LUN
        self.lun_errors: dict[int, str] = {}  # LUNs listed but unusable, and why
        self._probing: list[int] = []       # LUNs still to discover, in order
        self._probe: tuple[int, bytes] | None = None  # (LUN, INQUIRY data) while reading its capacity
        self.block_size = BLOCK_SIZE
        self.max_blocks = 0
        self.pending: deque[IoRequest] = deque()
        self.outstanding: dict[int, IoRequest] = {}  # trans_id -> request sent
        self.completed: deque[IoRequest] = deque(maxlen=int(cfg.get("keep_completed", 10_000)))
        self._offered = list(p.VERSIONS)
        self._init_op: Operation | None = None  # the init request awaiting its completion
        self._bounce: tuple[list[int], memoryview] | None = None  # (GPA pages, view), host-visible
        self._free: list[int] = []            # free bounce page indices, ascending
        self._next_id = 1                     # IoRequest ids
        self._next_trans_id = 0               # the last transaction id used
        self._pumping = False
        self._native: _native.StorvscBuffers | None = None  # the one-crossing path, once open
        self.native = bool(cfg.get("native", True))  # False: the pure-Python reference path

    # -- negotiation -------------------------------------------------------------------------

    def on_open(self) -> None:
        share = self.config.get("share_pages")
        if share is None:
            self._fail("no share_pages hook: the guest stack cannot give this device bounce pages")
            return
        try:
            pfns, view = share(self.pool_pages)
        except Exception as exc:  # the guest stack's or the hypervisor's refusal
            self._fail(f"the bounce pages could not be made host-visible: {type(exc).__name__}: {exc}")
            return
        view = memoryview(view).cast("B")
        if not pfns or len(view) < len(pfns) * PAGE_SIZE:
            self._fail("the bounce pages' view is smaller than the pages")
            return
        self._bounce = (list(pfns), view)
        self._free = list(range(len(pfns)))
        self._open_native(view)
        self._init(Operation.BEGIN_INITIALIZATION)

    def _open_native(self, view: memoryview) -> None:
        """Take the one-crossing path (native/storvsc.c) when the core is there and both the
        bounce pages and the channel's rings can be pinned; else every I/O takes the reference."""
        if not self.native or _native is None:
            return
        bounce = _native.ring_pin(view)
        channel = self.channel
        incoming = getattr(channel, "incoming", None)
        if bounce is None or incoming is None or not hasattr(channel, "send_call"):
            return
        self._native = _native.StorvscBuffers(bounce, self._bounce[0], len(incoming._mem))
        channel.reader = self._read_ring

    def _init(self, op: Operation, body: bytes = b"") -> None:
        self._init_op = op  # before sending: the reply may arrive before send() returns
        packet = p.VstorPacket(op, p.REQUEST_COMPLETION_FLAG, 0, body).encode()
        try:
            self.channel.send(packet, trans_id=INIT_TRANS_ID, flags=FLAG_COMPLETION_REQUESTED)
        except RingError as exc:
            self._fail(f"cannot send {op.name}: {exc}")

    def _on_init_reply(self, vp: p.VstorPacket) -> None:
        op, self._init_op = self._init_op, None
        if op == Operation.QUERY_PROTOCOL_VERSION and vp.status != NtStatus.SUCCESS:
            if len(self._offered) > 1:  # REVISION_MISMATCH (or any refusal): try the next one
                self._offered.pop(0)
                self._init(Operation.QUERY_PROTOCOL_VERSION, p.encode_version(self._offered[0]))
            else:
                self._fail("the host accepts none of the vstor versions offered")
        elif vp.status != NtStatus.SUCCESS:
            self._fail(f"{op.name} refused: status {vp.status:#x}")
        elif op == Operation.BEGIN_INITIALIZATION:
            self._init(Operation.QUERY_PROTOCOL_VERSION, p.encode_version(self._offered[0]))
        elif op == Operation.QUERY_PROTOCOL_VERSION:
            self.version = self._offered[0]
            self._init(Operation.QUERY_PROPERTIES)
        elif op == Operation.QUERY_PROPERTIES:
            self.properties = p.ChannelProperties.decode(vp.body)
            self._init(Operation.END_INITIALIZATION)
        elif op == Operation.END_INITIALIZATION:
            self._discover()

    def _discover(self) -> None:
        assert self.properties is not None and self._bounce is not None
        limit = min(self.properties.max_transfer_bytes, len(self._bounce[0]) * PAGE_SIZE)
        self.max_blocks = limit // BLOCK_SIZE
        if self.max_blocks == 0:
            self._fail(f"transfers of at most {limit} bytes: not one block")
            return
        self.state = State.DISCOVERING
        alloc = min(8 + 8 * MAX_REPORTED_LUNS, self.max_blocks * BLOCK_SIZE)
        self._submit(self._scsi(p.cdb_report_luns(alloc), data_in=alloc, callback=self._on_report_luns))

    # -- discovery ---------------------------------------------------------------------------

    def _on_report_luns(self, request: IoRequest) -> None:
        luns: list[int] = []
        if request.ok and request.data:
            try:
                luns = p.parse_report_luns(request.data)
            except StorError:
                pass
        # No list (an older target), or an empty one: probe LUN 0, as a SCSI scan always does.
        self._probing = luns or [0]
        self._probe_next()

    def _probe_next(self) -> None:
        if self.state is not State.DISCOVERING:
            return
        if not self._probing:
            if self.luns:
                self.state = State.READY
            else:
                self._fail("no disk: " + "; ".join(f"LUN {lun}: {why}" for lun, why in self.lun_errors.items()))
            return
        lun = self._probing.pop(0)
        self._submit(self._scsi(p.cdb_inquiry(96), lun=lun, data_in=96,
                                callback=lambda r: self._on_inquiry(lun, r)))

    def _unusable(self, lun: int, why: str) -> None:
        self.lun_errors[lun] = why
        self.context.log("storvsc cannot use a disk", lun=lun, why=why)
        self._probe = None
        self._probe_next()

    def _on_inquiry(self, lun: int, request: IoRequest) -> None:
        if not request.ok or not request.data or request.data[0] & 0x1F != 0 or request.data[0] >> 5:
            # Peripheral qualifier other than 0: no unit there; device type other than 0: not a disk.
            self._unusable(lun, f"INQUIRY: {request.error or 'not a direct-access disk'}")
            return
        self._probe = (lun, request.data)
        self._submit(self._scsi(p.cdb_read_capacity_16(32), lun=lun, data_in=32, callback=self._on_capacity_16))

    def _on_capacity_16(self, request: IoRequest) -> None:
        if request.ok and request.data and len(request.data) >= 12:
            last = int.from_bytes(request.data[0:8], "big")
            self._set_capacity(last, int.from_bytes(request.data[8:12], "big"))
        else:  # an older target: READ CAPACITY (10)
            self._submit(self._scsi(p.cdb_read_capacity_10(), lun=request.lun, data_in=8,
                                    callback=self._on_capacity_10))

    def _on_capacity_10(self, request: IoRequest) -> None:
        if not request.ok or not request.data or len(request.data) < 8:
            self._unusable(request.lun, f"READ CAPACITY: {request.error or 'short data'}")
            return
        self._set_capacity(int.from_bytes(request.data[0:4], "big"), int.from_bytes(request.data[4:8], "big"))

    def _set_capacity(self, last_lba: int, block_size: int) -> None:
        if self._probe is None or self.state is not State.DISCOVERING:
            return
        lun, inquiry = self._probe
        if block_size != BLOCK_SIZE:
            self._unusable(lun, f"block size {block_size}: this driver does {BLOCK_SIZE}")
            return
        self._probe = None
        self.luns[lun] = Disk(self, lun, inquiry, last_lba + 1)
        self._probe_next()

    # -- the block devices -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def disk(self, lun: int = 0) -> Disk | None:
        """The disk at `lun`, once discovered; None otherwise."""
        return self.luns.get(lun) if self.state is State.READY else None

    @property
    def capacity(self) -> int | None:
        """LUN 0's capacity in blocks."""
        disk = self.luns.get(0)
        return disk.capacity if disk is not None else None

    @property
    def inquiry(self) -> bytes | None:
        """LUN 0's standard INQUIRY data."""
        disk = self.luns.get(0)
        return disk.inquiry if disk is not None else None

    def read(self, lba: int, count: int, callback=None, *, copy: bool = True) -> IoRequest:
        """Read `count` blocks from `lba` of LUN 0; request.data holds them once done (see
        Disk.read for copy=False)."""
        return self._read(0, lba, count, callback, copy)

    def write(self, lba: int, data, callback=None) -> IoRequest:
        """Write `data` (a multiple of 512 bytes) from `lba` of LUN 0."""
        return self._write(0, lba, data, callback)

    def flush(self, callback=None) -> IoRequest:
        """Make every completed write of LUN 0 durable (SYNCHRONIZE CACHE)."""
        return self._flush(0, callback)

    def _read(self, lun: int, lba: int, count: int, callback, copy: bool = True) -> IoRequest:
        if (self.state is State.READY and type(lba) is int and type(count) is int and lba >= 0
                and 1 <= count <= self.max_blocks and lun in self.luns):
            # The checks below all pass (the common case): the request made at once.
            request = IoRequest(self._next_id, "read", lun, lba, count, callback, copy=copy,
                                cdb=p.cdb_rw(False, lba, count), data_in=p.DATA_IN, length=count * BLOCK_SIZE)
            self._next_id += 1
            return self._submit(request)
        self._check_blocks(lun, lba, count)
        request = self._scsi(p.cdb_rw(False, lba, count), lun=lun, data_in=count * BLOCK_SIZE, callback=callback)
        request.kind, request.lba, request.count, request.copy = "read", lba, count, copy
        return self._submit(request)

    def _write(self, lun: int, lba: int, data, callback) -> IoRequest:
        data = bytes(data)
        if not data or len(data) % BLOCK_SIZE:
            raise ValueError(f"a write is a positive multiple of {BLOCK_SIZE} bytes, got {len(data)}")
        count = len(data) // BLOCK_SIZE
        if (self.state is State.READY and type(lba) is int and lba >= 0 and count <= self.max_blocks
                and lun in self.luns):
            # As in _read: every check below passes.
            request = IoRequest(self._next_id, "write", lun, lba, count, callback, out=data,
                                cdb=p.cdb_rw(True, lba, count), data_in=p.DATA_OUT, length=len(data))
            self._next_id += 1
            return self._submit(request)
        self._check_blocks(lun, lba, count)
        request = self._scsi(p.cdb_rw(True, lba, count), lun=lun, data_out=data, callback=callback)
        request.kind, request.lba, request.count = "write", lba, count
        return self._submit(request)

    def _flush(self, lun: int, callback) -> IoRequest:
        self._check_ready(lun)
        request = self._scsi(p.cdb_synchronize_cache(), lun=lun, callback=callback)
        request.kind = "flush"
        return self._submit(request)

    def execute(self, cdb: bytes, *, data_in: int = 0, data_out: bytes = b"", callback=None,
                lun: int = 0) -> IoRequest:
        """A raw SCSI command to `lun` (which need not hold a disk: REPORT LUNS, say): receive
        up to data_in bytes, or send data_out."""
        self._check_ready(None)
        if not (type(lun) is int and 0 <= lun < MAX_REPORTED_LUNS):
            raise ValueError(f"LUN {lun!r} is outside 0..{MAX_REPORTED_LUNS - 1}")
        return self._submit(self._scsi(bytes(cdb), lun=lun, data_in=data_in, data_out=bytes(data_out),
                                       callback=callback))

    def _check_ready(self, lun: int | None) -> None:
        if self.state is not State.READY:
            raise RuntimeError(f"the disk is not ready ({self.state.value}{': ' + self.error if self.error else ''})")
        if lun is not None and lun not in self.luns:
            why = self.lun_errors.get(lun, "the host reported no disk there")
            raise RuntimeError(f"no disk at LUN {lun} ({why}; disks at LUNs {sorted(self.luns)})")

    def _check_blocks(self, lun: int, lba: int, count: int) -> None:
        self._check_ready(lun)
        if not (type(lba) is int and lba >= 0 and type(count) is int and count >= 1):
            raise ValueError(f"lba {lba!r} and count {count!r} must be integers, lba >= 0, count >= 1")
        if count > self.max_blocks:
            raise ValueError(f"{count} blocks in one request; at most {self.max_blocks}")

    def _scsi(self, cdb: bytes, *, lun: int = 0, data_in: int = 0, data_out: bytes = b"",
              callback=None) -> IoRequest:
        if data_in and data_out:
            raise ValueError("a SCSI command moves data one way")
        length = data_in or len(data_out)
        if length > self.max_blocks * BLOCK_SIZE and self.max_blocks:
            raise ValueError(f"{length} bytes in one request; at most {self.max_blocks * BLOCK_SIZE}")
        direction = p.DATA_IN if data_in else p.DATA_OUT if data_out else p.DATA_UNKNOWN
        request = IoRequest(self._next_id, "scsi", lun=lun, callback=callback, cdb=cdb, data_in=direction,
                            length=length, out=data_out)
        self._next_id += 1
        return request

    # -- sending -----------------------------------------------------------------------------

    def _submit(self, request: IoRequest) -> IoRequest:
        if self.state in (State.FAILED, State.CLOSED):  # e.g. discovery going on after a failure
            request.error = self.error or "channel closed"
            self._finish(request)
            return request
        pages = self._free
        if (not self.pending and not self._pumping and len(self.outstanding) < self.max_outstanding
                and self.state is State.READY and -(-request.length // PAGE_SIZE) <= len(pages)):
            # Nothing waits and there is room: what _pump would do, without the loop.
            self.pending.append(request)
            self._pumping = True
            try:
                self._send(request, pages[:-(-request.length // PAGE_SIZE)])
            finally:
                self._pumping = False
            return request
        self.pending.append(request)
        self._pump()
        return request

    def _pump(self) -> None:
        """Send pending requests, in order, while the bound, the bounce pages and the ring allow."""
        if self._pumping:
            return  # a completion delivered while sending: the outer loop carries on
        self._pumping = True
        try:
            while (self.pending and len(self.outstanding) < self.max_outstanding
                   and self.state in (State.DISCOVERING, State.READY)):
                request = self.pending[0]
                npages = -(-request.length // PAGE_SIZE)
                if npages > len(self._free):
                    break
                if not self._send(request, self._free[:npages]):
                    break
        finally:
            self._pumping = False

    def _send(self, request: IoRequest, pages: list[int]) -> bool:
        native = self._native
        if native is not None and (not pages or pages[-1] - pages[0] == len(pages) - 1):
            # One crossing: bounce pages filled, SRB and range list packed, packet written. It
            # sends exactly what _send_reference would (tests/drivers/storage/test_storvsc_native.py).
            trans_id = self._new_trans_id()
            self.pending.popleft()
            del self._free[:len(pages)]
            request.pages = pages
            self.outstanding[trans_id] = request  # before sending, as below
            try:
                written = self.channel.send_call(
                    _native.hv_storvsc_submit, native, trans_id, request.lun, request.data_in,
                    request.length, pages[0] if pages else 0, request.cdb, request.out)
            except RingError as exc:
                return self._unsend(request, trans_id, f"ring: {exc}")
            except ValueError:
                written = 0  # arguments C refuses: the reference decides (and raises) as before
            if written:
                self.context.charge(self.cpu_per_request)
                return True
            # Nothing was written (no room now): the reference path, with the same id, asks the
            # host for room and raises what it raises.
            self.outstanding.pop(trans_id, None)
            self._release(request)
            self.pending.appendleft(request)
            return self._send_reference(request, pages, trans_id)
        return self._send_reference(request, pages, self._new_trans_id())

    def _unsend(self, request: IoRequest, trans_id: int, why: str | None) -> bool:
        """Take back a request that did not go out: it waits at the head of pending again (and
        the device fails, if `why`)."""
        self.outstanding.pop(trans_id, None)
        self._release(request)
        self.pending.appendleft(request)
        if why is not None:
            self._fail(why)
        return False

    def _send_reference(self, request: IoRequest, pages: list[int], trans_id: int) -> bool:
        """The pure-Python path: pack in Python, one ring write (vmbus.ring's reference rules)."""
        assert self._bounce is not None
        pfns, view = self._bounce
        length = request.length
        packet = p.encode_srb_request(request.cdb, request.data_in, length, request.lun)
        if length:
            # A write's data; zeros for a read, so a short reply cannot show an older one's.
            out = request.out
            first = pages[0]
            if pages[-1] - first == len(pages) - 1:  # consecutive bounce pages: one copy
                start = first * PAGE_SIZE
                if out:
                    view[start:start + len(out)] = out
                else:
                    view[start:start + len(pages) * PAGE_SIZE] = _zeros(len(pages))
            else:
                for i, page in enumerate(pages):
                    chunk = out[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] or _zeros(1)
                    view[page * PAGE_SIZE:page * PAGE_SIZE + len(chunk)] = chunk
            header, kind = p.encode_gpa_range(length, 0, [pfns[page] for page in pages]), PKT_GPA_DIRECT
        else:
            header, kind = b"", PKT_DATA_INBAND
        # Taken before sending: the completion may arrive before send() returns.
        self.pending.popleft()
        del self._free[:len(pages)]
        request.pages = pages
        self.outstanding[trans_id] = request
        try:
            self.channel.send(packet, packet_type=kind, flags=FLAG_COMPLETION_REQUESTED,
                              trans_id=trans_id, set_pending_send_sz=True, header=header)
        except RingFull:
            # The host signals once it has read enough: on_packets pumps again then.
            return self._unsend(request, trans_id, None)
        except RingError as exc:
            return self._unsend(request, trans_id, f"ring: {exc}")
        self.context.charge(self.cpu_per_request)
        return True

    def _new_trans_id(self) -> int:
        # Small integers, never addresses (a hostile host learns nothing from them).
        while True:
            self._next_trans_id = self._next_trans_id % (1 << 63) + 1
            if self._next_trans_id not in self.outstanding:
                return self._next_trans_id

    def _release(self, request: IoRequest) -> None:
        if request.pages:
            self._free.extend(request.pages)
            self._free.sort()
            request.pages = []

    # -- completions -------------------------------------------------------------------------

    def _read_ring(self, incoming) -> tuple[Completions, bool]:
        """The channel's reader (ChannelEnd.reader): every packet in one crossing, decoded."""
        (records, count, done), signal = incoming.read_call(_native.hv_storvsc_complete, self._native)
        return Completions(records, count, done), signal

    def on_packets(self, packets: list[Packet]) -> None:
        if type(packets) is Completions:
            self._on_completions(packets)
        else:
            for packet in packets:
                self._on_packet(packet)
        self._pump()

    def _on_packet(self, packet: Packet) -> None:
        """The reference decoder, for one packet."""
        if packet.type not in (PKT_COMP, PKT_DATA_INBAND):
            return
        try:
            vp = p.decode_packet(packet.payload)
        except StorError:
            return  # the host is not trusted either
        if vp.operation != Operation.COMPLETE_IO:
            return  # ENUMERATE_BUS and the like: hvsim's disk never changes
        if packet.trans_id == INIT_TRANS_ID:
            if self._init_op is not None:
                try:
                    self._on_init_reply(vp)
                except StorError as exc:
                    self._fail(f"bad reply to initialization: {exc}")
        elif packet.trans_id in self.outstanding:
            self._on_srb_reply(self.outstanding.pop(packet.trans_id), vp)
        # anything else is dropped: each id completes at most once

    def _on_completions(self, batch: Completions) -> None:
        """What C decoded (native/storvsc.c): a good SRB completion is finished from its compact
        record, as _on_srb_reply finishes it; anything else goes through the reference decoder."""
        outstanding = self.outstanding
        for trans_id, transferred, offset, raw, srb_status, scsi_status in _DONE.iter_unpack(batch.done):
            if raw:
                self._on_packet(batch.packet_at(offset))
                continue
            request = outstanding.pop(trans_id, None)
            if request is None:
                continue  # not ours, or completed already: dropped
            request.srb_status, request.scsi_status = srb_status, scsi_status
            length = request.length
            request.transferred = transferred = transferred if transferred < length else length
            if request.data_in == p.DATA_IN and request.copy:
                request.data = self._copy_out(request.pages, transferred)
            if transferred != length and request.kind in ("read", "write"):
                request.error = f"short transfer: {transferred} of {length} bytes"
            self._finish(request)

    def _on_srb_reply(self, request: IoRequest, vp: p.VstorPacket) -> None:
        srb = ScsiRequest.decode(vp.body)  # the body is always 52 bytes
        request.srb_status, request.scsi_status = srb.srb_status, srb.scsi_status
        request.transferred = min(srb.data_transfer_length, request.length)
        if srb.srb_status & p.SRB_STATUS_AUTOSENSE_VALID and srb.sense_info_length:
            try:
                request.sense = p.parse_sense(srb.sense)
            except StorError:
                pass
        status = srb.srb_status & p.SRB_STATUS_MASK
        if status == SrbStatus.SUCCESS and srb.scsi_status == p.ScsiStatus.GOOD:
            if request.data_in == p.DATA_IN and request.copy:
                request.data = self._copy_out(request.pages, request.transferred)
            if request.kind in ("read", "write") and request.transferred != request.length:
                request.error = f"short transfer: {request.transferred} of {request.length} bytes"
        else:
            request.error = _describe(status, srb.scsi_status, request.sense)
        self._finish(request)

    def _copy_out(self, pages: list[int], n: int) -> bytes:
        assert self._bounce is not None
        view = self._bounce[1]
        if pages and pages[-1] - pages[0] == len(pages) - 1:  # consecutive bounce pages: one copy
            start = pages[0] * PAGE_SIZE
            return bytes(view[start:start + min(n, len(pages) * PAGE_SIZE)])
        return b"".join(bytes(view[page * PAGE_SIZE:page * PAGE_SIZE + min(PAGE_SIZE, n - i * PAGE_SIZE)])
                        for i, page in enumerate(pages) if i * PAGE_SIZE < n)

    def _finish(self, request: IoRequest) -> None:
        self._release(request)
        request.done = True
        request.out = b""
        self.completed.append(request)
        if request.callback is not None:
            request.callback(request)

    def _fail(self, why: str) -> None:
        if self.state in (State.FAILED, State.CLOSED):
            return
        self.state, self.error = State.FAILED, why
        self.context.log("storvsc failed", why=why)
        self._fail_all(why)

    def _fail_all(self, why: str) -> None:
        requests = list(self.outstanding.values()) + list(self.pending)
        self.outstanding.clear()
        self.pending.clear()
        for request in requests:
            request.error = why
            self._finish(request)

    def on_close(self) -> None:
        if self.state is not State.FAILED:
            self.state = State.CLOSED
        self._fail_all("channel closed")
        self._bounce = None  # the guest stack hides the pages and takes them back
        self._free = []
        if self._native is not None:  # nor is C to reach them (or the ring) any more
            self._native = None
            self.channel.reader = None


class Completions(PacketBatch):
    """What the channel's reader hands on_packets: the packets read (a PacketBatch, so a caller
    of ChannelEnd.receive sees them as before) and C's record of each one the driver must look
    at, in ring order (`done`: native/api/storvsc.h's 24-byte records)."""

    __slots__ = ("done",)

    def __init__(self, records, count: int, done: bytes):
        super().__init__(records, count)
        self.done = done

    def packet_at(self, offset: int) -> Packet:
        """The packet whose record starts at `offset` of the records."""
        return next(iter(PacketBatch(memoryview(self._records)[offset:], 1)))


_DONE = struct.Struct("<QIIBBB5x")  # trans_id, transferred, offset, kind (1: raw), SRB and SCSI status

_ZEROS: dict[int, bytes] = {}


def _zeros(pages: int) -> bytes:
    """`pages` pages of zeros (a read's bounce pages are cleared before it goes out), made once."""
    zeros = _ZEROS.get(pages)
    if zeros is None:
        zeros = _ZEROS[pages] = bytes(pages * PAGE_SIZE)
    return zeros


def _describe(status: int, scsi_status: int, sense: tuple[int, int, int] | None) -> str:
    try:
        name = SrbStatus(status).name
    except ValueError:
        name = f"{status:#x}"
    text = f"SRB {name}, SCSI status {scsi_status:#x}"
    if sense is not None:
        text += f", sense {sense[0]:#x}/{sense[1]:#x}/{sense[2]:#x}"
    return text
