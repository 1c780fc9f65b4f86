"""Emulated devices from a VM's configuration: `ide` (an emulated IDE disk over a VHD, checked and
planned like the VM's other disks, run on a differencing disk in the run directory, closed when
the VM stops, turns off or crashes) and `legacy_nic` (the emulated DEC 21140 on a switch); and
containment: an emulated device whose own code raises crashes only its VM, with a reason and an
event naming the device, whether the guest is native or Python, and whether or not the guest
catches the error."""
from pathlib import Path

import pytest

from drivers.storage.vhd import VhdInUseError, VirtualDisk
from partitions.config import dump, loads
from partitions.config_schema import ConfigError
from partitions.management import ManagedHost
from partitions.native_guest import ide as ide_module
from partitions.savedstate import SavedStateError

MS = 1_000_000
LOOKS = 0x1F0000   # where the native looker counts its looks at the drive


def pattern(size: int) -> bytes:
    return b"".join(bytes((n * 7 + i) & 0xFF for i in range(512)) for n in range(size // 512))


def make_vhd(path: Path, size: int = 1 << 20) -> Path:
    with VirtualDisk.create(path, size, "dynamic", created_at=0) as disk:
        disk.write(0, pattern(size))
    return path


def host(vms: str, switches: str = "") -> str:
    return f'[host]\nlogical_processors = 2\nmemory = "4GiB"\n{switches}\n{vms}'


# ---- the keys ----------------------------------------------------------------------------------------
def test_ide_is_a_vhd_path_or_a_disk_table_and_dumps_back(tmp_path):
    make_vhd(tmp_path / "old.vhd")
    text = host('''
[[vm]]
name = "a"
ide = "old.vhd"
[[vm]]
name = "b"
ide = { path = "new.vhd", size = "8MiB", type = "fixed" }
''')
    config = loads(text, base_dir=tmp_path)
    a, b = config.vms
    assert (a.ide.path, a.ide.size, a.ide.type) == (tmp_path / "old.vhd", None, "dynamic")
    assert (b.ide.path, b.ide.size, b.ide.type) == (tmp_path / "new.vhd", 8 << 20, "fixed")
    assert loads(dump(config, relative_to=tmp_path), base_dir=tmp_path) == config


@pytest.mark.parametrize("vms, key, expected", [
    ('[[vm]]\nname = "a"\nide = "missing.vhd"', "vm[0].ide", "an existing VHD file"),
    ('[[vm]]\nname = "a"\nide = 3', "vm[0].ide", "a VHD file's path"),
    ('[[vm]]\nname = "a"\nide = { path = "x.vhd" }', "vm[0].ide.size", "a size"),
    ('[[vm]]\nname = "a"\nide = { path = "x.vhd", size = "256GiB" }', "vm[0].ide.size", "28-bit LBA"),
    ('[[vm]]\nname = "a"\nide = { path = "x.vhd", size = "1MiB", bus = 1 }', "vm[0].ide.bus", "one of the keys"),
    ('[[vm]]\nname = "a"\ndisks = [{ path = "x.vhd", size = "1MiB" }]\nide = { path = "x.vhd", size = "1MiB" }',
     "vm[0].ide.path", "a disk path used once"),
    ('[[vm]]\nname = "a"\nide = { path = "x.vhd", size = "1MiB" }\n[[vm]]\nname = "b"\nide = { path = "x.vhd", '
     'size = "1MiB" }', "vm[1].ide.path", "a disk path used once"),
])
def test_a_bad_ide_key_names_the_file_the_key_and_what_was_expected(tmp_path, vms, key, expected):
    with pytest.raises(ConfigError) as info:
        loads(host(vms), file="h.toml", base_dir=tmp_path)
    assert info.value.file == "h.toml" and info.value.key == key, str(info.value)
    assert expected in str(info.value)


def test_an_ide_file_that_is_not_a_vhd_is_refused_when_the_host_is_planned(tmp_path):
    (tmp_path / "junk.vhd").write_bytes(b"not a disk" * 100)
    config = loads(host('[[vm]]\nname = "a"\nide = "junk.vhd"'), file="h.toml", base_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        ManagedHost(config, workdir=tmp_path / "run")
    assert info.value.key == "vm[0].ide.path" and "a VHD file hvsim can open" in str(info.value)
    assert not (tmp_path / "run" / "a").exists()      # nothing made


def test_legacy_nic_takes_a_switch_and_a_mac_or_gets_one(tmp_path):
    config = loads(host('''
[[vm]]
name = "a"
legacy_nic = { switch = "lan" }
[[vm]]
name = "b"
legacy_nic = { switch = "lan", mac = "00-15-5D-00-00-0B" }
''', '[[switch]]\nname = "lan"'), base_dir=tmp_path)
    a, b = config.vms
    assert a.legacy_nic.switch == "lan" and a.legacy_nic.mac.startswith("00:15:5d:")
    assert b.legacy_nic.mac == "00:15:5d:00:00:0b"
    assert loads(dump(config, relative_to=tmp_path), base_dir=tmp_path) == config
    with pytest.raises(ConfigError, match=r"vm\[0\]\.legacy_nic\.switch: expected the name of a \[\[switch\]\]"):
        loads(host('[[vm]]\nname = "a"\nlegacy_nic = { switch = "wan" }', '[[switch]]\nname = "lan"'))
    with pytest.raises(ConfigError, match=r"vm\[0\]\.legacy_nic\.mac: expected a MAC unique on switch"):
        loads(host('[[vm]]\nname = "a"\nnics = [{ switch = "lan", mac = "00:15:5d:00:00:01" }]\n'
                   'legacy_nic = { switch = "lan", mac = "00:15:5d:00:00:01" }', '[[switch]]\nname = "lan"'))


# ---- a Python guest on the emulated IDE disk -------------------------------------------------------------
async def ide_reader(ctx, lba: int = 3, count: int = 2):
    """IDENTIFY, then READ SECTORS `count` from `lba`, by port I/O; keeps what it read in ctx.state."""
    await ctx.port_out(0x1F6, 1, 0xE0)
    await ctx.port_out(0x1F7, 1, 0xEC)
    words = [await ctx.port_in(0x1F0, 2) for _ in range(256)]
    ctx.state["sectors"] = words[60] | words[61] << 16
    await ctx.port_out(0x1F2, 1, count)
    for i in range(3):
        await ctx.port_out(0x1F3 + i, 1, lba >> 8 * i & 0xFF)
    await ctx.port_out(0x1F7, 1, 0x20)
    status = await ctx.port_in(0x1F7, 1)
    data = bytearray()
    for _ in range(count * 256):
        data += (await ctx.port_in(0x1F0, 2)).to_bytes(2, "little")
    ctx.state.update(status=status, data=bytes(data))
    while True:
        await ctx.sleep("10ms")


def reader_host(tmp_path) -> ManagedHost:
    make_vhd(tmp_path / "legacy.vhd")
    text = host('''
[[vm]]
name = "p"
memory = "16MiB"
ide = "legacy.vhd"
workload = { kind = "python", target = "tests.partitions.test_emulated_config:ide_reader" }
''')
    return ManagedHost(loads(text, base_dir=tmp_path), workdir=tmp_path / "run")


def test_a_python_guest_reads_its_configured_ide_disk_through_a_run_disk(tmp_path):
    m = reader_host(tmp_path)
    try:
        m.run(100 * MS)
        vm = m.vms["p"]
        state = vm.workload_states[0]
        assert state["sectors"] == (1 << 20) // 512
        assert state["status"] & 0x09 == 0x08                  # DRQ, no ERR
        assert state["data"] == pattern(1 << 20)[3 * 512:5 * 512]
        assert Path(vm.ide_path) == (tmp_path / "run" / "p" / "ide.vhd").resolve()
        # Measure-VM counts the emulated disk as one of the VM's disks (IDENTIFY moves no data).
        assert (vm.measure()["disk_read_bytes"], vm.measure()["disk_normalized_ios"]) == (2 * 512, 1)
        with pytest.raises(VhdInUseError):                     # the running VM holds its run disk
            VirtualDisk.open(vm.ide_path)
    finally:
        m.close()


@pytest.mark.parametrize("how", ["turn_off", "stop", "quick_reset"])
def test_the_ide_disk_lets_go_of_its_file_when_the_vm_goes(tmp_path, how):
    m = reader_host(tmp_path)
    try:
        m.run(50 * MS)
        vm = m.vms["p"]
        first = vm.emulated["ide"]
        getattr(vm, how)()
        m.run(2000 * MS)
        if how == "quick_reset":   # the new incarnation opened the file again, the old one closed it
            assert vm.state.value == "Running" and vm.emulated["ide"] is not first and first.disk.closed
        else:
            assert vm.state.value == "Off" and vm.emulated == {}
            VirtualDisk.open(vm.ide_path).close()
    finally:
        m.close()


def test_another_run_in_the_same_run_directory_is_refused_while_the_ide_run_disk_is_open(tmp_path):
    m = reader_host(tmp_path)
    try:
        m.run(10 * MS)
        config = loads(host('[[vm]]\nname = "p"\nmemory = "16MiB"\nide = "legacy.vhd"'), file="again.toml",
                       base_dir=tmp_path)
        with pytest.raises(ConfigError) as info:
            ManagedHost(config, workdir=tmp_path / "run")
        assert info.value.key == "vm[0]" and "ide.vhd, which an open disk holds" in str(info.value)
    finally:
        m.close()


def test_a_vm_whose_ide_file_cannot_be_opened_stays_off_with_the_reason(tmp_path):
    m = reader_host(tmp_path)
    try:
        held = VirtualDisk.open(tmp_path / "run" / "p" / "ide.vhd")   # another holder
        m.run(10 * MS)
        vm = m.vms["p"]
        assert vm.state.value == "Off" and "ide" in vm.off_reason and "in use" in vm.off_reason
        held.close()
    finally:
        m.close()


# ---- containment: a device model that raises ----------------------------------------------------------
NATIVE_LOOKER = f"""
  xor %rbx, %rbx
look:
  mov $0x1f7, %dx
  in %dx, %al
  inc %rbx
  mov %rbx, {LOOKS:#x}
  mov $20000, %rcx
spin:
  dec %rcx
  jnz spin
  jmp look
"""


async def python_looker(ctx, catch: bool = False):
    """Reads the drive's status every millisecond, counting its looks; with `catch`, it swallows
    whatever the access raises and goes on."""
    while True:
        try:
            await ctx.port_in(0x1F7, 1)
        except Exception:
            if not catch:
                raise
        ctx.state["looks"] = ctx.state.get("looks", 0) + 1
        await ctx.sleep("1ms")


@pytest.fixture
def broken_reads(monkeypatch):
    """IdeDisk.read raises for a drive whose `broken` is set: a device model bug on demand."""
    read = ide_module.IdeDisk.read

    def maybe_broken(self, offset, size):
        if getattr(self, "broken", False):
            raise ZeroDivisionError("division by zero in the drive model")
        return read(self, offset, size)
    monkeypatch.setattr(ide_module.IdeDisk, "read", maybe_broken)


def two_vms(tmp_path, catch: bool = False):
    from partitions.eventlog import EventLog
    from tests.native.kernels import build
    elf = build(tmp_path, "looker", NATIVE_LOOKER)
    make_vhd(tmp_path / "n.vhd")
    make_vhd(tmp_path / "p.vhd")
    text = host(f'''
[[vm]]
name = "n"
memory = "4MiB"
kernel = "{elf}"
ide = "n.vhd"
[[vm]]
name = "p"
memory = "16MiB"
ide = "p.vhd"
workload = {{ kind = "python", target = "tests.partitions.test_emulated_config:python_looker", args = {{ catch = {str(catch).lower()} }} }}
''')
    built = []
    log = EventLog(None, lambda: built[0].host.now if built else 0)
    m = ManagedHost(loads(text, base_dir=tmp_path), workdir=tmp_path / "run", event_log=log)
    built.append(m)
    return m, log


def native_looks(m) -> int:
    return int.from_bytes(m.vms["n"].partition.read(LOOKS, 8), "little")


def crashes(log) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "t_ns"} for e in log.records() if e["event"] == "vm.crashed"]


REASON = "emulated device 'ide' failed: ZeroDivisionError: division by zero in the drive model (on VP 0)"


def test_a_native_vms_broken_device_crashes_it_alone(tmp_path, broken_reads):
    m, log = two_vms(tmp_path)
    try:
        m.run(20 * MS)
        m.vms["n"].emulated["ide"].broken = True
        m.run(40 * MS)
        looks = m.vms["p"].workload_states[0]["looks"]
        m.run(80 * MS)
        n, p = m.vms["n"], m.vms["p"]
        assert n.state.value == "Off" and n.off_reason == REASON
        assert p.state.value == "Running" and p.workload_states[0]["looks"] > looks
        assert crashes(log) == [{"event": "vm.crashed", "vm": "n", "vp": 0, "device": "ide",
                                 "error": REASON.removesuffix(" (on VP 0)")}]
        assert {r["Name"]: r["Status"] for r in m.get_vm()}["n"] == REASON
    finally:
        m.close()


def test_a_python_vms_broken_device_crashes_it_alone(tmp_path, broken_reads):
    m, log = two_vms(tmp_path)
    try:
        m.run(20 * MS)
        m.vms["p"].emulated["ide"].broken = True
        m.run(40 * MS)
        looks = native_looks(m)
        m.run(80 * MS)
        n, p = m.vms["n"], m.vms["p"]
        assert p.state.value == "Off" and p.off_reason == REASON
        assert n.state.value == "Running" and native_looks(m) > looks
        assert [e["vm"] for e in crashes(log)] == ["p"] and crashes(log)[0]["device"] == "ide"
    finally:
        m.close()


def test_a_guest_that_swallows_its_devices_failure_is_crashed_all_the_same(tmp_path, broken_reads):
    m, log = two_vms(tmp_path, catch=True)
    try:
        m.run(20 * MS)
        m.vms["p"].emulated["ide"].broken = True
        m.run(200 * MS)
        p = m.vms["p"]
        assert p.state.value == "Off" and p.off_reason == REASON.removesuffix(" (on VP 0)")
        assert m.vms["n"].state.value == "Running"
        assert crashes(log) == [{"event": "vm.crashed", "vm": "p", "device": "ide", "error": p.off_reason}]
    finally:
        m.close()


def test_a_device_that_cannot_save_refuses_the_save_and_the_vm_runs_on(tmp_path, monkeypatch):
    m = reader_host(tmp_path)
    try:
        m.run(30 * MS)
        vm = m.vms["p"]

        def broken():
            raise KeyError("buffer")
        monkeypatch.setattr(vm.emulated["ide"], "save_state", broken)
        with pytest.raises(SavedStateError, match="emulated device 'ide' cannot save its state"):
            vm.save(tmp_path / "p.hvsav")
        assert vm.state.value == "Running"
        m.run(60 * MS)
        assert vm.state.value == "Running"
    finally:
        m.close()


# ---- the legacy NIC from the configuration --------------------------------------------------------------
async def legacy_talker(ctx, send: bool = True):
    """Opens the VM's legacy NIC (rings at 12 MiB) and, with `send`, broadcasts a frame every 2 ms;
    counts in ctx.state the frames it received."""
    from partitions.native_guest.tulip_driver import TulipDriver
    nic = TulipDriver(ctx, memory=0xC0_0000)
    mac = await nic.open()
    ctx.state["received"] = 0
    while True:
        if send:
            await nic.send(b"\xff" * 6 + mac + b"\x88\xb5" + b"hello".ljust(46, b"\0"))
        if await nic.receive(timeout_ns=2 * MS) is not None:
            ctx.state["received"] += 1


LEGACY_PAIR = host('''
[[vm]]
name = "a"
memory = "16MiB"
legacy_nic = { switch = "lan" }
workload = { kind = "python", target = "tests.partitions.test_emulated_config:legacy_talker" }
[[vm]]
name = "b"
memory = "16MiB"
legacy_nic = { switch = "lan", mac = "00:15:5d:00:00:0b" }
workload = { kind = "python", target = "tests.partitions.test_emulated_config:legacy_talker", args = { send = false } }
''', '[[switch]]\nname = "lan"')


def test_legacy_nics_from_the_configuration_talk_over_their_switch_and_save_their_state(tmp_path):
    m = ManagedHost(loads(LEGACY_PAIR), workdir=tmp_path)
    try:
        m.run(100 * MS)
        a, b = m.vms["a"], m.vms["b"]
        assert b.workload_states[0]["received"] > 10
        assert b.emulated["legacy-nic"].mac == bytes.fromhex("00155d00000b")
        b.freeze()
        record = b.capture()["emulated"]["devices"]["legacy-nic"]
        assert record == b.emulated["legacy-nic"].save_state() and record["stats"]["rx_frames"] > 10
        b.thaw()
        nic = a.emulated["legacy-nic"]
        a.turn_off()
        assert nic.port is None and a.emulated == {}      # it left the switch
        before = b.workload_states[0]["received"]
        m.run(150 * MS)
        assert b.workload_states[0]["received"] == before  # nobody sends any more
    finally:
        m.close()


def test_a_legacy_nic_restored_into_a_new_shell_goes_on_from_its_record(tmp_path):
    old = ManagedHost(loads(LEGACY_PAIR), workdir=tmp_path / "old")
    old.run(60 * MS)
    b = old.vms["b"]
    saved = b.emulated["legacy-nic"].save_state()
    b.save(tmp_path / "b.hvsav")
    old.close()
    new = ManagedHost(loads(LEGACY_PAIR), workdir=tmp_path / "new")
    try:
        vm = new.restore_vm(tmp_path / "b.hvsav")
        nic = vm.emulated["legacy-nic"]
        assert nic.save_state() == saved and nic.stats["rx_frames"] > 10
        assert nic.port is not None                       # on the new host's switch
    finally:
        new.close()
    # A record for another adapter is refused before anything changes.
    from partitions.savedstate import SavedStateReader, SavedStateWriter
    with SavedStateReader(tmp_path / "b.hvsav", kind="saved-state") as r:
        meta = r.meta
        sections = {name: r.load(name) for name in r.sections() if name != "memory"}
        memory = list(r.records("memory"))
    sections["emulated"]["devices"]["legacy-nic"]["mac"] = bytes.fromhex("00155d0000ff")
    with SavedStateWriter(tmp_path / "bad.hvsav", "saved-state", meta) as w:
        for name, value in sections.items():
            w.section(name, value)
        mem = w.stream("memory")
        for rec in memory:
            mem.write_record(rec)
        mem.close()
    again = ManagedHost(loads(LEGACY_PAIR), workdir=tmp_path / "again")
    try:
        vm = again.vms["b"]
        with pytest.raises(SavedStateError, match="emulated.devices.legacy-nic: saved for MAC 00:15:5d:00:00:ff"):
            vm.restore(tmp_path / "bad.hvsav")
        assert vm.state.value == "Off" and vm.emulated == {}
    finally:
        again.close()


def test_a_device_whose_quiesce_raises_crashes_its_vm_alone(tmp_path, monkeypatch):
    from partitions.native_guest import tulip

    def broken(self):
        raise RuntimeError("quiesce bug")
    monkeypatch.setattr(tulip.Tulip21140, "quiesce", broken)
    m = ManagedHost(loads(LEGACY_PAIR), workdir=tmp_path)
    try:
        m.run(40 * MS)
        m.vms["b"].save(tmp_path / "b.hvsav")       # the hook's failure does not stop the save ...
        m.run(60 * MS)                              # ... and the VM is crashed as the host's step ends
        b, a = m.vms["b"], m.vms["a"]
        assert b.state.value == "Off"
        assert b.off_reason == "emulated device 'legacy-nic' failed: RuntimeError: quiesce bug"
        assert a.state.value == "Running"
    finally:
        m.close()
