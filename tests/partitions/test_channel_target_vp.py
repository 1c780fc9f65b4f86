"""A channel's host->guest signals go to the VP the guest asked for: OpenChannel's target VP and
ModifyChannel move them to that VP's SIEF page and SINT 2; a VP the child lacks is refused."""
from drivers.example import DEVICE as ECHO
from drivers.registry import discover
from hypervisor import Host, Register
from hypervisor.synic import siefp_value, simp_value, sint_value
from hypervisor.testing.invariants import check_all
from partitions.vmbus_guest import GuestVmbus
from partitions.vmbus_parent import ParentVmbus
from partitions.worker import VmSpec, VmWorker
from vmbus.server import ChannelState

MS = 1_000_000


def boot(*, target_vps=None, processors=2, rounds=2, vp1=None, modify=None):
    """A child with `processors` VPs and the echo device; its workload sends 5 echoes per round
    once the previous round's replies are in, for `rounds` rounds. modify=(round, vp): after that
    many rounds the guest sends ModifyChannel(vp) and goes on once the host has answered."""
    host = Host(logical_processors=2, memory="64MiB", seed=3)
    parent = ParentVmbus(host, vp_index=1)
    child = VmWorker(host, VmSpec("guest", memory="1MiB", processors=processors)).build()
    manager = parent.attach(child, [(ECHO, {})])
    sent, at_modify = [], {}

    def answered(relid, vp):
        return manager.channel_target_vp(relid) == vp or any(
            e == "modify channel refused" for _, pid, e, _f in parent.log if pid == child.id)

    def workload(stack):
        vsc = stack.devices.get("echo")
        if vsc is None or not vsc.ready or len(vsc.replies) != len(sent) or len(sent) >= 5 * rounds:
            return
        if modify is not None and len(sent) == 5 * modify[0]:
            (relid,) = manager.relids
            if not at_modify:
                at_modify.update(stack.signals)
                stack.modify_channel(relid, modify[1])
                return
            if not answered(relid, modify[1]):
                return
        for i in range(5):
            sent.append(vsc.echo(f"packet {len(sent)}".encode()))

    stack = GuestVmbus(child, discover(), on_poll=workload, target_vps=target_vps)
    stack.at_modify = at_modify   # the signal counts when the guest sent ModifyChannel
    child.vp(0).run(stack.run)
    for vp in range(1, processors):
        child.vp(vp).run(vp1 if vp == 1 and vp1 is not None else stack.run_vp)
    host.root.resume_partition(child)
    return host, parent, child, manager, stack


def expected(n):
    return [f"packet {i}".encode() for i in range(n)]


def test_a_channel_opened_on_vp_1_is_signalled_in_vp_1s_sief_page():
    host, parent, child, manager, stack = boot(target_vps={"echo": 1}, rounds=1)
    host.run(20 * MS)
    (relid,) = manager.relids
    assert manager.channel_state(relid) is ChannelState.OPEN
    assert manager.channel_target_vp(relid) == 1
    assert stack.devices["echo"].replies == expected(5)
    # Every signal of the channel was taken from VP 1's SIEF page, none from VP 0's.
    assert stack.signals.get(1, 0) > 0 and stack.signals.get(0, 0) == 0
    check_all(host)


def test_modify_channel_moves_signals_to_vp_1_and_the_echo_goes_on():
    host, parent, child, manager, stack = boot(rounds=4, modify=(2, 1))
    host.run(30 * MS)
    (relid,) = manager.relids
    assert manager.channel_target_vp(relid) == 1
    assert stack.devices["echo"].replies == expected(20)
    # Before ModifyChannel every signal came in VP 0's SIEF page; after it, in VP 1's only.
    before = stack.at_modify
    assert before.get(0, 0) > 0 and before.get(1, 0) == 0
    assert stack.signals.get(0, 0) == before[0] and stack.signals.get(1, 0) > 0
    check_all(host)


def test_the_flag_is_set_in_vp_1s_sief_page_and_its_sint_2_raised():
    # VP 1 only turns its SynIC on and takes nothing: the channel's flag stays where it landed.
    host, parent, child, manager, stack = boot(target_vps={"echo": 1}, processors=2, rounds=1,
                                               vp1=_synic_only)
    host.run(20 * MS)
    (relid,) = manager.relids
    assert manager.channel_state(relid) is ChannelState.OPEN
    sief = {vp: int.from_bytes(child.read((stack.siefp + 2 * vp) * 4096 + 2 * 256, 256), "little")
            for vp in (0, 1)}
    assert sief == {0: 0, 1: 1 << relid}
    assert host.introspect.vp_info(child, 1)["pending_sints"] & (1 << 2)
    assert host.introspect.vp_info(child, 0)["pending_sints"] & (1 << 2) == 0


async def _synic_only(ctx):
    ctx.vp.set_registers({Register.SIMP: simp_value(4), Register.SIEFP: siefp_value(5),
                          Register.SCONTROL: 1, Register.SINT0 + 2: sint_value(0x32)})
    await ctx.sleep("1s")


def test_modify_channel_to_a_vp_the_child_lacks_is_refused_and_changes_nothing():
    host, parent, child, manager, stack = boot(rounds=3, modify=(1, 5))
    host.run(30 * MS)
    (relid,) = manager.relids
    assert manager.channel_target_vp(relid) == 0
    assert any(e == "modify channel refused" for _, pid, e, _f in parent.log if pid == child.id)
    assert stack.devices["echo"].replies == expected(15)
    assert stack.signals.get(0, 0) > stack.at_modify[0] and stack.signals.get(1, 0) == 0
    assert parent.children[child.id].vp_evt == {}
    check_all(host)
