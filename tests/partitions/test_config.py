"""Host configuration files: the issue's example, every kind of bad configuration and its message,
dump/load round trips, the built-in default host, and mutated documents that must load or fail
with a ConfigError."""
import copy
import dataclasses
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypervisor import Host
from hypervisor.quantities import parse_duration
from partitions.config import DEFAULT_TOML, ConfigError, default_config, dump, from_dict, load, loads
from partitions.config_schema import (
    GIB, MIB, MS, AtConfig, Config, CpuBurnWorkload, CpuConfig, DiskConfig, DiskIoWorkload, HostConfig,
    IntegrationServices, NetRequestResponseWorkload, NicConfig, PythonWorkload, SwitchConfig, VmConfig,
    format_duration, generated_mac, toml_value,
)

REPO = Path(__file__).resolve().parents[2]
SECOND = 1_000_000_000

EXAMPLE = """\
[host]
logical_processors = 4
smt = 2
memory = "16GiB"
scheduler = "classic"          # or the second policy

[[vm]]
name = "web"
processors = 2
memory = "2GiB"
cpu = { reserve = 10, limit = 100, weight = 200 }   # %, %, 1-10000
workload = { kind = "cpu-burn", duty = 0.6 }
disks = [ { path = "web.vhd", size = "4GiB", type = "dynamic" } ]
nics = [ { switch = "lan", vlan = 10, ip = "10.0.10.2/24" } ]

[[switch]]
name = "lan"
type = "private"

[[at]]
time = "5s"
action = "checkpoint"
vm = "web"
"""


def example() -> dict:
    """The issue's example as a document, with a second VM to make cross-VM cases easy to write."""
    doc = tomllib.loads(EXAMPLE)
    doc["vm"].append({"name": "db", "processors": 1, "memory": "1GiB",
                      "nics": [{"switch": "lan", "vlan": 10, "ip": "10.0.10.3/24"}]})
    return doc


def fails(doc, base_dir="/nonexistent") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_dict(doc, file="web.toml", base_dir=base_dir)
    err = info.value
    assert err.file == "web.toml" and str(err).startswith(f"web.toml: {err.key}: expected {err.expected}")
    return err


# ---- the issue's example --------------------------------------------------------------------------

def test_the_issues_example_parses_to_the_expected_dataclasses(tmp_path):
    (tmp_path / "web.toml").write_text(EXAMPLE)
    config = load(tmp_path / "web.toml")
    assert config == Config(
        host=HostConfig(logical_processors=4, smt=2, memory=16 * GIB, scheduler="classic"),
        vms=(VmConfig(
            name="web", processors=2, memory=2 * GIB, cpu=CpuConfig(reserve=10, limit=100, weight=200),
            workloads=(CpuBurnWorkload(duty=0.6, period=10 * MS),),
            disks=(DiskConfig(tmp_path / "web.vhd", 4 * GIB, "dynamic"),),
            nics=(NicConfig(switch="lan", vlan=10, ip="10.0.10.2/24", mac=generated_mac("web", 0)),),
            integration_services=IntegrationServices()),),
        switches=(SwitchConfig("lan", "private"),),
        timeline=(AtConfig(5 * SECOND, "checkpoint", "web"),))
    assert config.path == tmp_path / "web.toml"
    assert config.vm("web").nics[0].mac.startswith("00:15:5d:")
    with pytest.raises(LookupError):
        config.vm("nope")


def test_every_documented_key_is_read(tmp_path):
    text = EXAMPLE.replace('scheduler = "classic"', 'scheduler = "core"\nseed = 7\ncosts = { hypercall = "2us", '
                           'time_slice = "5ms" }') + """
[[vm]]
name = "db"
processors = 1
memory = 1073741824
autostart = false
integration_services = { vss = false, kvp = false }
workload = [
  { kind = "disk-io", pattern = "sequential", block_size = "64KiB", queue_depth = 8, read_fraction = 1, disk = 1 },
  { kind = "net-request-response", peer = "web", port = 7, size = 100, interval = "1ms" },
  { kind = "python", target = "my_pkg.loads:burst", args = { n = 3, label = "x" } },
  { kind = "idle" },
]
disks = [
  { path = "/abs/base.vhd", type = "fixed", size = "1GiB" },
  { path = "sub/child.vhd", type = "differencing", parent = "/abs/base.vhd" },
]
nics = [ { switch = "lan", vlan = 10, ip = "10.0.10.3/24", gateway = "10.0.10.1", mac = "00-15-5D-AA-BB-CC" } ]
"""
    config = loads(text, base_dir=tmp_path)
    assert config.host.scheduler == "core" and config.host.seed == 7
    assert dict(config.host.costs) == {"hypercall": 2000, "time_slice": 5 * MS}
    db = config.vm("db")
    assert not db.autostart and db.memory == GIB
    assert db.integration_services.enabled() == ("heartbeat", "shutdown", "timesync")
    assert db.disks == (DiskConfig(Path("/abs/base.vhd"), GIB, "fixed"),
                        DiskConfig(tmp_path / "sub" / "child.vhd", None, "differencing", Path("/abs/base.vhd")))
    assert db.nics[0].mac == "00:15:5d:aa:bb:cc" and db.nics[0].gateway == "10.0.10.1"
    assert db.workloads[:2] == (DiskIoWorkload("sequential", 64 * 1024, 8, 1.0, 1),
                                NetRequestResponseWorkload("web", 7, 100, MS))
    assert db.workloads[2] == PythonWorkload("my_pkg.loads:burst", {"n": 3, "label": "x"})
    assert db.workloads[3].kind == "idle"
    Host(seed=0, **config.host.host_kwargs())   # the names and units are the ones Host takes


