"""The binding: the only module that touches the compiled core's `ffi` and `lib`.

Every function here is named after the C call it wraps, checks its Python arguments, and turns
the core's error codes into exceptions. The rest of hvsim imports from here, never from
`hypervisor._hvcore`.
"""
from __future__ import annotations

import functools as _functools
import os
import struct as _struct
import weakref as _weakref

# ABI version this Python package was written against; the compiled core reports its own.
ABI_VERSION = 1

if os.environ.get("HVSIM_SANITIZE") == "1":
    from hypervisor import _hvcore_asan as _core  # built by `make sanitize`
else:
    try:
        from hypervisor import _hvcore as _core
    except ImportError as exc:  # pragma: no cover - exercised only on a broken checkout
        raise ImportError(
            "hvsim's compiled core (hypervisor._hvcore) is missing or does not load "
            f"({exc}); build it with `make core` (or `pip install -e .`)"
        ) from exc

ffi = _core.ffi
lib = _core.lib

if lib.hv_core_abi_version() != ABI_VERSION:
    raise ImportError(
        f"hvsim's compiled core has ABI version {lib.hv_core_abi_version()}, but this Python "
        f"package needs {ABI_VERSION}: the build is stale; rebuild it with `make core`"
    )

# --- core: host, hypercalls, introspection ------------------------------------------------


def constant(name: str) -> int:
    """An ABI constant of the compiled core (call codes, privilege bits, register names...)."""
    return int(getattr(lib, name))


def hv_status_table() -> list[tuple[int, str, str]]:
    """(code, name, message) for every status in the core's one status table."""
    code, name, msg = ffi.new("uint16_t *"), ffi.new("const char **"), ffi.new("const char **")
    rows = []
    for i in range(lib.hv_status_count()):
        lib.hv_status_at(i, code, name, msg)
        rows.append((int(code[0]), ffi.string(name[0]).decode(), ffi.string(msg[0]).decode()))
    return rows


def hv_call_name(code: int) -> str | None:
    name = lib.hv_call_name(code & 0xFFFF)
    return None if name == ffi.NULL else ffi.string(name).decode()


@_functools.lru_cache(maxsize=None)
def hv_call_shape(code: int) -> dict | None:
    """The dispatch table's view of a call code: block sizes, rep-ness, privilege (the table
    is fixed at build time, so the answer is cached; treat it as read-only)."""
    out = ffi.new("uint32_t[4]")
    rep, fast_ok, priv = ffi.new("int *"), ffi.new("int *"), ffi.new("uint64_t *")
    if lib.hv_call_shape(code & 0xFFFF, out, out + 1, out + 2, out + 3, rep, fast_ok, priv) != 0:
        return None
    return {"header_size": out[0], "in_elem_size": out[1], "out_size": out[2], "out_elem_size": out[3],
            "rep": bool(rep[0]), "fast_ok": bool(fast_ok[0]), "privilege": int(priv[0])}


def hv_host_create(memory_bytes: int, logical_processors: int, smt: int, seed: int,
                   root_vps: int, reps_per_call: int, scheduler: int = 0, costs: dict | None = None,
                   grant_limits: dict | None = None):
    """Boot a host; the handle frees itself when garbage-collected. `costs` maps hv_costs
    fields (ns) to values; missing or zero ones take the core's defaults. `grant_limits` maps
    hv_host_config's grant_* fields to values (missing ones: the core's defaults)."""
    cfg = ffi.new("struct hv_host_config *")
    for name, value in (grant_limits or {}).items():
        setattr(cfg, name, value)
    cfg.scheduler = scheduler
    for name, value in (costs or {}).items():
        setattr(cfg.costs, name, value)
    cfg.memory_bytes = memory_bytes
    cfg.logical_processors = logical_processors
    cfg.smt = smt
    cfg.seed = seed & 0xFFFFFFFFFFFFFFFF
    cfg.root_vps = root_vps
    cfg.reps_per_call = reps_per_call
    h = lib.hv_host_create(cfg)
    if h == ffi.NULL:
        raise MemoryError(f"the core could not boot a host of {memory_bytes} bytes "
                          f"and {logical_processors} logical processors")
    return ffi.gc(h, lib.hv_host_destroy)


def hv_hypercall(h, partition_id: int, vp_index: int, control: int, in_arg: int, out_arg: int,
                 xmm: bytes | None = None) -> int:
    """Execute the hypercall instruction on a VP; returns the raw 64-bit TLFS result value."""
    xp = ffi.NULL
    if xmm is not None:
        xp = ffi.new("uint64_t[12]")
        ffi.memmove(xp, xmm.ljust(96, b"\0")[:96], 96)
    return int(lib.hv_hypercall(h, partition_id, vp_index, control & 0xFFFFFFFFFFFFFFFF,
                                in_arg & 0xFFFFFFFFFFFFFFFF, out_arg & 0xFFFFFFFFFFFFFFFF, xp))


def hv_partition_read(h, partition_id: int, gpa: int, length: int) -> bytes | None:
    buf = ffi.new("uint8_t[]", max(length, 1))
    if lib.hv_partition_read(h, partition_id, gpa & 0xFFFFFFFFFFFFFFFF, buf, length) != 0:
        return None
    return bytes(ffi.buffer(buf, length))


def hv_partition_write(h, partition_id: int, gpa: int, data: bytes) -> bool:
    return lib.hv_partition_write(h, partition_id, gpa & 0xFFFFFFFFFFFFFFFF,
                                  ffi.from_buffer(data), len(data)) == 0


def hv_partition_overlay_gpa(h, partition_id: int) -> int | None:
    """The GPA of the partition's hypercall page while it is enabled, else None."""
    gpa = lib.hv_partition_overlay_gpa(h, partition_id)
    return None if gpa < 0 else gpa


def hv_check_set_vp_registers(h, caller_id: int, block: bytes, count: int) -> int:
    if len(block) != 16 + 32 * count:
        raise ValueError(f"SetVpRegisters block of {len(block)} bytes for {count} elements")
    return int(lib.hv_check_set_vp_registers(h, caller_id, ffi.from_buffer(block), count))


def hv_host_totals(h) -> dict:
    t = ffi.new("struct hv_host_totals *")
    lib.hv_host_totals(h, t)
    return {"pages": t.pages, "hv_pages": t.hv_pages, "free_pages": t.free_pages,
            "partition_pages": t.partition_pages, "partitions": t.partitions}


def hv_host_partitions(h) -> list[int]:
    n = lib.hv_host_partitions(h, ffi.NULL, 0)
    ids = ffi.new("uint64_t[]", max(n, 1))
    n = lib.hv_host_partitions(h, ids, n)
    return [int(ids[i]) for i in range(n)]


_INFO_FIELDS = ("id", "slot", "parent_id", "state", "privileges", "cpu_reserve", "cpu_cap",
                "cpu_weight", "pages_owned", "pool_free", "pool_used", "gpa_mapped", "vp_mask",
                "hypercalls", "hypercalls_failed", "reps", "run_time_ns", "started", "messages_dropped")


def hv_partition_info(h, partition_id: int) -> dict | None:
    info = ffi.new("struct hv_partition_info *")
    if lib.hv_partition_info(h, partition_id, info) != 0:
        return None
    return {f: int(getattr(info, f)) for f in _INFO_FIELDS}


def hv_partitions_run_time(h, partition_ids: list[int]) -> list[int | None]:
    """Each partition's run_time_ns (as hv_partition_info has it), None for an id that names no
    partition: one crossing for the lot."""
    n = len(partition_ids)
    if n == 0:
        return []
    out = ffi.new("uint64_t[]", n)
    lib.hv_partitions_run_time(h, ffi.new("uint64_t[]", partition_ids), n, out)
    return [None if t == 0xFFFFFFFFFFFFFFFF else t for t in ffi.unpack(out, n)]


def hv_page_owners(h, first: int, count: int) -> memoryview:
    """Owner codes of `count` SPA pages from `first`, as a memoryview of uint32."""
    buf = bytearray(4 * count)
    n = lib.hv_page_owners(h, first, ffi.from_buffer("uint32_t[]", buf), count)
    return memoryview(buf)[: 4 * n].cast("I")


def hv_pool_pages(h, partition_id: int) -> list[int]:
    n = lib.hv_pool_pages(h, partition_id, ffi.NULL, 0)
    out = ffi.new("uint64_t[]", max(n, 1))
    n = lib.hv_pool_pages(h, partition_id, out, n)
    return [int(out[i]) for i in range(n)]


def hv_partition_reach(h, partition_id: int) -> list[tuple[int, int, int]]:
    """(gpa_page, spa_pfn, rights) for every page the partition can reach."""
    n = lib.hv_partition_reach(h, partition_id, ffi.NULL, ffi.NULL, ffi.NULL, 0)
    gpas, pfns = ffi.new("uint64_t[]", max(n, 1)), ffi.new("uint64_t[]", max(n, 1))
    rights = ffi.new("uint32_t[]", max(n, 1))
    n = lib.hv_partition_reach(h, partition_id, gpas, pfns, rights, n)
    return [(int(gpas[i]), int(pfns[i]), int(rights[i])) for i in range(n)]

