"""Shared storage: [[storage]] tables and their links in a datacenter file, a disk on a storage
owned by one host at a time, and disk I/O that crosses the host's link to the storage before its
medium (the same due time on storvsp's Python path and its C plane)."""
import json

import pytest

from hypervisor._binding import StorageLink
from partitions.config import loads
from partitions.config_schema import ConfigError, dump
from partitions.datacenter import Datacenter
from partitions.datacenter.storage import StorageOwnershipError
from tests.drivers.storage.test_storvsp_plane import RW_PAGES, PlaneRig, io, templates  # noqa: F401 (fixture)

US = 1_000

SAN = """
[[host]]
name = "a"
logical_processors = 1
memory = "1GiB"

[[host.vm]]
name = "db"
memory = "64MiB"
disks = [ { path = "san/db.vhd", size = "16MiB" } ]
workload = { kind = "disk-io", pattern = "random", block_size = 4096, queue_depth = 4, read_fraction = 0.5 }

[[host]]
name = "b"
logical_processors = 1
memory = "1GiB"

[[storage]]
name = "san"
kind = "iscsi"
directory = "san"

[[link]]
hosts = ["a", "san"]
bandwidth = "1Gbit/s"
latency = "100us"

[[link]]
hosts = ["san", "b"]
bandwidth = "2Gbit/s"
latency = "50us"
"""


# ---- the model: a request crosses the link, then its medium -----------------------------------

