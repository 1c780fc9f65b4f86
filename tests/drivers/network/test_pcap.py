"""Packet captures: the pcap writer and reader, and a switch capture decoded by Debian's tshark."""
import os
import shutil
import struct
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.device import ManualContext
from drivers.network import frames, pcap
from drivers.network.vswitch import VirtualSwitch, VlanConfig
from drivers.network.netstack import NetStack

SECOND = 1_000_000_000


def tshark(*args: str) -> str:
    """Run tshark; a missing tshark fails the test (never skips): the capture must decode in it."""
    path = shutil.which("tshark")
    if path is None:
        pytest.fail("tshark not found: run `sh tools/ensure-debian-packages tshark:tshark` (as root) "
                    "to install Debian's tshark", pytrace=False)
    # Under `make sanitize` the sanitizer runtimes are preloaded into Python; tshark must not inherit them.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    proc = subprocess.run([path, *args], capture_output=True, text=True, timeout=60, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"tshark {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def test_writer_output_reads_back_with_nanosecond_timestamps(tmp_path):
    path = tmp_path / "x.pcap"
    records = [(b"\x01" * 60, 0), (b"\x02" * 1514, 1_500_000_001), (b"\x03" * 64, 7 * SECOND + 999_999_999)]
    with pcap.PcapWriter(path) as writer:
        for data, when in records:
            writer.write(data, when)
    assert writer.closed and writer.records == 3
    blob = path.read_bytes()
    assert struct.unpack("=I", blob[:4])[0] == pcap.MAGIC_NS
    capture = pcap.read(path)
    assert capture.linktype == pcap.LINKTYPE_ETHERNET and capture.nanosecond
    assert [(r.data, r.time_ns, r.orig_len) for r in capture.records] == [(d, t, len(d)) for d, t in records]


def test_snaplen_cuts_records_and_keeps_the_original_length(tmp_path):
    path = tmp_path / "cut.pcap"
    with pcap.PcapWriter(path, snaplen=100) as writer:
        writer.write(b"\xaa" * 300, 5)
    (record,) = pcap.read(path).records
    assert record.data == b"\xaa" * 100 and record.orig_len == 300


def test_the_header_is_on_disk_before_any_record_and_closed_writers_refuse(tmp_path):
    path = tmp_path / "early.pcap"
    writer = pcap.PcapWriter(path)
    assert pcap.read(path).records == []          # a reader may open it at once
    writer.close()
    writer.close()
    with pytest.raises(ValueError):
        writer.write(b"x" * 60, 0)
    with pytest.raises(ValueError):
        pcap.PcapWriter(tmp_path / "bad.pcap").write(b"x", -1)


def test_read_rejects_what_is_not_a_whole_capture(tmp_path):
    path = tmp_path / "t.pcap"
    with pcap.PcapWriter(path) as writer:
        writer.write(b"\x55" * 80, 1)
    whole = path.read_bytes()
    for broken in (b"", whole[:10], b"\0" * 24, whole[:-1], whole[:24 + 8]):
        path.write_bytes(broken)
        with pytest.raises(pcap.PcapError):
            pcap.read(path)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=200), st.integers(0, 2**40)), max_size=10))