def hv_partition_reach_columns(h, partition_id: int, room: int) -> tuple[list[int], list[int], list[int]]:
    """The same as three lists: GPA pages, SPA frames, rights. The arrays are copied whole
    through the buffer protocol (element by element, cffi took ~0.2 ms per thousand pages, and
    the isolation invariants read every partition's reach after every step), and the map is
    walked once when the reach fits in `room` entries (the core reports the whole count whatever
    room it was given; a second walk gets the rest)."""
    n = 0
    while True:
        room = max(n, room, 1)
        gpas, pfns, rights = ffi.new("uint64_t[]", room), ffi.new("uint64_t[]", room), ffi.new("uint32_t[]", room)
        n = lib.hv_partition_reach(h, partition_id, gpas, pfns, rights, room)
        if n <= room:
            break
    return (memoryview(ffi.buffer(gpas, 8 * n)).cast("Q").tolist(),
            memoryview(ffi.buffer(pfns, 8 * n)).cast("Q").tolist(),
            memoryview(ffi.buffer(rights, 4 * n)).cast("I").tolist())


def hv_state_digest(h, include_memory: bool) -> bytes:
    out = ffi.new("uint8_t[16]")
    lib.hv_state_digest(h, 1 if include_memory else 0, out)
    return bytes(ffi.buffer(out, 16))


class HypercallBatch:
    """Hypercalls prepared once and issued from one VP in one crossing (hv_hypercall_batch)."""

    def __init__(self, controls: list[int], in_args: list[int], out_args: list[int]):
        n = len(controls)
        if not (len(in_args) == len(out_args) == n) or n == 0:
            raise ValueError("a batch needs as many controls, in_args and out_args, at least one")
        self.count = n
        self._controls = ffi.new("uint64_t[]", controls)
        self._ins = ffi.new("uint64_t[]", in_args)
        self._outs = ffi.new("uint64_t[]", out_args)
        self._results = ffi.new("uint64_t[]", n)

    def issue(self, h, partition_id: int, vp_index: int, stop_on_error: bool = False) -> int:
        """Issue them all; returns how many were issued. Results: `result(i)`."""
        return int(lib.hv_hypercall_batch(h, partition_id, vp_index, self.count, self._controls, self._ins,
                                          self._outs, self._results, 1 if stop_on_error else 0))

    def result(self, i: int) -> int:
        return int(self._results[i])


def hv_call_frame(h, partition_id: int, vp_index: int):
    """A VP's hypercall frame (struct hv_call_frame) and a buffer over its output block; the
    frame keeps the raw host pointer, so its owner must keep the host alive (a VP does)."""
    frame = ffi.new("struct hv_call_frame *")
    frame.h = h
    frame.partition_id = partition_id
    frame.vp_index = vp_index
    frame.last = 0xFFFFFFFFFFFFFFFF  # no previous result
    return frame, ffi.buffer(frame.out)


# hv_hypercall_frame(frame, control) and hv_hypercall_frame_at(frame, control, in_gpa, out_gpa)
# are VirtualProcessor.hypercall's hot path, exported as the compiled functions themselves: a
# Python wrapper would double the cost of the crossing. Callers pass 64-bit unsigned ints (cffi
# raises OverflowError otherwise) and a frame from hv_call_frame (TypeError otherwise).
hv_hypercall_frame = lib.hv_hypercall_frame
hv_hypercall_frame_at = lib.hv_hypercall_frame_at
FRAME_OUT_SHIFT = lib.HV_FRAME_OUT_SHIFT
FRAME_OUT_UNREAD = lib.HV_FRAME_OUT_UNREAD
FRAME_SAME = lib.HV_FRAME_SAME


def hv_nop() -> None:
    lib.hv_nop()


# The benchmarks' baselines (bench/hypercalls.py, bench/channel.py), as the compiled functions
# themselves so that a call costs what a call of the core costs.
hv_nop_raw = lib.hv_nop
hv_nop_hypercall_raw = lib.hv_nop_hypercall
hv_hypercall_raw = lib.hv_hypercall
NULL = ffi.NULL


def bench_memcpy(size: int, count: int):
    """A function that copies `count` blocks of `size` bytes in C (hv_bench_memcpy), one crossing
    per call: the benchmarks' memcpy baseline."""
    src = ffi.new("uint8_t[]", bytes(i % 251 for i in range(size * count)))
    dst = ffi.new("uint8_t[]", max(1, size * count))
    fn = lib.hv_bench_memcpy
    return lambda: fn(dst, src, size, count)


def bench_ring_batch(payloads, data_size: int):
    """A function that moves `payloads` through a ring of `data_size` bytes of data with the
    batch path's C calls alone (hv_ring_write_gathered, then hv_ring_read_batch into memory of
    its own), one crossing each, no Python per packet: the benchmarks' floor of that path."""
    ring = ffi.new("uint8_t[]", lib.HV_RING_CONTROL_SIZE + data_size)
    ring[64] = 1  # feature_bits: pending_send_sz offered (the rest of a fresh ring is zeros)
    blob = b"".join(payloads)
    lengths = ffi.new("uint32_t[]", [len(p) for p in payloads])
    out = ffi.new("uint8_t[]", data_size)
    result = ffi.new("struct hv_ring_result *")
    count, size = len(payloads), lib.HV_RING_CONTROL_SIZE + data_size
    write, read = lib.hv_ring_write_gathered, lib.hv_ring_read_batch

    def round_():
        write(ring, size, blob, len(blob), lengths, count, 6, 0, NULL, result)
        if read(ring, size, out, data_size, count, result) != count:
            raise RuntimeError("the ring's C calls moved fewer packets than were written")

    return round_


def core_library_path() -> str:
    """The file of the compiled core this process loaded (the ASan build under HVSIM_SANITIZE=1)."""
    return _core.__file__


# --- grants (VMBus GPADLs in the core) --------------------------------------------------------


def hv_grant_create(h, child_id: int, grant_id: int, gpa_pages: list[int]) -> int:
    """Returns the HV_STATUS of the grant's creation."""
    pages = ffi.new("uint64_t[]", list(gpa_pages) or [0])
    return int(lib.hv_grant_create(h, child_id, grant_id & 0xFFFFFFFF, pages, len(gpa_pages)))


def hv_grant_revoke(h, child_id: int, grant_id: int) -> int:
    return int(lib.hv_grant_revoke(h, child_id, grant_id & 0xFFFFFFFF))


def _exported(m, base, n) -> memoryview | None:
    """A memoryview over an exported mapping that holds the mapping while it (or anything made
    from it) lives: cffi's buffer keeps its pointer alive, and the pointer's destructor gives the
    export back, which unmaps the range once its grant or view is gone too."""
    if m == ffi.NULL:
        return None
    ptr = ffi.gc(ffi.cast("uint8_t *", base[0]), lambda _p, m=m: lib.hv_mapping_release(m))
    return memoryview(ffi.buffer(ptr, n[0] * 4096))


def hv_grant_view(h, child_id: int, grant_id: int) -> memoryview | None:
    """A writable memoryview of the grant's pages, mapped contiguously (None if no such grant).
    After the grant is revoked the view reads zeros and writes go nowhere; its address range is
    given back when the last memoryview made from it goes."""
    base, n = ffi.new("uint8_t **"), ffi.new("uint32_t *")
    return _exported(lib.hv_grant_export(h, child_id, grant_id & 0xFFFFFFFF, base, n), base, n)


def hv_grant_pages(h, child_id: int, grant_id: int) -> list[int]:
    n = lib.hv_grant_pages(h, child_id, grant_id & 0xFFFFFFFF, ffi.NULL, 0)
    out = ffi.new("uint64_t[]", max(n, 1))
    n = lib.hv_grant_pages(h, child_id, grant_id & 0xFFFFFFFF, out, n)
    return [int(out[i]) for i in range(n)]


def hv_grant_ids(h, child_id: int) -> list[int]:
    n = lib.hv_grant_ids(h, child_id, ffi.NULL, 0)
    out = ffi.new("uint32_t[]", max(n, 1))
    n = lib.hv_grant_ids(h, child_id, out, n)
    return [int(out[i]) for i in range(n)]


def hv_view_create(h, partition_id: int, view_id: int, gpa_pages: list[int]) -> int:
    pages = ffi.new("uint64_t[]", list(gpa_pages) or [0])
    return int(lib.hv_view_create(h, partition_id, view_id & 0xFFFFFFFF, pages, len(gpa_pages)))


def hv_view_release(h, partition_id: int, view_id: int) -> int:
    return int(lib.hv_view_release(h, partition_id, view_id & 0xFFFFFFFF))


def hv_view_ptr(h, partition_id: int, view_id: int) -> memoryview | None:
    """An own view as a memoryview (None if there is none); held like hv_grant_view's."""
    base, n = ffi.new("uint8_t **"), ffi.new("uint32_t *")
    return _exported(lib.hv_view_export(h, partition_id, view_id & 0xFFFFFFFF, base, n), base, n)


# --- host visibility (a child's pages shown to its parent: visibility.c) ------------------------


def hv_visible_view_create(h, child_id: int, view_id: int, gpa_pages: list[int], access: int) -> tuple[int, int]:
    """(HV_STATUS, the GPA page that was not visible enough when the status is ACCESS_DENIED)."""
    pages = ffi.new("uint64_t[]", [int(p) for p in gpa_pages] or [0])
    bad = ffi.new("uint64_t *")
    st = int(lib.hv_visible_view_create(h, child_id, view_id & 0xFFFFFFFF, pages, len(gpa_pages), access, bad))
    return st, int(bad[0])


