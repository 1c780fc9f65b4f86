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
