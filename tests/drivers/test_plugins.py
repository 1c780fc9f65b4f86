"""Plugins: a package installed with pip is found through the `hvsim.drivers` entry points and
works; a plugin that fails to load gets a clear error naming it and stops nothing."""
import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_an_installed_plugin_is_discovered_and_works(tmp_path):
    target = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD",)}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(PLUGIN)],
                   check=True, capture_output=True, env=env, timeout=300)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT)])
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True,
                         env={**env, **({"LD_PRELOAD": os.environ["LD_PRELOAD"]} if "LD_PRELOAD" in os.environ else {})},
                         timeout=120)
    result = json.loads(out.stdout)
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
