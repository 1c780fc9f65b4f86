"""VMs with several disks and several network adapters, built from host files: the disks are LUNs
of the VM's SCSI controller and disk-io reaches the one it names; each adapter is its own channel
on its own switch, VLAN, MAC and address, and the guest's stack routes by adapter; a VM's device
names stay unique; checkpoints fork every disk; a host that cannot be built makes no file."""
import pytest

from drivers.storage.vhd import VirtualDisk
from partitions.config import load, loads
from partitions.config_schema import ConfigError
from partitions.management import ManagedHost

MS = 1_000_000


def host(tmp_path, text, **kwargs):
    path = tmp_path / "multi.toml"
    path.write_text('[host]\nlogical_processors = 2\nmemory = "512MiB"\n' + text)
    return ManagedHost(load(path), workdir=tmp_path / "run", **kwargs)


def own_bytes(path) -> int:
    """Bytes a VHD holds itself (not through its parent)."""
    with VirtualDisk.open(str(path), read_only=True) as d:
        return sum(n for _, n in d.own_ranges())


THREE_DISKS = '''
[[vm]]
name = "a"
memory = "16MiB"
disks = [ { path = "a0.vhd", size = "4MiB" }, { path = "a1.vhd", size = "8MiB" }, { path = "a2.vhd", size = "2MiB" } ]
workload = { kind = "disk-io", disk = 2, queue_depth = 2, read_fraction = 0.5 }
'''


def test_the_guest_sees_every_disk_as_a_lun_and_disk_io_reaches_the_one_it_names(tmp_path):
    managed = host(tmp_path, THREE_DISKS)
    managed.run("300ms")
    vm = managed.vms["a"]
    controller = vm.device_vsc("storage")
    assert {lun: d.capacity for lun, d in controller.luns.items()} == {0: 8192, 1: 16384, 2: 4096}
    counters = {c["lun"]: c for c in vm.device_vsp("storage").counters()["luns"]}
    assert counters[2]["write_ops"] > 10 and counters[2]["read_ops"] > 10
    assert all(counters[lun]["write_ops"] == counters[lun]["read_ops"] == 0 for lun in (0, 1))
    # The writes went into disk 2's run disk, and no other file.
    vm.turn_off()   # closes the disks
    run = tmp_path / "run" / "a"
    assert own_bytes(run / "disk2.vhd") > 0
    assert own_bytes(run / "disk0.vhd") == own_bytes(run / "disk1.vhd") == 0
    assert all(own_bytes(tmp_path / f"a{i}.vhd") == 0 for i in range(3))   # the bases: never written


TWO_NETWORKS = '''
[[vm]]
name = "a"
memory = "16MiB"
nics = [ { switch = "front", ip = "10.1.0.2/24" }, { switch = "back", vlan = 7, ip = "10.2.0.2/24" } ]

[[vm]]
name = "b"
memory = "16MiB"
nics = [ { switch = "front", ip = "10.1.0.3/24" }, { switch = "back", vlan = 7, ip = "10.2.0.3/24" } ]

[[vm]]
name = "c"
memory = "16MiB"
nics = [ { switch = "back", vlan = 7, ip = "10.2.0.4/24" } ]
workload = { kind = "net-request-response", peer = "a", port = 6000, interval = "5ms" }

[[switch]]
name = "front"

[[switch]]
name = "back"
'''


def test_each_adapter_is_its_own_channel_switch_port_and_interface(tmp_path):
    managed = host(tmp_path, TWO_NETWORKS)
    managed.run("300ms")
    a = managed.vms["a"]
    first, second = a.device_vsp("network"), a.device_vsp("network1")
    assert first is not second and first.switch.name == "front" and second.switch.name == "back"
    assert first.mac != second.mac and second.vlan.vlan == 7
    interfaces = {i.name: str(i.address) for i in a.device_vsc("network").stack.interfaces}
    assert interfaces == {"eth0": "10.1.0.2/24", "eth1": "10.2.0.2/24"}
    assert a.device_vsc("network1").interface.name == "eth1"
    assert a.device_vsc("network").stack is a.device_vsc("network1").stack   # one IP stack in the guest


