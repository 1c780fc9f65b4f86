"""VMBus end to end on a simulated host: a child contacts the parent, receives offers, opens the
echo device over rings in its own pages granted to the parent, exchanges packets, and closes."""
from drivers.example import DEVICE as ECHO
from drivers.registry import discover
from hypervisor import Host
from hypervisor.testing.invariants import check_all
from partitions.worker import VmSpec, VmWorker
from partitions.vmbus_guest import GuestVmbus
from partitions.vmbus_parent import ParentVmbus
from vmbus.ring import RingError
from vmbus.server import ChannelState

MS = 1_000_000


def boot(echoes=10):
    host = Host(logical_processors=2, memory="64MiB", seed=2)
    parent = ParentVmbus(host, vp_index=1)
    child = VmWorker(host, VmSpec("guest", memory="1MiB")).build()
    manager = parent.attach(child, [(ECHO, {})])

    sent = []

    def workload(stack):
        vsc = stack.devices.get("echo")
        if vsc is not None and vsc.ready and not sent:
            for i in range(echoes):
                sent.append(vsc.echo(f"packet {i}".encode()))

    stack = GuestVmbus(child, discover(), on_poll=workload)
    child.vp(0).run(stack.run)
    host.root.resume_partition(child)
    return host, parent, child, manager, stack


def test_contact_offers_open_and_echo():
    host, parent, child, manager, stack = boot()
    host.run(20 * MS)
    vsc = stack.devices["echo"]
    assert vsc.version is not None
    assert vsc.replies == [f"packet {i}".encode() for i in range(10)]
    (relid,) = manager.relids
    assert manager.channel_state(relid) is ChannelState.OPEN
    assert parent.vsp(child, relid).echoed == 10
    # The rings live in the child's pages, granted to the parent for as long as the channel is open.
    assert len(host.grants.ids(child)) == 1
    check_all(host)
    # Serving VMBus cost the parent CPU time; the guest's own work cost the child's.
    assert host.introspect.run_time_ns(host.root) > 0
    assert host.introspect.run_time_ns(child) > 0


def test_close_tears_the_ring_gpadl_down():
    host, parent, child, manager, stack = boot()
    host.run(10 * MS)
    (relid,) = manager.relids

    # The guest kernel closes the channel (between runs, as if its VP 0 decided so).
    stack.client.close_channel(relid)
    host.run(20 * MS)
    assert manager.channel_state(relid) is ChannelState.OFFERED
    assert host.grants.ids(child) == []
    assert "echo" not in stack.devices
    check_all(host)


def test_same_seed_same_trace():
    a = boot()
    a[0].run(15 * MS)
    b = boot()
    b[0].run(15 * MS)
    assert a[0].trace_digest() == b[0].trace_digest()


def test_a_hostile_ring_breaks_only_its_own_channel():
    """Two children; one corrupts its upstream ring's write index. Its channel is rescinded;
    the other child's echoes go on."""
    host = Host(logical_processors=2, memory="64MiB", seed=2)
    parent = ParentVmbus(host, vp_index=1)
    stacks = []
    for name in ("good", "evil"):
        child = VmWorker(host, VmSpec(name, memory="1MiB")).build()
        parent.attach(child, [(ECHO, {})])
        counter = {"n": 0}

        def workload(stack, counter=counter):
            vsc = stack.devices.get("echo")
            if vsc is not None and vsc.ready and len(vsc.outstanding) == 0 and counter["n"] < 100_000:
                counter["n"] += 1
                try:
                    vsc.echo(b"x" * 100)
                except RingError:
                    pass  # the evil guest broke its own ring too; it does not care

        stack = GuestVmbus(child, discover(), on_poll=workload)
        child.vp(0).run(stack.run)
        host.root.resume_partition(child)
        stacks.append((child, stack))
    host.run(5 * MS)
    (good, good_stack), (evil, evil_stack) = stacks
    assert good_stack.devices["echo"].replies and evil_stack.devices["echo"].replies
    # The evil guest writes a write_index past its ring's data area, then signals.
    (relid,) = evil_stack.channels
    import struct
    from hypervisor.grants import view
    mem = view(evil, relid)
    struct.pack_into("<I", mem, 0, 0x7FFFFFF8)
    evil.signal_event(evil_stack.client.channels[relid].offer.connection_id)
    before = len(good_stack.devices["echo"].replies)
    host.run(30 * MS)
    assert parent.broken(evil, relid) is not None and "ring" in parent.broken(evil, relid)
    assert "echo" not in evil_stack.devices            # rescinded in the guest too
    assert len(good_stack.devices["echo"].replies) > before  # the other child is unaffected
    assert host.grants.ids(evil) == []                # its ring GPADL went with the channel
    check_all(host)