def test_an_empty_file_is_the_default_host_with_no_vms():
    assert loads("") == Config() == Config(HostConfig(4, 1, 4 * GIB, "classic", None, {}))
    vm = loads('[[vm]]\nname = "a"').vm("a")
    assert vm == VmConfig("a", 1, 512 * MIB, CpuConfig(0, 100, 100), (), (), IntegrationServices(), (), True)


# ---- bad configuration: each case names the file, the key and what was expected ------------------

def test_the_message_reads_file_key_expected_got():
    doc = example()
    doc["vm"][0]["cpu"]["weight"] = 0
    err = fails(doc)
    assert str(err) == "web.toml: vm[0].cpu.weight: expected an integer from 1 to 10000, got 0"
    assert (err.key, err.expected, err.got) == ("vm[0].cpu.weight", "an integer from 1 to 10000", "0")
    assert isinstance(err, ValueError)


def test_toml_syntax_errors_give_the_line():
    text = EXAMPLE.replace('processors = 2', 'processors = ')
    with pytest.raises(ConfigError) as info:
        loads(text, file="web.toml")
    err = info.value
    assert err.key is None and err.expected == "valid TOML" and err.line == 9
    assert str(err).startswith("web.toml: line 9, column 14: expected valid TOML, got invalid value")


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="expected a readable file"):
        load(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b'# caf\xe9\n')
    with pytest.raises(ConfigError, match="expected UTF-8 text, got byte 0xe9 at offset 5"):
        load(tmp_path / "latin1.toml")


def test_a_fifo_or_directory_as_the_host_file_is_refused_at_once(tmp_path, capsys):
    import os
    import signal
    from partitions.cli import main

    def stuck(signum, frame):  # the guard against blocking for ever, not the assertion
        raise TimeoutError("blocked opening the FIFO")
    os.mkfifo(tmp_path / "fifo.toml")
    old = signal.signal(signal.SIGALRM, stuck)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        with pytest.raises(ConfigError, match="fifo.toml: .file.: expected a regular file, got a FIFO"):
            load(tmp_path / "fifo.toml")
        assert main(["run", str(tmp_path / "fifo.toml")]) == 2
        assert "expected a regular file, got a FIFO" in capsys.readouterr().err
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    with pytest.raises(ConfigError, match="expected a regular file, got a directory"):
        load(tmp_path)


def _set(path, value):
    def mutate(doc):
        *parents, last = path
        node = doc
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


def _dup(table, index):
    return lambda doc: doc[table].append(copy.deepcopy(doc[table][index]))