def test_requests_go_by_the_adapter_on_the_peers_network(tmp_path):
    managed = host(tmp_path, TWO_NETWORKS)
    managed.run("300ms")
    a, c = managed.vms["a"], managed.vms["c"]
    front, back = a.device_vsp("network").counters(), a.device_vsp("network1").counters()
    # c (only on "back") talks to a: a answers on its back adapter, its front one stays quiet.
    assert back["frames_in"] > 20 and back["frames_out"] > 20 and back["bytes_out"] > 20 * 64
    assert front["frames_in"] == front["frames_out"] == 0
    assert c.device_vsp("network").counters()["frames_in"] > 20
    assert managed.switches["front"].stats.forwarded == 0 and managed.switches["back"].stats.forwarded > 20


def test_a_vm_on_two_networks_reaches_each_peer_by_its_own_adapter(tmp_path):
    text = TWO_NETWORKS.replace('name = "b"\nmemory = "16MiB"\n',
                                'name = "b"\nmemory = "16MiB"\n'
                                'workload = { kind = "net-request-response", peer = "a", port = 6001, '
                                'interval = "5ms" }\n')
    managed = host(tmp_path, text)
    managed.run("300ms")
    a = managed.vms["a"]
    # b shares both networks with a: its requests take the first shared one (front); c's take back.
    assert a.device_vsp("network").counters()["frames_in"] > 20
    assert a.device_vsp("network1").counters()["frames_in"] > 20
    b_front, b_back = managed.vms["b"].device_vsp("network").counters(), managed.vms["b"].device_vsp("network1").counters()
    assert b_front["frames_out"] > 20 and b_back["frames_out"] == 0


def test_device_names_are_unique_and_the_first_of_each_kind_keeps_its_name(tmp_path):
    managed = host(tmp_path, THREE_DISKS.replace('memory = "16MiB"\n', 'memory = "16MiB"\n' + (
        'nics = [ { switch = "s", ip = "10.0.0.2/24" }, { switch = "s", ip = "10.0.0.3/24" }, '
        '{ switch = "s" } ]\ndevices = [ { type = "echo" }, { type = "echo" } ]\n'), 1) + '[[switch]]\nname = "s"\n')
    managed.run("200ms")
    vm = managed.vms["a"]
    names = [slot.name for slot in vm.devices]
    assert len(names) == len(set(names))
    assert {"storage", "network", "network1", "network2", "echo", "echo1"} <= set(names)
    vsps = [vm.device_vsp(n) for n in ("network", "network1", "network2", "echo", "echo1", "storage")]
    assert all(v is not None for v in vsps) and len({id(v) for v in vsps}) == len(vsps)
    assert set(vm.device_vsc("storage").luns) == {0, 1, 2}
    assert vm.device_vsc("network2").stack is None        # an adapter without an address has no interface
    assert vm.device_vsc("echo1") is not vm.device_vsc("echo") and vm.device_vsc("echo1") is not None


STAMPS = '''
[[vm]]
name = "a"
memory = "16MiB"
disks = [ { path = "a0.vhd", size = "1MiB" }, { path = "a1.vhd", size = "1MiB" } ]
workload = { kind = "python", target = "tests.partitions.test_multi_device:stamp_every_disk" }

[[at]]
time = "150ms"
action = "checkpoint"
vm = "a"
name = "first"
'''


async def stamp_every_disk(ctx):
    """Writes b"1" to block 0 of every disk, then at 300 ms b"2" (after the checkpoint at 150 ms)."""
    controller = await ctx.device("storage")
    for mark, at in ((b"1", 0), (b"2", 300 * MS)):
        if ctx.now < at:
            await ctx.sleep(at - ctx.now)
        writes = [disk.write(0, mark * 512) for disk in controller.luns.values()]
        await ctx.wait_for(lambda: all(w.done for w in writes), "1s")
        assert all(w.ok for w in writes)


