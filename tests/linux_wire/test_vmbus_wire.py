"""The VMBus channel manager against CHANNELMSG_MODIFYCHANNEL as Linux sends it
(drivers/hv/channel.c vmbus_send_modifychannel, include/linux/hyperv.h
struct vmbus_channel_modifychannel / _response)."""
import struct

import pytest

from tests.vmbus.test_server import Harness, spec
from vmbus import protocol as p

MODIFYCHANNEL, MODIFYCHANNEL_RESPONSE = 22, 24


def modifychannel(relid: int, target_vp: int) -> bytes:
    """vmbus_send_modifychannel: header {msgtype 22, padding 0}, child_relid u32, target_vp u32;
    posted with sizeof(struct vmbus_channel_modifychannel) = 16 bytes."""
    return struct.pack("<IIII", MODIFYCHANNEL, 0, relid, target_vp)


def raw_sends(hs: Harness) -> list[bytes]:
    """The bytes of every message the manager posts to the guest from now on."""
    raw, send = [], hs.n.send
    hs.n.send = lambda message, vp, sint: raw.append(bytes(message)) or send(message, vp, sint)
    return raw


class Modifying(Harness):
    def __init__(self):
        super().__init__()
        self.modified = []
        self.n.modify_channel = lambda relid, vp: self.modified.append((relid, vp)) or 0


def test_modifychannel_at_5_3_moves_the_channel_and_is_answered_as_linux_waits_for():
    hs = Modifying()
    (relid,) = hs.ready(spec())
    hs.open_channel(relid)
    raw = raw_sends(hs)
    hs.m.handle_message(modifychannel(relid, 3), connection_id=hs.m.msg_conn_id)
    # channel_mgmt.c's table: MODIFYCHANNEL_RESPONSE is at least sizeof(the response), 16 bytes:
    # header, child_relid, status (0 = success).
    assert raw == [struct.pack("<IIII", MODIFYCHANNEL_RESPONSE, 0, relid, 0)]
    assert hs.modified == [(relid, 3)] and hs.m.channel_target_vp(relid) == 3


def test_modifychannel_before_5_3_has_no_response_and_before_4_1_is_ignored():
    hs = Modifying()
    (relid,) = hs.ready(spec(), version=p.VERSION_WIN10_V4_1)
    hs.open_channel(relid)
    hs.n.take()
    hs.m.handle_message(modifychannel(relid, 1), connection_id=1)
    assert [c for c in hs.n.take() if c[0] == "send"] == []
    assert hs.m.channel_target_vp(relid) == 1
    old = Modifying()
    (relid,) = old.ready(spec(), version=p.VERSION_WIN10)
    old.open_channel(relid)
    old.m.handle_message(modifychannel(relid, 1), connection_id=1)
    assert old.modified == [] and old.m.channel_target_vp(relid) == 0


@pytest.mark.parametrize("opened", [False, True])
def test_modifychannel_of_a_channel_not_open_or_refused_changes_nothing(opened):
    hs = Harness()
    (relid,) = hs.ready(spec())
    if opened:
        hs.open_channel(relid)
        hs.n.modify_channel = lambda relid, vp: p.STATUS_UNSUCCESSFUL   # e.g. no such VP
    raw = raw_sends(hs)
    hs.m.handle_message(modifychannel(relid, 9), connection_id=hs.m.msg_conn_id)
    assert raw == [struct.pack("<IIII", MODIFYCHANNEL_RESPONSE, 0, relid, p.STATUS_UNSUCCESSFUL)]
    assert hs.m.channel_target_vp(relid) == 0
