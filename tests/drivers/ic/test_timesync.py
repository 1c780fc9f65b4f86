"""The time-sync IC: SYNC sets the guest clock, drift accumulates without samples and stays
bounded with them; slew vs step; the v3 layout."""
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ic import TIMESYNC
from drivers.ic import framing as f
from drivers.ic.timesync import protocol as p

from tests.drivers.ic.harness import MS, S, connect

US = 1_000


def test_sync_at_open_sets_the_guest_clock_to_the_host_clock():
    pair = connect(TIMESYNC, host={"epoch_ns": 5 * S}, guest={"start_ns": 0})
    pair.ctx.advance(0)
    assert pair.vsp.host_time_ns() == 5 * S
    assert pair.vsc.clock_ns() == 5 * S and pair.vsc.error_ns() == 0 and pair.vsc.steps == 1


def test_the_default_epoch_is_fixed_not_the_wall_clock():
    pair = connect(TIMESYNC)
    pair.ctx.advance(3 * S)
    assert pair.vsp.host_time_ns() == p.DEFAULT_EPOCH_NS + 3 * S


def test_drift_accumulates_without_samples():
    pair = connect(TIMESYNC, host={"sample_period": 0}, guest={"drift_ppm": 100})
    pair.ctx.advance(60 * S)
    assert pair.vsc.error_ns() == 60 * S * 100 // 1_000_000 == 6 * MS
    pair.vsp.resync()
    assert pair.vsc.error_ns() == 0


def test_samples_bound_the_error_by_drift_times_period_and_the_clock_never_goes_back():
    pair = connect(TIMESYNC, guest={"drift_ppm": -150})
    worst, last = 0, pair.vsc.clock_ns()
    for _ in range(6000):                                 # 60 s in 10 ms steps
        pair.ctx.advance(10 * MS)
        worst = max(worst, abs(pair.vsc.error_ns()))
        assert pair.vsc.clock_ns() > last
        last = pair.vsc.clock_ns()
    assert 700 * US < worst <= 5 * S * 150 // 1_000_000 + 1   # 750 us: drift x period
    assert pair.vsc.slews == 12 and pair.vsc.steps == 1


def test_a_large_offset_on_a_sample_is_stepped_not_slewed():
    pair = connect(TIMESYNC, guest={"drift_ppm": 40_000})  # 4 %: 200 ms off after 5 s
    pair.ctx.advance(5 * S)
    assert pair.vsc.steps == 2 and pair.vsc.slews == 0 and pair.vsc.error_ns() == 0


def test_a_small_offset_is_slewed_out_over_the_window():
    pair = connect(TIMESYNC, guest={"drift_ppm": 1000, "slew_window": "2s"})   # 5 ms off after 5 s
    pair.ctx.advance(5 * S)
    assert pair.vsc.slews == 1 and pair.vsc.error_ns() == 5 * MS    # fast by 5 ms
    pair.ctx.advance(1 * S)
    assert pair.vsc.error_ns() == 2_500_000 + 1 * MS       # half slewed out, plus 1 ms of new drift
    pair.ctx.advance(1 * S)
    assert pair.vsc.error_ns() == 2 * MS


def test_the_v3_layout_when_the_host_offers_no_v4():
    pair = connect(TIMESYNC, host={"versions": ["3.0", "1.0"]}, guest={"drift_ppm": 10})
    assert pair.vsc.version == f.Version(3, 0)
    pair.ctx.advance(20 * S)
    assert abs(pair.vsc.error_ns()) <= 50 * US and pair.vsc.slews == 4


def test_message_layouts():
    m = p.TimeMessage(p.from_unix_ns(10**18), p.SAMPLE, 77, stratum=2)
    v4 = p.encode(m, f.Version(4, 0))
    assert len(v4) == 22 and v4[16:19] == bytes([p.SAMPLE, 0, 2])   # Linux's ictimesync_ref_data
    assert p.parse(v4, f.Version(4, 0)) == m and p.to_unix_ns(m.parent_time) == 10**18
    v3 = p.encode(m, f.Version(3, 0))
    assert len(v3) == 25 and v3[24] == p.SAMPLE                      # Linux's ictimesync_data
    assert p.parse(v3, f.Version(3, 0)) == p.TimeMessage(m.parent_time, p.SAMPLE)
    assert p.WLTIMEDELTA == 116444736000000000


@settings(max_examples=100, deadline=None)
@given(drift=st.integers(-50_000_000, 50_000_000), steps=st.lists(st.integers(1, 3 * S), max_size=30),
       period=st.sampled_from(["1s", "5s", "7s"]))
def test_the_guest_clock_never_runs_backwards_between_steps(drift, steps, period):  # drift in ppb
    """Slews keep the clock monotonic; only a step (an offset >= the threshold) may set it back."""
    pair = connect(TIMESYNC, host={"sample_period": period}, guest={"drift_ppm": drift / 1000})
    last, stepped = pair.vsc.clock_ns(), pair.vsc.steps
    for ns in steps:
        pair.ctx.advance(ns)
        if pair.vsc.steps == stepped:
            assert pair.vsc.clock_ns() >= last
        last, stepped = pair.vsc.clock_ns(), pair.vsc.steps
    assert abs(pair.vsc.error_ns()) <= 128 * MS + pair.vsp.sample_period * abs(drift) // 10**9 + 1


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=32), version=st.sampled_from([f.Version(4, 0), f.Version(3, 0), f.Version(1, 0)]))
def test_the_guests_read_is_parse_without_the_message(body, version):
    """read() (the guest's path for every sample) takes what parse() takes, refuses what it
    refuses with the same words, and gives its parent time, flags and reference time."""
    try:
        m = p.parse(body, version)
    except f.IcError as exc:
        try:
            p.read(body, version)
        except f.IcError as again:
            assert str(again) == str(exc)
            return
        raise AssertionError(f"read took what parse refused: {exc}")
    assert p.read(body, version) == (m.parent_time, m.flags, m.reference_time)


@given(host_ns=st.integers(0, 2**62), reference=st.integers(0, 2**63), flags=st.sampled_from([p.SYNC, p.SAMPLE]),
       stratum=st.integers(0, 255), version=st.sampled_from([f.Version(4, 0), f.Version(3, 0)]))
def test_the_hosts_encode_now_is_encode_of_the_message(host_ns, reference, flags, stratum, version):
    m = p.TimeMessage(p.from_unix_ns(host_ns), flags, reference, stratum=stratum)
    assert p.encode_now(host_ns, reference, flags, stratum, version) == p.encode(m, version)