BAD = [
    # (mutation of example(), key, words of `expected`, hint)
    (_set(("vm", 0, "procesors"), 2), "vm[0].procesors", "one of the keys name, processors", '"processors"'),
    (_set(("vms",), []), "vms", "one of the keys host, vm, switch, at", '"vm"'),
    (_set(("host", "cpus"), 4), "host.cpus", "one of the keys logical_processors", None),
    (_set(("vm", 0, "cpu", "wieght"), 1), "vm[0].cpu.wieght", "one of the keys reserve, limit, weight", '"weight"'),
    (_set(("vm", 0, "processors"), "2"), "vm[0].processors", "an integer from 1 to 4", None),
    (_set(("vm", 0, "processors"), 5), "vm[0].processors", "an integer from 1 to 4", None),
    (_set(("vm", 0, "cpu"), 50), "vm[0].cpu", "a table", None),
    (_set(("vm", 0, "disks"), {"path": "x.vhd"}), "vm[0].disks", "an array of tables", None),
    (_set(("vm", 0, "autostart"), "yes"), "vm[0].autostart", "true or false", None),
    (_set(("vm", 0, "name"), "web/1"), "vm[0].name", "a name of letters, digits", None),
    (lambda d: d["vm"][0].pop("name"), "vm[0].name", "a name of letters", None),
    (_set(("vm", 0, "cpu", "reserve"), 101), "vm[0].cpu.reserve", "an integer from 0 to 100", None),
    (_set(("vm", 0, "cpu", "limit"), 5), "vm[0].cpu.reserve", "a reserve no higher than the limit (5)", None),
    (_set(("vm", 0, "cpu", "weight"), 10001), "vm[0].cpu.weight", "an integer from 1 to 10000", None),
    (_set(("host", "logical_processors"), 0), "host.logical_processors", "an integer from 1 to 1024", None),
    (_set(("host", "smt"), 3), "host.smt", "divides logical_processors (4)", None),
    (_set(("host", "scheduler"), "clasic"), "host.scheduler", 'one of "classic", "core"', '"classic"'),
    (_set(("host", "costs"), {"hypercal": "1us"}), "host.costs.hypercal", "one of the keys hypercall", '"hypercall"'),
    (_set(("host", "costs"), {"hypercall": "0s"}), "host.costs.hypercall", "a positive duration", None),
    # sizes and durations
    (_set(("vm", 0, "memory"), "2 gigs"), "vm[0].memory", 'a size from 4KiB to 64TiB, a multiple of 4KiB', None),
    (_set(("vm", 0, "memory"), 4097), "vm[0].memory", "a multiple of 4KiB", None),
    (_set(("host", "memory"), "1.5"), "host.memory", "a size from 256KiB", None),
    (_set(("vm", 0, "disks", 0, "size"), "1000B"), "vm[0].disks[0].size",
     "a multiple of 512B", None),
    (_set(("vm", 0, "disks", 0, "size"), "3TiB"), "vm[0].disks[0].size", "a size from 512B to 2040GiB", None),
    (_set(("at", 0, "time"), "5 parsecs"), "at[0].time", 'a duration such as "1.5s"', None),
    # units Hyper-V users and others read differently: refused, with the readings that fit the key
    (_set(("vm", 0, "memory"), "512MB"), "vm[0].memory", "a size from 4KiB", '"512MiB" or 512000000'),
    (_set(("vm", 0, "memory"), "2GB"), "vm[0].memory", "a size from 4KiB", '"2GiB"'),   # 2e9: not 4 KiB pages
    (_set(("vm", 0, "disks", 0, "size"), "4G"), "vm[0].disks[0].size", "a size from 512B", '"4GiB" or 4000000000'),
    (_set(("host", "memory"), "16gb"), "host.memory", "a size from 256KiB", '"16GiB" or 16000000000'),
    (_set(("at", 0, "time"), 1.5), "at[0].time", 'a duration such as "1.5s"', None),
    (_set(("vm", 0, "workload", "period"), "0ms"), "vm[0].workload.period", "a positive duration", None),
    # names
    (_dup("vm", 0), "vm[2].name", "a VM name used once", None),
    (_dup("switch", 0), "switch[1].name", "a switch name used once", None),
    (lambda d: d["vm"][1].update(disks=[{"path": "web.vhd", "size": "1GiB"}]), "vm[1].disks[0].path",
     "a disk path used once", None),
    # network
    (_set(("vm", 0, "nics", 0, "switch"), "lna"), "vm[0].nics[0].switch", 'the name of a [[switch]] (one of "lan")',
     '"lan"'),
    (_set(("vm", 0, "nics", 0, "vlan"), 4095), "vm[0].nics[0].vlan", "an integer from 0 to 4094", None),
    (_set(("vm", 0, "nics", 0, "vlan"), -1), "vm[0].nics[0].vlan", "an integer from 0 to 4094", None),
    (_set(("vm", 0, "nics", 0, "ip"), "10.0.10.300/24"), "vm[0].nics[0].ip", "an IPv4 address with a prefix", None),
    (_set(("vm", 0, "nics", 0, "ip"), "10.0.10.2"), "vm[0].nics[0].ip", "an IPv4 address with a prefix", None),
    (_set(("vm", 0, "nics", 0, "ip"), "10.0.10.2/33"), "vm[0].nics[0].ip", "an IPv4 address with a prefix", None),
    (_set(("vm", 0, "nics", 0, "ip"), "10.0.10.255/24"), "vm[0].nics[0].ip", "a host address of 10.0.10.0/24", None),
    (_set(("vm", 0, "nics", 0, "gateway"), "10.0.11.1"), "vm[0].nics[0].gateway", "another address in 10.0.10.0/24",
     None),
    (_set(("vm", 1, "nics", 0, "ip"), "10.0.10.2/16"), "vm[1].nics[0].ip", 'an address unique on switch "lan" VLAN 10',
     None),
    (_set(("vm", 0, "nics", 0, "mac"), "01:00:5e:00:00:01"), "vm[0].nics[0].mac", "a unicast MAC address", None),
    (_set(("vm", 0, "nics", 0, "mac"), "00:15:5d:00:00"), "vm[0].nics[0].mac", "a MAC address such as", None),
    (lambda d: [n.update(mac="00:15:5d:00:00:01") for v in d["vm"] for n in v["nics"]], "vm[1].nics[0].mac",
     'a MAC unique on switch "lan"', None),
    # the timeline
    (_set(("at", 0, "vm"), "wbe"), "at[0].vm", "the name of a [[vm]]", '"web"'),
    (_set(("at", 0, "action"), "checkpiont"), "at[0].action", '"checkpoint"', '"checkpoint"'),
    (_set(("at", 0, "action"), "reboot"), "at[0].action", 'one of "start", "stop"', None),
    (_set(("at", 0, "action"), "apply-checkpoint"), "at[0].name", "the name of the checkpoint to apply", None),
    (lambda d: d["at"][0].update(action="pause", name="x"), "at[0].name", "on a checkpoint action only", None),
    (lambda d: (d["at"][0].update(action="stop"), d["vm"][0].update(integration_services={"shutdown": False})),
     "at[0].action", "needs its shutdown integration service", None),
    # the timeline read ahead of the run: what the VM's state at that time cannot do
    (_set(("at", 0, "action"), "resume"), "at[0].action",
     'an action VM "web" can take at 5s, when it is Running (since it starts with the host): resume needs it '
     'Paused (a pause first)', None),
    (_set(("at", 0, "action"), "restore"), "at[0].action", "restore needs it Saved (a save first)", None),
    (_set(("at", 0, "action"), "start"), "at[0].action", "start needs it Off (a turn-off or stop first)", None),
    (lambda d: d["at"][0].update(action="apply-checkpoint", name="x"), "at[0].action",
     "apply-checkpoint needs it Off (a turn-off or stop first)", None),
    (lambda d: d["at"].extend([{"time": "9s", "action": "pause", "vm": "web"}, {"time": "8s", "action": "resume", "vm": "web"}]),
     "at[2].action", "at 8s, when it is Running", None),   # by time, not file order
    (lambda d: d["at"].extend([{"time": "6s", "action": "pause", "vm": "web"}, {"time": "7s", "action": "save", "vm": "web"},
                               {"time": "8s", "action": "restore", "vm": "web"}, {"time": "9s", "action": "resume", "vm": "web"}]),
     "at[4].action", "when it is Running (since at[3] restore)", None),
    (lambda d: d["at"].extend([{"time": "6s", "action": "stop", "vm": "web"}, {"time": "7s", "action": "pause", "vm": "web"}]),
     "at[2].action", "when it is Off or Stopping (since at[1] stop): pause needs it Running", None),
    (lambda d: (d["vm"][1].update(autostart=False), d["at"][0].update(vm="db", action="pause")), "at[0].action",
     'VM "db" can take at 5s, when it is Off (since autostart is false)', None),
    (_set(("at", 0, "vm"), "db"), "at[0].action", 'an action VM "db" can take: it has no disk', None),
    # checkpoint names
    (lambda d: d["at"].append({"time": "6s", "action": "delete-checkpoint", "vm": "web", "name": "nope"}),
     "at[1].name", 'the name of a checkpoint VM "web" has at 6s, taken by an earlier checkpoint action (it has '
                   '"checkpoint-5000ms")', None),
    (lambda d: (d["at"][0].update(name="one"), d["at"].append({"time": "4s", "action": "delete-checkpoint",
                                                                "vm": "web", "name": "one"})),
     "at[1].name", "(it has none)", None),
    (lambda d: (d["at"][0].update(name="one"), d["at"].extend([
        {"time": "6s", "action": "delete-checkpoint", "vm": "web", "name": "one"},
        {"time": "7s", "action": "turn-off", "vm": "web"},
        {"time": "8s", "action": "apply-checkpoint", "vm": "web", "name": "one"}])), "at[3].name", "(it has none)", None),
    (lambda d: (d["at"][0].update(name="one"), d["at"].extend([
        {"time": "6s", "action": "turn-off", "vm": "web"},
        {"time": "8s", "action": "apply-checkpoint", "vm": "web", "name": "onee"}])), "at[2].name", '(it has "one")',
     '"one"'),
    (lambda d: (d["at"][0].update(name="one"), d["at"].append({"time": "6s", "action": "checkpoint", "vm": "web",
                                                                "name": "one"})),
     "at[1].name", 'a checkpoint name VM "web" does not have yet', None),
    # capacity
    (lambda d: [v.update(processors=2, cpu={"reserve": 100}) for v in d["vm"]] and d["vm"].append(
        {"name": "c", "processors": 1, "cpu": {"reserve": 10}}), "vm[2].cpu.reserve",
     "reserves the host's 4 logical processors can admit (sum of reserve x processors at most 400)", None),
    (lambda d: [v.update(memory="10GiB") for v in d["vm"]], "vm[1].memory", "VM memory that fits in the host's 16GiB",
     None),
    # workloads
    (_set(("vm", 0, "workload", "kind"), "cpu_burn"), "vm[0].workload.kind", '"cpu-burn"', '"cpu-burn"'),
    (_set(("vm", 0, "workload", "duty"), 1.5), "vm[0].workload.duty", "a number from 0 to 1", None),
    (_set(("vm", 0, "workload", "pattern"), "random"), "vm[0].workload.pattern", "one of the keys kind, duty, period (of a cpu-burn workload)", None),
    (_set(("vm", 0, "workload"), "cpu-burn"), "vm[0].workload", 'a table such as { kind = "cpu-burn"', None),
    (_set(("vm", 0, "workload"), [{"kind": "idle"}, {"kind": "cpu-burn", "duty": -1}]), "vm[0].workload[1].duty",
     "a number from 0 to 1", None),
    (_set(("vm", 0, "workload"), {"kind": "python", "target": "pkg.mod.function"}), "vm[0].workload.target",
     'an import path such as "package.module:function"', None),
    (_set(("vm", 0, "workload"), {"kind": "python", "target": "pkg.2mod:f"}), "vm[0].workload.target",
     'an import path such as "package.module:function"', None),
    (_set(("vm", 0, "workload"), {"kind": "python", "target": "m:f", "args": [1]}), "vm[0].workload.args",
     "a table of keyword arguments", None),
    (_set(("vm", 1, "workload"), {"kind": "disk-io"}), "vm[1].workload.disk", "the index of one of the VM's 0 disks",
     None),
    (_set(("vm", 0, "workload"), {"kind": "net-request-response", "peer": "web"}), "vm[0].workload.peer",
     "the name of another VM", None),
    (_set(("vm", 0, "workload"), {"kind": "net-request-response", "peer": "dbb"}), "vm[0].workload.peer",
     "the name of another VM", '"db"'),
    (lambda d: (d["vm"][1]["nics"][0].update(vlan=20), d["vm"][0].update(
        workload={"kind": "net-request-response", "peer": "db"})), "vm[0].workload.peer",
     "a VM with an address on a switch and VLAN where this VM has one", None),
    # disks
    (_set(("vm", 0, "disks", 0, "type"), "dynamik"), "vm[0].disks[0].type", '"dynamic"', '"dynamic"'),
    (_set(("vm", 0, "disks", 0, "type"), "differencing"), "vm[0].disks[0].parent",
     "a parent for, and only for, a differencing disk", None),
    (_set(("vm", 0, "disks", 0, "parent"), "base.vhd"), "vm[0].disks[0].parent",
     "a parent for, and only for, a differencing disk", None),
    (lambda d: d["vm"][0]["disks"][0].pop("size"), "vm[0].disks[0].size",
     "a size, since /nonexistent/web.vhd does not exist yet", None),
    (lambda d: d["vm"][0].update(disks=[{"path": "d.vhd", "type": "differencing", "parent": "base.vhd"}]),
     "vm[0].disks[0].parent", "an existing VHD or another disk of this file", None),
    (lambda d: d["vm"][0].update(disks=[{"path": "d.vhd", "type": "differencing", "parent": "b.vhd", "size": 512}]),
     "vm[0].disks[0].size", "no size for a differencing disk", None),
    (_set(("vm", 0, "disks", 0, "path"), ""), "vm[0].disks[0].path", "a file path", None),
]


