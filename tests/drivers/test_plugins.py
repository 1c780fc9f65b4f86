"""Plugins: a package installed with pip is found through the `hvsim.drivers` entry points and
works, on its own and attached to a VM from a host file (`devices`), its settings checked by the
plugin; a plugin that fails to load gets a clear error naming it and stops nothing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = Path(__file__).resolve().parent / "plugin_demo"

PROBE = r'''
import json
from drivers.registry import discover
from vmbus.channel import connected_pair
reg = discover()
dev = reg["reverse"]
host_end, guest_end = connected_pair()
vsp, vsc = dev.vsp(host_end), dev.vsc(guest_end)
host_end.on_signal = lambda: vsp.on_packets(host_end.receive())
guest_end.on_signal = lambda: vsc.on_packets(guest_end.receive())
vsc.ask(b"stressed", 7)
print(json.dumps({"devices": sorted(reg.devices), "answers": [[t, a.decode()] for t, a in vsc.answers],
                  "errors": [[e.entry_point, e.distribution, e.message] for e in reg.errors]}))
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The demo plugin installed with pip into a directory of its own (once for these tests)."""
    target = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD",)}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(PLUGIN)],
                   check=True, capture_output=True, env=env, timeout=300)
    return target


def probe(site, script, *paths, cwd=None):
    """Run `script` in a Python that has the plugin installed (and `paths` importable); its JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *map(str, paths), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                         cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_an_installed_plugin_is_discovered_and_works(site):
    result = probe(site, PROBE)
    assert "reverse" in result["devices"] and "echo" in result["devices"]
    assert result["answers"] == [[7, "desserts"]]
    (err,) = result["errors"]
    assert err[0] == "broken = hvsim_demo_plugin.missing:DEVICE"
    assert err[1] == "hvsim-demo-plugin"
    assert "ModuleNotFoundError" in err[2]


def test_without_the_plugin_only_the_built_ins_are_there():
    from drivers.registry import discover
    reg = discover()
    assert "reverse" not in reg.devices and "echo" in reg.devices


WORKLOAD = """
async def ask(ctx, name="reverse"):
    vsc = await ctx.device(name)
    vsc.ask(b"abc", 9)
    await ctx.wait_for(lambda: vsc.answers, "1s")
