"""storvsp, the parent side of the synthetic SCSI controller: the vstor negotiation, then SCSI
requests on its disks, each a logical unit (path 0, target 0, LUN 0..n-1, as Hyper-V places the
disks of one controller) backed by a VHD file and completed after that disk's service time in
simulated time. Wire format and where data lies: protocol.py; the SCSI target: scsi.py.

Config (all optional but the disks):
  disks               the VHD files of LUN 0, 1, ...: each a path (opened read-write unless
                      read_only) or an open VirtualDisk that the caller owns and closes; at most
                      MAX_LUNS. A disk that cannot be opened leaves its LUN absent (logged)
  path / disk         one disk at LUN 0 (the same as disks = [path or disk])
  read_only           False
  write_barriers      True (VirtualDisk's ordering of data before metadata)
  latency, bandwidth  "100us", "500MB/s": a request that reaches the medium takes
                      latency + bytes / bandwidth (reference/cost-model.md §1)
  links               per LUN, the host's link to the shared storage the disk is on
                      (hypervisor._binding.StorageLink, made by partitions/datacenter/storage.py)
                      or None: a request on such a disk first crosses the link (queued behind
                      the host's other traffic on it, its bytes at the link's bandwidth, then
                      its latency) and then takes its medium time
  max_outstanding     64: requests in service per channel; more are refused with SRB BUSY
  max_transfer_bytes  256 KiB (what OpenVMM reports): longer transfers are refused
  cpu_per_request     "3us": parent CPU charged for every packet handled
  guest_memory        the child's host-visible pages as the parent reaches them (the parent's
                      VMBus service supplies hypervisor.grants.VisibleMemory for the child):
                      check(pfns, writable) -> the first GPA page not host-visible (read-write
                      if writable), or None; read(pfns, offset, length) -> bytes and
                      write(pfns, offset, data), from byte `offset` of the pages in list order,
                      raising HvError (ACCESS_DENIED, naming the page) if one is not visible
                      enough now, nothing moved.
  data_plane          "c" (StorVsp.DATA_PLANE): READ/WRITE requests run in C (native/storvsp.c)
                      when guest_memory is the core's VisibleMemory; "python": every request takes
                      the Python path below, the reference the C one is tested against

The C data plane takes, in one crossing per signal, the run of READ/WRITE (10)/(16) requests that
pass every check below (it stops at the first packet it does not take: Python handles that one,
then C goes on), so that requests are queued and their timers armed in ring order; at each due
time one crossing moves the data and writes the completion. Whatever it cannot finish as the
Python path would (a VHD table to change, a page hidden meanwhile, a file error, a disk replaced,
a full ring or a backlog) it hands back, and the Python path does it. The two give the same
packets, bytes, counters, costs and trace (tests/drivers/storage/test_storvsp_plane.py).

Invariants:
- Decode, then invoke: a request packet is checked completely (layout, state, lengths, every PFN
  of its range host-visible, read-write for a read, anywhere in the guest's memory, the CDB)
  before anything is queued; a refused one is answered at once (INVALID_DEVICE_REQUEST, the
  refusal logged with the page) and changes nothing, and the channel goes on.
- Every request packet is answered with one completion (VMBus type 0xB, operation COMPLETE_IO,
  the request's trans_id), as Hyper-V and OpenVMM do; a completion from the guest is dropped
  (completions are never answered). trans_ids are only echoed, never interpreted. Completions
  the guest's full ring cannot take wait in a backlog bounded at 2 x max_outstanding; past that
  they are dropped (a guest that does not read only hurts itself).
- Each LUN's medium serves one request at a time, in arrival order: a request starts when the
  previous one on that LUN finished and completes `service time` later, so no disk exceeds its
  bandwidth (the LUNs are separate files: they work in parallel). Commands that do not reach a
  medium (INQUIRY, READ CAPACITY, TEST UNIT READY, REPORT LUNS) are answered at once. An SRB for
  a LUN that is not there is answered INVALID_LUN; REPORT LUNS (to any LUN) lists the ones that are.
- `counters()` gives what each LUN moved (operations and bytes read and written, flushes, medium
  errors) as plain data, for the management layer's per-VM disk figures.
- Visibility is checked again when a request executes: if the guest hid a page of it meanwhile,
  the request fails with SRB ERROR and no byte moves into or out of the guest. Nothing but
  host-visible pages of the guest is ever reached.
"""
from __future__ import annotations

import enum
import struct
import weakref
from collections import deque
from dataclasses import dataclass
from functools import partial