def test_any_records_round_trip(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("pcap") / "r.pcap"
    with pcap.PcapWriter(path) as writer:
        for data, when in records:
            writer.write(data, when)
    assert [(r.data, r.time_ns) for r in pcap.read(path).records] == records


def vm(switch, ctx, name, i, address, vlan, stack_vlan=None):
    mac = f"02:00:00:00:00:{i:02x}"
    port = switch.add_port(name, mac=mac, vlan=vlan)
    stack = NetStack(mac=mac, address=address, vlan=stack_vlan, transmit=port.send, clock=ctx)
    port.attach(stack.receive)
    return stack


def test_a_capture_of_pings_across_a_trunk_decodes_in_tshark(tmp_path):
    ctx = ManualContext()
    switch = VirtualSwitch("lab", "internal", now=ctx.now)
    a = vm(switch, ctx, "a", 1, "10.0.10.2/24", VlanConfig.access(10))
    # T sits on a trunk and tags its own frames with VLAN 10 (as a guest's eth0.10 would).
    vm(switch, ctx, "t", 2, "10.0.10.3/24", VlanConfig.trunk({10, 20}), stack_vlan=10)
    c = vm(switch, ctx, "c", 3, "10.0.20.2/24", VlanConfig.access(20))
    vm(switch, ctx, "d", 4, "10.0.20.3/24", VlanConfig.trunk({10, 20}), stack_vlan=20)
    path = tmp_path / "lab.pcap"
    switch.capture(path)
    ctx.advance(SECOND)
    first = a.ping("10.0.10.3", count=3)
    ctx.advance(SECOND // 2)
    second = c.ping("10.0.20.3", count=1)
    ctx.advance(5 * SECOND)
    assert first.received == 3 and second.received == 1
    assert switch.stop_capture() == 12
    a.ping("10.0.10.3")                                       # after the stop: not captured
    ctx.advance(SECOND)

    out = tshark("-r", str(path), "-T", "fields", "-E", "separator=,",
                 "-e", "frame.number", "-e", "vlan.id", "-e", "icmp.type", "-e", "arp.opcode",
                 "-e", "frame.time_epoch")
    rows = [line.split(",") for line in out.splitlines()]
    assert [int(row[0]) for row in rows] == list(range(1, 13))
    # Every frame carries its VLAN tag: VLAN 10's ping, then VLAN 20's in between.
    decoded = [(int(vlan), icmp, arp) for _, vlan, icmp, arp, _ in rows]
    assert decoded == [
        (10, "", "1"), (10, "", "2"), (10, "8", ""), (10, "0", ""),     # t=1 s: ARP, echo 1
        (20, "", "1"), (20, "", "2"), (20, "8", ""), (20, "0", ""),     # t=1.5 s: VLAN 20
        (10, "8", ""), (10, "0", ""), (10, "8", ""), (10, "0", ""),     # t=2 s, 3 s: echoes 2, 3
    ]
    times = [round(float(row[4]) * 10) for row in rows]                 # simulated seconds
    assert times == [10] * 4 + [15] * 4 + [20, 20, 30, 30]
    assert pcap.read(path).records[0].time_ns == SECOND
    # tshark, not our code, checks the IPv4 and ICMP checksums in it (1 = good).
    out = tshark("-r", str(path), "-o", "ip.check_checksum:TRUE", "-Y", "icmp", "-T", "fields",
                 "-E", "separator=,", "-e", "ip.checksum.status", "-e", "icmp.checksum.status")
    assert out.split() == ["1,1"] * 8


def test_capture_stops_cleanly_and_a_failing_disk_stops_only_the_capture(tmp_path):
    ctx = ManualContext()
    switch = VirtualSwitch("s", now=ctx.now)
    got = []
    a = switch.add_port("a", got.append, mac="02:00:00:00:00:01")
    b = switch.add_port("b", got.append, mac="02:00:00:00:00:02")
    writer = switch.capture(tmp_path / "one.pcap")
    with pytest.raises(RuntimeError):
        switch.capture(tmp_path / "two.pcap")

    def full_disk(frame, time_ns):
        raise OSError(28, "No space left on device")

    writer.write = full_disk
    broadcast = frames.build(frames.BROADCAST, frames.mac_bytes("02:00:00:00:00:01"), 0x88B5, b"x")
    assert a.send(broadcast) and got == [broadcast]
    assert isinstance(switch.capture_error, OSError) and writer.closed
    assert b.send(frames.build(frames.BROADCAST, frames.mac_bytes("02:00:00:00:00:02"), 0x88B5, b"y"))
    assert len(got) == 2
    assert switch.stop_capture() == 0