def _ceil(a, b):
    return -(-a // b)


@pytest.mark.parametrize("mode", ["python", "c"])
def test_io_on_a_storage_completes_when_the_link_and_the_medium_say(templates, tmp_path, mode):  # noqa: F811
    """Three requests on two LUNs of one host, both LUNs on one storage link: each queues on the
    link behind the ones before it (its bits at the link's bandwidth, then the link's latency),
    then on its LUN's medium (latency + bytes at the disk's bandwidth). Both paths complete each
    one at exactly that time, not a nanosecond before."""
    link_bw, link_lat = 1_000_000_000, 200 * US            # bits/s, ns
    disk_bw, disk_lat = 500_000_000, 100 * US              # bytes/s, ns
    link = StorageLink(link_bw, link_lat)
    r = PlaneRig(mode, templates, tmp_path, luns=2, links=[link, link], latency=disk_lat, bandwidth=disk_bw)
    r.run(0)                            # the negotiation's replies
    first = r.trans_id + 1
    requests = [(False, 0, 8, 0), (True, 64, 16, 0), (False, 128, 8, 1)]   # (write, lba, blocks, lun)
    r.batch([io(w, lba, n, RW_PAGES[i * 4:i * 4 + 4], lun=lun) for i, (w, lba, n, lun) in enumerate(requests)])
    expected, link_free, medium_free = {}, 0, {0: 0, 1: 0}
    for i, (_, _, blocks, lun) in enumerate(requests):
        nbytes = blocks * 512
        link_free += _ceil(nbytes * 8 * 10**9, link_bw)          # all three were sent at 0, in order
        arrival = link_free + link_lat
        medium_free[lun] = max(arrival, medium_free[lun]) + disk_lat + _ceil(nbytes * 10**9, disk_bw)
        expected[first + i] = medium_free[lun]
    assert sorted(expected.values()) == [340_960, 439_264, 457_344]   # the derivation above, worked out by hand
    for trans_id, due in sorted(expected.items(), key=lambda kv: kv[1]):
        seen = len(r.replies)
        r.run(due - 1 - r.ctx.time)
        assert len(r.replies) == seen, f"request {trans_id} completed before its due time {due}"
        r.run(1)
        assert [pk[2] for pk in r.replies[seen:]] == [trans_id]
    assert (link.requests, link.bytes, link.busy_until) == (3, 16 * 512 + 2 * 8 * 512, link_free)
    assert link.queued_ns == 32_768 + 98_304   # the second waited for the first, the third for both
    r.vsp.on_close()


def test_a_disk_without_a_link_takes_its_medium_time_alone(templates, tmp_path):  # noqa: F811
    r = PlaneRig("c", templates, tmp_path, latency=100 * US, bandwidth=500_000_000)
    r.batch([io(False, 0, 8, RW_PAGES[:1])])
    r.run(100 * US + 8_192 - 1)
    assert len(r.replies) == 4        # the negotiation's replies only
    r.run(1)
    assert len(r.replies) == 5
    r.vsp.on_close()


# ---- configuration ------------------------------------------------------------------------------

def test_a_storage_and_its_links_load_and_dump_back(tmp_path):
    config = loads(SAN, base_dir=tmp_path)
    (san,) = config.storage
    assert (san.name, san.kind, san.directory) == ("san", "iscsi", tmp_path / "san")
    assert [(l.host, l.bandwidth, l.latency) for l in san.links] == [("a", 10**9, 100 * US), ("b", 2 * 10**9, 50 * US)]
    assert config.links == ()          # links to a storage are not host links: they shorten no window
    assert loads(dump(config, relative_to=tmp_path), base_dir=tmp_path) == config


@pytest.mark.parametrize("change, key, expected", [
    (('kind = "iscsi"', 'kind = "nfs"'), "storage[0].kind", 'one of "iscsi", "fc"'),
    (('name = "san"', 'name = "a"'), "storage[0].name", "a name (hosts and storages"),
    (('hosts = ["san", "b"]', 'hosts = ["san", "c"]'), "link[1].hosts[1]", 'the name of the [[host]] that reaches'),
    (('hosts = ["san", "b"]', 'hosts = ["san", "san"]'), "link[1].hosts", "a host and the storage it reaches"),
    (('hosts = ["a", "san"]\nbandwidth = "1Gbit/s"', 'hosts = ["a", "san"]\nbandwidth = 5'), "link[0].bandwidth",
     "a bandwidth with a unit"),
    (('hosts = ["a", "san"]', 'hosts = ["b", "san"]'), "link[1].hosts", 'one link from host "b" to storage "san"'),
])
def test_configuration_errors_name_the_file_the_key_and_what_was_expected(tmp_path, change, key, expected):
    text = SAN.replace(*change)
    assert text != SAN
    with pytest.raises(ConfigError) as e:
        loads(text, file="san.toml", base_dir=tmp_path)
    assert e.value.file == "san.toml" and e.value.key == key and expected in e.value.expected


def test_a_vm_whose_host_has_no_link_to_the_storage_of_its_disk_is_refused(tmp_path):
    text = SAN.replace('[[link]]\nhosts = ["a", "san"]\nbandwidth = "1Gbit/s"\nlatency = "100us"\n', "")
    with pytest.raises(ConfigError) as e:
        loads(text, file="san.toml", base_dir=tmp_path)
    assert e.value.key == "host[0].vm[0].disks[0].path"
    assert 'it is on storage "san", and no [[link]] joins them (hosts = ["a", "san"])' in str(e.value)


# ---- ownership ------------------------------------------------------------------------------------

def test_a_disk_is_owned_by_the_host_of_its_vm_and_moves_only_by_transfer(tmp_path):
    dc = Datacenter(loads(SAN, base_dir=tmp_path), seed=1, workdir=tmp_path / "run")
    try:
        san = dc.storage["san"]
        assert san.owner("db.vhd") == "a"
        disk = tmp_path / "san" / "db.vhd"
        with pytest.raises(StorageOwnershipError, match="owned by host 'a' .VM 'db' uses it.; host 'b' cannot open"):
            dc.hosts["b"].managed.storage.attach("intruder", [disk])
        dc.run("50ms")
        with pytest.raises(StorageOwnershipError, match="in use by VM 'db' on host 'a'"):
            san.transfer("db.vhd", to="b")
        assert san.owner("db.vhd") == "a" and san.transfers == []
        dc.hosts["a"].managed.vms["db"].turn_off()
        san.transfer("db.vhd", to="b")
        assert san.owner("db.vhd") == "b"
        assert san.transfers == [{"time_ns": 50_000_000, "storage": "san", "disk": "db.vhd", "from": "a", "to": "b"}]
        assert dc.hosts["b"].managed.storage.attach("db", [disk]) == [san.links["b"]]
        with pytest.raises(StorageOwnershipError, match="owned by host 'b'"):
            dc.hosts["a"].managed.storage.attach("db", [disk])
        with pytest.raises(StorageOwnershipError, match="not on storage 'san'"):
            san.transfer("../elsewhere.vhd", to="a")
    finally:
        dc.close()


# ---- a whole datacenter --------------------------------------------------------------------------

def _run(tmp_path, name, seed=7, until="300ms"):
    dc = Datacenter(loads(SAN, base_dir=tmp_path / name), seed=seed, workdir=tmp_path / name / "run")
    try:
        dc.run(until)
        return dc.summary()
    finally:
        dc.close()


def test_the_summary_shows_each_storage_link_and_the_disk_io_crossed_it(tmp_path):
    summary = _run(tmp_path, "one")
    (san,) = summary["storage"]
    a, b = san["links"]
    disk = summary["hosts"]["a"]["measure"][0]
    moved = (disk["AggregatedDiskDataRead(M)"] + disk["AggregatedDiskDataWritten(M)"]) * 1e6
    done = disk["AggregatedNormalizedIOCount"]   # 4 KiB requests completed; up to 4 more are in flight
    assert a["host"] == "a" and done > 0 and done <= a["requests"] <= done + 4
    assert moved - 1 <= a["bytes"] <= moved + 1 + 4 * 4096 and 0 < a["utilisation"] < 1
    assert (b["requests"], b["bytes"]) == (0, 0) and san["owners"] == {"db.vhd": "a"}
    json.dumps(summary)   # plain data, as --json prints it


def test_the_same_seed_gives_the_same_digest_and_the_link_slows_the_disk(tmp_path):
    one, two = _run(tmp_path, "one"), _run(tmp_path, "two")
    assert one["trace_digest"] == two["trace_digest"]
    assert one["storage"][0]["links"][0] == two["storage"][0]["links"][0]
    # The same VM with its disk off the storage does more I/O in the same time: each request no
    # longer waits 100 us of link latency and its transmission.
    local = loads(SAN.replace('path = "san/db.vhd"', 'path = "local/db.vhd"'), base_dir=tmp_path / "three")
    dc = Datacenter(local, seed=7, workdir=tmp_path / "three" / "run")
    try:
        dc.run("300ms")
        alone = dc.summary()["hosts"]["a"]["measure"][0]["AggregatedNormalizedIOCount"]
    finally:
        dc.close()
    assert alone > one["hosts"]["a"]["measure"][0]["AggregatedNormalizedIOCount"]


def test_the_example_runs_and_its_vm_quick_migrates(tmp_path):
    import shutil
    from pathlib import Path
    from partitions.config import load
    example = Path(__file__).parents[2] / "examples" / "san.toml"
    shutil.copy(example, tmp_path / "san.toml")
    dc = Datacenter(load(tmp_path / "san.toml"), seed=0, workdir=tmp_path / "run")
    try:
        dc.run("1s")
        san = dc.storage["san"]
        assert san.owner("db.vhd") == "host-a" and san.links["host-a"].requests > 0
        dc.run("1.001s")
        (move,) = dc.quick_migrations                     # the timeline's quick-move, at 1 s
        dc.run(move.saved_ns + 10**8 + move.memory_bytes * 8 + 10**6)   # past the read back at 1 Gbit/s
        assert move.outcome == "completed" and san.owner("db.vhd") == "host-b"
        vm = dc.hosts["host-b"].managed.vms["db"]
        issued = vm.workload_states[0]["issued"]
        dc.run(dc.now + 100_000_000)
        assert vm.workload_states[0]["issued"] > issued and san.links["host-b"].requests > 0
    finally:
        dc.close()


def test_the_c_plane_and_the_python_path_give_the_same_datacenter_over_a_storage_link(tmp_path, monkeypatch):
    from drivers.storage.vsp import StorVsp
    results, served = [], []
    for mode in ("python", "c"):
        monkeypatch.setattr(StorVsp, "DATA_PLANE", mode)
        dc = Datacenter(loads(SAN, base_dir=tmp_path / mode), seed=7, workdir=tmp_path / mode / "run")
        try:
            dc.run("200ms")
            plane = dc.hosts["a"].managed.vms["db"].device_vsp("storage")._plane
            served.append(plane.completed if plane is not None else None)
            s = dc.summary()
            results.append((s["trace_digest"], s["storage"][0]["links"], s["hosts"]["a"]["measure"]))
        finally:
            dc.close()
    assert served[0] is None and served[1] > 0          # the C plane did serve the second run
    assert results[0] == results[1] and results[0][1][0]["requests"] > 0
