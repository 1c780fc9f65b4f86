"""A VM's whole state is data: a capture (and a saved-state file) rebuilds the VM on another host
or in a new Python process, where the guest resumes as from hibernation (its VMBus reconnects,
its devices open afresh) and each workload goes on from its `ctx.state`."""
from __future__ import annotations

from pathlib import Path

import pytest

from partitions.config import loads
from partitions.management import ManagedHost
from partitions.savedstate import SavedStateError
from partitions.vm import InvalidTransition, VmState

MS = 1_000_000

HOST = """
[host]
logical_processors = 2
memory = "256MiB"
[[vm]]
name = "counter"
memory = "16MiB"
workload = { kind = "memory-counter", pages = 16, interval = "1ms" }
[[vm]]
name = "disk"
memory = "16MiB"
workload = { kind = "disk-io", pattern = "random", queue_depth = 4 }
disks = [ { path = "disk.vhd", size = "8MiB" } ]
"""
EMPTY = """
[host]
logical_processors = 2
memory = "256MiB"
"""


def host(tmp_path: Path, text: str, name: str) -> ManagedHost:
    return ManagedHost(loads(text, base_dir=tmp_path), workdir=tmp_path / name)


def move(vm, target: ManagedHost):
    """The same-process move MIGRATE builds on: freeze, capture, incoming, pages, resume, release."""
    vm.freeze()
    image = vm.capture()
    digest = vm.memory_digest()
    pages = vm.memory_pages()
    arrived = target.incoming(image["config"])
    assert arrived.state is VmState.MIGRATING and target.vms[vm.name] is arrived
    arrived.write_pages(pages, b"".join(vm.partition.read(p * 4096, 4096) for p in pages))
    arrived.resume_from(image)
    assert arrived.memory_digest() == digest   # nothing of the guest has run yet
    vm.release("moved")
    return arrived, image


def records(image: dict) -> dict:
    return {k: image[k] for k in ("vps", "host_visibility", "guest", "devices", "measured", "config")}


def test_a_vm_moves_between_two_hosts_of_one_process_and_goes_on(tmp_path):
    source, target = host(tmp_path, HOST, "a"), host(tmp_path, EMPTY, "b")
    source.run("200ms")
    target.run("200ms")
    before = {name: dict(vm.workload_states[0]) for name, vm in source.vms.items()}
    moved = {}
    for name in ("counter", "disk"):
        vm = source.vms[name]
        moved[name], image = move(vm, target)
        assert vm.state is VmState.OFF and name not in source.vms
        # The records round-trip through the live objects of the new shell: before its guest
        # runs, a capture gives back what came.
        moved[name].freeze()
        assert records(moved[name].capture()) == records(image)
        moved[name].thaw()
    counter = int.from_bytes(moved["counter"].partition.read(before["counter"]["region"][0] * 4096, 8), "little")
    target.run("400ms")
    c, d = moved["counter"], moved["disk"]
    assert c.workload_states[0]["region"] == before["counter"]["region"]   # the same pages
    assert min(c.workload.written) > counter > 0                          # counting on from memory
    assert d.workload_states[0]["issued"] > before["disk"]["issued"] > 0  # its sequence goes on
    assert [row["State"] for row in target.get_vm()] == ["Running", "Running"]
    assert d.measure()["disk_normalized_ios"] > 0
    assert not [e for e in target.vmbus.log if "broken" in e[2] or "failed" in e[2]]


def test_freeze_then_thaw_changes_nothing(tmp_path):
    managed = host(tmp_path, HOST, "a")
    managed.run("100ms")
    vm = managed.vms["counter"]
    vm.freeze()
    assert vm.state is VmState.MIGRATING and managed.get_vm()[0]["State"] == "Migrating"
    digest = vm.memory_digest()
    managed.run("150ms")                      # frozen: its memory stays as it was
    assert vm.memory_digest() == digest
    vm.thaw()
    assert vm.state is VmState.RUNNING
    value = max(vm.workload.written)
    managed.run("200ms")
    assert max(vm.workload.written) > value
    with pytest.raises(InvalidTransition):
        vm.thaw()


def test_a_bad_image_leaves_the_arriving_vm_migrating(tmp_path):
    source, target = host(tmp_path, HOST, "a"), host(tmp_path, EMPTY, "b")
    source.run("100ms")
    vm = source.vms["counter"]
    vm.freeze()
    image = vm.capture()
    arrived = target.incoming(image["config"])
    for bad in ({**image, "guest": {**image["guest"], "workloads": [object()]}},
                {**image, "guest": {**image["guest"], "workloads": []}},
                {k: v for k, v in image.items() if k != "guest"},
                {**image, "memory_bytes": image["memory_bytes"] * 2}):
        with pytest.raises(SavedStateError):
            arrived.resume_from(bad)
        assert arrived.state is VmState.MIGRATING
    arrived.resume_from(image)
    assert arrived.state is VmState.RUNNING