@pytest.mark.parametrize("mutate, key, expected, hint", BAD, ids=[f"{i}-{case[1]}" for i, case in enumerate(BAD)])
def test_bad_configuration_names_the_key_and_what_was_expected(mutate, key, expected, hint):
    doc = example()
    from_dict(copy.deepcopy(doc), file="web.toml")   # the unmutated document is fine
    mutate(doc)
    err = fails(doc)
    assert err.key == key
    assert expected in err.expected
    assert err.hint == hint
    if hint:
        assert str(err).endswith(f"; did you mean {hint}?")


def test_the_same_ip_is_fine_on_another_vlan_or_switch():
    doc = example()
    doc["vm"][1]["nics"][0].update(ip="10.0.10.2/24", vlan=11)
    doc["switch"].append({"name": "other", "type": "internal"})
    doc["vm"][1]["nics"].append({"switch": "other", "vlan": 10, "ip": "10.0.10.2/24"})
    config = from_dict(doc)
    assert [n.ip for n in config.vm("db").nics] == ["10.0.10.2/24", "10.0.10.2/24"]


def test_reserves_exactly_filling_the_host_are_admitted():
    doc = example()
    doc["vm"][0]["cpu"] = {"reserve": 100}
    doc["vm"][1].update(processors=2, cpu={"reserve": 100})
    assert sum(v.cpu.reserve * v.processors for v in from_dict(doc).vms) == 400


