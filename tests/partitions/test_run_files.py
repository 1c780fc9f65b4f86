"""The files of a run: the configured disks are bases a run never writes; each VM disk runs on a
differencing disk in the run directory, made afresh every run, and checkpoint forks and saved
states go there too; so running a configuration again starts from the same disks and leaves the
same files, instead of stacking checkpoint disks onto a base the last run wrote."""
import hashlib

import pytest

from drivers.storage.vhd import VirtualDisk
from partitions.config import load
from partitions.config_schema import ConfigError
from partitions.eventlog import EventLog
from partitions.management import ManagedHost

HOST = '''
[host]
logical_processors = 2
memory = "256MiB"

[[vm]]
name = "a"
memory = "16MiB"
disks = [ { path = "disks/a.vhd", size = "4MiB" }, { path = "disks/b.vhd", size = "2MiB" } ]
workload = { kind = "disk-io", queue_depth = 2, read_fraction = 0.3 }

[[at]]
time = "100ms"
action = "checkpoint"
vm = "a"
name = "one"

[[at]]
time = "200ms"
action = "save"
vm = "a"

[[at]]
time = "250ms"
action = "restore"
vm = "a"
'''


def contents(path) -> str:
    """What a VHD holds itself, by offset (not its file bytes: those carry creation times and ids)."""
    h = hashlib.blake2b()
    with VirtualDisk.open(str(path), read_only=True) as d:
        for off, n in d.own_ranges():
            h.update(off.to_bytes(8, "little") + d.read(off, n))
    return h.hexdigest()


def run(config_path, workdir, until="400ms", log=None):
    managed = ManagedHost(load(config_path), workdir=workdir, event_log=log)
    managed.run(until)
    digest = managed.host.trace_digest().hex()
    managed.close()            # the VMs go Off: their devices close the disks
    return digest


def snapshot(root):
    return {str(p.relative_to(root)): contents(p) if p.suffix == ".vhd" else p.stat().st_size
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "conf" / "host.toml"
    path.parent.mkdir()
    path.write_text(HOST)
    return path


def test_a_rerun_starts_from_the_same_disks_and_leaves_the_same_files(config, tmp_path):
    work = tmp_path / "work"
    first = run(config, work)
    after_first = snapshot(work), snapshot(config.parent)
    second = run(config, work)
    assert second == first
    assert (snapshot(work), snapshot(config.parent)) == after_first
    assert sorted(after_first[0]) == ["a.hvsav", "a/disk0-ckpt1.vhd", "a/disk0.vhd", "a/disk1-ckpt1.vhd",
                                      "a/disk1.vhd"]


def test_the_configured_disks_are_never_written(config, tmp_path):
    run(config, tmp_path / "work")
    with VirtualDisk.open(str(config.parent / "disks" / "a.vhd"), read_only=True) as base:
        assert list(base.own_ranges()) == []
    with VirtualDisk.open(str(tmp_path / "work" / "a" / "disk0.vhd"), read_only=True) as run_disk:
        assert run_disk.parent.path == str(config.parent / "disks" / "a.vhd")
    # Writes before the checkpoint are in the run disk it froze, later ones in the fork.
    assert contents(tmp_path / "work" / "a" / "disk0.vhd") != contents(config.parent / "disks" / "a.vhd")


def test_generated_files_go_under_the_run_directory_only(config, tmp_path):
    work = tmp_path / "elsewhere" / "work"
    run(config, work)
    assert sorted(p.name for p in config.parent.rglob("*")) == ["a.vhd", "b.vhd", "disks", "host.toml"]
    assert (work / "a.hvsav").is_file() and (work / "a" / "disk1-ckpt1.vhd").is_file()


def test_files_an_earlier_run_left_are_removed_and_nothing_else(config, tmp_path):
    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    (work / "a" / "disk0-ckpt7.vhd").write_bytes(b"left by an earlier run")
    (work / "a" / "notes.txt").write_text("mine")
    log = EventLog(None, lambda: 0)
    run(config, work, until="50ms", log=log)
    assert not (work / "a" / "disk0-ckpt7.vhd").exists() and (work / "a" / "notes.txt").read_text() == "mine"
    events = log.records()
    (discarded,) = [e for e in events if e["event"] == "disk.discarded"]
    assert discarded["vm"] == "a" and discarded["paths"] == [str(work / "a" / "disk0-ckpt7.vhd")]
    created = {e["path"] for e in events if e["event"] == "disk.created"}
    assert {str(work / "a" / "disk0.vhd"), str(work / "a" / "disk1.vhd"), str(config.parent / "disks" / "a.vhd")} <= created


def test_a_configured_disk_that_is_a_run_file_is_refused(tmp_path):
    path = tmp_path / "host.toml"
    path.write_text('[[vm]]\nname = "a"\ndisks = [ { path = "work/a/disk0.vhd", size = "1MiB" } ]\n')
    with pytest.raises(ConfigError) as err:
        ManagedHost(load(path), workdir=tmp_path / "work")
    assert err.value.key == "vm[0].disks[0].path" and "host.toml" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.toml"]


def test_a_chain_of_configured_disks_is_made_parent_first(tmp_path):
    path = tmp_path / "host.toml"
    path.write_text('[host]\nmemory = "128MiB"\n'
                    '[[vm]]\nname = "b"\nmemory = "8MiB"\n'
                    'disks = [ { path = "b.vhd", type = "differencing", parent = "a.vhd" } ]\n'
                    '[[vm]]\nname = "a"\nmemory = "8MiB"\ndisks = [ { path = "a.vhd", size = "1MiB" } ]\n'
                    'workload = { kind = "disk-io", queue_depth = 1 }\n')
    run(path, tmp_path / "work", until="100ms")
    with VirtualDisk.open(str(tmp_path / "b.vhd"), read_only=True) as b:
        assert b.parent.path == str(tmp_path / "a.vhd") and b.size == 1 << 20
    # a's writes went to its run disk: b's parent is untouched.
    assert contents(tmp_path / "a.vhd") == contents(tmp_path / "b.vhd")


def test_a_save_makes_the_run_directory_when_it_is_not_there_yet(tmp_path):
    path = tmp_path / "host.toml"
    path.write_text('[host]\nmemory = "64MiB"\n[[vm]]\nname = "nodisk"\nmemory = "8MiB"\n'
                    '[[at]]\ntime = "50ms"\naction = "save"\nvm = "nodisk"\n')
    run(path, tmp_path / "new" / "work", until="100ms")
    assert (tmp_path / "new" / "work" / "nodisk.hvsav").is_file()
