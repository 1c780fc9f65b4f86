"""The datacenter's digest: the same seed gives the same digest for the whole datacenter, another
seed another one; hosts' seeds are derived from the datacenter's and their names unless pinned;
message traffic goes into the digest; a host alone in a datacenter runs as it runs by itself."""
import dataclasses
from pathlib import Path

from partitions.config import default_config, from_dict, load
from partitions.config_schema import DatacenterConfig, DatacenterHostConfig, LinkConfig
from partitions.datacenter import Datacenter, host_seed
from partitions.management import ManagedHost

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-hosts.toml"
# The example, with a VM doing random disk I/O on host-b: the seed decides its offsets, so
# another seed must give another run.
WITH_DISK = Path(EXAMPLE).read_text().replace('workload = { kind = "cpu-burn", duty = 1.0 }', """\
workload = { kind = "cpu-burn", duty = 1.0 }

[[host.vm]]
name = "db"
memory = "256MiB"
workload = { kind = "disk-io", pattern = "random", queue_depth = 2 }
disks = [ { path = "db.vhd", size = "16MiB" } ]""")


def with_disk(tmp_path):
    path = tmp_path / "dc.toml"
    path.write_text(WITH_DISK)
    return load(path)


def run(tmp_path, name, *, seed=None, config=None, until="300ms", ping=False):
    dc = Datacenter(config or with_disk(tmp_path), seed=seed, workdir=tmp_path / name)
    if ping:
        dc.hosts["host-b"].handle("ping", lambda m: dc.hosts["host-b"].send("host-a", "pong", m.payload))
        dc.hosts["host-a"].handle("pong", lambda m: None)
        dc.send("host-a", "host-b", "ping", b"1", size=4096)
    dc.run(until)
    summary = dc.summary()
    dc.close()
    return summary


def test_the_same_seed_gives_the_same_digest_and_another_seed_another(tmp_path):
    a, b = run(tmp_path, "a", seed=5), run(tmp_path, "b", seed=5)
    assert a["trace_digest"] == b["trace_digest"]
    assert {n: h["trace_digest"] for n, h in a["hosts"].items()} == {n: h["trace_digest"] for n, h in b["hosts"].items()}
    c = run(tmp_path, "c", seed=6)
    assert c["trace_digest"] != a["trace_digest"]
    assert all(c["hosts"][n]["seed"] != a["hosts"][n]["seed"] for n in a["hosts"])


def test_host_seeds_are_derived_from_the_datacenter_seed_and_the_name_unless_pinned(tmp_path):
    s = run(tmp_path, "a", until="10ms")
    assert s["seed"] == 0                                      # the example's [datacenter] seed
    assert {n: h["seed"] for n, h in s["hosts"].items()} == {n: host_seed(0, n) for n in ("host-a", "host-b")}
    assert host_seed(0, "host-a") != host_seed(0, "host-b") != host_seed(1, "host-b")
    config = with_disk(tmp_path)
    a = config.host("host-a")
    pinned = dataclasses.replace(a, config=dataclasses.replace(a.config, host=dataclasses.replace(a.config.host,
                                                                                                  seed=99)))
    config = dataclasses.replace(config, hosts=(pinned, config.host("host-b")))
    s = run(tmp_path, "b", config=config, until="10ms")
    assert s["hosts"]["host-a"]["seed"] == 99 and s["hosts"]["host-b"]["seed"] == host_seed(0, "host-b")
    # A seed given to the datacenter (hvsim run --seed) wins over the file, pinned ones too.
    s = run(tmp_path, "c", config=config, seed=3, until="10ms")
    assert s["hosts"]["host-a"]["seed"] == host_seed(3, "host-a")


def test_link_traffic_goes_into_the_digest(tmp_path):
    quiet, busy = run(tmp_path, "a", until="50ms"), run(tmp_path, "b", until="50ms", ping=True)
    assert busy["links"][0]["directions"][0]["messages"] == 1 and busy["links"][0]["directions"][1]["messages"] == 1
    assert busy["trace_digest"] != quiet["trace_digest"]
    # The messages touch no host: their handlers did nothing to the VMs, so each host ran the same.
    assert {n: h["trace_digest"] for n, h in busy["hosts"].items()} == \
           {n: h["trace_digest"] for n, h in quiet["hosts"].items()}
    assert busy["trace_digest"] == run(tmp_path, "c", until="50ms", ping=True)["trace_digest"]


def test_a_host_alone_in_a_datacenter_runs_as_it_runs_by_itself(tmp_path):
    # Without links a window is 100 ms, the steps ManagedHost.run takes itself: the default host
    # in a datacenter of one, seeded as by itself, gives the very digest of the host run alone.
    config = default_config(tmp_path / "disks")
    alone = ManagedHost(config, seed=7, workdir=tmp_path / "alone")
    alone.run("1s")
    digest = alone.host.trace_digest().hex()
    alone.close()
    pinned = dataclasses.replace(config, host=dataclasses.replace(config.host, seed=7))
    dc = Datacenter(DatacenterConfig((DatacenterHostConfig("solo", pinned),)), workdir=tmp_path / "dc")
    dc.run("1s")
    assert dc.summary()["hosts"]["solo"]["trace_digest"] == digest
    dc.close()


def test_a_host_in_windows_of_a_short_link_runs_as_it_runs_by_itself(tmp_path):
    # A 50 us link cuts the default host's run (CPU controls, network and disk traffic) into
    # windows of 50 us: its trace must still be the one of its own 100 ms steps. (It was not
    # while a run's end charged the VPs on LPs, which moved the scheduler's rejoin floor.)
    config = default_config(tmp_path / "disks")
    alone = ManagedHost(config, seed=7, workdir=tmp_path / "alone")
    alone.run("300ms")
    digest = alone.host.trace_digest().hex()
    alone.close()
    pinned = dataclasses.replace(config, host=dataclasses.replace(config.host, seed=7))
    other = from_dict({"host": {"logical_processors": 1}, "vm": [{"name": "idle", "memory": "64MiB"}]},
                      base_dir=tmp_path / "other")
    dc = Datacenter(DatacenterConfig((DatacenterHostConfig("solo", pinned), DatacenterHostConfig("other", other)),
                                     (LinkConfig(("solo", "other"), 10_000_000_000, 50_000),)),
                    workdir=tmp_path / "dc")
    dc.run("300ms")
    summary = dc.summary()
    dc.close()
    assert summary["windows"] >= 6000
    assert summary["hosts"]["solo"]["trace_digest"] == digest