def hv_visible_view_release(h, child_id: int, view_id: int) -> int:
    return int(lib.hv_visible_view_release(h, child_id, view_id & 0xFFFFFFFF))


def hv_visible_view(h, child_id: int, view_id: int) -> memoryview | None:
    """A memoryview of a host-visible view (read-only unless the view is read-write), held like
    hv_grant_view's; None if there is no such view."""
    base, n, access = ffi.new("uint8_t **"), ffi.new("uint32_t *"), ffi.new("uint32_t *")
    view = _exported(lib.hv_visible_view_export(h, child_id, view_id & 0xFFFFFFFF, base, n, access), base, n)
    if view is not None and access[0] != lib.HV_HOST_VISIBILITY_READ_WRITE:
        view = view.toreadonly()
    return view


def hv_visible_view_ids(h, child_id: int) -> list[int]:
    n = lib.hv_visible_view_ids(h, child_id, ffi.NULL, 0)
    out = ffi.new("uint32_t[]", max(n, 1))
    n = lib.hv_visible_view_ids(h, child_id, out, n)
    return [int(out[i]) for i in range(n)]


def hv_visible_copy(h, child_id: int, gpa_pages, offset: int, buf, write: bool) -> tuple[int, int]:
    """Copy between buf (bytes to store, or a writable buffer to load into) and the child's
    pages from byte `offset` of the list; (HV_STATUS, the GPA page refused on ACCESS_DENIED)."""
    pages = ffi.new("uint64_t[]", [int(p) for p in gpa_pages] or [0])
    bad = ffi.new("uint64_t *")
    data = ffi.from_buffer(buf, require_writable=not write)
    st = int(lib.hv_visible_copy(h, child_id, pages, len(gpa_pages), offset, data, len(data), int(write), bad))
    return st, int(bad[0])


def hv_visible_check(h, child_id: int, gpa_pages, access: int) -> int | None:
    """The first of the child's GPA pages not host-visible with `access`, or None if all are."""
    pages = ffi.new("uint64_t[]", [int(p) for p in gpa_pages] or [0])
    bad = ffi.new("uint64_t *")
    r = lib.hv_visible_check(h, child_id, pages, len(gpa_pages), access, bad)
    if r < 0:
        raise LookupError(f"no child partition {child_id}")
    return int(bad[0]) if r else None


def hv_host_visible_pages(h, child_id: int) -> dict[int, int]:
    """{GPA page: HV_HOST_VISIBILITY_*} of every page the child shows its parent."""
    n = lib.hv_host_visible_pages(h, child_id, ffi.NULL, ffi.NULL, 0)
    gpas, vis = ffi.new("uint64_t[]", max(n, 1)), ffi.new("uint8_t[]", max(n, 1))
    n = lib.hv_host_visible_pages(h, child_id, gpas, vis, n)
    return dict(zip(memoryview(ffi.buffer(gpas, 8 * n)).cast("Q").tolist(), bytes(ffi.buffer(vis, n))))


#: enum hv_grant_limit -> the name hvsim uses for the limit.
GRANT_LIMITS = {1: "grant_pages_per_child", 2: "grant_mappings_per_child", 3: "grant_mappings_per_host",
                4: "process"}


def hv_grant_last_refusal(h) -> dict | None:
    """Why the last grant or own view was refused with NO_RESOURCES: limit (a GRANT_LIMITS
    name), partition_id, have, want, max and, for "process", the errno of mmap."""
    r = ffi.new("struct hv_grant_refusal *")
    if lib.hv_grant_last_refusal(h, r) != 0:
        return None
    return {"limit": GRANT_LIMITS.get(r.limit, str(r.limit)), "partition_id": r.partition_id,
            "have": r.have, "want": r.want, "max": r.max, "error": r.error}


def hv_grant_usage(h, partition_id: int) -> dict | None:
    u = ffi.new("struct hv_grant_usage *")
    if lib.hv_grant_usage(h, partition_id, u) != 0:
        return None
    return {"pages": u.pages, "pages_limit": u.pages_limit, "mappings": u.mappings,
            "mappings_limit": u.mappings_limit, "host_mappings": u.host_mappings,
            "host_mappings_limit": u.host_mappings_limit}


def hv_teardown_visits(h) -> int:
    return int(lib.hv_teardown_visits(h))


# --- simulated time and guests ----------------------------------------------------------------


def hv_costs_fields() -> tuple[str, ...]:
    return ("hypercall_ns", "parent_exit_ns", "message_ns", "event_ns", "interrupt_ns",
            "time_slice_ns", "window_ns")


def hv_run(h, until: int, max_records: int = 512) -> list[tuple[int, int, int, int]]:
    """Run the C loop to `until` ns or until Python guests must step: [(partition id, vp index,
    reason, pending sints)], empty when `until` was reached."""
    out = ffi.new("struct hv_resume[]", max_records)
    n = lib.hv_run(h, until, out, max_records)
    return [(int(out[i].partition_id), int(out[i].vp_index), int(out[i].reason), int(out[i].pending_sints))
            for i in range(n)]


class BatchLoop:
    """The positional crossing (hv_run_batch) of the guest runner's hot path: it hands the C loop
    one (op, arg) pair per record of the batch it got last, in that batch's order, and gets back
    one word per record of the next (guest handle << 32 | work-left bit 31 | reason << 16 |
    SINTs): no per-step tuples, and the guest found by its handle, not by (partition, VP)."""

    MAX = 1024

    def __init__(self, h):
        self._h = h
        self._steps = ffi.new("uint64_t[]", 2 * self.MAX)
        self._batch = ffi.new("struct hv_resume[]", self.MAX)
        self._words = ffi.new("uint64_t[]", self.MAX)
        self._words_view = memoryview(ffi.buffer(self._words)).cast("B").cast("Q")
        self._refused = ffi.new("int32_t *")

    def run(self, until: int, steps: list[int]) -> list[int]:
        """Apply `steps` (op, arg, op, arg... for the last batch's records in order; op 0: none),
        run to `until` or the next batch; returns its words (empty: `until` was reached).
        Raises AssertionError naming the first refused step."""
        n = len(steps)
        if n:
            self._steps[0:n] = steps
        k = lib.hv_run_batch(self._h, self._steps, n >> 1, self._refused, until, self._batch, self._words, self.MAX)
        if self._refused[0] >= 0:
            i = self._refused[0]
            raise AssertionError(f"the core refused guest step {steps[2 * i:2 * i + 2]} (record {i} of the batch)")
        return self._words_view[:k].tolist()

    def apply(self, steps: list[int]) -> int:
        """Apply `steps` as run would, without running; the index of the first refused one or -1."""
        n = len(steps)
        if n:
            self._steps[0:n] = steps
        lib.hv_apply_batch(self._h, self._steps, n >> 1, self._refused, self._batch)
        return self._refused[0]

    def record(self, i: int) -> tuple[int, int, int, int, int]:
        """Record i of the batch: (partition id, vp index, reason, pending sints, work left ns)."""
        r = self._batch[i]
        return (int(r.partition_id), int(r.vp_index), int(r.reason), int(r.pending_sints), int(r.work_left_ns))


def hv_vp_step(h, partition_id: int, vp_index: int, op: int, arg: int) -> bool:
    return lib.hv_vp_step(h, partition_id, vp_index, op, arg) == 0


def hv_vp_set_guest(h, partition_id: int, vp_index: int, kind: int, a: int = 0) -> bool:
    return lib.hv_vp_set_guest(h, partition_id, vp_index, kind, a) == 0


def hv_vp_device_interrupt(h, partition_id: int, vp_index: int) -> bool:
    return lib.hv_vp_device_interrupt(h, partition_id, vp_index) == 0


def hv_now(h) -> int:
    return int(lib.hv_now(h))


def hv_now_reader(h) -> _functools.partial:
    """hv_now bound to one host: what hot paths call to read the time (no wrapper on the way)."""
    return _functools.partial(lib.hv_now, h)


def hv_trace_digest(h) -> bytes:
    out = ffi.new("uint8_t[16]")
    lib.hv_trace_digest(h, out)
    return bytes(ffi.buffer(out, 16))


def hv_vp_info(h, partition_id: int, vp_index: int) -> dict | None:
    info = ffi.new("struct hv_vp_info *")
    if lib.hv_vp_info(h, partition_id, vp_index, info) != 0:
        return None
    return {f: int(getattr(info, f)) for f in ("exec", "lp", "guest_kind", "pending_sints", "run_time_ns",
                                                "work_ns", "debt_ns", "window_used_ns")}


def hv_run_stats(h) -> dict:
    st = ffi.new("struct hv_run_stats *")
    lib.hv_run_stats(h, st)
    return {"now": st.now, "events_processed": st.events_processed, "events_pending": st.events_pending,
            "runnable": st.runnable}


def hv_lp_busy(h, lp: int) -> int:
    return int(lib.hv_lp_busy(h, lp))


def hv_lp_running(h, lp: int) -> tuple[int, int] | None:
    pid = ffi.new("uint64_t *")
    vp = lib.hv_lp_running(h, lp, pid)
    return None if vp < 0 else (int(pid[0]), int(vp))


