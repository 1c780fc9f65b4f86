"""Hypercalls from Python and from C: `vp.hypercall` against an empty cffi call with the same
arguments, and a prepared batch run in one crossing.

The call is GetPartitionId from a root VP: a memory call that reads no input and writes 8 bytes
of output, so `vp.hypercall` returns a result with that output, as a guest would read it. When
a call's status, reps and output equal the VP's previous call's, vp.hypercall hands out the
previous (immutable) result again; the second figure alternates two calls so that every result
is new, and measures the cost of making it. The
baseline is hv_nop_hypercall, a C function that takes hv_hypercall's seven arguments and does
nothing, called from Python with the same arguments. Calls from Python are timed as inline
statements in one loop (timeit), so neither side pays for an extra Python function call.
"""
from __future__ import annotations

from bench.timing import Figure, Goal, rate, stmt_rate
from hypervisor import CallCode, Host, _binding, control

MIN_SECONDS = {"tiny": 0.001, "default": 0.2, "long": 1.0}
BATCH = {"tiny": 100, "default": 10_000, "long": 10_000}

GOAL_PYTHON = Goal(">=", 0.5, "ratio", "within 2x of an empty cffi call (rate >= 0.5x)")
GOAL_BATCH = Goal(">=", 20e6, "value", ">= 20 M/s")


def run(size: str = "default") -> list[Figure]:
    min_s = MIN_SECONDS[size]
    host = Host(logical_processors=4, memory="1GiB", seed=1)
    vp = host.root.vp(0)
    ctl = control(CallCode.GET_PARTITION_ID)
    result = vp.hypercall(ctl)
    if not result.ok or len(result.output) != 8:
        raise RuntimeError(f"GetPartitionId from the root: {result}")
    ns = {"nop": _binding.hv_nop_raw, "nop_hypercall": _binding.hv_nop_hypercall_raw,
          "hypercall": _binding.hv_hypercall_raw, "NULL": _binding.NULL, "h": host._h, "pid": host.root.id,
          "vp": vp, "ctl": ctl, "ig": vp.input_gpa, "og": vp.output_gpa}
    nop = stmt_rate("nop()", ns, min_seconds=min_s)
    base = stmt_rate("nop_hypercall(h, pid, 0, ctl, ig, og, NULL)", ns, min_seconds=min_s)
    python = stmt_rate("vp.hypercall(ctl)", ns, min_seconds=min_s)
    # Each result differs from the one before (output, then an error status without output), so
    # none is the previous result handed out again; two calls per statement, so its baseline
    # is two empty calls.
    ns["bad"] = 0x7777  # no such call code: HV_STATUS_INVALID_HYPERCALL_CODE, no output
    alternating = 2 * stmt_rate("vp.hypercall(ctl); vp.hypercall(bad)", ns, min_seconds=min_s)
    raw = stmt_rate("hypercall(h, pid, 0, ctl, ig, og, NULL)", ns, min_seconds=min_s)
    n = BATCH[size]
    batch = _binding.HypercallBatch([ctl] * n, [vp.input_gpa] * n, [vp.output_gpa] * n)
    if batch.issue(host._h, host.root.id, 0, stop_on_error=True) != n:
        raise RuntimeError("the batch of GetPartitionId stopped on an error")
    batched = rate(lambda: batch.issue(host._h, host.root.id, 0), n, min_seconds=min_s)
    baseline = "empty cffi call, same arguments"
    return [
        Figure("empty cffi call, no arguments", nop, "calls/s", baseline, nop / base),
        Figure(baseline, base, "calls/s", baseline, 1.0),
        Figure("vp.hypercall, GetPartitionId again (result equal to the last: reused)", python, "calls/s",
               baseline, python / base, GOAL_PYTHON),
        Figure("vp.hypercall, a new result each call (GetPartitionId / bad code)", alternating, "calls/s",
               baseline, alternating / base, GOAL_PYTHON),
        Figure("hv_hypercall, the compiled function (no output read)", raw, "calls/s", baseline, raw / base),
        Figure(f"hv_hypercall_batch, {n} calls per crossing", batched, "calls/s", baseline, batched / base,
               GOAL_BATCH),
    ]
