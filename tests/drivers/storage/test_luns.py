"""Several disks on one synthetic SCSI controller: storvsp serves them as LUNs 0..n-1 and lists
them in REPORT LUNS; storvsc discovers them and addresses each by its LUN; each disk's medium keeps
its own time; per-LUN counters; a LUN that is absent or unusable leaves the others working."""
import struct

from hypothesis import given
from hypothesis import strategies as st

from drivers.storage import protocol as p
from drivers.storage.protocol import SrbStatus
from drivers.storage.scsi import report_luns
from drivers.storage.vhd import VirtualDisk
from drivers.storage.vsc import State
from drivers.storage.vsp import MAX_LUNS
from tests.drivers.storage.test_storvsp import GPA_DIRECT, Rig, gpa, srb
from vmbus.protocol import GpaRange

MS = 1_000_000
MIB = 1 << 20


def make_disks(tmp_path, sizes):
    return [VirtualDisk.create(tmp_path / f"d{i}.vhd", size, "dynamic", write_barriers=False)
            for i, size in enumerate(sizes)]


def rig_with(disks, **vsp):
    return Rig(None, vsp={"disk": None, "disks": disks, **vsp})


def test_the_guest_finds_every_disk_at_its_lun_with_its_capacity(tmp_path):
    disks = make_disks(tmp_path, [1 * MIB, 2 * MIB, 3 * MIB])
    rig = rig_with(disks).open()
    assert sorted(rig.vsc.luns) == [0, 1, 2]
    assert [rig.vsc.disk(i).capacity for i in range(3)] == [2048, 4096, 6144]
    assert rig.vsc.capacity == 2048 and rig.vsc.inquiry[8:12] == b"Msft"   # LUN 0's, as before


def test_each_lun_reads_and_writes_its_own_file(tmp_path):
    disks = make_disks(tmp_path, [1 * MIB, 1 * MIB, 1 * MIB])
    rig = rig_with(disks).open()
    writes = [rig.vsc.disk(lun).write(8, bytes([0x10 + lun]) * 1024) for lun in range(3)]
    rig.run(10 * MS)
    assert all(w.ok for w in writes)
    for lun, disk in enumerate(disks):
        assert disk.read(8 * 512, 1024) == bytes([0x10 + lun]) * 1024
    reads = [rig.vsc.disk(lun).read(8, 2) for lun in (2, 0)]
    rig.run(10 * MS)
    assert [r.data for r in reads] == [b"\x12" * 1024, b"\x10" * 1024]


def test_counters_per_lun(tmp_path):
    disks = make_disks(tmp_path, [1 * MIB, 1 * MIB])
    rig = rig_with(disks).open()
    d1 = rig.vsc.disk(1)
    d1.write(0, b"a" * 4096)
    d1.write(8, b"b" * 512)
    d1.read(0, 4)
    d1.flush()
    rig.vsc.disk(0).read(0, 1)
    rig.run(10 * MS)
    counters = rig.vsp.counters()
    by_lun = {entry["lun"]: entry for entry in counters["luns"]}
    assert by_lun[1] == {"lun": 1, "path": disks[1].path, "read_ops": 1, "read_bytes": 2048, "write_ops": 2,
                         "write_bytes": 4608, "flushes": 1, "errors": 0}
    assert (by_lun[0]["read_ops"], by_lun[0]["read_bytes"], by_lun[0]["write_ops"]) == (1, 512, 0)


def test_each_medium_keeps_its_own_time(tmp_path):
    disks = make_disks(tmp_path, [1 * MIB, 1 * MIB])
    rig = rig_with(disks, latency="1ms", bandwidth="1GB/s").open()
    t0 = rig.host_ctx.time
    done = {}
    for name, disk in (("lun0-a", rig.vsc.disk(0)), ("lun0-b", rig.vsc.disk(0)), ("lun1", rig.vsc.disk(1))):
        disk.read(0, 1, callback=lambda r, name=name: done.setdefault(name, rig.host_ctx.time - t0))
    rig.run(10 * MS)
    # Two disks work side by side; two requests on one disk take turns.
    assert done["lun0-a"] == done["lun1"]
    assert done["lun0-b"] > done["lun0-a"]