# --- synic and ports ---------------------------------------------------------------------------
# Introspection of the SynIC and of ports and connections (native/api/synic.h). Each raises
# LookupError when the partition, VP, SINT, port or connection it names does not exist.


def _found(rc: int, what: str) -> int:
    if rc < 0:
        raise LookupError(f"no such {what}")
    return int(rc)


def hv_synic_queue_length(h, partition_id: int, vp_index: int, sint: int) -> int:
    """Messages the hypervisor holds for SINT `sint` of a VP (not yet in the SIM slot)."""
    return _found(lib.hv_synic_queue_length(h, partition_id, vp_index, sint), "VP or SINT")


def hv_synic_interrupt_count(h, partition_id: int, vp_index: int, sint: int) -> int:
    """Interrupts the SynIC has raised on SINT `sint` of a VP since the VP was created."""
    return _found(lib.hv_synic_interrupt_count(h, partition_id, vp_index, sint), "VP or SINT")


def hv_synic_timer_state(h, partition_id: int, vp_index: int, timer: int) -> dict:
    """Synthetic timer `timer` of a VP: due_ns (when its event fires), armed, pending (its
    TimerExpired message waits in a queue)."""
    due, armed, pending = ffi.new("uint64_t *"), ffi.new("int32_t *"), ffi.new("int32_t *")
    _found(lib.hv_synic_timer_state(h, partition_id, vp_index, timer, due, armed, pending), "VP or timer")
    return {"due_ns": int(due[0]), "armed": bool(armed[0]), "pending": bool(pending[0])}


def hv_port_undelivered(h, partition_id: int, port_id: int) -> int:
    """Buffers of a port holding messages not yet copied into a SIM slot (0..16)."""
    return _found(lib.hv_port_undelivered(h, partition_id, port_id & 0xFFFFFFFF), "port")


def hv_port_counts(h, partition_id: int) -> tuple[int, int]:
    """(ports, connections) the partition owns."""
    ports, conns = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    _found(lib.hv_port_counts(h, partition_id, ports, conns), "partition")
    return int(ports[0]), int(conns[0])


def hv_connection_target(h, partition_id: int, connection_id: int) -> tuple[int, int] | None:
    """(port partition id, port id) a partition's connection leads to; None if it dangles."""
    pid, port = ffi.new("uint64_t *"), ffi.new("uint32_t *")
    rc = _found(lib.hv_connection_target(h, partition_id, connection_id & 0xFFFFFFFF, pid, port), "connection")
    return (int(pid[0]), int(port[0])) if rc else None


def hv_sched_log_enable(h, capacity: int) -> None:
    if lib.hv_sched_log_enable(h, capacity) != 0:
        raise MemoryError(f"no room for {capacity} scheduling records")


def hv_sched_log_take(h, max_records: int = 65536) -> tuple[list[tuple[int, int, int, int, int]], int]:
    """Drain scheduling records: ([(time_ns, partition_id, lp, vp_index, kind)], dropped so far)."""
    out = ffi.new("struct hv_sched_record[]", max_records)
    dropped = ffi.new("uint64_t *")
    n = lib.hv_sched_log_take(h, out, max_records, dropped)
    rec = _struct.Struct("<QQIIII")
    return [r[:5] for r in rec.iter_unpack(ffi.buffer(out, n * rec.size))], int(dropped[0])


# --- ring primitives (vmbus fast path) -------------------------------------------------------
# Batched packet copies into and out of a VMBus ring (native/ring.c; vmbus/ring.py is the only
# caller and the pure-Python reference). A ring argument is any writable buffer holding a whole
# ring: the 4096-byte control page and the data area.

import array as _array  # noqa: E402 - this section is appended to the binding; see its header
import mmap as _mmap  # noqa: E402
from contextlib import ExitStack as _ExitStack  # noqa: E402
from contextlib import nullcontext as _nullcontext  # noqa: E402
from sys import getrefcount as _getrefcount  # noqa: E402
from typing import NamedTuple as _NamedTuple  # noqa: E402


class RingBatch(_NamedTuple):
    """What one hv_ring_*_batch call did."""

    count: int  # packets written / copied out
    signal: bool  # the peer must be signalled
    index: int  # the index left published (write_index / read_index)
    out_used: int  # read: bytes of `out` holding packet records
    stop: int  # read: why it stopped, lib.HV_RING_STOP_* (EMPTY, MAX, OUT_FULL, CORRUPT)


class RingCorruptError(ValueError):
    """The ring's shared state is invalid. `kind` is "write_index", "read_index", "descriptor"
    or "truncated", the names vmbus.ring.RingCorrupt uses for the same checks."""

    def __init__(self, code: int, kind: str, message: str):
        super().__init__(message)
        self.code = code
        self.kind = kind


# -HV_RING_E* -> (kind of corruption or None for a caller error, message)
_RING_ERRORS = {
    lib.HV_RING_EINVAL: (None, "invalid ring arguments"),
    lib.HV_RING_EMSGSIZE: (None, "a packet can never fit in this ring"),
    lib.HV_RING_EBAD_WRITE_INDEX: ("write_index", "write_index unaligned or beyond the data area"),
    lib.HV_RING_EBAD_READ_INDEX: ("read_index", "read_index unaligned or beyond the data area"),
    lib.HV_RING_EBAD_DESCRIPTOR: ("descriptor", "packet descriptor: offset8 < 2 or > len8"),
    lib.HV_RING_ETRUNCATED: ("truncated", "packet is longer than the bytes published"),
    lib.HV_RING_ETAMPERED: ("tampered", "the index this end owns is not the one it published"),
}


def _ring_check(rc: int) -> int:
    if rc >= 0:
        return rc
    kind, message = _RING_ERRORS.get(-rc, (None, f"unknown ring error {rc}"))
    if kind is None:
        raise ValueError(message)
    raise RingCorruptError(-rc, kind, message)


# Records buffers are written by C before Python sees them: no need to zero them first.
_alloc_uninit = ffi.new_allocator(should_clear_after_alloc=False)


class RingPin:
    """A ring's memory held for fast calls: a uint8_t * to its first byte and its length, valid
    for as long as this object lives (it holds an export on the object that owns the memory, so
    that memory cannot move or go away). Also a small scratch buffer for short reads."""

    __slots__ = ("_owner", "ptr", "len", "scratch", "scratch_bytes", "spare", "span")

    def __init__(self, owner, ptr, length: int):
        self._owner = owner  # the from_buffer cdata pinning the exporter
        self.ptr = ptr
        self.len = length
        self.scratch = _alloc_uninit("uint8_t[]", _SMALL_READ)
        self.scratch_bytes = ffi.buffer(self.scratch)  # sliced to copy a short read out
        self.spare = None  # memory of the last large read, ring.len bytes (holds any batch)
        # The ring and the scratch as hv_ring_send / hv_ring_receive take them (pointers into
        # memory this object keeps alive).
        self.span = ffi.new("struct hv_ring_span *", {"ring": ptr, "ring_len": length,
                                                      "out": self.scratch, "out_cap": RECEIVE_OUT})


# Exporters whose memory stays put while an export is held and that are not GC containers (a
# memoryview is one: CPython's GC cannot clear a memoryview that is still exported).
_PINNABLE = (bytearray, _mmap.mmap, type(ffi.buffer(ffi.new("char[]", 1))))
_SMALL_READ = 4096  # reads of at most this many bytes go through RingPin.scratch
RECEIVE_OUT = min(lib.HV_RING_RECEIVE_MAX_OUT, _SMALL_READ)  # hv_ring_receive's share of it


def ring_pin(mem: memoryview) -> RingPin | None:
    """Pin a writable ring memoryview for the fast calls below, or None when its exporter is
    not one that can be pinned safely (the calls then take the memoryview, as before)."""
    owner = mem.obj
    if type(owner) not in _PINNABLE:
        return None
    with ffi.from_buffer("uint8_t[]", mem, require_writable=True) as view:
        addr, length = int(ffi.cast("uintptr_t", view)), len(view)
    base = ffi.from_buffer("uint8_t[]", owner, require_writable=True)
    offset = addr - int(ffi.cast("uintptr_t", base))
    if not (0 <= offset and offset + length <= len(base)):
        ffi.release(base)
        return None
    return RingPin(base, ffi.cast("uint8_t *", base) + offset, length)


# One result record for every ring call: hvsim runs in one thread and each call reads its result
# before the next call is made, so no call needs one of its own.
_ring_result = ffi.new("struct hv_ring_result *")
# From this payload size up (the batch's first), payloads are handed to C by pointer instead of
# being gathered into one buffer first (below it, one join is cheaper than one from_buffer each).
_GATHER_BELOW = 2048


class _Pinned(_NamedTuple):
    ptr: object
    len: int