def test_rescind_during_traffic_fails_outstanding_requests_cleanly():
    host, parent, child, manager, stack = boot(echoes=0)
    host.run(10 * MS)
    vsc = stack.devices["echo"]
    (relid,) = manager.relids
    ids = [vsc.echo(f"late {i}".encode()) for i in range(5)]   # in flight...
    manager.rescind(relid)                                      # ...when the host takes the device away
    host.run(20 * MS)
    assert [t for t, why in vsc.failed] == ids
    assert all(why == "channel closed" for _, why in vsc.failed)
    assert vsc.outstanding == {}
    assert "echo" not in stack.devices and relid not in stack.channels
    assert host.grants.ids(child) == []                        # nothing of the channel remains
    assert relid not in manager.relids                          # the guest released the relid
    check_all(host)


# ---- a flooding child costs only itself -------------------------------------------------------
US = 1_000
THINK = 20 * US   # the measured child's application: one echo, then 20 us of other work, again


def _echo_under(flood: str | None) -> tuple[int, float, object]:
    """Two children on a 4-LP host for 25 ms: "good" sends one 64-byte echo, waits for the
    reply and 20 us more, and again; "flood" floods as told: None (idle), "packets" (refills its
    echo ring whenever it can) or "messages" (garbage control messages, as fast as its posts go
    through). Returns the good child's replies after 5 ms, their mean latency in simulated ns,
    and the flooder's partition."""
    from hypervisor.status import HvError
    from vmbus.ring import RingFull

    host = Host(logical_processors=4, memory="64MiB", seed=2)
    parent = ParentVmbus(host, vp_index=1)
    good = {"sent_at": 0, "armed": False, "seen": 0, "latencies": []}

    def good_poll(stack):
        vsc = stack.devices.get("echo")
        if vsc is None or not vsc.ready:
            return
        if len(vsc.replies) > good["seen"]:
            good["seen"] = len(vsc.replies)
            if host.now >= 5 * MS:
                good["latencies"].append(host.now - good["sent_at"])
        if not vsc.outstanding and not good["armed"]:
            good["armed"] = True

            def send():
                good["armed"] = False
                good["sent_at"] = host.now
                vsc.echo(b"g" * 64)
            stack.context.call_later(THINK, send)

    def flood_poll(stack):
        vsc = stack.devices.get("echo")
        if flood == "packets" and vsc is not None and vsc.ready:
            for _ in range(1000):
                try:
                    vsc.echo(b"f" * 64)
                except RingFull:
                    break

    flooder = None
    for name, poll in (("good", good_poll), ("flood", flood_poll)):
        child = VmWorker(host, VmSpec(name, memory="1MiB")).build()
        parent.attach(child, [(ECHO, {})])
        if name == "flood" and flood == "messages":
            async def garbage(ctx, child=child):
                while True:
                    for _ in range(16):
                        try:
                            child.post_message(4, 1, bytes([0xEE]) * 40)   # VMBus's message connection
                        except HvError:
                            break   # its port's buffers are all in the queue
                    await ctx.compute(US)
            child.vp(0).run(garbage)
        else:
            child.vp(0).run(GuestVmbus(child, discover(), on_poll=poll).run)
        host.root.resume_partition(child)
        flooder = child if name == "flood" else flooder
    host.run(25 * MS)
    lat = good["latencies"]
    return len(lat), sum(lat) / len(lat), (parent, flooder)


def test_a_child_flooding_its_ring_costs_the_others_neither_throughput_nor_latency():
    """The service reads at most 64 packets of a channel per pass, in turn, and spends a pass's
    time in 4 us slices, serving channels signalled meanwhile: the flooder waits for itself."""
    quiet_n, quiet_latency, _ = _echo_under(None)
    n, latency, (parent, flooder) = _echo_under("packets")
    assert n >= 0.9 * quiet_n
    assert latency < 2 * quiet_latency                     # before: ~45x (one full ring drained)
    assert parent.traffic(flooder)["packets_in"] > 5_000   # the flooder was served too
    assert parent.broken(flooder, 1) is None


def test_a_child_posting_garbage_messages_costs_the_others_neither_throughput_nor_latency():
    """Each child's control messages are taken at a budgeted rate (a burst of 64, then one per
    16 us); beyond it they wait in the core's queue, where its ports' 16 buffers bound them."""
    quiet_n, quiet_latency, _ = _echo_under(None)
    n, latency, (parent, flooder) = _echo_under("messages")
    assert n >= 0.9 * quiet_n
    assert latency < 2 * quiet_latency                     # before: throughput / 2.2, latency x7
    assert 1_000 < parent.traffic(flooder)["messages_in"] < 25 * MS // 16_000 + 64 + 32
