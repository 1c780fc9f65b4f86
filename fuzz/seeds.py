"""Writes the seed corpus of every fuzz target (fuzz/corpus/<target>/) from hvsim's own encoders,
so the fuzzers start from well-formed messages, rings, disks and files rather than from nothing.

`python -m fuzz.seeds` rewrites the committed corpus; run it when a wire format changes. The seeds
are deterministic (fixed ids, times and uuids), so rerunning it changes nothing unless a format did.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"


# -- the C hypercall harness's script format (fuzz/c/hypercall.c) --------------------------------

def _call(child: bool, control: int, block: bytes = b"", vp: int = 0) -> bytes:
    block = block + bytes(-len(block) % 8)
    # op 1: a hypercall checked for INV-ATOMIC
    return bytes([1, int(child) | vp << 1]) + struct.pack("<Q", control) + bytes([len(block) // 8]) + block


def _store(child: bool, page: int, offset: int, data: bytes) -> bytes:
    return bytes([2, int(child), page]) + struct.pack("<H", offset) + bytes([len(data)]) + data


def _run(ns: int) -> bytes:
    return bytes([3]) + struct.pack("<I", ns)


def hypercall_seeds() -> dict[str, bytes]:
    from hypervisor.abi import CallCode, HostVisibility, Register
    child_id = 1  # the harness's child is the first partition the root creates
    self_ = 0xFFFFFFFFFFFFFFFF

    def rep(code, n, start=0):
        return code | n << 32 | start << 48

    def _visibility(pid, visibility, pages):  # HvCallModifySparseGpaPageHostVisibility from the child
        return _call(True, rep(CallCode.MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY, len(pages)),
                     struct.pack("<QII", pid, visibility, 0) + struct.pack(f"<{len(pages)}Q", *pages))

    regs = lambda pid, vp, pairs: (struct.pack("<QIB3x", pid, vp, 0)
                                   + b"".join(struct.pack("<I4xQQ", name, value, 0) for name, value in pairs))
    synic = [(Register.SCONTROL, 1), (Register.SIMP, 2 << 12 | 1), (Register.SIEFP, 3 << 12 | 1),
             (Register.SINT0 + 2, 2)]
    return {
        "get_id_root": _call(False, CallCode.GET_PARTITION_ID),
        "get_id_child": _call(True, CallCode.GET_PARTITION_ID),
        "balance": _call(False, CallCode.GET_MEMORY_BALANCE, struct.pack("<QQ", child_id, 0)),
        "child_creates": _call(True, CallCode.CREATE_PARTITION, bytes(56)),
        "property": _call(False, CallCode.SET_PARTITION_PROPERTY, struct.pack("<QIIQ", child_id, 0x00010001, 0, 50)),
        "withdraw": _call(False, rep(CallCode.WITHDRAW_MEMORY, 3), struct.pack("<QQ", child_id, 0)),
        "unmap": _call(False, rep(CallCode.UNMAP_GPA_PAGES, 2), struct.pack("<QQII", child_id, 4, 0, 0)),
        "vp_regs": _call(True, rep(CallCode.SET_VP_REGISTERS, len(synic)), regs(self_, 0xFFFFFFFF, synic)),
        "get_regs": _call(False, rep(CallCode.GET_VP_REGISTERS, 2),
                          struct.pack("<QIB3x", child_id, 0, 0) + struct.pack("<II", Register.SIMP, Register.SCONTROL)),
        "port_post": (_call(True, rep(CallCode.SET_VP_REGISTERS, len(synic)), regs(self_, 0xFFFFFFFF, synic))
                      + _call(False, CallCode.CREATE_PORT,
                              struct.pack("<QIIQ", child_id, 7, 0, 0) + struct.pack("<IBBHII", 1, 2, 0, 0, 0, 0)
                              + struct.pack("<II", 0, 0))
                      + _call(False, CallCode.CONNECT_PORT,
                              struct.pack("<QIIQI", 0, 9, 0, child_id, 7) + bytes(12))
                      + _call(False, CallCode.POST_MESSAGE, struct.pack("<IIII", 9, 0, 1, 8) + b"hello!!!")
                      + _run(100000)),
        "delete": _call(False, CallCode.FINALIZE_PARTITION, struct.pack("<Q", child_id))
                  + _call(False, CallCode.DELETE_PARTITION, struct.pack("<Q", child_id)),
        "store_run": _store(True, 2, 0, bytes(range(64))) + _run(5000000),
        "fast": _call(False, CallCode.GET_MEMORY_BALANCE | 1 << 16, struct.pack("<QQ", child_id, 0)),
        # the child shows two of its pages to the root read-write, lowers one to read-only, hides
        # the other, then asks for a page it never mapped (refused, nothing changes)
        "host_visibility": (_visibility(self_, HostVisibility.READ_WRITE, [2, 3])
                            + _visibility(self_, HostVisibility.READ_ONLY, [2])
                            + _visibility(self_, HostVisibility.NONE, [3])
                            + _visibility(self_, HostVisibility.READ_WRITE, [4, 1 << 20])),
    }


# -- rings (both the C and the Python ring targets read this format) -------------------------------

def ring_seeds() -> dict[str, bytes]:
    from vmbus.ring import CONTROL_SIZE, OutgoingRing, init_ring
    seeds = {}
    for name, dsize, payloads in (("one", 256, [b"x" * 10]), ("three", 512, [b"a" * 40, b"b" * 8, b"c" * 100]),
                                  ("wrap", 256, [b"w" * 90, b"v" * 90])):
        ring = bytearray(CONTROL_SIZE + dsize)
        init_ring(ring)
        out = OutgoingRing(ring)
        if name == "wrap":  # start near the end of the data area so the packet wraps
            struct.pack_into("<II", ring, 0, dsize - 48, dsize - 48)
            out = OutgoingRing(ring)
        for i, p in enumerate(payloads):
            out.write(p, trans_id=i + 1)
        size_code = (dsize - 32) // 8
        seeds[name] = (bytes([size_code % 256, 16]) + struct.pack("<H", 4096) + bytes(ring[0:16])
                       + bytes([ring[64]]) + bytes(ring[CONTROL_SIZE:]))
    return seeds


# -- VMBus control messages ----------------------------------------------------------------------

def vmbus_control_seeds() -> dict[str, bytes]:
    from vmbus import protocol as p

    def conversation(messages, conn=3):
        return b"\x01\x01\x01\x01" + b"".join(bytes([len(m), conn]) + m for m in messages)

    contact = p.InitiateContact.for_version(p.SUPPORTED_VERSIONS[0]).encode()
    ranges = [p.GpaRange.whole_pages(range(0x100, 0x100 + 4))]
    gpadl = [m.encode() for m in p.split_gpadl(1, 0x100, ranges)]
    big = [m.encode() for m in p.split_gpadl(2, 0x200, [p.GpaRange.whole_pages(range(0x300, 0x300 + 40))])]
    open_ = p.OpenChannel(1, 1, 0x100, 0, 2).encode()
    return {
        "contact": conversation([contact], 1),
        "open": conversation([contact, p.RequestOffers().encode(), *gpadl, open_], 0),
        "teardown": conversation([contact, p.RequestOffers().encode(), *gpadl, open_,
                                  p.CloseChannel(1).encode(), p.GpadlTeardown(1, 0x100).encode(),
                                  p.RelidReleased(1).encode()], 0),
        "bodies": conversation([contact, p.RequestOffers().encode(), *big], 0),
        "unload": conversation([contact, p.RequestOffers().encode(), *gpadl, open_, p.Unload().encode()], 0),
    }


# -- integration services ------------------------------------------------------------------------

def ic_seeds() -> dict[str, bytes]:
    from drivers.ic import framing as f
    from drivers.ic.heartbeat import protocol as hb
    from drivers.ic.kvp import protocol as kvp
    from drivers.ic.shutdown import protocol as sd
    from drivers.ic.timesync import protocol as ts
    from drivers.ic.vss import protocol as vss

    def msg(kind, body, version=f.Version(3, 0)):
        return f.encode(f.IcHeader(kind, f.Version(3, 0), version, 0, f.TRANSACTION | f.REQUEST, 0), body)

    seeds = {
        "negotiate": msg(f.NEGOTIATE, f.negotiate_body(f.FRAMEWORK_VERSIONS, kvp.VERSIONS)),
        "heartbeat": msg(f.HEARTBEAT, hb.message(7)),
        "shutdown": msg(f.SHUTDOWN, sd.encode(sd.ShutdownRequest(reason=0, timeout_s=0, force=True, restart=False,
                                                                  hibernate=False, message="bye"))),
        "vss": msg(f.VSS, vss.message(1)),
    }
    for version in ts.VERSIONS:
        seeds[f"timesync_{version.major}"] = msg(
            f.TIMESYNC, ts.encode(ts.TimeMessage(parent_time=ts.from_unix_ns(1_700_000_000 * 10**9), flags=1,
                                                 reference_time=0 if version == ts.V4 else None), version), version)
    seeds["kvp"] = msg(f.KVP_EXCHANGE, kvp.request(kvp.KvpMessage(op=1, pool=0, key="Name", value="db")))
    return seeds


# -- storage -------------------------------------------------------------------------------------

def vstor_seeds() -> dict[str, bytes]:
    from drivers.storage import protocol as s
    from vmbus.protocol import GpaRange
    read = s.ScsiRequest.for_cdb(s.cdb_rw(False, 8, 2), data_in=1, data_transfer_length=1024)
    inquiry = s.ScsiRequest.for_cdb(s.cdb_inquiry(36), data_in=1, data_transfer_length=36)
    ranges = (GpaRange(1024, 0, (0x40,)),)
    return {
        "begin": s.VstorPacket(s.Operation.BEGIN_INITIALIZATION).encode(),
        "version": s.VstorPacket(s.Operation.QUERY_PROTOCOL_VERSION, body=s.encode_version(0x0602)).encode(),
        "properties": s.VstorPacket(s.Operation.QUERY_PROPERTIES).encode(),
        "read": s.VstorPacket(s.Operation.EXECUTE_SRB, body=read.encode()).encode(),
        "inquiry": s.VstorPacket(s.Operation.EXECUTE_SRB, body=inquiry.encode()).encode(),
        "gpa_direct": s.encode_gpa_direct(ranges) + s.VstorPacket(s.Operation.EXECUTE_SRB, body=read.encode()).encode(),
    }


# -- network -------------------------------------------------------------------------------------

def nvsp_seeds() -> dict[str, bytes]:
    from drivers.network import protocol as n
    seeds = {}
    for cls in (n.Init, n.SendNdisVersion, n.SendReceiveBuffer, n.SendSendBuffer, n.SendRndisPacket):
        fields = [1] * len(cls._fields)
        try:
            seeds[cls.__name__] = n.encode_nvsp(cls(*fields))
        except Exception:  # a message whose fields are not all integers: skip it as a seed
            continue
    seeds["complete"] = n.encode_nvsp(n.ReceiveBufferComplete(1, (n.Section(*[1] * len(n.Section._fields)),)))
    # a transfer-page payload, packed by hand (xfer_pageset_id u16, sender_owns_set u8, reserved u8,
    # range_count u32, then (byte_count u32, byte_offset u32) per range): its encoder's signature
    # follows the VSP's needs, the wire does not change
    ranges = [(64, 0), (128, 64)]
    seeds["xfer"] = (struct.pack("<HBBI", 0xCAFE, 0, 0, len(ranges)) + b"".join(struct.pack("<II", *r) for r in ranges)
                     + seeds.get("SendRndisPacket", b""))
    return seeds


def rndis_seeds() -> dict[str, bytes]:
    from drivers.network import protocol as n
    return {
        "packet": n.encode_packet(bytes(range(60))),
        "init": n.encode_rndis(n.RndisInitialize(1)),
        "query": n.encode_rndis(n.RndisQuery(2, 0x00010101, b"")),
        "set": n.encode_rndis(n.RndisSet(3, 0x0001010E, struct.pack("<I", 0xB))),
        "keepalive": n.encode_rndis(n.RndisKeepalive(4)),
        "halt": n.encode_rndis(n.RndisHalt(5)),
    }


# -- files ---------------------------------------------------------------------------------------

def vhd_seeds() -> dict[str, bytes]:
    from drivers.storage.vhd import VirtualDisk
    seeds = {}
    with tempfile.TemporaryDirectory() as d:
        fixed = os.path.join(d, "fixed.vhd")
        disk = VirtualDisk.create(fixed, 8192, "fixed", created_at=0, unique_id=uuid.UUID(int=1))
        disk.write(0, b"fixed!" * 10)
        disk.close()
        dyn = os.path.join(d, "dynamic.vhd")
        disk = VirtualDisk.create(dyn, 4 << 20, "dynamic", created_at=0, unique_id=uuid.UUID(int=2),
                                  block_size=512 * 8)
        disk.write(4096, b"dynamic!" * 64)
        disk.close()
        for name, path in (("fixed", fixed), ("dynamic", dyn)):
            with open(path, "rb") as f:
                seeds[name] = f.read()
    return seeds


def savedstate_seeds() -> dict[str, bytes]:
    from partitions.savedstate import KINDS, SavedStateWriter
    seeds = {}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "state")
        w = SavedStateWriter(path, sorted(KINDS)[0], {"vm": "web", "version": 1})
        w.section("vps", [{"rip": 0x1000, "rax": 7}])
        w.section("devices", {"storage": {"luns": [0]}, "blob": b"\x00" * 32})
        stream = w.stream("memory")
        stream.write_record({"gpa": 0, "page": b"\xAA" * 64})
        stream.close()
        w.commit()
        with open(path, "rb") as f:
            seeds["vm"] = f.read()
    return seeds


def config_seeds() -> dict[str, bytes]:
    seeds = {"default": (HERE.parent / "examples" / "default-host.toml").read_bytes()}
    seeds["small"] = b'[host]\nlogical_processors = 2\nmemory = "1GiB"\n\n[[vm]]\nname = "a"\nmemory = "64MiB"\n'
    return seeds


#: target -> seed generator; the C targets are named without a suffix (hypercall, ring).
GENERATORS = {
    "hypercall": hypercall_seeds,
    "ring": ring_seeds,
    "ring_py": ring_seeds,
    "vmbus_control": vmbus_control_seeds,
    "ic": ic_seeds,
    "vstor": vstor_seeds,
    "nvsp": nvsp_seeds,
    "rndis": rndis_seeds,
    "vhd": vhd_seeds,
    "savedstate": savedstate_seeds,
    "config": config_seeds,
}


def write_all(root: Path = CORPUS) -> dict[str, int]:
    counts = {}
    for target, generate in GENERATORS.items():
        folder = root / target
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        seeds = generate()
        for name, data in seeds.items():
            digest = hashlib.sha1(data).hexdigest()[:12]
            (folder / f"{name}-{digest}").write_bytes(data)
        counts[target] = len(seeds)
    return counts


if __name__ == "__main__":
    for target, n in write_all().items():
        print(f"{target:14} {n} seeds")