def hv_ring_write_batch(ring, payloads, *, packet_type: int = 6, flags: int = 0,
                        trans_ids=None) -> RingBatch:
    """Append `payloads` (bytes-like) as packets until one does not fit; one index publish.
    Each payload is copied once, into the ring (small ones are gathered into one buffer first)."""
    if not (0 <= packet_type <= 0xFFFF and 0 <= flags <= 0xFFFF):
        raise ValueError(f"packet type {packet_type} / flags {flags} are not u16")
    count = len(payloads)
    if count >= 1 << 31:
        raise ValueError(f"{count} payloads in one batch")
    try:
        lengths = _array.array("I", map(len, payloads))
        ids = None if trans_ids is None else _array.array("Q", trans_ids)
    except OverflowError as exc:
        raise ValueError(f"payload length or trans_id out of range: {exc}") from None
    if ids is not None and len(ids) != count:
        raise ValueError(f"{len(ids)} trans_ids for {count} payloads")
    result = _ring_result
    # N.B. every from_buffer is released by `with`, even on error: a cdata left alive in a
    # traceback keeps an export on the ring's memoryview, and CPython's GC crashes when it
    # clears a memoryview that is still exported.
    tids = _nullcontext(ffi.NULL) if ids is None else ffi.from_buffer("uint64_t[]", ids)
    try:
        with _ExitStack() as stack:
            if type(ring) is RingPin:
                buf = _Pinned(ring.ptr, ring.len)
            else:
                view = stack.enter_context(ffi.from_buffer("uint8_t[]", ring,
                                                           require_writable=True))
                buf = _Pinned(view, len(view))
            lens = stack.enter_context(ffi.from_buffer("uint32_t[]", lengths))
            ids_ptr = stack.enter_context(tids)
            if count and len(payloads[0]) >= _GATHER_BELOW:
                vec = ffi.new("uint8_t *[]", count)
                srcs = []  # released in the finally below (one `with` each costs as much again)
                try:
                    for i, p in enumerate(payloads):
                        src = ffi.from_buffer("uint8_t[]", p)
                        srcs.append(src)
                        if len(src) != lengths[i]:  # a memoryview whose items are not bytes
                            raise TypeError("payloads must be bytes-like objects of bytes")
                        vec[i] = src
                    rc = lib.hv_ring_write_batchv(buf.ptr, buf.len, vec, lens, count,
                                                  packet_type, flags, ids_ptr, result)
                finally:
                    for src in srcs:
                        ffi.release(src)
            else:
                blob = b"".join(payloads)
                # C checks that the lengths add up to the bytes joined (no sum over the lengths
                # here): they do not when a payload is a memoryview whose items are not bytes.
                rc = lib.hv_ring_write_gathered(buf.ptr, buf.len, blob, len(blob), lens, count,
                                                packet_type, flags, ids_ptr, result)
                if rc == -lib.HV_RING_EINVAL:
                    raise TypeError("payloads must be bytes-like objects of bytes")
    except BufferError as exc:
        raise TypeError(f"the ring must be a writable buffer: {exc}") from None
    return RingBatch(_ring_check(rc), bool(result.signal), result.index, 0, 0)


def hv_ring_write_packet(ring, payload, header=b"", packet_type: int = 6, flags: int = 0,
                         trans_id: int = 0) -> tuple[int, bool, int]:
    """Append one packet (header, a multiple of 8 bytes, then payload): (1 written or 0 if it
    does not fit now, signal, the write_index left published). Raises ValueError for bad
    arguments or a packet that can never fit, RingCorruptError for a bad ring."""
    result = _ring_result
    if type(ring) is RingPin and type(payload) is bytes and type(header) is bytes:
        try:  # the fast case: nothing to export, one call
            rc = lib.hv_ring_write_packet(ring.ptr, ring.len, header, len(header), payload,
                                          len(payload), packet_type, flags, trans_id, result)
        except OverflowError as exc:
            raise ValueError(f"packet field out of range: {exc}") from None
        return _ring_check(rc) if rc < 0 else rc, bool(result.signal), result.index
    if type(ring) is RingPin:
        ring = ffi.buffer(ring.ptr, ring.len)
    try:
        with ffi.from_buffer("uint8_t[]", ring, require_writable=True) as buf:
            if type(payload) is bytes and type(header) is bytes:  # passed in place, no export
                rc = lib.hv_ring_write_packet(buf, len(buf), header, len(header), payload,
                                              len(payload), packet_type, flags, trans_id, result)
            else:
                with ffi.from_buffer("uint8_t[]", payload) as src, \
                        ffi.from_buffer("uint8_t[]", header) as hdr:
                    if len(src) != len(payload) or len(hdr) != len(header):
                        raise TypeError("payload and header must be bytes-like objects of bytes")
                    rc = lib.hv_ring_write_packet(buf, len(buf), hdr, len(hdr), src, len(src),
                                                  packet_type, flags, trans_id, result)
    except BufferError as exc:
        raise TypeError(f"the ring must be a writable buffer: {exc}") from None
    except OverflowError as exc:
        raise ValueError(f"packet field out of range: {exc}") from None
    return _ring_check(rc), bool(result.signal), result.index


# The one-packet calls of a channel end (vmbus.channel.ChannelEnd.send/receive), exported as the
# compiled functions themselves (a wrapper would cost as much as the crossing): a RingPin's
# span, the index the end published last, then the packet (send) or the most packets to read
# (receive: into RingPin.scratch, whose bytes scratch_bytes slices). Any refusal (<= 0 from
# send, < 0 from receive) has changed nothing; the caller then takes the general path.
hv_ring_send = lib.hv_ring_send
hv_ring_receive = lib.hv_ring_receive


def hv_ring_read_batch(ring, out, max_packets: int) -> RingBatch:
    """Copy up to max_packets packets out of `ring` into the writable buffer `out` as records
    (each: the packet as in the ring, descriptor first, trailer dropped, len8 * 8 bytes, back to
    back); publish read_index once."""
    if not 0 <= max_packets < 1 << 31:
        raise ValueError(f"max_packets {max_packets} out of range")
    result = _ring_result
    try:
        with ffi.from_buffer("uint8_t[]", ring, require_writable=True) as buf, \
                ffi.from_buffer("uint8_t[]", out, require_writable=True) as dst:
            rc = lib.hv_ring_read_batch(buf, len(buf), dst, len(dst), max_packets, result)
    except BufferError as exc:
        raise TypeError(f"the ring and `out` must be writable buffers: {exc}") from None
    return RingBatch(_ring_check(rc), bool(result.signal), result.index, result.out_used,
                     result.stop)


def hv_ring_read_records(ring, capacity: int, max_packets: int):
    """hv_ring_read_batch of up to `capacity` bytes of records: (count, signal, the read_index
    left published, the records), the records in memory of their own. Large reads go into fresh memory that C copies to once (returned as a
    read-only memoryview that owns it); reads of a pinned ring that fit RingPin.scratch go there
    and come back as bytes (a short copy is cheaper than a fresh buffer)."""
    if not 0 <= max_packets < 1 << 31:
        raise ValueError(f"max_packets {max_packets} out of range")
    result = _ring_result
    if type(ring) is RingPin:
        if capacity <= _SMALL_READ:
            out = ring.scratch
        else:
            # The last large batch's memory is used again once nothing refers to it any more
            # (no batch, packet view or buffer: only ring.spare, `out` and getrefcount's
            # argument), so steady reading allocates nothing.
            out = ring.spare
            if out is None or _getrefcount(out) > 3:
                out = ring.spare = _alloc_uninit("uint8_t[]", ring.len)
        rc = lib.hv_ring_read_batch(ring.ptr, ring.len, out, capacity, max_packets, result)
    else:
        out = _alloc_uninit("uint8_t[]", max(capacity, 1))
        try:
            with ffi.from_buffer("uint8_t[]", ring, require_writable=True) as buf:
                rc = lib.hv_ring_read_batch(buf, len(buf), out, capacity, max_packets, result)
        except BufferError as exc:
            raise TypeError(f"the ring must be a writable buffer: {exc}") from None
    count = _ring_check(rc) if rc < 0 else rc
    used = result.out_used
    if type(ring) is RingPin and out is ring.scratch:
        records = ring.scratch_bytes[:used]
    else:
        records = memoryview(ffi.buffer(out, used)).toreadonly()
    return count, bool(result.signal), result.index, records


# --- VHD data movement (native/vhd_io.h) ----------------------------------------------------


class VhdDisk:
    """`struct hv_vhd_disk`: one open VHD as hv_vhd_read/hv_vhd_write see it. For a dynamic or
    differencing disk, `bat` is the caller's BAT (an array of uint32, read in place: never
    resize it) and `set_bitmap` hands over a block's sector bitmap (a bytearray in the file's bit
    order, read in place: never resize it either). Holds every buffer the C side points into,
    and its parent's VhdDisk, for as long as it lives."""

    def __init__(self, fd: int, size: int, block_size: int = 0, bitmap_size: int = 0, bat=None,
                 parent: VhdDisk | None = None) -> None:
        c = ffi.new("struct hv_vhd_disk *")
        c.fd, c.size = fd, size
        self._keep: dict[int, object] = {}
        self._parent = parent
        if block_size:
            self._bat = ffi.from_buffer("uint32_t[]", bat)
            self._bitmaps = ffi.new("uint8_t *[]", max(len(bat), 1))
            c.block_size, c.bitmap_size, c.bat_entries = block_size, bitmap_size, len(bat)
            c.bat, c.bitmaps = self._bat, self._bitmaps
        if parent is not None:
            c.parent = parent._c
        self._c = c
        self._done = ffi.new("uint64_t *")

    def set_bitmap(self, block: int, bitmap: bytearray) -> None:
        if block not in self._keep:
            self._keep[block] = ptr = ffi.from_buffer("uint8_t[]", bitmap, require_writable=True)
            self._bitmaps[block] = ptr


