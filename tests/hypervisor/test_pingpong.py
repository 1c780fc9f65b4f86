"""Two partitions talking through ports in simulated time: messages only along a connection to a
port, SINT interrupts waking halted VPs, synthetic timers expiring as TimerExpired messages."""
from hypervisor import Host, Register
from hypervisor.synic import MessageType, PortType, simp_value, sint_value, stimer_config_value
from partitions.worker import VmSpec, VmWorker

US, MS = 1_000, 1_000_000
SINT = 2
SIMP_GPFN = 8  # the message page each guest chooses


def child(host, name):
    return VmWorker(host, VmSpec(name, memory="128KiB")).build()


def enable_synic(ctx):
    """What a guest kernel does at boot: SIM page, SynIC on, SINT 2 unmasked."""
    ctx.vp.set_registers({Register.SIMP: simp_value(SIMP_GPFN), Register.SCONTROL: 1,
                          Register.SINT0 + SINT: sint_value(0x32)})


def wire(host, a, b):
    """Ports in each partition, and a connection to each from the other."""
    root = host.root
    for p in (a, b):  # each partition's port and connection cost a page of its pool each
        root.deposit_memory(p, host.root_memory.allocate(2))
    for owner, peer, port in ((a, b, 0x100), (b, a, 0x200)):
        root.create_port(owner, port, port_type=PortType.MESSAGE, target_sint=SINT, target_vp=0,
                         connection_partition=peer)
    root.connect_port(a, 20, b, 0x200)   # a posts on 20 -> b's port
    root.connect_port(b, 10, a, 0x100)   # b posts on 10 -> a's port


def ping_pong(rounds=25, work="50us"):
    host = Host(logical_processors=2, memory="32MiB", seed=4)
    a, b = child(host, "a"), child(host, "b")
    root = host.root
    for p in (a, b):
        root.deposit_memory(p, host.root_memory.allocate(1))
    wire(host, a, b)
    log = []

    async def pinger(ctx):
        enable_synic(ctx)
        for i in range(rounds):
            ctx.partition.post_message(20, 1, f"ping {i}".encode())
            msg = await ctx.receive(SINT, SIMP_GPFN)
            log.append((ctx.now, msg.origin, msg.payload.decode()))
            await ctx.compute(work)

    async def ponger(ctx):
        enable_synic(ctx)
        while True:
            msg = await ctx.receive(SINT, SIMP_GPFN)
            await ctx.compute(work)
            ctx.partition.post_message(10, 1, msg.payload.replace(b"ping", b"pong"))

    b.vp(0).run(ponger)
    a.vp(0).run(pinger)
    root.resume_partition(b)
    root.resume_partition(a)
    host.run("100ms")
    return host, log


def test_ping_pong_between_two_partitions():
    host, log = ping_pong()
    assert [text for _, _, text in log] == [f"pong {i}" for i in range(25)]
    assert all(origin == 0x100 for _, origin, _ in log)  # the port it arrived through
    times = [t for t, _, _ in log]
    assert times == sorted(times) and times[0] > 50 * US
    # Each round trip costs the same simulated time: the simulation has no noise.
    gaps = {b - a for a, b in zip(times, times[1:])}
    assert len(gaps) == 1


def test_ping_pong_is_deterministic():
    h1, l1 = ping_pong()
    h2, l2 = ping_pong()
    assert l1 == l2 and h1.trace_digest() == h2.trace_digest()
    h3, _ = ping_pong(work="60us")
    assert h3.trace_digest() != h1.trace_digest()


def test_periodic_synthetic_timer_wakes_a_halted_guest():
    host = Host(logical_processors=1, memory="16MiB", seed=1)
    p = child(host, "t")
    got = []

    async def guest(ctx):
        enable_synic(ctx)
        ctx.vp.set_registers({Register.STIMER0_CONFIG: stimer_config_value(sint=SINT, periodic=True, enable=False)})
        ctx.vp.set_registers({Register.STIMER0_COUNT: 10 * MS // 100})
        ctx.vp.set_registers({Register.STIMER0_CONFIG: stimer_config_value(sint=SINT, periodic=True)})
        while True:
            msg = await ctx.receive(SINT, SIMP_GPFN)
            assert msg.message_type == MessageType.TIMER_EXPIRED and msg.origin == 0
            got.append((ctx.now, msg.timer().expiration_time * 100))

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    host.run("55ms")
    assert [exp for _, exp in got] == [10 * MS, 20 * MS, 30 * MS, 40 * MS, 50 * MS]
    # Woken by the interrupt, it sees each message 3 us after expiry (1 us for the expiry, 1 us
    # delivery, 1 us to take the interrupt); the first wake also pays for its boot-time
    # hypercalls (1 us each).
    assert [now - exp for now, exp in got[1:]] == [3 * US] * 4
    assert got[0][0] - got[0][1] == 7 * US
    assert host.introspect.run_time_ns(p) < 100 * US  # halted between ticks


def test_tick_guests_take_their_timers_in_c():
    host = Host(logical_processors=1, memory="16MiB", seed=1)
    p = child(host, "t")
    host.root.set_vp_registers(p, 0, {Register.SIMP: simp_value(SIMP_GPFN), Register.SCONTROL: 1,
                                      Register.SINT0 + SINT: sint_value(0x32),
                                      Register.STIMER0_CONFIG: stimer_config_value(sint=SINT, periodic=True,
                                                                                   enable=False)})
    host.root.set_vp_registers(p, 0, {Register.STIMER0_COUNT: MS // 100})
    host.root.set_vp_registers(p, 0, {Register.STIMER0_CONFIG: stimer_config_value(sint=SINT, periodic=True)})
    p.vp(0).run_builtin("tick", work="20us")
    host.root.resume_partition(p)
    host.run("1s")
    # Ticks at 1, 2, ... 999 ms each cost 20 us of work, 1 us for the expiry, 1 us for the message
    # delivery and 1 us to take the interrupt; the one at exactly 1 s has only just begun.
    assert host.introspect.run_time_ns(p) == 999 * 23 * US
