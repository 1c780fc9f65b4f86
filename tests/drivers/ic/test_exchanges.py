"""The exchange engine every IC VSP shares, as a state machine: random requests, a guest that
hangs and recovers, garbage from the guest, time passing. Invariants: one exchange in flight at
most, every exchange completes, and what the guest acknowledged is exactly what it holds."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ic import HEARTBEAT, KVP, TIMESYNC
from drivers.ic import framing as f
from drivers.ic.kvp import protocol as p
from drivers.ic.vsp import Negotiation
from vmbus.channel import connected_pair

from tests.drivers.ic.harness import MS, S, connect

keys = st.sampled_from(["a", "b", "c"])
actions = st.lists(st.one_of(
    st.tuples(st.just("set"), keys, st.text(max_size=5).filter(lambda s: "\0" not in s)),
    st.tuples(st.just("get"), keys),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("hang")),
    st.tuples(st.just("resume")),
    st.tuples(st.just("advance"), st.integers(0, 3000)),
    st.tuples(st.just("garbage"), st.binary(max_size=64), st.integers(0, 40)),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(actions)
def test_the_exchange_engine_state_machine(script):
    pair = connect(KVP, host={"timeout": "1s"}, guest={"pools": {}})
    vsp, vsc = pair.vsp, pair.vsc
    exchanges, acknowledged = [], {}

    def done(ex):
        if ex.ok and ex.request.op == p.SET:
            acknowledged[ex.request.key] = ex.request.value
        elif ex.ok and ex.request.op == p.DELETE:
            acknowledged.pop(ex.request.key)

    for action, *args in script:
        if action in ("set", "get", "delete"):
            exchanges.append(getattr(vsp, action)(p.POOL_EXTERNAL, *args, on_done=done))
        elif action == "hang":
            vsc.hang()
        elif action == "resume":
            vsc.resume()
        elif action == "advance":
            pair.ctx.advance(args[0] * MS)
        else:
            pair.guest_end.send(args[0], trans_id=args[1])
        pending = [ex for ex in exchanges if not ex.done]
        assert len(pending) == len(vsp._queue) + (vsp._inflight is not None and vsp._inflight in pending)
        assert vsp._inflight is None or not vsp._inflight.done
    vsc.resume()
    pair.ctx.advance(len(exchanges) * S + S)
    assert all(ex.done for ex in exchanges)
    assert acknowledged == vsc.pools[p.POOL_EXTERNAL]
    assert vsp.negotiation is Negotiation.DONE


def _reopen(device, pair, advance=0):
    """Save both sides (as plain data), let time pass, restore them over a fresh channel."""
    host_state, guest_state = json.loads(json.dumps(pair.vsp.save())), json.loads(json.dumps(pair.vsc.save()))
    pair.vsp.on_close()
    pair.vsc.on_close()
    pair.ctx.advance(advance)
    host_end, guest_end = connected_pair(device.ring_pages)
    vsc = device.vsc.restore(guest_end, guest_state, pair.vsc.config, pair.ctx)
    guest_end.on_signal = lambda: vsc.on_packets(guest_end.receive())
    sides = {}
    host_end.on_signal = lambda: "vsp" in sides and sides["vsp"].on_packets(host_end.receive())
    sides["vsp"] = vsp = device.vsp.restore(host_end, host_state, pair.vsp.config, pair.ctx)
    vsp.on_packets(host_end.receive())   # what the guest answered while the VSP was being restored
    return vsp, vsc


def test_kvp_items_and_versions_survive_save_and_restore():
    pair = connect(KVP)
    pair.vsp.set(p.POOL_EXTERNAL, "k", "v")
    vsp, vsc = _reopen(KVP, pair)
    assert vsp.negotiation is Negotiation.DONE and vsp.version == f.Version(4, 0) == vsc.version
    assert vsp.get(p.POOL_EXTERNAL, "k").reply == "v"


def test_a_restored_guest_clock_stood_still_until_the_restored_host_resyncs_it():
    pair = connect(TIMESYNC)
    pair.ctx.advance(3 * S)
    state = pair.vsc.save()
    pair.ctx.advance(7 * S)                                       # saved for 7 s: the clock did not move
    alone = TIMESYNC.vsc.restore(connected_pair()[1], state, {}, pair.ctx)
    assert alone.clock_ns() == state["clock_ns"] == pair.vsp.host_time_ns() - 7 * S
    assert alone.error_ns() is None                               # it knows nothing until a message
    vsp, vsc = _reopen(TIMESYNC, pair, advance=7 * S)             # the restored VSP sends SYNC
    assert vsc.steps == 1 and vsc.error_ns() == 0 and vsc.clock_ns() == vsp.host_time_ns()


def test_a_restored_heartbeat_goes_on_with_its_sequence():
    pair = connect(HEARTBEAT)
    pair.ctx.advance(4 * S)
    vsp, vsc = _reopen(HEARTBEAT, pair)
    assert vsp.sequence == 4 and vsc.beats == 1 and vsp.status.value == "ok"


def test_a_vsp_saved_before_negotiation_negotiates_again():
    pair = connect(KVP, guest={"answer": False})
    assert pair.vsp.negotiation is Negotiation.PENDING
    pair.vsc.config["answer"] = True                             # the restored guest answers
    vsp, vsc = _reopen(KVP, pair)
    assert vsp.negotiation is Negotiation.DONE and vsc.version == f.Version(4, 0)
