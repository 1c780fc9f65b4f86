"""The KVP IC: set / get / delete / enumerate in the guest's pools, the guest's own items, size
limits and statuses."""
import struct

import pytest

from drivers.ic import KVP
from drivers.ic import framing as f
from drivers.ic.kvp import protocol as p

from tests.drivers.ic.harness import connect, hostile_host, negotiate, request


def test_set_get_delete_round_trip():
    pair = connect(KVP)
    done = []
    assert pair.vsp.set(p.POOL_EXTERNAL, "Role", "web ☃", on_done=done.append).ok
    got = pair.vsp.get(p.POOL_EXTERNAL, "Role")
    assert got.ok and got.reply == "web ☃" and pair.vsc.pools[p.POOL_EXTERNAL] == {"Role": "web ☃"}
    assert pair.vsp.delete(p.POOL_EXTERNAL, "Role").ok and pair.vsc.pools[p.POOL_EXTERNAL] == {}
    missing = pair.vsp.get(p.POOL_EXTERNAL, "Role")
    assert missing.status == f.HV_S_CONT and missing.reply is None
    assert pair.vsp.delete(p.POOL_EXTERNAL, "Role").status == f.HV_S_CONT
    assert len(done) == 1 and done[0].ok


def test_the_parent_reads_the_guests_own_items_by_enumeration():
    intrinsic = {"FullyQualifiedDomainName": "db1.example", "OSName": "Linux"}
    pair = connect(KVP, guest={"pools": {p.POOL_AUTO: intrinsic, p.POOL_GUEST: {"app": "1"}}})
    items, index = {}, 0
    while (ex := pair.vsp.enumerate(p.POOL_AUTO, index)).ok:
        key, value = ex.reply
        items[key] = value
        index += 1
    assert items == intrinsic and ex.status == f.HV_S_CONT
    assert pair.vsp.get(p.POOL_GUEST, "app").reply == "1"


def test_default_intrinsic_items():
    pair = connect(KVP)
    assert pair.vsp.get(p.POOL_AUTO, "OSName").reply == "hvsim guest"


def test_an_unknown_pool_is_invalidarg():
    pair = connect(KVP)
    assert pair.vsp.set(5, "k", "v").status == f.HV_INVALIDARG
    assert all(items == {} for pool, items in pair.vsc.pools.items() if pool != p.POOL_AUTO)


def test_sizes_are_enforced_never_truncated():
    pair = connect(KVP)
    assert pair.vsp.set(0, "k" * 255, "v" * 1023).ok              # 512 and 2048 bytes with NUL
    with pytest.raises(ValueError, match="512"):
        pair.vsp.set(0, "k" * 256, "v")
    with pytest.raises(ValueError, match="2048"):
        pair.vsp.set(0, "k", "v" * 1024)
    with pytest.raises(ValueError, match="NUL"):
        pair.vsp.get(0, "a\0b")
    assert pair.vsc.pools[0] == {"k" * 255: "v" * 1023}
    with pytest.raises(ValueError):
        KVP.vsc(pair.guest_end, {"pools": {0: {"x": "v" * 1024}}})  # a guest config too


def test_a_full_pool_answers_disk_full():
    pair = connect(KVP, guest={"max_items": 2})
    assert pair.vsp.set(0, "a", "1").ok and pair.vsp.set(0, "b", "2").ok
    assert pair.vsp.set(0, "c", "3").status == f.HV_ERROR_DISK_FULL
    assert pair.vsp.set(0, "a", "changed").ok                   # replacing needs no room


def _wire_set(key_size=None, value_type=p.REG_SZ, value=b"v\0\0\0", op=p.SET):
    body = bytearray(p.request(p.KvpMessage(p.SET, 0, "key", "v")))
    body[0] = op
    struct.pack_into("<I", body, 4, value_type)
    if key_size is not None:
        struct.pack_into("<I", body, 8, key_size)
    body[528:528 + len(value)] = value
    return bytes(body)


@pytest.mark.parametrize("body, status", [
    (_wire_set(key_size=600), f.HV_E_FAIL),                       # oversized key
    (_wire_set(key_size=4), f.HV_E_FAIL),                         # not NUL-terminated ("ke")
    (_wire_set(value_type=3), f.HV_E_FAIL),                       # unknown value type
    (_wire_set(op=p.SET_IP_INFO), f.HV_ERROR_NOT_SUPPORTED),
    (_wire_set()[:100], f.HV_E_FAIL),                             # short
])
def test_malformed_requests_on_the_wire_are_refused(body, status):
    vsc, host_end, sent = hostile_host(KVP)
    negotiate(host_end, sent, ["3.0"], ["4.0"])
    host_end.send(request(f.KVP_EXCHANGE, body, version=(4, 0), trans_id=2), trans_id=2)
    assert f.decode(sent[-1].payload)[0].status == status and vsc.pools[0] == {} and vsc.rejected == 1


def test_numeric_values_are_kept_as_decimal_text():
    vsc, host_end, sent = hostile_host(KVP)
    negotiate(host_end, sent, ["3.0"], ["4.0"])
    for n, (vtype, raw) in enumerate([(p.REG_U32, struct.pack("<I", 4_000_000_000)),
                                      (p.REG_U64, struct.pack("<Q", 2**40))], start=2):
        body = bytearray(_wire_set(value_type=vtype, value=raw))
        body[16:22] = f"n{n}\0".encode("utf-16-le")                 # key "n2", "n3"
        struct.pack_into("<I", body, 8, 6)
        host_end.send(request(f.KVP_EXCHANGE, bytes(body), version=(4, 0), trans_id=n), trans_id=n)
    assert vsc.pools[0] == {"n2": "4000000000", "n3": str(2**40)}


def test_requests_queue_behind_each_other_in_order():
    pair = connect(KVP)
    results = []
    for i in range(50):
        pair.vsp.set(0, f"k{i}", str(i), on_done=lambda ex: results.append(ex.request.key))
    assert results == [f"k{i}" for i in range(50)] and len(pair.vsc.pools[0]) == 50