def block0(path) -> bytes:
    with VirtualDisk.open(str(path), read_only=True) as d:
        return d.read(0, 512)


def test_checkpoints_fork_every_disk(tmp_path):
    managed = host(tmp_path, STAMPS)
    managed.run("500ms")
    vm = managed.vms["a"]
    tree = vm.checkpoints
    run = tmp_path / "run" / "a"
    assert tree.checkpoints["first"].disks == [str(run / "disk0.vhd"), str(run / "disk1.vhd")]
    assert tree.live_disks == [str(run / "disk0-ckpt1.vhd"), str(run / "disk1-ckpt1.vhd")]
    vm.turn_off()   # closes the disks
    assert [block0(d) for d in tree.live_disks] == [b"2" * 512] * 2          # Now
    assert [block0(d) for d in tree.checkpoints["first"].disks] == [b"1" * 512] * 2   # frozen by "first"
    vm.apply_checkpoint("first")
    assert [block0(d) for d in tree.live_disks] == [b"1" * 512] * 2
    assert vm.devices[-1].host_config["disks"] == tree.live_disks     # the next start opens those
    vm.delete_checkpoint("first")
    assert tree.live_disks == [str(run / "disk0.vhd"), str(run / "disk1.vhd")]
    assert [block0(d) for d in tree.live_disks] == [b"1" * 512] * 2
    assert sorted(p.name for p in run.iterdir()) == ["disk0.vhd", "disk1.vhd"]


@pytest.mark.parametrize("text, key", [
    # The second VM's second disk is the problem: the first VM's disks must not have been made.
    ('[[vm]]\nname = "a"\ndisks = [ { path = "a.vhd", size = "1MiB" } ]\n'
     '[[vm]]\nname = "b"\ndisks = [ { path = "b0.vhd", size = "1MiB" }, { path = "wrong.vhd", size = "2MiB" } ]\n',
     "vm[1].disks[1].size"),
    ('[[vm]]\nname = "a"\ndisks = [ { path = "a.vhd", size = "1MiB" } ]\nnics = [ { switch = "s" } ]\n'
     '[[vm]]\nname = "b"\nworkload = { kind = "disk-io", disk = 0 }\ndisks = [ { path = "b.vhd", size = "1MiB" } ]\n'
     'devices = [ { type = "echo" }, { type = "echo", volume = 11 } ]\n[[switch]]\nname = "s"\n',
     "vm[1].devices[1].volume"),
])
def test_a_host_that_cannot_be_built_creates_nothing(tmp_path, text, key):
    VirtualDisk.create(str(tmp_path / "wrong.vhd"), 1 << 20, "dynamic").close()
    (tmp_path / "multi.toml").write_text(text)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError) as err:
        ManagedHost(load(tmp_path / "multi.toml"), workdir=tmp_path / "run", pcap=tmp_path / "cap.pcap")
    assert err.value.key == key and "multi.toml" in str(err.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_the_config_refuses_more_disks_and_adapters_than_hyper_v_gives_a_vm(tmp_path):
    disks = ", ".join(f'{{ path = "d{i}.vhd", size = "1MiB" }}' for i in range(65))
    with pytest.raises(ConfigError, match=r"multi.toml: vm\[0\].disks: expected at most 64 disks"):
        loads(f'[[vm]]\nname = "a"\ndisks = [ {disks} ]\n', file="multi.toml", base_dir=tmp_path)
    nics = ", ".join('{ switch = "s" }' for _ in range(9))
    with pytest.raises(ConfigError, match=r"vm\[0\].nics: expected at most 8 network adapters"):
        loads(f'[[vm]]\nname = "a"\nnics = [ {nics} ]\n[[switch]]\nname = "s"\n', file="multi.toml")
    assert not list(tmp_path.iterdir())
