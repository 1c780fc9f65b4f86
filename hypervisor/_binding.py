"""The binding: the only module that touches the compiled core's `ffi` and `lib`.

Every function here is named after the C call it wraps, checks its Python arguments, and turns
the core's error codes into exceptions. The rest of hvsim imports from here, never from
`hypervisor._hvcore`.
"""
from __future__ import annotations

import os

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


def hv_call_shape(code: int) -> dict | None:
    """The dispatch table's view of a call code: block sizes, rep-ness, privilege."""
    out = ffi.new("uint32_t[4]")
    rep, fast_ok, priv = ffi.new("int *"), ffi.new("int *"), ffi.new("uint64_t *")
    if lib.hv_call_shape(code & 0xFFFF, out, out + 1, out + 2, out + 3, rep, fast_ok, priv) != 0:
        return None
    return {"header_size": out[0], "in_elem_size": out[1], "out_size": out[2], "out_elem_size": out[3],
            "rep": bool(rep[0]), "fast_ok": bool(fast_ok[0]), "privilege": int(priv[0])}


def hv_host_create(memory_bytes: int, logical_processors: int, smt: int, seed: int,
                   root_vps: int, reps_per_call: int):
    """Boot a host; the handle frees itself when garbage-collected."""
    cfg = ffi.new("struct hv_host_config *")
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
                "hypercalls", "hypercalls_failed", "reps")


def hv_partition_info(h, partition_id: int) -> dict | None:
    info = ffi.new("struct hv_partition_info *")
    if lib.hv_partition_info(h, partition_id, info) != 0:
        return None
    return {f: int(getattr(info, f)) for f in _INFO_FIELDS}


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


def hv_state_digest(h, include_memory: bool) -> bytes:
    out = ffi.new("uint8_t[16]")
    lib.hv_state_digest(h, 1 if include_memory else 0, out)
    return bytes(ffi.buffer(out, 16))


# --- ring primitives (vmbus fast path) -------------------------------------------------------
