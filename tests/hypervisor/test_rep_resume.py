"""INV-ATOMIC for rep calls: a rep call that the hypervisor continues (a small rep budget per
invocation, resumed from the reps it reports) ends in the same state as one uninterrupted call."""
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor import Host, Register
from hypervisor.abi import MAP_RWX

ops = st.lists(st.one_of(
    st.tuples(st.just("deposit"), st.integers(1, 40)),
    st.tuples(st.just("map"), st.integers(0, 600), st.integers(1, 300)),
    st.tuples(st.just("unmap"), st.integers(1, 200)),
    st.tuples(st.just("withdraw"), st.integers(1, 30)),
    st.tuples(st.just("regs"), st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=16)),
), max_size=8)


def run(ops_list, reps_per_call):
    host = Host(logical_processors=1, memory="8MiB", seed=3, reps_per_call=reps_per_call)
    root = host.root
    child = root.create_partition()
    root.deposit_memory(child, host.root_memory.allocate(8))
    root.initialize_partition(child)
    root.create_vp(child, 0)
    mapped = []  # (gpa, count) runs, in order
    for op in ops_list:
        if op[0] == "deposit":
            root.deposit_memory(child, host.root_memory.allocate(op[1]))
        elif op[0] == "map":
            gpa, n = op[1], op[2]
            if any(gpa < g + c and g < gpa + n for g, c in mapped):
                continue
            free, _ = root.get_memory_balance(child)
            if free < 2:  # up to two new leaf tables for at most 300 pages
                root.deposit_memory(child, host.root_memory.allocate(2 - free))
            root.map_gpa_pages(child, gpa, host.root_memory.allocate(n), MAP_RWX)
            mapped.append((gpa, n))
        elif op[0] == "unmap" and mapped:
            gpa, n = mapped.pop(0)
            k = min(n, op[1])
            root.unmap_gpa_pages(child, gpa, k)
            if k < n:
                mapped.insert(0, (gpa + k, n - k))
        elif op[0] == "withdraw":
            free, _ = root.get_memory_balance(child)
            if free:
                host.root_memory.release(root.withdraw_memory(child, min(free, op[1])))
        elif op[0] == "regs":
            names = [Register.RAX + i for i in range(len(op[1]))]
            root.set_vp_registers(child, 0, dict(zip(names, op[1])))
            assert root.get_vp_registers(child, 0, names) == op[1]
    return host.introspect.digest(), host.introspect.counters(root)


@settings(max_examples=40, deadline=None)
@given(ops, st.integers(1, 7))
def test_continued_rep_calls_end_in_the_same_state(ops_list, budget):
    digest_small, counters_small = run(ops_list, budget)
    digest_whole, counters_whole = run(ops_list, 4095)
    assert digest_small == digest_whole
    # The same elements were completed, in more invocations.
    assert counters_small["reps"] == counters_whole["reps"]
    assert counters_small["hypercalls"] >= counters_whole["hypercalls"]


def test_reps_completed_is_absolute_and_resumable():
    host = Host(logical_processors=1, memory="4MiB", seed=1, reps_per_call=3)
    root = host.root
    child = root.create_partition()
    root.deposit_memory(child, host.root_memory.allocate(4))
    root.initialize_partition(child)
    import struct

    from hypervisor import CallCode, HvStatus, control
    pages = host.root_memory.allocate(7)
    block = struct.pack("<QQII", child.id, 100, int(MAP_RWX), 0) + b"".join(struct.pack("<Q", p) for p in pages)
    seen = []
    start = 0
    while start < 7:
        r = root.vp(0).hypercall(control(CallCode.MAP_GPA_PAGES, rep_count=7, rep_start=start), block)
        assert r.status == HvStatus.SUCCESS
        seen.append(r.reps_completed)
        start = r.reps_completed
    assert seen == [3, 6, 7]
    assert sorted(host.introspect.reach(child)) == list(range(100, 107))
