"""Get-VM as Hyper-V shows it: CPUUsage is recent use (a paused VM drops to 0 %), Uptime counts
while Running or Paused and is zero while Off or Saved, and Measure-VM's disk and network figures
per VM in the summary, its JSON and the CLI's tables."""
import json

from partitions.config import loads
from partitions.management import ManagedHost

S = 1_000_000_000

BURNER = """
[host]
logical_processors = 2
memory = "1GiB"

[[vm]]
name = "burner"
memory = "64MiB"
workload = { kind = "cpu-burn", duty = 1.0 }
"""

IO = """
[host]
logical_processors = 2
memory = "2GiB"

[[vm]]
name = "db"
memory = "64MiB"
workload = { kind = "disk-io", pattern = "sequential", block_size = "16KiB", queue_depth = 2, read_fraction = 0.5 }
disks = [ { path = "db.vhd", size = "64MiB", type = "dynamic" } ]
nics = [ { switch = "lan", ip = "10.0.0.3/24" } ]

[[vm]]
name = "web"
memory = "64MiB"
workload = { kind = "net-request-response", peer = "db", port = 7, size = 1000, interval = "10ms" }
nics = [ { switch = "lan", ip = "10.0.0.2/24" } ]

[[switch]]
name = "lan"
type = "private"
"""


def managed(tmp_path, text):
    return ManagedHost(loads(text, base_dir=tmp_path), workdir=tmp_path)


def row(m, name="burner"):
    return next(r for r in m.get_vm() if r["Name"] == name)


def test_cpu_usage_is_recent_use_and_a_paused_vm_drops_to_zero(tmp_path):
    m = managed(tmp_path, BURNER)
    m.run("2s")
    assert row(m)["CPUUsage(%)"] == 50.0             # one VP busy of two LPs
    m.vms["burner"].pause()
    m.run("2.5s")
    assert 20 < row(m)["CPUUsage(%)"] < 30           # half of the last second was paused
    m.run("3.2s")
    paused = row(m)
    assert paused["CPUUsage(%)"] == 0.0 and paused["State"] == "Paused"
    assert paused["Uptime"] == "00:00:03.200"        # uptime goes on while Paused, as on Hyper-V
    m.vms["burner"].resume()
    m.run("4.5s")
    assert row(m)["CPUUsage(%)"] == 50.0


def test_uptime_is_zero_while_off_or_saved_and_starts_again_at_a_restore_or_start(tmp_path):
    m = managed(tmp_path, BURNER)
    vm = m.vms["burner"]
    m.run("1s")
    vm.save(tmp_path / "burner.hvsav")
    m.run("1.5s")
    assert (row(m)["State"], row(m)["Uptime"]) == ("Saved", "00:00:00.000")
    vm.restore()
    m.run("2s")
    assert (row(m)["State"], row(m)["Uptime"]) == ("Running", "00:00:00.500")
    vm.turn_off()
    m.run("3.5s")
    assert (row(m)["State"], row(m)["Uptime"], row(m)["CPUUsage(%)"]) == ("Off", "00:00:00.000", 0.0)
    vm.start()
    m.run("4s")
    assert row(m)["Uptime"] == "00:00:00.500"


def test_measure_vm_figures_come_from_the_devices_and_outlive_a_reset(tmp_path):
    m = managed(tmp_path, IO)
    m.run("1s")
    figures = {r["VMName"]: r for r in m.measure()}
    db, web = figures["db"], figures["web"]
    storvsp = m.vms["db"].device_vsp("storage").counters()["luns"][0]
    assert db["AggregatedDiskDataRead(M)"] == round(storvsp["read_bytes"] / 1e6, 3) > 0
    assert db["AggregatedDiskDataWritten(M)"] == round(storvsp["write_bytes"] / 1e6, 3) > 0
    # 16 KiB operations count twice each (8 KiB units); the rate is over the second run so far.
    assert db["AggregatedNormalizedIOCount"] == 2 * (storvsp["read_ops"] + storvsp["write_ops"])
    assert db["AggregatedAverageNormalizedIOPS"] == db["AggregatedNormalizedIOCount"]
    assert web["AggregatedDiskDataRead(M)"] == 0.0 and web["AggregatedNormalizedIOCount"] == 0
    port = m.switches["lan"]
    assert web["NetworkOutbound(M)"] > 0.05 and web["NetworkInbound(M)"] > 0.05      # ~100 requests of 1000 bytes
    assert db["NetworkInbound(M)"] >= web["NetworkOutbound(M)"] - 0.002 and port.stats.forwarded > 100
    before = m.measure()[0]
    m.vms["db"].quick_reset()
    after = m.measure()[0]
    assert after == before                              # earlier incarnations still count
    m.run("1.5s")
    assert m.measure()[0]["AggregatedDiskDataRead(M)"] > before["AggregatedDiskDataRead(M)"]


def test_the_summary_json_and_the_cli_show_the_figures(tmp_path, capsys):
    from partitions.cli import main
    cfg = tmp_path / "host.toml"
    cfg.write_text(IO)
    assert main(["run", str(cfg), "--for", "0.5s", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["VMName"] for r in out["measure"]] == ["db", "web"]
    assert out["measure"][0]["AggregatedDiskDataRead(M)"] > 0
    (tmp_path / "again").mkdir()
    cfg = tmp_path / "again" / "host.toml"
    cfg.write_text(IO)
    assert main(["run", str(cfg), "--for", "0.5s"]) == 0
    text = capsys.readouterr().out
    assert "Measure-VM" in text and "Disk read" in text and "Network out" in text
