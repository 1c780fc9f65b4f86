"""Installed devices from a host file (`devices = [ { type = "NAME", ... } ]`): the device checks
its own settings and gets them as its VSP's config; errors name the file, the key and what the
device said; an unknown type lists the installed ones; a workload waiting for a device that never
comes is logged with the VM's and the device's name instead of waiting silently."""
import uuid

import pytest

import drivers.registry
import partitions.management
from drivers.device import DeviceConfigError, DeviceType, Vsc, Vsp
from drivers.registry import LoadError
from partitions.config import dump, load, loads
from partitions.config_schema import ConfigError
from partitions.eventlog import EventLog
from partitions.management import ManagedHost


class KnobVsp(Vsp):
    """A test device whose one setting, `level`, must be 1..10."""

    @classmethod
    def validate_config(cls, settings):
        level = settings.get("level", 1)
        if set(settings) - {"level"}:
            raise DeviceConfigError(sorted(set(settings) - {"level"})[0], "only a level", got="an unknown key")
        if not isinstance(level, int) or not 1 <= level <= 10:
            raise DeviceConfigError("level", "a level from 1 to 10")
        return {"level": level}


class KnobVsc(Vsc):
    ready = True


class StuckVsc(Vsc):
    ready = False   # never gets there: a workload waiting for it must say so


KNOB = DeviceType("knob", uuid.UUID("6a3e1c52-93f1-4a0c-8c8b-4c2f4e8f1a01"), KnobVsp, KnobVsc)
STUCK = DeviceType("stuck", uuid.UUID("6a3e1c52-93f1-4a0c-8c8b-4c2f4e8f1a02"),
                   type("StuckVsp", (Vsp,), {}), StuckVsc)


@pytest.fixture(autouse=True)
def installed(monkeypatch):
    """The built-in drivers, plus knob and stuck, and a plugin "broken" that fails to load."""
    real = drivers.registry.discover

    def discover(*args, **kwargs):
        registry = real(*args, **kwargs)
        registry.add(KNOB)
        registry.add(STUCK)
        registry.errors.append(LoadError("broken = somewhere:DEVICE", "broken-plugin",
                                         "ModuleNotFoundError: No module named 'somewhere'"))
        return registry

    monkeypatch.setattr(drivers.registry, "discover", discover)
    monkeypatch.setattr(partitions.management, "discover", discover)


def vm_with(devices: str, extra: str = "") -> str:
    return f'[host]\nmemory = "64MiB"\n[[vm]]\nname = "a"\nmemory = "8MiB"\ndevices = [ {devices} ]\n{extra}'


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        loads(text, file="dev.toml")
    return err.value


def test_a_devices_key_attaches_installed_devices_with_their_settings():
    config = loads(vm_with('{ type = "knob", level = 3 }, { type = "echo" }, { type = "knob" }'))
    assert [(d.type, dict(d.settings)) for d in config.vms[0].devices] == [
        ("knob", {"level": 3}), ("echo", {}), ("knob", {})]
    assert loads(dump(config)) == config


@pytest.mark.parametrize("devices, key, words", [
    ('{ type = "knob", level = 11 }', "vm[0].devices[0].level", ['a level from 1 to 10 (device "knob")', "got 11"]),
    ('{ type = "echo" }, { type = "knob", colour = "red" }', "vm[0].devices[1].colour", ["only a level",
                                                                                         "an unknown key"]),
    ('{ type = "echo", speed = 3 }', "vm[0].devices[0].speed", ['it takes none (device "echo")', "an unknown key"]),
    ('{ type = "knb" }', "vm[0].devices[0].type", ["echo, knob, stuck", 'did you mean "knob"?']),
    ('{ type = "broken" }', "vm[0].devices[0].type", ["failed to load", "broken-plugin", "ModuleNotFoundError"]),
    ('{ type = "storage" }', "vm[0].devices[0].type", ["configured with disks"]),
    ('{ type = "heartbeat" }', "vm[0].devices[0].type", ["integration_services.heartbeat"]),
    ('{ level = 2 }', "vm[0].devices[0].type", ["the name of an installed device"]),
])
def test_device_errors_name_the_file_the_key_and_what_the_device_said(devices, key, words):
    error = refused(vm_with(devices))
    assert error.key == key and str(error).startswith(f"dev.toml: {key}: expected ")
    for word in words:
        assert word in str(error)


def test_the_host_builds_the_device_with_the_config_the_device_made(tmp_path):
    path = tmp_path / "dev.toml"
    path.write_text(vm_with('{ type = "knob", level = 4 }, { type = "knob" }'))
    managed = ManagedHost(load(path), workdir=tmp_path)
    managed.run("50ms")
    vm = managed.vms["a"]
    assert vm.device_vsp("knob").config["level"] == 4 and vm.device_vsp("knob1").config["level"] == 1
    assert isinstance(vm.device_vsc("knob"), KnobVsc) and vm.device_vsc("knob1") is not vm.device_vsc("knob")


async def uses_knob(ctx, name="knob", timeout="1s"):
    """Records what ctx.device gave, in the module (the test reads it)."""
    FOUND.append(await ctx.device(name, timeout))


FOUND: list = []


def run_logged(tmp_path, text, until="100ms"):
    path = tmp_path / "dev.toml"
    path.write_text(text)
    built = []
    log = EventLog(None, lambda: built[0].host.now if built else 0)
    managed = ManagedHost(load(path), workdir=tmp_path, event_log=log)
    built.append(managed)
    FOUND.clear()
    managed.run(until)
    return managed, log.records()


def test_a_workload_gets_its_device_by_name(tmp_path):
    managed, _ = run_logged(tmp_path, vm_with('{ type = "knob" }', 'workload = { kind = "python", target = '
                                              '"tests.partitions.test_host_devices:uses_knob" }\n'))
    assert FOUND == [managed.vms["a"].device_vsc("knob")] and FOUND[0] is not None


def test_waiting_for_a_device_the_vm_does_not_have_is_logged_at_once(tmp_path):
    _, events = run_logged(tmp_path, vm_with('{ type = "knob" }', 'workload = { kind = "python", target = '
                                             '"tests.partitions.test_host_devices:uses_knob", '
                                             'args = { name = "reverse", timeout = "10s" } }\n'))
    assert FOUND == [None]
    (missing,) = [e for e in events if e["event"] == "guest.device_missing"]
    assert missing["vm"] == "a" and missing["device_name"] == "reverse" and "knob" in missing["devices"]
    assert missing["t_ns"] < 10_000_000   # at once, not after the 10 s timeout


def test_a_device_that_never_gets_ready_ends_the_wait_with_an_event(tmp_path):
    _, events = run_logged(tmp_path, vm_with('{ type = "stuck" }', 'workload = { kind = "python", target = '
                                             '"tests.partitions.test_host_devices:uses_knob", '
                                             'args = { name = "stuck", timeout = "200ms" } }\n'), until="400ms")
    assert FOUND == [None]
    (timeout,) = [e for e in events if e["event"] == "guest.wait_timeout"]
    assert timeout["vm"] == "a" and timeout["device_name"] == "stuck" and timeout["timeout_ns"] == 200_000_000
    assert 200_000_000 <= timeout["t_ns"] < 300_000_000
