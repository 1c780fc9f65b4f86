"""Datacenter files: [[host]] tables with their own VMs and switches, [[link]] tables, one
timeline; every cross-table problem named by file and key; a single-host file unchanged."""
import dataclasses

import pytest

from partitions.config import DEFAULT_TOML, ConfigError, default_config, loads
from partitions.config_schema import GIB, MIB, Config, DatacenterConfig, LinkConfig

TWO_HOSTS = """\
[datacenter]
seed = 7

[[host]]
name = "a"
logical_processors = 2
memory = "4GiB"

[[host.switch]]
name = "lan"

[[host.vm]]
name = "web"
memory = "256MiB"
nics = [ { switch = "lan", ip = "10.0.0.2/24" } ]
workload = { kind = "net-request-response", peer = "cache" }

[[host.vm]]
name = "cache"
memory = "128MiB"
nics = [ { switch = "lan", ip = "10.0.0.3/24" } ]

[[host]]
name = "b"
seed = 42
scheduler = "core"
smt = 2

[[host.vm]]
name = "db"
processors = 2

[[link]]
hosts = ["a", "b"]
bandwidth = "10Gbit/s"
latency = "50us"

[[at]]
time = "1s"
action = "pause"
vm = "db"

[[at]]
time = "2s"
action = "pause"
vm = "web"
"""


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads(text, file="dc.toml")
    return info.value


def test_a_datacenter_file_gives_each_host_its_own_configuration():
    dc = loads(TWO_HOSTS, file="dc.toml")
    assert isinstance(dc, DatacenterConfig) and dc.seed == 7
    a, b = dc.hosts
    assert (a.name, b.name) == ("a", "b")
    assert isinstance(a.config, Config)
    assert (a.config.host.logical_processors, a.config.host.memory, a.config.host.seed) == (2, 4 * GIB, None)
    assert (b.config.host.scheduler, b.config.host.smt, b.config.host.seed) == ("core", 2, 42)
    assert [vm.name for vm in a.config.vms] == ["web", "cache"] and [vm.name for vm in b.config.vms] == ["db"]
    assert [sw.name for sw in a.config.switches] == ["lan"] and b.config.switches == ()
    assert a.config.vm("cache").memory == 128 * MIB and all(n.mac for n in a.config.vm("web").nics)
    assert dc.links == (LinkConfig(("a", "b"), 10 * 10**9, 50_000),)
    # One timeline in the file; each host gets the entries naming its VMs, in file order.
    assert [at.vm for at in dc.timeline] == ["db", "web"]
    assert [at.vm for at in a.config.timeline] == ["web"] and [at.vm for at in b.config.timeline] == ["db"]
    assert dc.host_of("cache") == "a" and dc.host("b").config.vms[0].processors == 2


@pytest.mark.parametrize("text, bits", [
    ("10Gbit/s", 10 * 10**9), ("100Mbit/s", 10**8), ("2.5Gbps", 25 * 10**8), ("1kbit/s", 1000),
    ("1.25GB/s", 10**10), ("1GiB/s", 8 * 2**30),
])
def test_bandwidth_takes_bits_or_bytes_per_second(text, bits):
    dc = loads(TWO_HOSTS.replace('"10Gbit/s"', f'"{text}"'))
    assert dc.links[0].bandwidth == bits


@pytest.mark.parametrize("old, new, key, expected", [
    # the list: an unknown host in a link, a link to itself, duplicate host names,
    # duplicate VM names across the datacenter, [[at]] naming an unknown VM
    ('hosts = ["a", "b"]', 'hosts = ["a", "c"]', "link[0].hosts[1]", 'the name of a [[host]] (one of "a", "b")'),
    ('hosts = ["a", "b"]', 'hosts = ["b", "b"]', "link[0].hosts", "two different hosts"),
    ('name = "b"\nseed', 'name = "a"\nseed', "host[1].name", "a host name used once"),
    ('name = "db"', 'name = "cache"', "host[1].vm[0].name", "a VM name (VM names are the datacenter's) used once"),
    ('vm = "db"', 'vm = "dbx"', "at[0].vm", "the name of a VM of one of the hosts"),
    # each host's own tables, named under it
    ('name = "db"\nprocessors = 2', 'name = "db"\nprocessors = 2\nmemory = "1GB"', "host[1].vm[0].memory",
     "a size from"),
    ('name = "db"\nprocessors = 2', 'name = "db"\nprocessors = 8', "host[1].vm[0].processors",
     "an integer from 1 to 4"),
    ('switch = "lan", ip = "10.0.0.3/24"', 'switch = "wan", ip = "10.0.0.3/24"', "host[0].vm[1].nics[0].switch",
     'the name of a [[switch]] (one of "lan")'),
    ('memory = "4GiB"', 'memory = "256MiB"', "host[0].vm[1].memory", "VM memory that fits in the host's 256MiB"),
    ('smt = 2', 'smt = 3', "host[1].smt", "a number of threads per core"),
    ('scheduler = "core"', 'scheduler = "cor"', "host[1].scheduler", '"classic", "core"'),
    ('name = "a"', 'name = "a b"', "host[0].name", "a name of letters"),
    ('name = "a"', 'nam = "a"', "host[0].nam", "one of the keys name,"),
    ('latency = "50us"', 'latency = "0s"', "link[0].latency", "a positive duration"),
    ('latency = "50us"', '', "link[0].latency", "a positive duration"),
    ('bandwidth = "10Gbit/s"', 'bandwidth = 10000', "link[0].bandwidth", 'a bandwidth with a unit'),
    ('bandwidth = "10Gbit/s"', 'bandwidth = "10Gb"', "link[0].bandwidth", 'a bandwidth with a unit'),
    ('bandwidth = "10Gbit/s"', 'bandwidth = "0bit/s"', "link[0].bandwidth", 'a bandwidth with a unit'),
    ('hosts = ["a", "b"]', 'hosts = "a"', "link[0].hosts", "the names of the two hosts"),
    ('hosts = ["a", "b"]', 'hosts = ["a", "b"]\nspeed = 1', "link[0].speed", "one of the keys hosts, bandwidth"),
    ('seed = 7', 'seed = -1', "datacenter.seed", "an integer from 0"),
    # the timeline is read per host, with the file's own [[at]] keys
    ('time = "2s"\naction = "pause"', 'time = "2s"\naction = "resume"', "at[1].action",
     'an action VM "web" can take'),
])
def test_every_problem_names_the_file_and_key(old, new, key, expected):
    assert old in TWO_HOSTS
    exc = error(TWO_HOSTS.replace(old, new, 1))
    assert exc.file == "dc.toml" and exc.key == key, str(exc)
    assert expected in exc.expected, str(exc)
    assert str(exc).startswith(f"dc.toml: {key}: expected ")