def hv_vhd_read(disk: VhdDisk, offset: int, buf) -> tuple[int, int]:
    """(status, bytes done) of reading len(buf) bytes of the disk at `offset` into `buf`."""
    with ffi.from_buffer("uint8_t[]", buf, require_writable=True) as dst:
        rc = lib.hv_vhd_read(disk._c, offset, dst, len(dst), disk._done)
    return rc, disk._done[0]


def hv_vhd_write(disk: VhdDisk, offset: int, data) -> tuple[int, int]:
    """(status, bytes done) of writing `data` at `offset` where its sectors are present."""
    with ffi.from_buffer("uint8_t[]", data) as src:
        rc = lib.hv_vhd_write(disk._c, offset, src, len(src), disk._done)
    return rc, disk._done[0]


def partition_id_array(ids: list[int]):
    """`ids` as a uint64_t[] for hv_partitions_run_time_array, made once and kept by the caller
    (at least one element: 0, which names no partition, stands in for none)."""
    return ffi.new("uint64_t[]", ids or [0])


def hv_partitions_run_time_array(h, ids, count: int):
    """hv_partitions_run_time over the first `count` ids of a partition_id_array: a fresh
    uint64_t[] of run times (UINT64_MAX for an id that names no partition), indexable from
    Python, and no Python object per partition; for owners that sample many partitions often."""
    out = ffi.new("uint64_t[]", max(1, count))
    lib.hv_partitions_run_time(h, ids, count, out)
    return out


# --- storvsc's per-I/O path (native/storvsc.c) ------------------------------------------------
# drivers/storage/vsc.py is the only caller; vmbus.ring's write_call/read_call supply the ring
# (a RingPin, or any writable buffer) and do the ring end's checks and bookkeeping around these.