def test_a_differencing_disk_may_name_another_disk_of_the_file_or_an_existing_file(tmp_path):
    doc = example()
    doc["vm"][1]["disks"] = [{"path": "child.vhd", "type": "differencing", "parent": "web.vhd"}]
    assert from_dict(doc, base_dir=tmp_path).vm("db").disks[0].parent == tmp_path / "web.vhd"
    (tmp_path / "old.vhd").write_bytes(b"")
    doc["vm"][1]["disks"] = [{"path": "child.vhd", "type": "differencing", "parent": "old.vhd"},
                             {"path": "old.vhd"}]   # exists: no size needed
    assert from_dict(doc, base_dir=tmp_path).vm("db").disks[1].size is None


# ---- the timeline, read ahead of the run ----------------------------------------------------------

def _timeline(*entries, autostart=True):
    vm = '[[vm]]\nname = "a"\nmemory = "8MiB"\ndisks = [ { path = "a.vhd", size = "1MiB" } ]\n' + ("" if autostart else "autostart = false\n")
    return vm + "".join(f'[[at]]\ntime = "{t}"\naction = "{a}"\nvm = "a"\n' + (f'name = "{n[0]}"\n' if n else "")
                        for t, a, *n in entries)


@pytest.mark.parametrize("entries, autostart", [
    ((("1s", "pause"), ("2s", "save"), ("3s", "restore"), ("4s", "pause"), ("5s", "resume")), True),
    ((("1s", "stop"), ("2s", "start"), ("3s", "quick-reset")), True),
    ((("1s", "start"), ("2s", "turn-off"), ("3s", "start")), False),
    ((("1s", "checkpoint"), ("2s", "turn-off"), ("3s", "apply-checkpoint", "checkpoint-1000ms")), True),
    ((("1s", "checkpoint", "x"), ("2s", "delete-checkpoint", "x"), ("3s", "checkpoint", "x")), True),
    ((("1s", "save"), ("2s", "turn-off"), ("3s", "start")), True),
    ((("2s", "resume"), ("1s", "pause")), True),              # run by time: the pause comes first
])
def test_timelines_whose_actions_fit_load(entries, autostart):
    assert len(loads(_timeline(*entries, autostart=autostart), base_dir="/nonexistent").timeline) == len(entries)


