"""The guest's side of disk I/O: storvsc carrying the default host's disk-io pattern (4 KiB,
random offsets, 70 % reads, queue depth 4, reads left in the bounce pages as the workload asks)
through its one-crossing C path (native/storvsc.c) and through its Python path (the reference),
measured in the same run, each as I/Os per CPU second.

Only the guest is measured: the other end of the channel is a minimal host in this module that
answers every request at once from the ring (negotiation, LUN 0 found, each SRB completed with
its full length, a READ/WRITE's completion built once per shape and then reused), the same work
for both paths, so that the difference is storvsc's. Both paths
run in the same process, alternating, and each figure is the best of its rounds.
"""
from __future__ import annotations

import random
import struct
import time

from bench.timing import Figure, Goal
from drivers.device import ManualContext
from drivers.storage import protocol as p
from drivers.storage.protocol import Operation, ScsiRequest
from drivers.storage.vsc import StorVsc
from vmbus.channel import connected_pair
from vmbus.ring import PKT_COMP

GOAL = Goal(">=", 1.0, "ratio", "storvsc in C: less CPU per I/O than its Python path")
# (I/Os per round, rounds per path)
PLAN = {"tiny": (200, 1), "default": (5_000, 12), "long": (20_000, 25)}
POOL_PAGES, FIRST_PFN = 64, 0x100
CAPACITY = 1 << 21   # blocks (1 GiB): READ CAPACITY's answer; nothing is stored
_KEY = struct.Struct("<I15xBBxBxI")   # vstor operation; the SRB's LUN, CDB length, direction, length
_RW = frozenset((p.Op.READ_10, p.Op.WRITE_10, p.Op.READ_16, p.Op.WRITE_16))


class _Host:
    """The host end: answers each packet at once (negotiation, discovery, I/O)."""

    def __init__(self, end, pool: bytearray):
        self.end, self.pool = end, memoryview(pool)
        self.replies: dict[tuple, bytes] = {}   # READ/WRITE completions by what they echo
        end.on_signal = self.serve

    def serve(self) -> None:
        send, replies = self.end.send, self.replies
        for packet in self.end.receive():
            payload = packet.payload
            if payload[28] in _RW:   # a READ/WRITE: its completion depends on these fields alone
                key = _KEY.unpack_from(payload)
                reply = replies.get(key)
                if reply is None:
                    reply = replies[key] = self._srb(ScsiRequest.decode(payload[12:64]), packet.header)
                send(reply, packet_type=PKT_COMP, trans_id=packet.trans_id)
                continue
            vp = p.decode_packet(payload)
            if vp.operation != Operation.EXECUTE_SRB:
                body = p.ChannelProperties(0, 0, 256 * 1024).encode() if vp.operation == Operation.QUERY_PROPERTIES \
                    else b""
                reply = p.VstorPacket(Operation.COMPLETE_IO, 0, 0, body).encode()
            else:
                reply = self._srb(ScsiRequest.decode(vp.body), packet.header)
            self.end.send(reply, packet_type=PKT_COMP, trans_id=packet.trans_id)

    def _srb(self, srb: ScsiRequest, header: bytes) -> bytes:
        op, data = srb.cdb[0], b""
        if op == p.Op.REPORT_LUNS:      # an older target: the guest probes LUN 0
            return p.encode_srb_completion(srb, p.SrbStatus.INVALID_REQUEST, 0, 0, b"")
        if op == p.Op.INQUIRY:
            data = bytes(96)          # a direct-access disk, connected
        elif op == p.Op.SERVICE_ACTION_IN_16:
            data = (CAPACITY - 1).to_bytes(8, "big") + p.BLOCK_SIZE.to_bytes(4, "big") + bytes(20)
        if data:
            at = (int.from_bytes(header[16:24], "little") - FIRST_PFN) * 4096   # the first bounce page
            self.pool[at:at + len(data)] = data
        return p.encode_srb_completion(srb, p.SrbStatus.SUCCESS, 0, srb.data_transfer_length, b"")


def _guest(native: bool) -> StorVsc:
    host_end, guest_end = connected_pair(16)
    pool = bytearray(POOL_PAGES * 4096)
    share = lambda n: (list(range(FIRST_PFN, FIRST_PFN + n)), memoryview(pool))   # noqa: E731
    vsc = StorVsc(guest_end, {"share_pages": share, "pool_pages": POOL_PAGES, "native": native}, ManualContext())
    guest_end.on_signal = lambda: vsc.on_packets(guest_end.receive())
    vsc._bench_host = _Host(host_end, pool)   # kept alive with the guest
    vsc.on_open()
    if not vsc.ready or (vsc._native is not None) != native:
        raise RuntimeError(f"storvsc did not come up as asked (native={native}): {vsc.state} {vsc.error}")
    return vsc


def io_rate(vsc: StorVsc, count: int, seed: int = 0) -> float:
    """I/Os per CPU second of `count` I/Os of the default host's pattern, queue depth 4."""
    rng = random.Random(seed)
    disk = vsc.disk(0)
    payload = bytes(range(256)) * 16
    span = disk.capacity // 8
    finished = [0]

    def done(_request) -> None:
        finished[0] += 1

    start = time.process_time()
    issued = 0
    while finished[0] < count:
        while issued - finished[0] < 4 and issued < count:
            lba = rng.randrange(span) * 8
            if rng.random() < 0.7:
                disk.read(lba, 8, done, copy=False)
            else:
                disk.write(lba, payload, done)
            issued += 1
    seconds = time.process_time() - start
    return count / seconds


def run(size: str = "default") -> list[Figure]:
    count, rounds = PLAN[size]
    guests = {True: _guest(True), False: _guest(False)}
    best = {True: 0.0, False: 0.0}
    for _ in range(rounds):
        for native in (False, True):
            best[native] = max(best[native], io_rate(guests[native], count))
    baseline = "storvsc's Python path (the reference), same pattern, same run"
    note = "guest side only: a minimal host answers at once; both paths in one process, alternating"
    return [
        Figure(baseline, best[False], "I/O per CPU s", baseline, 1.0, note=note),
        Figure("storvsc: 4 KiB random I/O, 70 % reads, queue depth 4, through its C path", best[True],
               "I/O per CPU s", baseline, best[True] / best[False], GOAL, note=note),
    ]