from drivers.device import Vsp
from drivers.storage import protocol as p
from drivers.storage.protocol import PKT_GPA_DIRECT, NtStatus, Operation, ScsiRequest, SrbStatus, StorError
from drivers.storage.scsi import Command, Direction, ScsiDisk, ScsiResult, report_luns
from drivers.storage.vhd import VhdError, VirtualDisk
from hypervisor import _binding, quantities
from hypervisor.grants import VisibleMemory
from hypervisor.quantities import parse_duration, parse_size
from hypervisor.status import HvError
from vmbus.protocol import GpaRange
from vmbus.ring import PKT_COMP, PKT_DATA_INBAND, Packet, PacketBatch, RingError, RingFull

MAX_TRANSFER_BYTES = 256 * 1024
MAX_LUNS = 64                  # disks on one Hyper-V SCSI controller
_LOGGED_REFUSALS = 16          # log this many refusals per channel, then only count them
_RETRY_NS = (100_000, 64_000_000)  # backlog retry: first delay, cap (doubling)
# What a guest may send besides EXECUTE_SRB; anything else is refused as INVALID_DEVICE_REQUEST.
_GUEST_CONTROL = frozenset({
    Operation.BEGIN_INITIALIZATION, Operation.QUERY_PROTOCOL_VERSION, Operation.QUERY_PROPERTIES,
    Operation.END_INITIALIZATION, Operation.RESET_LUN,
    Operation.RESET_ADAPTER, Operation.RESET_BUS, Operation.CREATE_SUB_CHANNELS})


class State(enum.Enum):
    BEGIN = "begin"                        # waiting for BEGIN_INITIALIZATION
    QUERY_VERSION = "query_version"        # until a version is accepted
    QUERY_PROPERTIES = "query_properties"
    END_INITIALIZATION = "end_initialization"
    READY = "ready"


class _LunStats:
    """A LUN's medium timeline and what it moved, when no C data plane keeps them (the plane
    keeps them in its struct hv_storvsp_lun, which has the same fields)."""

    __slots__ = ("busy_until", "read_ops", "read_bytes", "write_ops", "write_bytes", "flushes", "errors")

    def __init__(self) -> None:
        self.busy_until = 0         # when this medium finishes what it has
        self.read_ops = self.read_bytes = self.write_ops = self.write_bytes = self.flushes = 0
        self.errors = 0             # medium commands that failed (the file failing underneath)


def _stat(name: str) -> property:
    return property(lambda lun: getattr(lun.stats, name), lambda lun, value: setattr(lun.stats, name, value))


class _Lun:
    """One disk of the controller: its file, the SCSI unit over it, its medium's timeline and what
    it moved (`stats`: Python's, or the C plane's record of this LUN, read and written in place,
    so that both paths share one timeline and one set of counters)."""

    __slots__ = ("disk", "target", "owned", "stats", "c_disk", "link")
    busy_until, read_ops, read_bytes, write_ops, write_bytes, flushes, errors = map(_stat, _LunStats.__slots__)

    def __init__(self, disk: VirtualDisk, target: ScsiDisk, owned: bool) -> None:
        self.disk, self.target = disk, target
        self.owned = owned          # opened here from a path: closed with the channel
        self.stats = _LunStats()
        self.c_disk = None          # the VhdDisk the C plane was given for it (see _plane_point)
        self.link = None            # the host's StorageLink to the shared storage it is on, if any


@dataclass
class _Request:
    trans_id: int
    srb: ScsiRequest
    command: Command
    range: GpaRange | None
    lun: _Lun | None = None     # None: answered by the target (REPORT LUNS), not a unit


_PLANE_MAX_OUTSTANDING = 4096     # the C plane keeps a slot (about 1 KiB) per request in service
_U32 = struct.Struct("<I")
_DESC = struct.Struct("<HHHHQ")   # a VMBus packet descriptor: type, offset8, len8, flags, trans_id


def _records_of(packets) -> bytes:
    """The packets as the ring's reader leaves them for C: each record the packet as it sat in
    the ring (descriptor, header, payload; len8 * 8 bytes), back to back."""
    if type(packets) is PacketBatch:
        return packets._records   # N.B. the batch's own buffer, exactly these records: no copy
    if any(16 + len(pk.header) + len(pk.payload) != pk.len8 * 8 for pk in packets):
        return None   # not as a ring gives them (a test's own): the Python path takes them all
    return b"".join(_DESC.pack(pk.type, pk.offset8, pk.len8, pk.flags, pk.trans_id) + pk.header + pk.payload
                    for pk in packets)


def parse_rate(value: int | str, what: str = "bandwidth") -> int:
    """Bytes per second from an int or a string such as "500MB/s"."""
    rate = quantities.parse_rate(value, what)   # MB/s is 10^6 bytes a second, as disks are quoted
    if rate <= 0:
        raise ValueError(f"{what}: must be positive, got {value!r}")
    return rate