STATES = {"Off": ["turn-off"], "Running": [], "Paused": ["pause"], "Saved": ["save"]}


@pytest.mark.parametrize("state", sorted(STATES))
def test_the_timeline_check_allows_exactly_what_a_vm_does(tmp_path, state):
    """LIFECYCLE, the table the file is read ahead with, against a real VM: from each state, each
    action either fails in the run (ScenarioError) and is refused in the file, or runs and
    leaves the VM in a state the table allows."""
    from partitions.config import LIFECYCLE
    from partitions.config_schema import ACTIONS
    from partitions.management import ManagedHost, ScenarioError

    assert set(LIFECYCLE) == set(ACTIONS)
    host = '[host]\nlogical_processors = 1\nmemory = "64MiB"\n'
    for action in ACTIONS:
        work = tmp_path / action
        work.mkdir()
        names = action in ("apply-checkpoint", "delete-checkpoint")
        prep = [("5ms", "checkpoint", "c")] * names + [("10ms", a) for a in STATES[state]]
        entry = AtConfig(20 * MS, action, "a", "c" if names else None)
        prepared = loads(host + _timeline(*prep), base_dir=work)
        try:
            loads(host + _timeline(*prep, ("20ms", action, "c") if names else ("20ms", action)), base_dir=work)
            refused = False
        except ConfigError as err:
            assert err.key == f"at[{len(prep)}].action", (state, action, err)
            refused = True
        managed = ManagedHost(dataclasses.replace(prepared, timeline=prepared.timeline + (entry,)), workdir=work)
        managed.run(15 * MS)
        assert managed.vms["a"].state.value == state
        try:
            managed.run(30 * MS)
            failed = False
        except ScenarioError:
            failed = True
        assert failed == refused, (state, action)
        allowed, after = LIFECYCLE[action]
        if not failed:
            assert managed.vms["a"].state.value in (after or (state,)), (state, action)


