"""Synthetic networking: frames per wall-clock second from one VM to another through netvsc ->
netvsp -> virtual switch -> netvsp -> netvsc on a simulated host, for 64- and 1500-byte frames, as
a ratio to the VMBus channel bench's channel API (one packet per call) with payloads of the same
sizes, measured in the same run; each both through the network data plane in C
(drivers/network/netplane.py, native/netplane.c) and through the Python path it stands in for, and
the one against the other (frames per wall second and per CPU second of the process).

Each network frame costs, besides the two channels' packets and their completions, the RNDIS
encoding, the copies into and out of the shared buffers, the switch's forwarding, both guests'
and the parent's simulated scheduling, and the receiving guest stack's parse; the ratio says what
all of that costs over a bare channel crossing.
"""
from __future__ import annotations

import time

from bench.timing import Goal

from bench.channel import _channel
from bench.timing import Figure, rate as loop_rate
from drivers.network import DEVICE as NETWORK
from drivers.network import frames
from drivers.network.vswitch import VirtualSwitch
from drivers.registry import discover
from hypervisor import Host
from partitions.worker import VmSpec, VmWorker
from partitions.vmbus_guest import GuestVmbus
from partitions.vmbus_parent import ParentVmbus

MS = 1_000_000
SIZES = (64, 1500)
RUN_NS = {"tiny": 2 * MS, "default": 20 * MS, "long": 100 * MS}  # simulated time per measurement
MIN_SECONDS = {"tiny": 0.001, "default": 0.1, "long": 0.5}
BENCH_TYPE = 0x88B5                      # a local experimental EtherType: the receiver only counts it
WINDOW = 64                              # frames in flight from sender to receiver


def _vm(host, parent, switch, registry, index, workload=None):
    child = VmWorker(host, VmSpec(f"bench{index}", memory="1MiB")).build()
    mac = f"00:15:5d:00:0b:{index:02x}"
    manager = parent.attach(child, [(NETWORK, {"switch": switch, "mac": mac, "vlan": 10})])
    (relid,) = manager.relids

    def poll(stack):
        vsc = stack.devices.get("network")
        if workload is not None and vsc is not None and vsc.ready:
            workload(vsc)

    stack = GuestVmbus(child, registry, ring_pages=(16, 48), on_poll=poll, configs={
        "network": {"address": f"10.0.11.{index}/24", "relid": relid, "buffer_pages": range(64, 160)}})
    child.vp(0).run(stack.run)
    host.root.resume_partition(child)
    return stack, mac


def network_rate(size: int, run_ns: int = 20 * MS, data_plane: bool = True) -> tuple[float, int, int, float]:
    """(frames per wall second, frames delivered, simulated ns, CPU seconds) for one VM streaming `size`-byte
    frames to another with at most WINDOW frames sent and not yet received (an end-to-end window,
    as a transport would keep: Ethernet itself has no flow control, and frames offered faster than
    the receiver completes them are dropped, which would measure the drops)."""
    host = Host(logical_processors=4, memory="64MiB", seed=1)
    parent = ParentVmbus(host, vp_index=1)
    switch = VirtualSwitch("bench", now=lambda: host.now, data_plane=data_plane)
    registry = discover()
    announced = []

    def announce(vsc):
        # Once, as a NIC does at link-up (a gratuitous ARP): the switch learns the receiver's MAC,
        # so the stream is switched to its port, as real traffic (which has ARP) is, not flooded.
        if not announced and vsc.transmit(frames.build(frames.BROADCAST, vsc.mac, BENCH_TYPE, bytes(50))):
            announced.append(True)

    receiver, receiver_mac = _vm(host, parent, switch, registry, 2, announce)
    frame = None
    sent = 0

    def sender(vsc):
        nonlocal frame, sent
        if frame is None:
            frame = frames.build(frames.mac_bytes(receiver_mac), vsc.mac, BENCH_TYPE, bytes(size - 14))
        received = receiver.devices["network"].stats["rx_frames"]
        while sent - received < WINDOW and vsc.transmit(frame):
            sent += 1

    _vm(host, parent, switch, registry, 1, sender)
    host.run(2 * MS)   # boot: both adapters up
    rx = receiver.devices["network"]
    before, start_ns = rx.stats["rx_frames"], host.now
    start, cpu = time.perf_counter(), time.process_time()
    host.run_for(run_ns)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    delivered = rx.stats["rx_frames"] - before
    return delivered / elapsed, delivered, host.now - start_ns, cpu


def channel_rate(size: int, count: int = 1000, min_seconds: float = 0.1) -> float:
    """Packets per wall second through one channel (bench.channel's channel API, one packet per
    call) with `size`-byte payloads."""
    host = Host(logical_processors=2, memory="64MiB", seed=1)
    child = VmWorker(host, VmSpec("bench", memory="8MiB")).build()
    guest, host_end = _channel(host, child, 1, ring_pages=1 + -(-(count * (size + 32)) // 4096))
    payload = bytes(size)

    def one_per_call():
        for _ in range(count):
            guest.send(payload)
            host_end.receive()

    return loop_rate(one_per_call, count, min_seconds=min_seconds)


def run(size: str = "default") -> list[Figure]:
    figures = []
    for frame in SIZES:
        base = channel_rate(frame, 10 if size == "tiny" else 1000, MIN_SECONDS[size])
        py, py_delivered, py_ns, py_cpu = network_rate(frame, RUN_NS[size], data_plane=False)
        r, delivered, sim_ns, cpu = network_rate(frame, RUN_NS[size], data_plane=True)
        baseline = f"channel API, 1 packet per call, {frame} B"
        python = f"VM to VM, Python path: netvsc -> vswitch -> netvsc, {frame} B frames"
        figures.append(Figure(baseline, base, "packets/s", baseline, 1.0))
        figures.append(Figure(python, py, "frames/s", baseline, py / base,
                              extra={"frames": py_delivered, "sim_frames_per_s": py_delivered * 1e9 / py_ns,
                                     "frames_per_cpu_s": py_delivered / py_cpu}))
        figures.append(Figure(f"VM to VM, C data plane: netvsc -> vswitch -> netvsc, {frame} B frames", r,
                              "frames/s", baseline, r / base,
                              extra={"frames": delivered, "sim_frames_per_s": delivered * 1e9 / sim_ns,
                                     "frames_per_cpu_s": delivered / cpu}))
        figures.append(Figure(f"C data plane against the Python path, {frame} B frames, per CPU second",
                              delivered / cpu, "frames/CPU s", python, (delivered / cpu) / (py_delivered / py_cpu),
                              goal=PLANE_GOAL, note=f"same frames: {delivered == py_delivered}"))
    return figures


# Issue 12 (Build 2) asks for the data planes in C without a figure for the network; this is the
# least it must do: whole VM-to-VM frames (both guests' Python stacks included) cost less CPU.
PLANE_GOAL = Goal(">=", 1.0, "ratio", "data plane in C: less CPU per frame than the Python path")
