"""Post-copy over links of any latency and bandwidth (partitions/datacenter/migration.py): the
target's demand fetches never hold the push's acks, so the push goes on at the link's pace while
the guest faults, and every move completes with QEMU's counter check holding and the same seed
giving the same digest."""
from hypothesis import given, settings, strategies as st

from partitions.config import loads
from partitions.datacenter import Datacenter
from partitions.datacenter.migration import WINDOW, window
from tests.datacenter.test_migration import WRITE_HEAVY, counters, qemu_check, two_hosts

SMALL = 'name = "counter"\nmemory = "32MiB"\nworkload = { kind = "memory-counter", pages = 64, interval = "1ms" }'


def handed_over(node) -> list:
    """Every message `node` hands to its links from now on, in order (wraps its outbox)."""
    out, take = [], node.take_outbox

    def taking():
        got = take()
        out.extend(got)
        return got
    node.take_outbox = taking
    return out


def test_the_push_goes_on_while_the_guest_faults_over_a_200us_link(tmp_path):
    """A burst of 2048 faults is 0.8 s of round trips at 200 us: the requests leave one after
    another, and the acks of the push pass them (before, a request was handed to the link dated
    when it would leave, and every ack queued behind it: the push stopped after 190 pages)."""
    dc = Datacenter(loads(two_hosts(WRITE_HEAVY, link='bandwidth = "10Gbit/s"\nlatency = "200us"')),
                    seed=1, workdir=tmp_path)
    dc.run("300ms")
    sent = handed_over(dc.hosts["b"])
    record = dc.move("counter", to="b", kind="post-copy")
    dc.run("400ms")
    push = record.rounds[0]
    assert push.pages == 64 * 256 and push.end_ns is not None and push.end_ns < 400_000_000
    assert [m.sent_ns for m in sent] == sorted(m.sent_ns for m in sent)   # handed over as they leave
    while record.outcome == "running":
        dc.run(dc.now + 50_000_000)
    assert record.outcome == "completed" and record.fetches > 0
    dc.close()


def test_the_window_covers_the_links_bandwidth_delay_product():
    assert window(10 * 10**9, 50_000, 256) == WINDOW                 # 125 KB in flight: 1 MiB messages
    assert window(40 * 10**9, 2_000_000, 32) == 20_000_000 // (32 * 4096) + 2   # 20 MB: 153 messages of 128 KiB


def _post_copy(workdir, latency_ns: int, gbits: int, seed: int):
    link = f'bandwidth = "{gbits}Gbit/s"\nlatency = "{latency_ns}ns"'
    dc = Datacenter(loads(two_hosts(SMALL, link=link)), seed=seed, workdir=workdir)
    dc.run("100ms")
    sent = handed_over(dc.hosts["b"])
    record = dc.move("counter", to="b", kind="post-copy")
    while record.outcome == "running" and dc.now < 10_000_000_000:
        dc.run(dc.now + 10_000_000)
    target = dc.hosts["b"].managed.vms.get("counter")
    values = counters(target, target.workload.region) if target is not None else None
    out = record.summary(), dc.trace_digest(), values, [m.sent_ns for m in sent]
    dc.close()
    return out


@settings(max_examples=8, deadline=None)
@given(latency=st.integers(10_000, 2_000_000), gbits=st.integers(1, 40), seed=st.integers(0, 3))
def test_post_copy_completes_over_any_link(tmp_path_factory, latency, gbits, seed):
    summary, digest, values, sent = _post_copy(tmp_path_factory.mktemp("x"), latency, gbits, seed)
    assert summary["outcome"] == "completed", summary["reason"]
    assert summary["pages_sent"] + summary["fetches"] >= 8192 and summary["fetches"] > 0
    assert qemu_check(values), values
    assert sent == sorted(sent)
    again = _post_copy(tmp_path_factory.mktemp("y"), latency, gbits, seed)
    assert (again[0], again[1]) == (summary, digest)