def test_command_line_values_are_checked_as_the_files_keys():
    from partitions.config import command_line_value
    assert command_line_value("--seed", "7", "host.seed") == 7
    assert command_line_value("--seed", str(2**64 - 1), "host.seed") == 2**64 - 1
    assert command_line_value("--for", "1.5s", "at.time") == 1_500_000_000
    for text in ("-5", str(2**64), "seven", "1.5"):
        with pytest.raises(ConfigError) as info:
            command_line_value("--seed", text, "host.seed")
        assert info.value.key == "--seed" and info.value.expected == "an integer from 0 to 18446744073709551615"
    with pytest.raises(ConfigError, match='--for: expected a duration with a unit.*; did you mean "5s"'):
        command_line_value("--for", "5", "at.time")
    with pytest.raises(ConfigError, match="--for: expected a duration"):
        command_line_value("--for", "-1s", "at.time")


# ---- MACs -----------------------------------------------------------------------------------------

def test_generated_macs_are_hyper_v_macs_from_the_name_and_index():
    assert generated_mac("web", 0) == generated_mac("web", 0)
    macs = {generated_mac(vm, i) for vm in ("web", "db") for i in range(3)}
    assert len(macs) == 6 and all(m.startswith("00:15:5d:") for m in macs)


def test_a_generated_mac_skips_one_already_given():
    doc = example()
    doc["vm"][1]["nics"][0]["mac"] = generated_mac("web", 0)
    config = from_dict(doc)
    assert config.vm("web").nics[0].mac == generated_mac("web", 0, attempt=1)


# ---- writing back ---------------------------------------------------------------------------------

def test_dump_then_load_gives_the_same_config(tmp_path):
    doc = example()
    doc["host"].update(seed=3, costs={"window": "50ms"})
    doc["vm"][1].update(workload={"kind": "python", "target": "a.b:c", "args": {"s": 'q"\n\x7f', "l": [1, 2.5]}},
                        integration_services={"heartbeat": False}, autostart=False)
    doc["vm"][1]["nics"][0]["gateway"] = "10.0.10.1"
    doc["vm"][0]["disks"].append({"path": "/elsewhere/x.vhd", "size": 1536 * MIB, "type": "fixed"})
    doc["at"] += [{"time": 1_234_567, "action": "checkpoint", "vm": "web", "name": "c 1"},
                  {"time": "6s", "action": "turn-off", "vm": "web"},
                  {"time": "7s", "action": "apply-checkpoint", "vm": "web", "name": "c 1"}]
    config = from_dict(doc, base_dir=tmp_path)
    text = dump(config, tmp_path)
    assert 'path = "web.vhd"' in text and 'path = "/elsewhere/x.vhd"' in text and 'size = "1536MiB"' in text
    assert loads(text, base_dir=tmp_path) == config
    (tmp_path / "h.toml").write_text(text)
    assert dump(load(tmp_path / "h.toml")) == text      # relative to the file it came from


@pytest.mark.parametrize("ns, text", [(0, "0s"), (2 * SECOND, "2s"), (3_500_000_000, "3.5s"), (1_234_567, "1.234567ms"),
                                      (250_000, "250us"), (999, "999ns"),
                                      (2**63 - 1, 2**63 - 1)])   # too many digits for a float: plain ns
def test_durations_are_written_exactly(ns, text):
    assert format_duration(ns) == text
    assert parse_duration(text) == ns
    assert loads(f'[[vm]]\nname = "a"\nautostart = false\n[[at]]\ntime = {toml_value(text)}\naction = "start"\nvm = "a"').timeline[0].time == ns


# ---- the default host -----------------------------------------------------------------------------