"""

ON_A_HOST = r'''
import json, tempfile
from partitions.config import ConfigError, load
from partitions.management import ManagedHost
managed = ManagedHost(load("host.toml"), workdir=tempfile.mkdtemp())
managed.run("100ms")
vm = managed.vms["a"]
errors = {}
for name in ("bad_repeat.toml", "typo.toml", "broken.toml"):
    try:
        load(name)
    except ConfigError as e:
        errors[name] = [e.key, str(e)]
print(json.dumps({"answers": [[t, a.decode()] for t, a in vm.device_vsc("reverse").answers],
                  "config": vm.device_vsp("reverse").config["repeat"], "errors": errors}))
'''


def test_a_plugin_device_is_attached_from_a_host_file_with_its_settings(site, tmp_path):
    (tmp_path / "plugin_workload.py").write_text(WORKLOAD)
    vm = '[host]\nmemory = "64MiB"\n[[vm]]\nname = "a"\nmemory = "8MiB"\n'
    (tmp_path / "host.toml").write_text(vm + 'devices = [ { type = "reverse", repeat = 2 } ]\n'
                                        'workload = { kind = "python", target = "plugin_workload:ask" }\n')
    (tmp_path / "bad_repeat.toml").write_text(vm + 'devices = [ { type = "reverse", repeat = 7 } ]\n')
    (tmp_path / "typo.toml").write_text(vm + 'devices = [ { type = "revers" } ]\n')
    (tmp_path / "broken.toml").write_text(vm + 'devices = [ { type = "broken" } ]\n')
    result = probe(site, ON_A_HOST, tmp_path, cwd=tmp_path)
    assert result["answers"] == [[9, "cbacba"]] and result["config"] == 2
    key, text = result["errors"]["bad_repeat.toml"]
    assert key == "vm[0].devices[0].repeat" and "a whole number of repeats from 1 to 3" in text and "got 7" in text
    key, text = result["errors"]["typo.toml"]
    assert key == "vm[0].devices[0].type" and 'did you mean "reverse"?' in text and "echo, reverse" in text
    key, text = result["errors"]["broken.toml"]
    assert key == "vm[0].devices[0].type" and "failed to load" in text and "ModuleNotFoundError" in text


# ---- plugins that clash with built-ins or misbehave at import ----------------------------------
# Installed plugins are simulated: a module on sys.path and an entry point for it, added to the
# real entry points of this Python (hvsim's own among them) where the registry looks them up.

CLASHING = '''
from drivers.device import DeviceType
from drivers.example import EchoVsc, EchoVsp
from drivers.storage import DEVICE as STORAGE

class TakeoverVsp(EchoVsp):
    pass

class TakeoverVsc(EchoVsc):
    pass

# Storage's class GUID under a name that sorts before every built-in.
AAA = DeviceType(name="aaa_disk", class_id=STORAGE.class_id, vsp=TakeoverVsp, vsc=TakeoverVsc)

class NamedVsp(EchoVsp):
    pass

class NamedVsc(EchoVsc):
    pass

# Storage's name with a GUID of its own.
STORAGE_TOO = DeviceType(name="storage", class_id=__import__("uuid").uuid4(), vsp=NamedVsp, vsc=NamedVsc)
'''


class FakeEntryPoint:
    """An `hvsim.drivers` entry point of an installed distribution `dist`."""

    def __init__(self, name, value, dist):
        from importlib import metadata
        self.name, self.value, self.group = name, value, "hvsim.drivers"
        self.dist = type("Dist", (), {"name": dist, "version": "0.1"})()
        self._ep = metadata.EntryPoint(name, value, self.group)

    def load(self):
        return self._ep.load()


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """install(module_name, source, (entry point name, attr, distribution), ...)."""
    from importlib import metadata
    real = metadata.entry_points
    extra = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def entry_points(**kw):
        found = list(real(**kw))
        return found + [ep for ep in extra if kw.get("group") in (None, ep.group)]
    monkeypatch.setattr(metadata, "entry_points", entry_points)

    def install(module, source, *eps):
        (tmp_path / f"{module}.py").write_text(source)
        monkeypatch.delitem(sys.modules, module, raising=False)
        extra.extend(FakeEntryPoint(name, f"{module}:{attr}", dist) for name, attr, dist in eps)
    return install


def test_a_plugin_with_a_built_ins_class_guid_is_refused_and_the_built_in_kept(plugins):
    from drivers.registry import discover
    from drivers.storage import DEVICE as STORAGE
    plugins("takeover", CLASHING, ("aaa_disk", "AAA", "takeover-plugin"))
    reg = discover()
    assert reg["storage"] is STORAGE and reg.by_class(STORAGE.class_id) is STORAGE
    assert "aaa_disk" not in reg.devices
    (err,) = reg.errors
    assert err.entry_point == "aaa_disk = takeover:AAA" and err.distribution == "takeover-plugin"
    assert f"class GUID {STORAGE.class_id}" in err.message and "'storage' from hvsim" in err.message
    assert STORAGE.vsp.device is STORAGE            # the built-in's classes still name the built-in


def test_a_plugin_with_a_built_ins_name_is_refused_and_the_built_in_kept(plugins):
    from drivers.registry import discover
    from drivers.storage import DEVICE as STORAGE
    plugins("takeover", CLASHING, ("storage", "STORAGE_TOO", "takeover-plugin"))
    reg = discover()
    assert reg["storage"] is STORAGE and reg.distributions["storage"] == "hvsim"
    (err,) = reg.errors
    assert err.entry_point == "storage = takeover:STORAGE_TOO" and err.distribution == "takeover-plugin"
    assert "the name of device 'storage' from hvsim" in err.message


EXITS = "import sys\nsys.exit(3)\n"
RAISES_BASE = "class Odd(BaseException):\n    pass\nraise Odd('at import')\n"


def test_nothing_a_plugin_does_at_import_ends_discovery(plugins):
    from drivers.registry import discover
    plugins("exits", EXITS, ("exits", "DEVICE", "exits-plugin"))
    plugins("odd", RAISES_BASE, ("odd", "DEVICE", "odd-plugin"))
    reg = discover()
    assert "storage" in reg.devices and "echo" in reg.devices
    errors = {e.entry_point: e for e in reg.errors}
    assert errors["exits = exits:DEVICE"].message == "SystemExit: 3"
    assert errors["exits = exits:DEVICE"].distribution == "exits-plugin"
    assert errors["odd = odd:DEVICE"].message == "Odd: at import"


def test_ctrl_c_while_a_plugin_loads_still_stops_the_command(plugins):
    from drivers.registry import discover
    plugins("interrupts", "raise KeyboardInterrupt\n", ("interrupts", "DEVICE", "x"))
    with pytest.raises(KeyboardInterrupt):
        discover()


HOST = """
[host]
logical_processors = 1
memory = "256MiB"