def test_a_second_link_between_the_same_hosts_is_refused():
    text = TWO_HOSTS + '\n[[link]]\nhosts = ["b", "a"]\nbandwidth = "1Gbit/s"\nlatency = "1ms"\n'
    exc = error(text)
    assert exc.key == "link[1].hosts" and "(also at link[0].hosts)" in exc.got


def test_disk_paths_are_the_datacenters():
    text = TWO_HOSTS.replace('name = "db"', 'name = "db"\ndisks = [ { path = "x.vhd", size = "1MiB" } ]').replace(
        'name = "cache"', 'name = "cache"\ndisks = [ { path = "x.vhd", size = "1MiB" } ]')
    exc = error(text)
    assert exc.key == "host[1].vm[0].disks[0].path" and "host[0].vm[1].disks[0].path" in exc.got


def test_a_peer_must_be_on_the_same_host():
    # Switches belong to a host: a VM on another host is not a peer it can reach by name.
    text = TWO_HOSTS.replace('peer = "cache"', 'peer = "db"')
    exc = error(text)
    assert exc.key == "host[0].vm[0].workload.peer"


def test_mixing_the_two_kinds_of_file_is_refused_with_the_way_out():
    exc = error('[host]\nlogical_processors = 2\n[[link]]\nhosts = ["a", "b"]\n')
    assert exc.key == "link" and "[[host]] tables" in exc.expected
    exc = error('[datacenter]\nseed = 1\n[[vm]]\nname = "x"\n')
    assert exc.key == "datacenter"
    exc = error(TWO_HOSTS + '\n[[vm]]\nname = "x"\n')
    assert exc.key == "vm" and "[[host.vm]]" in exc.expected
    exc = error(TWO_HOSTS + '\n[[switch]]\nname = "x"\n')
    assert exc.key == "switch" and "[[host.switch]]" in exc.expected


def test_an_empty_host_array_is_refused():
    from partitions.config import from_dict
    with pytest.raises(ConfigError) as info:
        from_dict({"host": []}, file="dc.toml")
    assert info.value.key == "host"


def test_a_single_host_file_loads_as_before():
    config = loads(DEFAULT_TOML, base_dir=".")
    assert isinstance(config, Config)
    assert config == default_config(".")
    exc = error('[host]\nlogical_processors = 2\n[[vm]]\nname = "a"\nmemory = "1GB"\n')
    assert exc.key == "vm[0].memory"       # no host prefix for a single host
    exc = error('[host]\nsmt = 3\nlogical_processors = 2\n')
    assert exc.key == "host.smt"
    exc = error('links = 1\n')
    assert exc.expected == "one of the keys host, vm, switch, at"


def test_a_datacenter_file_loads_with_its_path(tmp_path):
    from partitions.config import load
    path = tmp_path / "dc.toml"
    path.write_text(TWO_HOSTS)
    dc = load(path)
    assert dc.path == path and all(h.config.path == path for h in dc.hosts)
    assert dataclasses.replace(dc, path=None) == loads(TWO_HOSTS, base_dir=tmp_path)


def test_dump_writes_a_datacenter_file_that_loads_back_equal(tmp_path):
    from partitions.config import dump
    dc = loads(TWO_HOSTS, base_dir=tmp_path)
    text = dump(dc, tmp_path)
    assert "[[host.vm]]" in text and "[[host.switch]]" in text and 'bandwidth = "10000000000bit/s"' in text
    again = loads(text, base_dir=tmp_path)
    assert again == dc and dump(again, tmp_path) == text
    # A single host's file is written as before: the same text as its own dump.
    assert dump(default_config(tmp_path), tmp_path).startswith("[host]\n")


# ---- mutated datacenter documents: a DatacenterConfig (or Config) or a ConfigError, nothing else ----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.partitions.test_config import _mutate  # noqa: E402 - the single-host file's mutations


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_datacenter_documents_load_or_raise_config_error(tmp_path, data):
    import tomllib

    from partitions.config import dump, from_dict
    doc = tomllib.loads(TWO_HOSTS)
    for _ in range(data.draw(st.integers(1, 4))):
        doc = _mutate(data, doc)
    try:
        config = from_dict(doc, file="m.toml", base_dir=tmp_path)
    except ConfigError as err:
        assert err.file == "m.toml" and str(err).startswith("m.toml: ")
        return
    text = dump(config, tmp_path)
    assert dump(loads(text, base_dir=tmp_path), tmp_path) == text