def test_the_default_host_text_parses_to_default_config(tmp_path):
    assert loads(DEFAULT_TOML, file="<default>", base_dir=tmp_path) == default_config(tmp_path)


def test_the_example_file_is_the_default_host():
    example_file = REPO / "examples" / "default-host.toml"
    assert example_file.read_text() == DEFAULT_TOML
    assert load(example_file) == default_config(example_file.parent)


def test_the_default_host_shows_what_hvsim_run_promises(tmp_path):
    config = default_config(tmp_path)
    host = config.host
    assert (host.logical_processors, host.smt, host.memory, host.scheduler) == (2, 2, 8 * GIB, "classic")
    assert sum(vm.processors for vm in config.vms) > host.logical_processors          # CPU contention
    kinds = {w.kind for vm in config.vms for w in vm.workloads}
    assert {"cpu-burn", "disk-io", "net-request-response"} <= kinds
    assert all(vm.integration_services.heartbeat for vm in config.vms)
    assert {a.action for a in config.timeline} >= {"checkpoint", "pause", "resume"}
    assert max(a.time for a in config.timeline) <= 4 * SECOND
    assert all(d.path.parent == tmp_path for vm in config.vms for d in vm.disks)
    Host(seed=0, **host.host_kwargs())


# ---- mutated documents: a Config or a ConfigError, never anything else ---------------------------

KEYS = st.sampled_from(["name", "kind", "vm", "at", "time", "path", "size", "type", "ip", "vlan", "switch", "cpu",
                        "reserve", "weight", "peer", "disk", "duty", "args", "target", "mac", "parent", "seed"])
SCALARS = st.one_of(
    st.booleans(), st.integers(-2**64, 2**64), st.integers(-2, 5000), st.floats(),
    st.text(max_size=12),
    st.sampled_from(["web", "db", "lan", "10.0.10.2/24", "10.0.10.3/24", "4GiB", "1.5s", "5s", "0", "checkpoint",
                     "cpu-burn", "disk-io", "python", "idle", "net-request-response", "differencing", "fixed",
                     "private", "a.b:c", "x.vhd", "web.vhd", "00:15:5d:00:00:01", "1" * 400 + "GiB"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(KEYS | st.text(max_size=5), inner, max_size=3), max_leaves=6)


def _near(value):
    """Values of the same kind as `value`, which load more often than arbitrary ones."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(0, max(2 * value, 0) + 2)
    if isinstance(value, float):
        return st.floats(0, 1)
    return SCALARS.filter(lambda v: isinstance(v, str))


def _mutate(data, doc):
    """Walk to a random node of `doc` (rarely the root) and replace, delete or add something there."""
    parent, key, node = None, None, doc
    while isinstance(node, (dict, list)) and node and (parent is None or data.draw(st.integers(0, 3)) > 0):
        key = data.draw(st.sampled_from(list(node.keys()) if isinstance(node, dict) else range(len(node))))
        parent, node = node, node[key]
    op = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if op == "add" and isinstance(node, dict):
        node[data.draw(KEYS | st.text(max_size=5))] = data.draw(VALUES)
    elif op == "add" and isinstance(node, list):
        node.append(copy.deepcopy(node[0]) if node and data.draw(st.booleans()) else data.draw(VALUES))
    elif op == "delete" and parent is not None:
        del parent[key]
    elif parent is not None:
        parent[key] = data.draw(_near(node) | VALUES)
    elif data.draw(st.integers(0, 20)) == 0:
        return data.draw(VALUES)          # now and then, a document that is not a table at all
    return doc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("config")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), base=st.sampled_from(["example", "default"]))
def test_mutated_documents_load_or_raise_config_error(workdir, data, base):
    doc = example() if base == "example" else tomllib.loads(DEFAULT_TOML)
    for _ in range(data.draw(st.integers(1, 4))):
        doc = _mutate(data, doc)
    try:
        config = from_dict(doc, file="m.toml", base_dir=workdir)
    except ConfigError as err:
        assert err.file == "m.toml" and str(err).startswith("m.toml: ")
        return
    text = dump(config, workdir)
    again = loads(text, base_dir=workdir)
    assert dump(again, workdir) == text   # NaN inside a python workload's args would defeat ==


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_text_loads_or_raises_config_error(data):
    text = EXAMPLE
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        text = text[:at] + data.draw(st.text(alphabet='="[]{},.#\n abc0123456789sGiB', max_size=6)) + text[at + cut:]
    try:
        loads(text, file="m.toml", base_dir="/nonexistent")
    except ConfigError as err:
        assert err.file == "m.toml"