class StorvscBuffers:
    """What one storvsc keeps for the calls below: its bounce pages pinned (a RingPin over their
    view), their GPA page numbers as a uint64_t[], and the completion scratch and records for a
    ring of `ring_len` bytes (a read never holds more than the ring)."""

    __slots__ = ("bounce", "pfns", "pool_pages", "scratch", "scratch_bytes", "done", "done_bytes",
                 "done_cap", "result")

    def __init__(self, bounce: RingPin, pfns: list[int], ring_len: int):
        self.bounce = bounce
        self.pfns = ffi.new("uint64_t[]", pfns)
        self.pool_pages = min(len(pfns), bounce.len // 4096)
        self.scratch = _alloc_uninit("uint8_t[]", ring_len)
        self.scratch_bytes = ffi.buffer(self.scratch)
        self.done_cap = ring_len - ring_len % lib.HV_STORVSC_DONE_SIZE
        self.done = _alloc_uninit("uint8_t[]", max(self.done_cap, 1))
        self.done_bytes = ffi.buffer(self.done)
        self.result = ffi.new("struct hv_storvsc_result *")


def hv_storvsc_submit(ring, bufs: StorvscBuffers, trans_id: int, lun: int, data_in: int,
                      length: int, first_page: int, cdb: bytes, data: bytes) -> tuple[int, int, int]:
    """One EXECUTE_SRB through bounce pages first_page.. (OutgoingRing.write_call's `call`):
    (1 written or 0 if it does not fit now, signal, the write_index left published). Raises
    ValueError for arguments C refuses (nothing written, bounce pages untouched) and
    RingCorruptError for a bad ring."""
    result = _ring_result
    bounce = bufs.bounce
    try:
        if type(ring) is RingPin:
            rc = lib.hv_storvsc_submit(ring.ptr, ring.len, bounce.ptr, bounce.len, bufs.pfns,
                                       bufs.pool_pages, trans_id, lun, data_in, length, first_page,
                                       cdb, len(cdb), data, len(data), result)
        else:
            with ffi.from_buffer("uint8_t[]", ring, require_writable=True) as buf:
                rc = lib.hv_storvsc_submit(buf, len(buf), bounce.ptr, bounce.len, bufs.pfns,
                                           bufs.pool_pages, trans_id, lun, data_in, length,
                                           first_page, cdb, len(cdb), data, len(data), result)
    except OverflowError as exc:
        raise ValueError(f"SRB field out of range: {exc}") from None
    return _ring_check(rc) if rc < 0 else rc, bool(result.signal), result.index


def hv_storvsc_complete(ring, capacity: int, bufs: StorvscBuffers):
    """Every packet in the ring, read and decoded in one crossing (IncomingRing.read_call's
    `call`): (count, signal, the read_index left published, (packets, count, records)),
    `packets` what was read, as hv_ring_read_batch's records, and `records` the 24-byte
    completion records (native/api/storvsc.h); both bytes of their own (a completion's callback
    may read the ring again before the caller is done with them)."""
    result = bufs.result
    if type(ring) is RingPin:
        rc = lib.hv_storvsc_complete(ring.ptr, ring.len, bufs.scratch, capacity, bufs.done,
                                     bufs.done_cap, result)
    else:
        with ffi.from_buffer("uint8_t[]", ring, require_writable=True) as buf:
            rc = lib.hv_storvsc_complete(buf, len(buf), bufs.scratch, capacity, bufs.done,
                                         bufs.done_cap, result)
    count = _ring_check(rc) if rc < 0 else rc
    return (count, bool(result.signal), result.index,
            (bufs.scratch_bytes[:result.out_used], count, bufs.done_bytes[:result.records * 24]))


# --- storvsp's data plane (native/storvsp.h) -------------------------------------------------


STORVSP_SENT, STORVSP_UNSENT, STORVSP_PYTHON, STORVSP_STALE, STORVSP_WRITE = (
    lib.HV_STORVSP_SENT, lib.HV_STORVSP_UNSENT, lib.HV_STORVSP_PYTHON, lib.HV_STORVSP_STALE,
    lib.HV_STORVSP_WRITE)


def storvsp_packet(done) -> bytes:
    """The completion packet a struct hv_storvsp_done holds."""
    return bytes(ffi.buffer(done.packet))


class StorageLink:
    """`struct hv_storage_link`: a host's link to a shared storage, `bandwidth` bits per second and
    `latency` ns, whose queue storvsp's C plane and Python path (and a quick migration's memory)
    share. Its fields (busy_until, requests, bytes, busy_ns, queued_ns) read in place."""

    def __init__(self, bandwidth: int, latency: int) -> None:
        if bandwidth <= 0 or latency < 0:
            raise ValueError(f"a storage link needs a positive bandwidth, got {bandwidth} bit/s, {latency} ns")
        self._c = ffi.new("struct hv_storage_link *")
        self._c.bandwidth, self._c.latency = bandwidth, latency

    def cross(self, now: int, nbytes: int) -> int:
        """hv_storage_link_cross: `nbytes` sent at `now` behind what the link still sends; their
        arrival at the storage."""
        return lib.hv_storage_link_cross(self._c, now, nbytes)

    def __getattr__(self, name: str) -> int:
        if name in ("bandwidth", "latency", "busy_until", "requests", "bytes", "busy_ns", "queued_ns"):
            return getattr(self._c, name)
        raise AttributeError(name)


class StorvspPlane:
    """`struct hv_storvsp`: one storvsp channel's READ/WRITE path in C. `luns[i]` is the C view
    of LUN i (its medium's timeline and counters, read and written in place); set_lun points it
    at a VhdDisk, which this object keeps alive while C may use it."""

    def __init__(self, h, child_id: int, max_outstanding: int, max_transfer: int, latency: int,
                 bandwidth: int, nluns: int) -> None:
        c = lib.hv_storvsp_create(h, child_id, max_outstanding, max_transfer, latency, bandwidth, nluns)
        if c == ffi.NULL:
            raise ValueError("hv_storvsp_create refused its arguments (or memory ran out)")
        self._c = ffi.gc(c, lib.hv_storvsp_destroy)
        self.luns = self._c.luns
        self._disks: list = [None] * nluns
        self._links: list = [None] * nluns
        self._slots = ffi.new("uint32_t[]", max_outstanding)
        self._dues = ffi.new("uint64_t[]", max_outstanding)
        self._used = ffi.new("size_t *")
        self.done = ffi.new("struct hv_storvsp_done *")

    @property
    def completed(self) -> int:
        return self._c.completed

    def set_lun(self, lun: int, disk: VhdDisk | None, blocks: int, read_only: bool) -> None:
        """LUN `lun` is served from `disk` (None: present, but every request goes to Python)."""
        entry = self.luns[lun]
        entry.present, entry.blocks, entry.read_only = 1, blocks, 1 if read_only else 0
        entry.disk = ffi.NULL if disk is None else disk._c
        self._disks[lun] = disk

    def set_lun_link(self, lun: int, link: StorageLink | None) -> None:
        """LUN `lun`'s requests cross `link` (a host's link to a shared storage) before its
        medium; None: the disk is the host's own."""
        self.luns[lun].link = ffi.NULL if link is None else link._c
        self._links[lun] = link   # kept alive while C may use it

    def submit(self, records, count: int, now: int, others: int) -> tuple[int, int, list, list]:
        """hv_storvsp_submit: (packets taken, bytes of records they took, their slots, their due
        times)."""
        with ffi.from_buffer("uint8_t[]", records) as buf:
            taken = lib.hv_storvsp_submit(self._c, buf, len(buf), count, now, others, self._slots,
                                          self._dues, self._used)
        if not taken:
            return 0, 0, [], []
        return taken, self._used[0], ffi.unpack(self._slots, taken), ffi.unpack(self._dues, taken)

    def complete(self, slot: int, ring) -> int:
        """hv_storvsp_complete into `ring` (a RingPin, or None: the completion is left in
        done.packet for the caller to send)."""
        if ring is None:
            return lib.hv_storvsp_complete(self._c, slot, ffi.NULL, 0, self.done)
        return lib.hv_storvsp_complete(self._c, slot, ring.ptr, ring.len, self.done)

    @property
    def in_service(self) -> int:
        """Requests the plane holds (queued, or handed back and not yet released)."""
        return self._c.in_use

    def slots(self) -> list[int]:
        """The slots of the requests the plane holds, in slot order."""
        reqs = self._c.reqs
        return [slot for slot in range(self._c.max_outstanding) if reqs[slot].in_use]

    def written(self, slot: int, ring) -> int:
        """hv_storvsp_written: the write in `slot` reached the disk through Python; complete it."""
        if ring is None:
            return lib.hv_storvsp_written(self._c, slot, ffi.NULL, 0, self.done)
        return lib.hv_storvsp_written(self._c, slot, ring.ptr, ring.len, self.done)

    def scratch(self, length: int):
        """The first `length` bytes of the plane's scratch buffer (a WRITE's guest bytes), as a
        buffer valid until the next call into the plane."""
        return ffi.buffer(self._c.scratch, length)

    def request(self, slot: int) -> tuple[int, bytes, int, int, int, list[int]]:
        """The request in `slot`: (trans_id, the vmscsi_request as sent, LUN, its range's
        byte_count, byte_offset and PFNs)."""
        r = self._c.reqs[slot]
        return (r.trans_id, bytes(ffi.buffer(r.srb)), r.lun, r.byte_count, r.byte_offset,
                ffi.unpack(r.pfns, r.npfns))

    def release(self, slot: int) -> None:
        lib.hv_storvsp_release(self._c, slot)

    def close(self) -> None:
        """Free the C side now (nothing may be called afterwards)."""
        if self._c is not None:
            ffi.release(self._c)
            self._c = None
            self._disks = []


# --- the network data plane (native/netplane.h) ----------------------------------------------
# Thin calls for drivers/network/netplane.py, which owns the objects: a switch's table and
# ports, and each netvsp adapter's sections. The structs are handed out as cdata (their fields
# are plain integers the caller reads and writes); nothing else of ffi leaves this module.

def hv_np_switch_new(ageing_ns: int, window_ns: int, max_frames_per_window: int, max_macs_per_port: int,
                     mtu: int):
    sw = lib.hv_np_switch_new(ageing_ns, window_ns, max_frames_per_window, max_macs_per_port, mtu)
    if sw == ffi.NULL:
        raise MemoryError("hv_np_switch_new")
    return ffi.gc(sw, lib.hv_np_switch_free)


def hv_np_port_add(sw) -> int:
    port = lib.hv_np_port_add(sw)
    if port < 0:
        raise MemoryError("hv_np_port_add")
    return port


def hv_np_port_remove(sw, port: int) -> None:
    lib.hv_np_port_remove(sw, port)


def hv_np_port_at(sw, port: int):
    """The port's struct (valid until the next hv_np_port_add, which may move the array)."""
    return lib.hv_np_port_at(sw, port)


def hv_np_learn(sw, vlan: int, mac: int, port: int, now: int) -> int:
    return lib.hv_np_learn(sw, vlan, mac, port, now)


def hv_np_lookup(sw, vlan: int, mac: int, now: int) -> int:
    return lib.hv_np_lookup(sw, vlan, mac, now)


def hv_np_expire(sw, port: int, now: int) -> None:
    lib.hv_np_expire(sw, port, now)


def hv_np_forget_port(sw, port: int) -> None:
    lib.hv_np_forget_port(sw, port)


def hv_np_mac_entries(sw) -> list[tuple[int, int, int, int]]:
    """[(vlan, mac as an int, port, seen)] in table order."""
    n = lib.hv_np_mac_entries(sw, ffi.NULL, 0)
    out = ffi.new("struct hv_np_mac_entry[]", max(n, 1))
    n = min(n, lib.hv_np_mac_entries(sw, out, n))
    return [(e.vlan, e.mac, e.port, e.seen) for e in out[0:n]]


def hv_np_adapter_new():
    a = lib.hv_np_adapter_new()
    if a == ffi.NULL:
        raise MemoryError("hv_np_adapter_new")
    return ffi.gc(a, lib.hv_np_adapter_free)


def hv_np_sections_reset(a, count: int) -> None:
    if lib.hv_np_sections_reset(a, count) != 0:
        raise MemoryError("hv_np_sections_reset")


def hv_np_take(a) -> int:
    return lib.hv_np_take(a)


def hv_np_put_front(a, section: int) -> None:
    lib.hv_np_put_front(a, section)


def hv_np_put_back(a, section: int) -> None:
    lib.hv_np_put_back(a, section)


def hv_np_begin(a, section: int) -> int:
    return lib.hv_np_begin(a, section)


def hv_np_complete(a, trans_id: int) -> int:
    return lib.hv_np_complete(a, trans_id) if 0 <= trans_id < 1 << 64 else -1


def hv_np_free_list(a) -> list[int]:
    n = a.free_len
    out = ffi.new("uint32_t[]", max(n, 1))
    lib.hv_np_free_list(a, out, n)
    return list(out[0:n])


def hv_np_in_flight(a) -> dict[int, int]:
    n = a.ift_len
    tids, sections = ffi.new("uint64_t[]", max(n, 1)), ffi.new("uint32_t[]", max(n, 1))
    n = min(n, lib.hv_np_in_flight(a, tids, sections, n))
    return dict(zip(tids[0:n], sections[0:n]))


def hv_np_attach(a, field: str, pin) -> None:
    """Point an adapter's `recv`, `send` or `ring` at pinned memory (a RingPin from ring_pin,
    kept alive by the caller), or at nothing (None)."""
    ptr, length = (ffi.NULL, 0) if pin is None else (pin.ptr, pin.len)
    setattr(a, field, ptr)
    if field == "ring":
        a.ring_len = length


_NP_CAPTURE_BYTES = 64 << 10   # frames a batch may hand to a running capture (then it stops)


# struct hv_np_batch up to touched[]: now, window_start, window_count, handled, offset,
# completion_pending, completion_tid, rx_frames, rx_bytes, forwarded, filtered, mac_moves,
# learn_refused, tx_frames, tx_bytes, flooded, ntouched, nsignals (read in one unpack after each
# call).
_NP_BATCH_HEAD = _struct.Struct("<QQIIIIQ9QII")
assert _NP_BATCH_HEAD.size == ffi.offsetof("struct hv_np_batch", "touched")


def hv_np_batch_new():
    """A batch record, its capture buffer and a view of the record (the owner keeps all three)."""
    batch = ffi.new("struct hv_np_batch *")
    cap = ffi.new("uint8_t[]", _NP_CAPTURE_BYTES)
    batch.cap, batch.cap_cap = cap, _NP_CAPTURE_BYTES
    return batch, cap, ffi.buffer(batch)


def hv_np_captured(batch, cap) -> list[bytes]:
    """The frames the last hv_np_forward appended for the capture, in order."""
    data = ffi.buffer(cap, batch.cap_used)[:]
    frames, at = [], 0
    for _ in range(batch.ncap):
        n = int.from_bytes(data[at:at + 4], "little")
        frames.append(data[at + 4:at + 4 + n])
        at += 4 + n
    return frames


def hv_np_forward(sw, a, records, offset: int, max_packets: int, batch, view) -> tuple:
    """Handle packets of a batch's records from `offset` (see native/netplane.h); the batch
    record's outputs up to touched[], as _NP_BATCH_HEAD lists them."""
    with ffi.from_buffer("uint8_t[]", records) as buf:
        rc = lib.hv_np_forward(sw, a, buf, len(buf), offset, max_packets, batch)
    if rc < 0:
        raise ValueError("hv_np_forward: the records are not a ring read's")
    return _NP_BATCH_HEAD.unpack_from(view)


# --- duty cycles (run.c: hv_vp_cycle) ------------------------------------------------------------


class VpCycle:
    """One VP's duty cycle in the core (struct hv_cycle), with its buffer made once: arm it with
    the step its guest takes now, read where the core left it, tell it what the guest's side is."""

    def __init__(self, h, partition_id: int, vp_index: int):
        self._h, self._id, self._vp = h, partition_id, vp_index
        self._c = ffi.new("struct hv_cycle *")

    def arm(self, kind: int, phase: int, busy: int, idle: int, left: int, step: int, deadline: int,
            horizon: int = 0, dirty: bool = False) -> None:
        c = self._c
        c.kind, c.phase, c.busy_ns, c.idle_ns = kind, phase, busy, idle
        c.left_ns, c.step_ns, c.deadline, c.horizon, c.dirty = left, step, deadline, horizon, dirty
        if lib.hv_vp_cycle(self._h, self._id, self._vp, c) != 0:
            raise ValueError(f"hv_vp_cycle refused: VP {self._vp} of partition {self._id} is not waiting "
                             f"for a step, or the cycle {kind, phase, busy, idle, left, step} is not one")

    def state(self) -> tuple[int, int, int, int]:
        """(phase, left_ns, step_ns, deadline) of the cycle's step in flight."""
        c = self._c
        lib.hv_vp_cycle_state(self._h, self._id, self._vp, c)
        return c.phase, c.left_ns, c.step_ns, c.deadline

    def steps(self) -> int:
        """Steps the core has taken for this VP's guest, in all."""
        lib.hv_vp_cycle_state(self._h, self._id, self._vp, self._c)
        return int(self._c.steps)

    def sync(self, horizon: int, dirty: bool) -> None:
        lib.hv_vp_cycle_sync(self._h, self._id, self._vp, horizon, dirty)


def hv_np_bind(sw, port: int, adapter) -> None:
    """Put an adapter (None: none) behind a port; frames for it may then be delivered by C."""
    c = lib.hv_np_port_at(sw, port)
    c.adapter = ffi.NULL if adapter is None else adapter
    c.deliverable = adapter is not None


# --- the parent's VMBus service (native/service.c) ---------------------------------------------


class ServiceTake:
    """What one VMBus service keeps for hv_service_take: room for every flag of 16 SINTs and
    the slot's type, allocated once (the call is made on every pass of the service)."""

    __slots__ = ("out", "slot_type", "_h", "_id", "_slot", "_flags")

    def __init__(self, h, partition_id: int, slot_gpa: int, flags_gpa: int):
        self.out = ffi.new("uint16_t[]", 16 * 2048)
        self.slot_type = ffi.new("uint32_t *")
        self._h, self._id, self._slot, self._flags = h, partition_id, slot_gpa, flags_gpa

    def take(self, sints: int) -> tuple[int, list[int]]:
        """(the SIM slot's MessageType, 0 if empty; the flags taken of `sints`, as sint * 2048 +
        flag, in order) in one crossing. MemoryError if the pages are not the partition's."""
        n = lib.hv_service_take(self._h, self._id, self._slot, self._flags, sints, self.out, 16 * 2048,
                                self.slot_type)
        if n < 0:
            raise MemoryError(f"partition {self._id}: its SynIC pages are not readable by it")
        return self.slot_type[0], ffi.unpack(self.out, n) if n else []


# --- live migration: the parent's bulk access to a child's memory, absent pages (migration.c, pager.c)

_NO_VP = 0xFFFFFFFF


def _page_list(gpa_pages):
    """A uint64_t[] of the GPA pages: an array('Q') is passed as it is, with no copy; any other
    iterable of ints is converted."""
    if isinstance(gpa_pages, _array.array) and gpa_pages.typecode == "Q":
        arr = ffi.from_buffer("uint64_t[]", gpa_pages)
        return arr, len(arr)
    pages = list(gpa_pages)
    return ffi.new("uint64_t[]", pages or [0]), len(pages)


def _page_buffer(count: int, out):
    """(cdata, owner) of count pages to read into: `out` if given (a writable buffer of exactly that
    size), else a new bytearray."""
    if out is None:
        out = bytearray(count * 4096)
    view = ffi.from_buffer(out, require_writable=True)
    if len(view) != count * 4096:
        raise ValueError(f"expected a buffer of {count * 4096} bytes for {count} pages, got {len(view)}")
    return view, out


def hv_child_read_pages(h, parent_id: int, child_id: int, gpa_pages, out=None) -> tuple[int, object, int]:
    """(HV_STATUS, the pages' bytes in order (`out` if given), the GPA page refused)."""
    pages, n = _page_list(gpa_pages)
    view, owner = _page_buffer(n, out)
    bad = ffi.new("uint64_t *")
    st = int(lib.hv_child_read_pages(h, parent_id, child_id, pages, n, view, bad))
    return st, owner, int(bad[0])


def hv_child_read_range(h, parent_id: int, child_id: int, first: int, count: int, out=None) -> tuple[int, object, int]:
    view, owner = _page_buffer(count, out)
    bad = ffi.new("uint64_t *")
    st = int(lib.hv_child_read_range(h, parent_id, child_id, first, count, view, bad))
    return st, owner, int(bad[0])


def hv_child_write_pages(h, parent_id: int, child_id: int, gpa_pages, data) -> tuple[int, int]:
    """(HV_STATUS, the GPA page refused); data holds 4096 bytes per page."""
    pages, n = _page_list(gpa_pages)
    src = ffi.from_buffer(data)
    if len(src) != n * 4096:
        raise ValueError(f"expected {n * 4096} bytes for {n} pages, got {len(src)}")
    bad = ffi.new("uint64_t *")
    return int(lib.hv_child_write_pages(h, parent_id, child_id, pages, n, src, bad)), int(bad[0])


def hv_child_write_range(h, parent_id: int, child_id: int, first: int, data) -> tuple[int, int]:
    src = ffi.from_buffer(data)
    if len(src) % 4096:
        raise ValueError(f"expected whole pages (a multiple of 4096 bytes), got {len(src)}")
    bad = ffi.new("uint64_t *")
    return int(lib.hv_child_write_range(h, parent_id, child_id, first, len(src) // 4096, src, bad)), int(bad[0])


def hv_child_nonzero_pages(h, parent_id: int, child_id: int, first: int, count: int) -> tuple[int, list[int]]:
    """(HV_STATUS, the GPA pages of the range that are mapped and may hold a non-zero byte)."""
    if count < 0:
        raise ValueError(f"expected a page count, got {count}")
    out = ffi.new("uint64_t[]", max(min(count, 1 << 24), 1))
    found = ffi.new("uint64_t *")
    st = int(lib.hv_child_nonzero_pages(h, parent_id, child_id, first, count, out, found))
    return st, ffi.unpack(out, int(found[0])) if st == 0 and found[0] else []


def hv_dirty_log_read(h, caller_id: int, vp_index: int, in_gpa: int, out_gpa: int, child_id: int, first: int,
                      count: int, flags: int) -> tuple[int, list[int]]:
    """(HV_STATUS, the GPA pages GetGpaPagesAccessStates reported dirty) over the range."""
    out = ffi.new("uint64_t[]", max(min(count, 1 << 24), 1))
    found = ffi.new("uint64_t *")
    st = int(lib.hv_dirty_log_read(h, caller_id, vp_index, in_gpa & 0xFFFFFFFFFFFFFFFF, out_gpa & 0xFFFFFFFFFFFFFFFF,
                                   child_id, first, count, flags, out, found))
    return st, ffi.unpack(out, int(found[0])) if found[0] else []


def hv_child_set_absent(h, parent_id: int, child_id: int, first: int, count: int) -> tuple[int, int]:
    bad = ffi.new("uint64_t *")
    return int(lib.hv_child_set_absent(h, parent_id, child_id, first, count, bad)), int(bad[0])


def hv_child_page_in(h, parent_id: int, child_id: int, gpa_page: int, data) -> int:
    src = ffi.from_buffer(data)
    if len(src) != 4096:
        raise ValueError(f"expected one page (4096 bytes), got {len(src)}")
    return int(lib.hv_child_page_in(h, parent_id, child_id, gpa_page, src))


def hv_child_absent_map(h, parent_id: int, child_id: int, first: int, count: int) -> tuple[int, bytes]:
    out = ffi.new("uint8_t[]", max(count, 1))
    st = int(lib.hv_child_absent_map(h, parent_id, child_id, first, count, out))
    return st, bytes(ffi.buffer(out, count)) if st == 0 else b""


def hv_pager_stats(h, partition_id: int) -> dict | None:
    s = ffi.new("struct hv_pager_stats *")
    if lib.hv_pager_stats(h, partition_id, s) != 0:
        return None
    return {"absent": s.absent, "faults": s.faults, "failures": s.failures, "stall_ns": s.stall_ns,
            "unattributed": s.unattributed}


# Host handle (address) -> a weak reference to the function that serves its faults:
# serve(partition_id, gpa_page, vp_index or None) -> (4096 bytes, stall ns, VP index or None), or
# None if the fetch failed. Weak, so that a host with a pager is still collected.
_PAGERS: dict[int, object] = {}


def hv_pager_install(h, serve) -> None:
    """Let `serve` (a bound method) answer the host's absent-page faults."""
    for gone in [key for key, ref in _PAGERS.items() if ref() is None]:  # hosts collected since
        del _PAGERS[gone]
    _PAGERS[int(ffi.cast("uintptr_t", h))] = _weakref.WeakMethod(serve)
    lib.hv_pager_install(h, lib._cffi_pager_upcall)


@ffi.def_extern()
def _cffi_pager_upcall(h, partition_id, gpa_page, vp_index, page, stall_ns, vp_out):
    # Called by the core in the middle of an access: nothing may escape into C, so anything the
    # serving function lets through fails the fetch (the access then fails for that child only).
    try:
        ref = _PAGERS.get(int(ffi.cast("uintptr_t", h)))
        serve = ref() if ref is not None else None
        if serve is None:
            return -1
        got = serve(int(partition_id), int(gpa_page), None if vp_index == _NO_VP else int(vp_index))
        if got is None:
            return -1
        data, ns, vp = got
        ffi.memmove(page, data, 4096)
        stall_ns[0] = ns
        vp_out[0] = _NO_VP if vp is None else vp
        return 0
    except BaseException:  # noqa: BLE001 - see above
        return -1