def test_report_luns_lists_the_disks_that_are_there(tmp_path):
    disks = make_disks(tmp_path, [1 * MIB, 1 * MIB])
    missing = str(tmp_path / "missing.vhd")
    rig = rig_with([disks[0], missing, disks[1]]).open()
    assert sorted(rig.vsc.luns) == [0, 2]
    assert any(event == "storvsp has no disk" and fields["lun"] == 1 for _, event, fields in rig.host_ctx.events)
    raw = rig.vsc.execute(p.cdb_report_luns(64), data_in=64, lun=5)   # any LUN may be asked
    to_absent = rig.vsc.execute(p.cdb_test_unit_ready(), lun=1)
    rig.run(1 * MS)
    assert raw.ok and raw.data == struct.pack(">II", 16, 0) + p.lun_entry(0) + p.lun_entry(2)
    assert to_absent.srb_status == SrbStatus.INVALID_LUN


def test_an_srb_past_the_disks_is_invalid_lun_and_the_channel_goes_on(tmp_path):
    disks = make_disks(tmp_path, [1 * MIB, 1 * MIB])
    rig = rig_with(disks).open()
    pfn = rig.pool.pfns[0]
    cases = ((0xB001, {"lun": 2}), (0xB002, {"target_id": 1, "lun": 1}), (0xB003, {"path_id": 1}))
    for t, fields in cases:
        rig.guest_end.send(gpa([GpaRange(512, 0, (pfn,))], srb(p.cdb_rw(False, 0, 1), p.DATA_IN, 512, **fields)),
                           packet_type=GPA_DIRECT, trans_id=t, flags=1)
    rig.run(1 * MS)
    for t, _ in cases:
        assert rig.reply(t)[1].srb_status == SrbStatus.INVALID_LUN
    again = rig.vsc.disk(1).read(0, 1)
    rig.run(1 * MS)
    assert again.ok


def test_a_target_without_report_luns_still_gives_lun_0(tmp_path):
    disks = make_disks(tmp_path, [1 * MIB, 1 * MIB])
    rig = rig_with(disks)
    real = rig.vsp._execute_srb

    def older_target(trans_id, vp, ranges):   # REPORT LUNS is an unknown opcode to it
        request = p.ScsiRequest.decode(vp.body)
        if request.cdb[:1] == bytes([p.Op.REPORT_LUNS]):
            rig.vsp._complete(trans_id, request, report_luns(b"\0", [], 0))
            return
        real(trans_id, vp, ranges)

    rig.vsp._execute_srb = older_target
    rig.open()
    assert sorted(rig.vsc.luns) == [0]


def test_no_usable_disk_fails_the_controller_with_the_reason(tmp_path):
    rig = rig_with([str(tmp_path / "gone.vhd")])
    rig.vsc.on_open()
    rig.run(1 * MS)
    assert rig.vsc.state is State.FAILED and "LUN 0" in rig.vsc.error and "INVALID_LUN" in rig.vsc.error


def test_report_luns_decodes_its_cdb_first():
    for cdb in (p.cdb_report_luns(8), p.cdb_report_luns(64, select_report=3), p.cdb_report_luns(64)[:10]):
        result = report_luns(cdb, [0, 1], 4096)
        assert result.sense is not None and p.parse_sense(result.sense)[:2] == (
            p.SenseKey.ILLEGAL_REQUEST, p.Asc.INVALID_FIELD_IN_CDB)
    well_known_only = report_luns(p.cdb_report_luns(64, select_report=1), [0, 1], 4096)
    buffer = bytearray(64)
    assert well_known_only.execute(buffer).transferred == 8 and bytes(buffer[:8]) == bytes(8)


def test_more_disks_than_a_controller_takes_are_cut_and_logged(tmp_path):
    disk = make_disks(tmp_path, [1 * MIB])[0]
    rig = rig_with([disk] + [str(tmp_path / f"x{i}.vhd") for i in range(MAX_LUNS)])
    assert len(rig.vsp.luns) == MAX_LUNS
    assert any(event == "storvsp has too many disks" for _, event, _ in rig.host_ctx.events)


@given(st.binary(max_size=600))
def test_lun_lists_from_a_hostile_host_never_raise_past_storerror(data):
    try:
        luns = p.parse_report_luns(data)
    except p.StorError:
        assert len(data) < 8
        return
    assert len(luns) == len(set(luns)) and all(0 <= lun < 256 for lun in luns)
    assert len(luns) <= (len(data) - 8) // 8