[[vm]]
name = "db"
memory = "64MiB"
workload = { kind = "disk-io", pattern = "random", block_size = "4KiB", queue_depth = 2 }
disks = [ { path = "db.vhd", size = "8MiB", type = "dynamic" } ]
"""


def test_hvsim_run_goes_on_and_reports_the_plugins_not_the_built_in(plugins, tmp_path, capsys):
    from partitions.cli import main
    plugins("takeover", CLASHING, ("aaa_disk", "AAA", "takeover-plugin"))
    plugins("exits", EXITS, ("exits", "DEVICE", "exits-plugin"))
    cfg, log = tmp_path / "host.toml", tmp_path / "log.jsonl"
    cfg.write_text(HOST)
    assert main(["run", str(cfg), "--for", "50ms", "--workdir", str(tmp_path / "w"), "--log", str(log),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (db,) = [p for p in out["partitions"] if p["name"] == "db"]
    assert db["vmbus"]["packets_in"] > 10                  # its disk I/O went through the built-in
    events = [json.loads(line) for line in log.read_text().splitlines()]
    failed = {e["entry_point"]: e["error"] for e in events if e["event"] == "driver.load_failed"}
    assert set(failed) == {"aaa_disk = takeover:AAA", "exits = exits:DEVICE"}
    assert failed["exits = exits:DEVICE"] == "SystemExit: 3"
    assert "class GUID" in failed["aaa_disk = takeover:AAA"]


def test_hvsim_drivers_lists_the_built_in_and_the_clashing_plugin_as_failed(plugins, capsys):
    from partitions.cli import main
    plugins("takeover", CLASHING, ("aaa_disk", "AAA", "takeover-plugin"))
    assert main(["drivers", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    (storage,) = [d for d in out["drivers"] if d["name"] == "storage"]
    assert storage["distribution"] == "hvsim" and storage["vsp"] == "drivers.storage.vsp.StorVsp"
    (failed,) = out["failed"]
    assert failed["entry_point"] == "aaa_disk = takeover:AAA" and failed["distribution"] == "takeover-plugin"


def test_a_refused_plugin_made_of_a_built_ins_classes_leaves_them_the_built_ins(plugins):
    from drivers.registry import discover
    from drivers.storage import DEVICE as STORAGE
    source = ("import uuid\nfrom drivers.device import DeviceType\nfrom drivers.storage import DEVICE\n"
              "BORROW = DeviceType(name='storage', class_id=uuid.uuid4(), vsp=DEVICE.vsp, vsc=DEVICE.vsc)\n")
    plugins("borrow", source, ("storage", "BORROW", "borrow-plugin"))
    reg = discover()
    assert reg["storage"] is STORAGE and [e.distribution for e in reg.errors] == ["borrow-plugin"]
    assert STORAGE.vsp.device is STORAGE and STORAGE.vsc.device is STORAGE


def test_hvsim_drivers_names_the_built_ins_distribution_when_a_plugin_takes_its_name(plugins, capsys):
    from partitions.cli import main
    plugins("takeover", CLASHING, ("storage", "STORAGE_TOO", "takeover-plugin"))
    assert main(["drivers", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    (storage,) = [d for d in out["drivers"] if d["name"] == "storage"]
    assert storage["distribution"] == "hvsim" and storage["vsp"] == "drivers.storage.vsp.StorVsp"
    assert [f["distribution"] for f in out["failed"]] == ["takeover-plugin"]