class StorVsp(Vsp):
    DATA_PLANE = "c"    # for a config that does not say ("c" or "python"): what benchmarks switch
    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        cfg = self.config
        self.state = State.BEGIN
        self.version: int | None = None
        self.max_outstanding = max(1, int(cfg.get("max_outstanding", 64)))
        self.max_transfer = parse_size(cfg.get("max_transfer_bytes", MAX_TRANSFER_BYTES), "max_transfer_bytes")
        self.latency = parse_duration(cfg.get("latency", "100us"), "latency")
        self.bandwidth = parse_rate(cfg.get("bandwidth", "500MB/s"))
        self.cpu_per_request = parse_duration(cfg.get("cpu_per_request", "3us"), "cpu_per_request")
        self._memory = cfg.get("guest_memory")
        self._outstanding: dict[int, _Request] = {}  # sequence number -> request in service (Python's)
        self._completed = self.refused = self.busy = self.dropped = 0
        self.last_refusal: str | None = None
        self._seq = 0
        self._backlog: deque[tuple[int, bytes]] = deque()  # (trans_id, completion) the ring refused
        self._retry_ns: int | None = None                   # armed retry delay, None: not armed
        self._closed = False
        self._quiesced_at: int | None = None        # when the VM's save quiesced it
        self.luns: list[_Lun | None] = []           # index = LUN; None: that disk is absent
        self._open_disks()
        # The C data plane (native/storvsp.h) takes the READ/WRITE requests it can; None: every
        # request takes the Python path, the reference (data_plane "python", or no core handle
        # to the guest's memory, as with a test's own guest_memory).
        self._plane = None
        self._handed: dict[int, _Request] = {}      # C slot -> request Python finishes at its due time
        if cfg.get("data_plane", self.DATA_PLANE) != "python":
            self._plane = self._make_plane()

    @staticmethod
    def configured_disks(cfg: dict) -> list:
        """The disks of a host config, by LUN: paths, open VirtualDisks, or None (no path given)."""
        if cfg.get("disks") is not None:
            return list(cfg["disks"])
        if cfg.get("disk") is not None:
            return [cfg["disk"]]
        return [cfg.get("path")]

    @classmethod
    def disk_problems(cls, cfg: dict) -> list[tuple[int, object, str]]:
        """(LUN, disk, why) for each disk of `cfg` the VSP could not open now, opened as it will
        open them (read-write unless `read_only`) and closed again: the VM's start checks this so
        that a VM never runs with a LUN silently missing. An open VirtualDisk is the caller's."""
        problems = []
        disks = cls.configured_disks(cfg)
        if len(disks) > MAX_LUNS:
            problems.append((MAX_LUNS, disks[MAX_LUNS], f"more than {MAX_LUNS} disks"))
        for lun, disk in enumerate(disks[:MAX_LUNS]):
            if isinstance(disk, VirtualDisk):
                continue
            if disk is None:
                problems.append((lun, None, "no 'path' (a VHD file) in the storage device's config"))
                continue
            try:
                VirtualDisk.open(disk, read_only=bool(cfg.get("read_only", False))).close()
            except (OSError, VhdError) as exc:
                mode = "read-only" if cfg.get("read_only") else "read-write"
                problems.append((lun, disk, f"cannot be opened {mode}: {type(exc).__name__}: {exc}"))
        return problems

    def _open_disks(self) -> None:
        disks = self.configured_disks(self.config)
        if len(disks) > MAX_LUNS:
            self.context.log("storvsp has too many disks", disks=len(disks), max=MAX_LUNS)
            disks = disks[:MAX_LUNS]
        links = list(self.config.get("links") or ())
        for lun, disk in enumerate(disks):
            try:
                self.luns.append(self._open_lun(disk))
                self.luns[-1].link = links[lun] if lun < len(links) else None
            except (OSError, VhdError, ValueError) as exc:
                # No disk here: the controller still negotiates; SRBs for this LUN find none.
                # N.B. a VM's start refuses disks that do not open (disk_problems), so this is
                # only a disk lost between the start and the channel's opening: logged with the VM.
                self.luns.append(None)
                self.context.log("storvsp has no disk", lun=lun, path=str(disk),
                                 error=f"{type(exc).__name__}: {exc}")

    def _open_lun(self, disk) -> _Lun:
        cfg = self.config
        owned = not isinstance(disk, VirtualDisk)
        if owned:
            if disk is None:
                raise ValueError("the storage device needs a 'path' (a VHD file) in its config")
            disk = VirtualDisk.open(disk, read_only=bool(cfg.get("read_only", False)),
                                    write_barriers=bool(cfg.get("write_barriers", True)))
            # Closed with the channel; and if the parent never closes it (a host torn down),
            # when this VSP is collected, so that the file's lock goes with the host.
            weakref.finalize(self, disk.close)
        try:
            return _Lun(disk, ScsiDisk(disk, serial=cfg.get("serial")), owned)
        except ValueError:
            if owned:
                disk.close()
            raise

    # -- the disks, for management (checkpoints, figures) ------------------------------------

    @property
    def disk(self) -> VirtualDisk | None:
        """LUN 0's disk (the controller's only one in the common case)."""
        return self.lun_disk(0)

    @property
    def target(self) -> ScsiDisk | None:
        """LUN 0's SCSI unit."""
        lun = self.luns[0] if self.luns else None
        return lun.target if lun is not None else None

    @property
    def busy_until(self) -> int:
        """When the busiest medium finishes what it has."""
        return max((lun.busy_until for lun in self.luns if lun is not None), default=0)

    def lun_disk(self, lun: int) -> VirtualDisk | None:
        """The disk at `lun`, or None."""
        entry = self.luns[lun] if 0 <= lun < len(self.luns) else None
        return entry.disk if entry is not None else None

    @property
    def outstanding(self) -> dict:
        """The requests in service, by a key of their own: Python's (by sequence number) and the C
        plane's (by -1 - slot), each as a _Request."""
        requests = dict(self._outstanding)
        for slot in self._plane_slots():
            requests[-1 - slot] = self._plane_request(slot)
        return requests

    @property
    def completed(self) -> int:
        return self._completed + (self._plane.completed if self._plane is not None else 0)

    def counters(self) -> dict:
        """What the controller did, as plain data: per LUN the operations and bytes read and
        written, flushes and medium errors (what Measure-VM's disk figures are made of), and the
        channel's completions, refusals and BUSY answers."""
        luns = [{"lun": i, "path": lun.disk.path, "read_ops": lun.read_ops, "read_bytes": lun.read_bytes,
                 "write_ops": lun.write_ops, "write_bytes": lun.write_bytes, "flushes": lun.flushes,
                 "errors": lun.errors}
                for i, lun in enumerate(self.luns) if lun is not None]
        return {"luns": luns, "completed": self.completed, "refused": self.refused, "busy": self.busy}

    # -- packets -----------------------------------------------------------------------------

    def on_packets(self, packets: list[Packet]) -> None:
        self._flush_backlog()
        plane = self._plane
        records = _records_of(packets) if plane is not None else None
        if records is None:
            for packet in packets:
                self._on_packet(packet)
            return
        # The C plane takes the longest run of requests it can from where it is; the first packet
        # it does not take goes through the Python path below, then C goes on after it. So every
        # packet is handled, charged and its timer armed in the order of the ring.
        records = memoryview(records)
        count, i, pos = len(packets), 0, 0
        while i < count:
            if self.state is State.READY and self._plane is not None:
                taken, used, slots, dues = plane.submit(records[pos:], count - i, self.context.now(),
                                                        len(self._outstanding))
                if taken:
                    self.context.charge(self.cpu_per_request * taken)
                    now = self.context.now()
                    # One timer per request, as the Python path arms them: timers of the same due
                    # time run in arming order, across devices too, so the trace stays the same.
                    for slot, due in zip(slots, dues):
                        self.context.call_later(due - now, partial(self._plane_done, slot))
                    i, pos = i + taken, pos + used
                    if i == count:
                        return
            packet = packets[i]
            self._on_packet(packet)
            i, pos = i + 1, pos + packet.len8 * 8

    def _on_packet(self, packet: Packet) -> None:
        """The Python path's step for one packet (the reference)."""
        self.context.charge(self.cpu_per_request)
        if packet.type == PKT_COMP:
            self._note_refusal("a guest sends requests, not completions")
            return  # a completion is never answered
        try:
            self._handle(packet)
        except StorError as exc:
            self._refuse(packet.trans_id, NtStatus.INVALID_PARAMETER, str(exc))

    def _handle(self, packet: Packet) -> None:
        if packet.type == PKT_GPA_DIRECT:
            ranges, rest = p.decode_gpa_direct(packet.header), packet.payload
        elif packet.type == PKT_DATA_INBAND:
            ranges, rest = (), packet.payload
        else:
            raise StorError(f"storvsp takes in-band and GPA-direct packets, not type {packet.type:#x}")
        vp = p.decode_packet(rest)
        if vp.operation == Operation.EXECUTE_SRB:
            self._execute_srb(packet.trans_id, vp, ranges)
            return
        if ranges:
            raise StorError(f"operation {vp.operation} carries no data ranges")
        self._control(packet.trans_id, vp)

    def _control(self, trans_id: int, vp: p.VstorPacket) -> None:
        """The negotiation and the other non-SRB operations, one state machine (OpenVMM's)."""
        op, state, body = vp.operation, self.state, b""
        status = NtStatus.INVALID_DEVICE_STATE
        if op == Operation.BEGIN_INITIALIZATION and state is State.BEGIN:
            status, self.state = NtStatus.SUCCESS, State.QUERY_VERSION
        elif op == Operation.QUERY_PROTOCOL_VERSION and state is State.QUERY_VERSION:
            version = p.decode_version(vp.body)
            body = p.encode_version(version)
            if version in p.VERSIONS:
                status, self.state, self.version = NtStatus.SUCCESS, State.QUERY_PROPERTIES, version
            else:
                status = NtStatus.REVISION_MISMATCH
        elif op == Operation.QUERY_PROPERTIES and state is State.QUERY_PROPERTIES:
            body = p.ChannelProperties(0, 0, self.max_transfer).encode()
            status, self.state = NtStatus.SUCCESS, State.END_INITIALIZATION
        elif op == Operation.END_INITIALIZATION and state is State.END_INITIALIZATION:
            status, self.state = NtStatus.SUCCESS, State.READY
        elif op in (Operation.RESET_LUN, Operation.RESET_ADAPTER, Operation.RESET_BUS) and state is State.READY:
            status = NtStatus.SUCCESS  # no-ops in Hyper-V and OpenVMM too
        elif op not in _GUEST_CONTROL:
            status = NtStatus.INVALID_DEVICE_REQUEST  # unknown, or one only a host sends
        # Anything else (out of order; CREATE_SUB_CHANNELS, as hvsim offers no sub-channels) is
        # INVALID_DEVICE_STATE, as in OpenVMM.
        if status not in (NtStatus.SUCCESS, NtStatus.REVISION_MISMATCH):
            self._note_refusal(f"operation {op} in state {state.value}: {status.name}")
        self._send(trans_id, p.VstorPacket(Operation.COMPLETE_IO, 0, status, body).encode())

    # -- EXECUTE_SRB -------------------------------------------------------------------------

    def _execute_srb(self, trans_id: int, vp: p.VstorPacket, ranges: tuple[GpaRange, ...]) -> None:
        if self.state is not State.READY:
            self._refuse(trans_id, NtStatus.INVALID_DEVICE_STATE, f"EXECUTE_SRB in state {self.state.value}")
            return
        srb = ScsiRequest.decode(vp.body)
        problem = self._check_srb(srb, ranges)
        if problem is not None:
            self._refuse(trans_id, NtStatus.INVALID_DEVICE_REQUEST, problem, srb)
            return
        if self._in_service() >= self.max_outstanding:
            self.busy += 1
            self._complete(trans_id, srb, ScsiResult(p.ScsiStatus.BUSY, SrbStatus.BUSY))
            return
        ours = (srb.path_id, srb.target_id) == (0, 0)
        lun = self.luns[srb.lun] if ours and srb.lun < len(self.luns) else None
        cdb = srb.cdb   # 1..CDB_SIZE bytes: _check_srb saw to it
        if ours and cdb[0] == p.Op.REPORT_LUNS:
            # The target answers REPORT LUNS, whichever LUN it is sent to (a guest asks LUN 0
            # even when no disk is there).
            lun = None
            command = report_luns(cdb, [i for i, u in enumerate(self.luns) if u is not None],
                                  srb.data_transfer_length)
        elif lun is None:
            self._complete(trans_id, srb, ScsiResult(p.ScsiStatus.GOOD, SrbStatus.INVALID_LUN))
            return
        else:
            command = lun.target.decode(cdb, srb.data_transfer_length)
        if isinstance(command, ScsiResult):
            self._complete(trans_id, srb, command)
            return
        wrong_way = ((command.direction is Direction.IN and srb.data_in == p.DATA_OUT)
                     or (command.direction is Direction.OUT and srb.data_in == p.DATA_IN))
        if wrong_way:
            self._refuse(trans_id, NtStatus.INVALID_DEVICE_REQUEST,
                         f"data_in {srb.data_in} against a {command.direction.value} command", srb)
            return
        request = _Request(trans_id, srb, command, ranges[0] if ranges else None, lun)
        if not command.medium:
            self._finish(request)
            return
        now = self.context.now()
        # A disk on a shared storage: the bytes cross the host's link to it first (the C plane's
        # hv_storvsp_submit computes the same due time with the same call).
        at = now if lun.link is None else lun.link.cross(now, command.length)
        done = max(at, lun.busy_until) + self.service_time(command.length)
        lun.busy_until = done
        self._seq += 1
        seq = self._seq
        self._outstanding[seq] = request
        self.context.call_later(done - now, lambda: self._medium_done(seq))

    def _check_srb(self, srb: ScsiRequest, ranges: tuple[GpaRange, ...]) -> str | None:
        """Why a vmscsi_request cannot be taken, or None."""
        if srb.length != p.REQUEST_SIZE:
            return f"vmscsi_request length {srb.length}, expected {p.REQUEST_SIZE}"
        if not 1 <= srb.cdb_length <= p.CDB_SIZE:
            return f"cdb_length {srb.cdb_length}"
        if srb.data_in not in (p.DATA_OUT, p.DATA_IN, p.DATA_UNKNOWN):
            return f"data_in {srb.data_in}"
        if srb.data_transfer_length > self.max_transfer:
            return f"data_transfer_length {srb.data_transfer_length} > {self.max_transfer}"
        if len(ranges) > 1:
            return f"{len(ranges)} ranges; storvsc sends one"
        if not ranges:
            return "data without a range" if srb.data_transfer_length else None
        (rng,) = ranges
        if rng.byte_count < srb.data_transfer_length:
            return f"range of {rng.byte_count} bytes for a {srb.data_transfer_length}-byte transfer"
        if self._memory is None:
            return "no access to the guest's memory (no guest_memory in the config)"
        writable = srb.data_in == p.DATA_IN  # the device stores into the guest's pages
        bad = self._memory.check(rng.pfns, writable)
        if bad is not None:
            return f"PFN {bad:#x} is not host-visible{' read-write' if writable else ''}"
        return None

    def service_time(self, nbytes: int) -> int:
        """Simulated ns the medium takes for a request moving nbytes."""
        return self.latency + -(-nbytes * 1_000_000_000 // self.bandwidth)

    def _medium_done(self, seq: int) -> None:
        request = self._outstanding.pop(seq, None)
        if self._closed or request is None:
            return
        try:
            self._finish(request)
        except RingError as exc:
            # The guest broke its ring: the parent breaks the channel when it next reads it.
            self.context.log("storvsp cannot complete", error=str(exc))

    def _finish(self, request: _Request) -> None:
        """Invoke: move the data between the guest's host-visible pages and the medium, then
        complete."""
        command, length = request.command, request.command.length
        if not length:
            result = command.execute(bytearray())
            self._count(request, result)
            self._complete(request.trans_id, request.srb, result)
            return
        rng = request.range
        try:
            if command.direction is Direction.OUT:
                # The bytes read from the guest's pages are a copy already: the medium takes them.
                result = command.execute(self._memory.read(rng.pfns, rng.byte_offset, length))
            else:
                buffer = bytearray(length)
                result = command.execute(buffer)
                self._memory.write(rng.pfns, rng.byte_offset, memoryview(buffer)[:result.transferred])
        except (HvError, LookupError) as exc:
            # The guest hid a page meanwhile (or went away): nothing reached its memory.
            self._note_refusal(f"data of a request no longer reachable: {exc}")
            self._complete(request.trans_id, request.srb, ScsiResult(p.ScsiStatus.GOOD, SrbStatus.ERROR))
            return
        self._count(request, result)
        self._complete(request.trans_id, request.srb, result)

    @staticmethod
    def _count(request: _Request, result: ScsiResult) -> None:
        lun, command = request.lun, request.command
        if lun is None or not command.medium:
            return
        if not result.ok:
            lun.errors += 1
        elif command.direction is Direction.IN:
            lun.read_ops, lun.read_bytes = lun.read_ops + 1, lun.read_bytes + result.transferred
        elif command.direction is Direction.OUT:
            lun.write_ops, lun.write_bytes = lun.write_ops + 1, lun.write_bytes + result.transferred
        else:
            lun.flushes += 1

    # -- the C data plane ----------------------------------------------------------------------

    def _make_plane(self):
        """The C plane for this channel, or None when it cannot serve it: the guest's memory is not
        the core's (VisibleMemory), or the channel's rings are not a ChannelEnd's."""
        memory = self._memory
        if type(memory) is not VisibleMemory or not hasattr(self.channel, "outgoing"):
            return None
        if self.max_outstanding > _PLANE_MAX_OUTSTANDING:
            return None   # a slot per request in service: past this, the Python path's dict
        # A vmscsi_request's transfer length is a u32: a larger limit refuses nothing more.
        plane = _binding.StorvspPlane(memory.host_handle, memory.child_id, self.max_outstanding,
                                      min(self.max_transfer, 0xFFFFFFFF), self.latency, self.bandwidth,
                                      len(self.luns))
        for index, lun in enumerate(self.luns):
            if lun is not None:
                self._plane_attach(plane, index, lun)
        return plane

    @staticmethod
    def _plane_attach(plane, index: int, lun: _Lun) -> None:
        """Hand LUN `index` to the plane: its numbers move into the plane's record of it."""
        stats, lun.stats = lun.stats, plane.luns[index]
        for name in _LunStats.__slots__:
            setattr(lun.stats, name, getattr(stats, name))
        lun.c_disk = lun.disk._c if not lun.disk.closed else None
        plane.set_lun(index, lun.c_disk, lun.target.blocks, lun.disk.read_only)
        plane.set_lun_link(index, lun.link)

    def _in_service(self) -> int:
        return len(self._outstanding) + (self._plane.in_service if self._plane is not None else 0)

    def _plane_slots(self) -> list[int]:
        return self._plane.slots() if self._plane is not None else []

    def _plane_request(self, slot: int, lun: _Lun | None = None) -> _Request:
        """The request in C slot `slot` as the Python path holds one (the same SRB and range,
        decoded by the LUN's unit, `lun` if given)."""
        trans_id, raw, index, byte_count, byte_offset, pfns = self._plane.request(slot)
        srb = ScsiRequest.decode(raw)
        lun = lun or self.luns[index]
        command = lun.target.decode(srb.cdb, srb.data_transfer_length)
        return _Request(trans_id, srb, command, GpaRange(byte_count, byte_offset, tuple(pfns)), lun)

    def _plane_done(self, slot: int) -> None:
        """A C request's due time: C moves its data and completes it, or hands it back whole."""
        if self._closed:
            return
        plane = self._plane
        request = self._handed.pop(slot, None)
        if request is None and plane is None:
            return
        if request is None:
            for lun in self.luns:   # a disk closed or changed under the plane: C must not use it
                if lun is not None and lun.disk._c is not lun.c_disk:
                    self._plane_attach(plane, self.luns.index(lun), lun)
            rc = plane.complete(slot, self._plane_ring())
            done = plane.done
            if rc == _binding.STORVSP_SENT or rc == _binding.STORVSP_UNSENT:
                if done.write:
                    # N.B. VirtualDisk.write marks its disk written (the next flush syncs it);
                    # C wrote through the same file, so it marks it too.
                    self.luns[done.lun].disk._dirty = True
                self._plane_sent(rc, done)
                return
            if rc == _binding.STORVSP_WRITE:
                self._plane_write(slot)
                return
            if rc != _binding.STORVSP_PYTHON:
                return
            request = self._plane_request(slot)
        plane.release(slot)
        if isinstance(request.command, ScsiResult):   # pragma: no cover - the unit decoded it once
            self._complete(request.trans_id, request.srb, request.command)
            return
        try:
            self._finish(request)
        except RingError as exc:
            self.context.log("storvsp cannot complete", error=str(exc))

    def _plane_sent(self, rc: int, done) -> None:
        """After C completed a request: the ring's bookkeeping and the signal (SENT), or the
        completion sent the Python way (UNSENT: behind a backlog, or into a full ring)."""
        if rc == _binding.STORVSP_SENT:
            self.channel.outgoing._after_publish(done.index)
            if done.signal:
                self.channel._signal()
            return
        try:
            self._send(done.trans_id, _binding.storvsp_packet(done))
        except RingError as exc:
            self.context.log("storvsp cannot complete", error=str(exc))

    def _plane_write(self, slot: int) -> None:
        """A write C took whose VHD tables must change: the unit writes the guest's bytes (C copied
        them into its scratch buffer, the copy the Python path reads from the guest's pages), as
        the write's Command would; C completes it, or Python a medium error."""
        plane, done = self._plane, self._plane.done
        lun = self.luns[done.lun]
        result = lun.target.write_blocks(done.offset, plane.scratch(done.length))
        if result.ok:
            rc = plane.written(slot, self._plane_ring())
            self._plane_sent(rc, done)
            return
        trans_id, raw = plane.request(slot)[:2]
        plane.release(slot)
        lun.errors += 1
        try:
            self._complete(trans_id, ScsiRequest.decode(raw), result)
        except RingError as exc:
            self.context.log("storvsp cannot complete", error=str(exc))

    def _plane_ring(self):
        """The outgoing ring for C to write a completion into, or None when the Python path must
        send it (a backlog to keep in order, the VM quiesced, the ring broken, not adopted yet or
        tampered with, or memory C cannot be handed): ChannelEnd.send's checks, made here."""
        channel = self.channel
        if self._backlog or getattr(getattr(channel, "child", None), "quiesced", False):
            return None
        out = channel.outgoing
        if out._broken is not None or out._w is None or _U32.unpack_from(out._mem, 0)[0] != out._w:
            return None
        ring = out._pinned or out._ring()
        return ring if type(ring) is _binding.RingPin else None

    # -- completions -------------------------------------------------------------------------

    def _complete(self, trans_id: int, srb: ScsiRequest, result: ScsiResult) -> None:
        self._completed += 1
        self._send(trans_id, p.encode_srb_completion(srb, result.srb_status, result.scsi_status,
                                                     result.transferred, result.sense or b""))

    def _refuse(self, trans_id: int, status: NtStatus, why: str, srb: ScsiRequest | None = None) -> None:
        self._note_refusal(why)
        response = ScsiRequest(srb_status=SrbStatus.INVALID_REQUEST,
                               data_in=srb.data_in if srb else p.DATA_UNKNOWN,
                               cdb_length=srb.cdb_length if srb else 0)
        self._send(trans_id, p.VstorPacket(Operation.COMPLETE_IO, 0, status, response.encode()).encode())

    def _note_refusal(self, why: str) -> None:
        self.refused += 1
        self.last_refusal = why
        if self.refused <= _LOGGED_REFUSALS:
            self.context.log("storvsp refused a request", why=why)

    def _send(self, trans_id: int, completion: bytes) -> None:
        if self._closed:
            return
        if not self._backlog:
            try:
                self.channel.send(completion, packet_type=PKT_COMP, trans_id=trans_id, set_pending_send_sz=True)
                return
            except RingFull:
                pass
        if len(self._backlog) >= 2 * self.max_outstanding:
            self.dropped += 1
            return
        self._backlog.append((trans_id, completion))
        self._arm_retry()

    def _flush_backlog(self) -> None:
        while self._backlog and not self._closed:
            trans_id, completion = self._backlog[0]
            try:
                self.channel.send(completion, packet_type=PKT_COMP, trans_id=trans_id, set_pending_send_sz=True)
            except RingFull:
                return
            self._backlog.popleft()

    def _arm_retry(self) -> None:
        # N.B. the parent hands a VSP only signals that bring packets, so the guest freeing ring
        # space is noticed by polling, backing off while the guest does not read.
        if self._retry_ns is not None:
            return
        self._retry_ns = _RETRY_NS[0]
        self.context.call_later(self._retry_ns, self._retry)

    def _retry(self) -> None:
        delay, self._retry_ns = self._retry_ns or _RETRY_NS[0], None
        try:
            self._flush_backlog()
        except RingError as exc:
            self.context.log("storvsp cannot complete", error=str(exc))
            self._backlog.clear()
            return
        if self._backlog and not self._closed:
            self._retry_ns = min(2 * delay, _RETRY_NS[1])
            self.context.call_later(self._retry_ns, self._retry)

    def save(self) -> dict:
        """The controller's state as a plain record: protocol state, negotiated version, the disk
        files, requests in service (by transaction id) and counters.
        N.B. hvsim's saved VMs keep their device objects, so no restore from it exists yet."""
        return {"state": self.state.value, "version": self.version,
                "disk": self.disk.path if self.disk is not None else None,
                "luns": [None if lun is None else {"path": lun.disk.path, "busy_until": lun.busy_until}
                         for lun in self.luns],
                "outstanding": sorted([r.trans_id for r in self._outstanding.values()]
                                      + [self._plane.request(slot)[0] for slot in self._plane_slots()]),
                "busy_until": self.busy_until, "completed": self.completed, "refused": self.refused}

    def quiesce(self) -> None:
        """The VM is being saved. Requests in service stay in service (they are in `outstanding`
        and in the saved record): their completion timers stand still with the VM, so each one
        moves its data and completes after the restore, into the restored memory and ring, as
        long after it as it had left. Nothing is written to the guest meanwhile. The disks are
        flushed: what the guest wrote before the save is durable with the saved state."""
        self._quiesced_at = self.context.now()
        for lun in self.luns:
            if lun is not None and not lun.disk.closed:
                lun.disk.flush()

    def resume(self) -> None:
        """Each medium's queue stood still too: what it still owed ends as much later."""
        if self._quiesced_at is None:
            return
        gap, since, self._quiesced_at = self.context.now() - self._quiesced_at, self._quiesced_at, None
        for lun in self.luns:
            if lun is not None and lun.busy_until > since:
                lun.busy_until += gap

    def replace_disk(self, disk: VirtualDisk, lun: int = 0) -> VirtualDisk | None:
        """Serve `disk` at `lun` from now on (a checkpoint forked the VM's disk into a differencing
        one); returns the disk it served before, which the caller closes. Requests already
        executed went to the old disk; later ones go to the new one. The caller owns `disk`
        from then on as it owned the old one: one opened here is still closed with the channel."""
        entry = self.luns[lun]
        old = entry.disk if entry is not None else None
        unit = ScsiDisk(disk, serial=self.config.get("serial"))
        plane = self._plane
        if plane is not None and entry is not None:
            # The C plane's requests on this LUN were decoded against the old disk, as the Python
            # path's are (their Command is the old unit's): Python finishes them at their due time.
            for slot in self._plane_slots():
                if slot not in self._handed and plane.request(slot)[2] == lun:
                    self._handed[slot] = self._plane_request(slot, entry)
        if entry is None:
            entry = self.luns[lun] = _Lun(disk, unit, owned=True)
        else:
            entry.disk, entry.target = disk, unit
            if entry.owned:
                weakref.finalize(self, disk.close)
        if plane is not None:
            self._plane_attach(plane, lun, entry)
        return old

    def on_close(self) -> None:
        self._closed = True
        self._outstanding.clear()
        self._handed.clear()
        if self._plane is not None:
            self._plane.close()
            self._plane = None
        self._backlog.clear()
        for lun in self.luns:
            if lun is not None and lun.owned:
                lun.disk.close()
        self.luns = [None] * len(self.luns)
