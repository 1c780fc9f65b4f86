"""A datacenter host served by `hvsim host serve` in another process, over loopback TCP: the
datacenter's digest is the one it has with the host in-process, messages cross both ways, and a
server that dies or a stream that is cut or damaged stops the run with an error naming the host
(and, from `hvsim run`, a failed outcome without a traceback). Every server is killed at the end."""
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from partitions.cli import main
from partitions.config import ConfigError, loads
from partitions.datacenter import Datacenter
from partitions.datacenter.remote import answer_pings
from partitions.datacenter.wire import WireError

CHECKOUT = str(Path(__file__).resolve().parents[2])

DC = """
[datacenter]
seed = 3

[[host]]
name = "host-a"
logical_processors = 2
memory = "1GiB"

[[host.vm]]
name = "counter"
memory = "64MiB"
workload = { kind = "memory-counter", pages = 16, interval = "2ms" }

[[host]]
name = "host-b"
{remote}
logical_processors = 2
memory = "1GiB"

[[host.vm]]
name = "batch"
processors = 2
memory = "64MiB"
workload = [ { kind = "cpu-burn", duty = 0.5, period = "10ms" }, { kind = "disk-io", queue_depth = 1 } ]
disks = [ { path = "disks/batch.vhd", size = "16MiB" } ]

[[link]]
hosts = ["host-a", "host-b"]
bandwidth = "10Gbit/s"
latency = "50us"

[[at]]
time = "30ms"
action = "pause"
vm = "batch"
"""


@pytest.fixture
def serve(tmp_path):
    """start(*options) -> (process, "127.0.0.1:PORT") of a new `hvsim host serve` on port 0."""
    started = []

    def start(*options):
        proc = subprocess.Popen([sys.executable, "-m", "partitions.cli", "host", "serve", "--listen", "127.0.0.1:0",
                                 "--workdir", str(tmp_path / f"served{len(started)}"), *options],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": CHECKOUT})   # this checkout's hvsim
        started.append(proc)
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), proc.communicate()
        return proc, line.split()[-1]
    try:
        yield start
    finally:
        for proc in started:
            proc.kill()
            proc.communicate()


class Proxy:
    """Forwards one connection to `target`; after `frames` whole frames from the served side,
    it sends half of the next one and hangs up (`damage=False`), or flips a byte in the middle of
    it and carries on (`damage=True`). A test's thread, not the simulation's."""

    def __init__(self, target: str, *, frames: int, damage: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.frames, self.damage = frames, damage
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        served = socket.create_connection(self.target)
        pending, whole = b"", 0
        try:
            while True:
                ready, _, _ = select.select([client, served], [], [], 30)
                if not ready:
                    return
                if client in ready:
                    data = client.recv(1 << 16)
                    if not data:
                        return
                    served.sendall(data)
                if served in ready:
                    data = served.recv(1 << 16)
                    if not data:
                        return
                    pending += data
                    while len(pending) >= 24:   # whole frames go through; the chosen one is cut or damaged
                        size = 24 + struct.unpack_from("<I", pending, 12)[0] + 16
                        if len(pending) < size:
                            break
                        frame, pending = pending[:size], pending[size:]
                        if whole == self.frames:
                            if not self.damage:
                                client.sendall(frame[:size // 2])
                                return
                            frame = frame[:size // 2] + bytes([frame[size // 2] ^ 0x40]) + frame[size // 2 + 1:]
                        client.sendall(frame)
                        whole += 1
        finally:
            client.close()
            served.close()
            self.listener.close()


def config(remote: str | None):
    return loads(DC.replace("{remote}", f'remote = "{remote}"' if remote else ""))


def run(remote: str | None, until="60ms", workdir="run"):
    """The datacenter's digest and summary after host-a pings host-b at 0 and at 20 ms."""
    dc = Datacenter(config(remote), workdir=workdir)
    try:
        if remote is None:
            answer_pings(dc.hosts["host-b"])   # what a served host has
        a = dc.hosts["host-a"]
        pongs = []
        a.handle("pong", lambda m: pongs.append((a.now, m.payload)))
        a.send("host-b", "ping", b"first", size=125_000)
        dc.run("20ms")
        a.send("host-b", "ping", b"second")
        dc.run(until)
        return dc.trace_digest().hex(), dc.summary(), pongs
    finally:
        dc.close()


def test_a_served_host_gives_the_digest_it_gives_in_process(serve):
    _, address = serve("--once")
    remote = run(address)
    local = run(None)
    assert remote[0] == local[0]
    # 1 Mbit out (100 us) and 5 bytes back (4 ns), each plus 50 us; then 6 bytes each way (5 ns)
    assert remote[2] == local[2] == [(150_000 + 4 + 50_000, b"first"), (20_000_000 + 2 * (5 + 50_000), b"second")]
    b = remote[1]["hosts"]["host-b"]
    assert b["remote"] == address and "lost" not in b
    assert b["messages"] == local[1]["hosts"]["host-b"]["messages"] == {"sent": 2, "delivered": 2, "unhandled": 0,
                                                                          "pending": 0}
    assert {v["Name"]: v["State"] for v in b["vms"]} == {"batch": "Paused"}   # its own timeline, run there
    assert b["trace_digest"] == local[1]["hosts"]["host-b"]["trace_digest"]
    assert remote[1]["links"] == local[1]["links"]


def test_a_server_killed_between_windows_is_an_error_naming_the_host(serve):
    proc, address = serve()
    dc = Datacenter(config(address), workdir="run")
    try:
        dc.run("5ms")

        def kill(d):
            if d.windows == 150:
                proc.kill()
                proc.wait()
        with pytest.raises(WireError, match=rf"^host 'host-b' \({address}\): .*(closed|reset|Broken pipe)"):
            dc.run("20ms", on_progress=kill)
        assert dc.stopped_in == "host-b" and dc.hosts["host-b"].now == 7_500_000
        s = dc.summary()   # still whole: the lost host says what it last knew
        assert s["hosts"]["host-b"]["lost"] and s["hosts"]["host-b"]["simulated_ns"] == 7_500_000
        assert s["hosts"]["host-a"]["simulated_ns"] == 7_550_000 and dc.hosts["host-b"].trace_digest() == bytes(16)
        dc.hosts["host-a"].send("host-b", "ping", b"anyone?")
        dc.run("30ms")   # the others run on; the lost host stands still and drops what comes
        s = dc.summary()["hosts"]
        assert s["host-a"]["simulated_ns"] == 30_000_000 and s["host-b"]["simulated_ns"] == 7_500_000
        assert s["host-b"]["dropped"] == 1 and s["host-a"]["vms"][0]["State"] == "Running"
    finally:
        dc.close()


@pytest.mark.parametrize("damage, error", [(False, "the connection closed inside a frame"),
                                           (True, "a frame fails its digest")])
def test_a_stream_cut_or_damaged_mid_frame_stops_the_run(serve, damage, error):
    _, address = serve()
    proxy = Proxy(address, frames=40, damage=damage)   # the hello, then 39 windows' answers
    dc = Datacenter(config(proxy.address), workdir="run")
    try:
        with pytest.raises(WireError, match=rf"^host 'host-b' \({proxy.address}\): {error}"):
            dc.run("10ms")
        assert dc.hosts["host-b"].now == 39 * 50_000 and dc.now == 39 * 50_000
    finally:
        dc.close()
        proxy.thread.join(10)


def test_hvsim_run_reports_a_lost_host_without_a_traceback(serve, tmp_path, capsys):
    _, address = serve()
    proxy = Proxy(address, frames=100)
    cfg = tmp_path / "dc.toml"
    cfg.write_text(DC.replace("{remote}", f'remote = "{proxy.address}"'))
    assert main(["run", str(cfg), "--for", "50ms", "--json", "--workdir", str(tmp_path / "w")]) == 1
    out, err = capsys.readouterr()
    s = json.loads(out)
    assert s["outcome"] == {"status": "failed", "reason": f"host 'host-b' ({proxy.address}): the connection closed "
                                                          f"inside a frame (" + s["outcome"]["reason"].split("(")[-1]}
    assert s["hosts"]["host-b"]["lost"].startswith("the connection closed inside a frame")
    assert "Traceback" not in err and err.startswith(f"hvsim run: failed at 0.00495 s: host 'host-b' ({proxy.address})")
    proxy.thread.join(10)


def test_hvsim_run_with_a_served_host(serve, tmp_path, capsys):
    proc, address = serve("--once", "--log", str(tmp_path / "served.jsonl"))
    cfg = tmp_path / "dc.toml"
    cfg.write_text(DC.replace("{remote}", f'remote = "{address}"\nremote_timeout = "20s"'))
    assert main(["run", str(cfg), "--for", "40ms", "--json", "--workdir", str(tmp_path / "w")]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["outcome"] == {"status": "completed"} and s["hosts"]["host-b"]["remote"] == address
    assert proc.wait(30) == 0   # the session closed by the datacenter: --once exits 0
    assert (tmp_path / "served0" / "disks" / "batch.vhd").exists()   # the disk is the served host's
    assert not (tmp_path / "disks").exists()
    events = [json.loads(line) for line in (tmp_path / "served.jsonl").read_text().splitlines()]
    pause = next(e for e in events if e["event"] == "vm.action")   # host-b's own timeline, in its own log
    assert (pause["host"], pause["vm"], pause["action"], pause["t_ns"]) == ("host-b", "batch", "pause", 30_000_000)


def test_a_served_host_refuses_what_would_reach_outside_it(serve, tmp_path):
    _, address = serve()
    # A disk under the datacenter file's directory goes as a path relative to it (and so lands in
    # the served host's work directory); one elsewhere goes as it is, and is refused.
    elsewhere = tmp_path.parent / f"{tmp_path.name}-x.vhd"
    outside = DC.replace("{remote}", f'remote = "{address}"').replace('"disks/batch.vhd"', f'"{elsewhere}"')
    with pytest.raises(WireError, match=r"refused it: .*vm\[0\]\.disks\[0\]\.path: expected a path under the "
                                        r"served host's work directory"):
        Datacenter(loads(outside), workdir="run")
    assert not elsewhere.exists()
    _, address = serve()
    python = DC.replace("{remote}", f'remote = "{address}"').replace(
        '{ kind = "disk-io", queue_depth = 1 }', '{ kind = "python", target = "os:system" }')
    with pytest.raises(WireError, match=r"refused it: .*vm\[0\]\.workload: expected a built-in workload"):
        Datacenter(loads(python), workdir="run")


def test_a_served_host_reports_a_failed_action_as_in_one_process(serve, tmp_path):
    _, address = serve()
    (tmp_path / "served0" / "batch.hvsav").mkdir(parents=True)   # where its save will fail to write
    text = DC.replace("{remote}", f'remote = "{address}"').replace('action = "pause"', 'action = "save"')
    dc = Datacenter(loads(text), workdir="run")
    try:
        with pytest.raises(TypeError, match="runs in another process"):
            dc.hosts["host-b"].handle("ping", print)
        from partitions.management import ScenarioError
        with pytest.raises(ScenarioError, match="^at 0.03s: save of vm 'batch' failed: .*batch.hvsav"):
            dc.run("40ms")
        assert dc.stopped_in == "host-b" and dc.summary()["hosts"]["host-b"]["simulated_ns"] == 30_000_000
    finally:
        dc.close()


def test_nobody_listening_is_a_clear_error(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(WireError, match=rf"host 'host-b': cannot connect to 127.0.0.1:{port}"):
        Datacenter(config(f"127.0.0.1:{port}"), workdir="run")


@pytest.mark.parametrize("edit, key, expected", [
    ('remote = "127.0.0.1"', "host[1].remote", 'the address of `hvsim host serve` as "HOST:PORT"'),
    ('remote = "127.0.0.1:0"', "host[1].remote", 'the address of `hvsim host serve` as "HOST:PORT"'),
    ('remote = 7000', "host[1].remote", 'the address of `hvsim host serve` as "HOST:PORT"'),
    ('remote_timeout = "5s"', "host[1].remote_timeout", "no timeout for a host in this process"),
    ('remote = "127.0.0.1:7000"\nremote_timeout = "0s"', "host[1].remote_timeout", "a positive duration"),
])
def test_remote_keys_are_checked(edit, key, expected):
    with pytest.raises(ConfigError) as e:
        loads(DC.replace("{remote}", edit), file="dc.toml")
    assert e.value.file == "dc.toml" and e.value.key == key and e.value.expected.startswith(expected)


def test_remote_keys_dump_and_load_back():
    from partitions.config import dump
    c = loads(DC.replace("{remote}", 'remote = "127.0.0.1:7000"\nremote_timeout = "2m"'))
    assert c.host("host-b").remote == "127.0.0.1:7000" and c.host("host-b").remote_timeout == 120 * 10**9
    assert c.host("host-a").remote is None and loads(dump(c)) == c


# ---- live migration to a served host --------------------------------------------------------------------
MOVING = """
[[host]]
name = "host-a"
logical_processors = 2
memory = "512MiB"

[[host.vm]]
name = "counter"
memory = "16MiB"
workload = { kind = "memory-counter", pages = 1024, interval = "1ms" }

[[host]]
name = "host-b"
{remote}
logical_processors = 2
memory = "512MiB"

[[link]]
hosts = ["host-a", "host-b"]
bandwidth = "10Gbit/s"
latency = "50us"
"""
WINDOW = 50_000


def moving(remote: str | None, workdir: str) -> Datacenter:
    return Datacenter(loads(MOVING.replace("{remote}", f'remote = "{remote}"' if remote else "")), seed=2,
                      workdir=workdir)


@pytest.mark.parametrize("kind", ["live", "post-copy"])
def test_a_vm_live_migrates_to_a_served_host_as_it_does_in_one_process(serve, kind):
    """Post-copy's target reads a page its guest touched from the frozen source in the middle of
    its window: a call frame to the datacenter and its answer, inside the advance's round trip."""
    _, address = serve("--once")
    seen = {}
    for remote in (address, None):
        dc = moving(remote, f"run-{remote is None}")
        try:
            dc.run("20ms")
            record = dc.move("counter", to="host-b", kind=kind)
            dc.run("150ms")
            seen[remote] = (dc.trace_digest(), record.summary(), dc.summary()["hosts"])
        finally:
            dc.close()
    (digest, report, hosts), local = seen[address], seen[None]
    assert report["outcome"] == "completed" and report["downtime_ns"] > 0
    if kind == "live":
        assert report["pages_per_round"][0] == 4096 and report["fetches"] == 0   # round 0: all 16 MiB
    else:
        assert report["fetches"] > 0   # pages the guest touched first, read across the processes
    assert (digest, report) == local[:2]   # the same pages, rounds, bytes and times, and the same run
    assert [vm["Name"] for vm in hosts["host-a"]["vms"]] == []
    assert [(vm["Name"], vm["State"]) for vm in hosts["host-b"]["vms"]] == [("counter", "Running")]
    assert hosts["host-b"]["remote"] == address and hosts["host-b"]["trace_digest"] == local[2]["host-b"]["trace_digest"]


@pytest.mark.parametrize("when", ["round 0", "blackout"])
def test_a_stream_cut_during_a_migration_loses_nothing(serve, monkeypatch, when):
    """The stream to the target is cut inside a frame: in pre-copy's first round, or in the window
    whose answer carries the target's "resumed". The migration aborts, the VM runs on on the
    source with the memory it had when it froze (if it did), counting on, and the run says why."""
    from partitions.vm import VirtualMachine
    reference = moving(None, "reference")   # where the migration's steps fall, in one process
    try:
        reference.run("20ms")
        ref = reference.move("counter", to="host-b")
        reference.run("150ms")
    finally:
        reference.close()
    assert ref.outcome == "completed" and ref.rounds[0].end_ns < ref.freeze_ns < ref.resume_ns
    cut_at = ref.rounds[0].end_ns if when == "round 0" else ref.resume_ns
    frames = 1 + (cut_at - 1) // WINDOW   # the hello's answer, then one per window before the cut's

    digests = {}
    freeze, thaw = VirtualMachine.freeze, VirtualMachine.thaw
    monkeypatch.setattr(VirtualMachine, "freeze", lambda vm: (freeze(vm), digests.setdefault("frozen", vm.memory_digest())))
    monkeypatch.setattr(VirtualMachine, "thaw", lambda vm: (digests.setdefault("thawed", vm.memory_digest()), thaw(vm)))
    _, address = serve()
    proxy = Proxy(address, frames=frames)
    dc = moving(proxy.address, "cut")
    try:
        dc.run("20ms")
        vm = dc.hosts["host-a"].managed.vms["counter"]
        record = dc.move("counter", to="host-b")
        with pytest.raises(WireError, match=rf"^host 'host-b' \({proxy.address}\): the connection closed inside"):
            dc.run("150ms")
        assert dc.now == (frames - 1) * WINDOW
        assert record.outcome == "aborted" and record.reason.startswith("host 'host-b' was lost: host 'host-b' (")
        assert vm.state.value == "Running" and dc.hosts["host-a"].managed.vms["counter"] is vm
        if when == "blackout":
            assert record.freeze_ns is not None and digests["frozen"] == digests["thawed"]
        else:
            assert record.freeze_ns is None and not digests
        counted = vm.workload.written[0]
        dc.run(dc.now + 20_000_000)
        assert vm.workload.written[0] > counted   # it counts on, on the source
        assert dc.summary()["migrations"][0]["outcome"] == "aborted"
    finally:
        dc.close()
        proxy.thread.join(10)


def test_hvsim_run_reports_a_move_cut_by_a_lost_host(serve, tmp_path, capsys):
    """The timeline moves counter at 20 ms; the stream is cut 5 ms later, in pre-copy (16 MiB at
    10 Gbit/s take ~13 ms): a failed run, no traceback, the move aborted and the VM still on
    host-a."""
    _, address = serve()
    proxy = Proxy(address, frames=1 + 25_000_000 // WINDOW)
    cfg = tmp_path / "dc.toml"
    cfg.write_text(MOVING.replace("{remote}", f'remote = "{proxy.address}"')
                   + '\n[[at]]\ntime = "20ms"\naction = "move"\nvm = "counter"\nto = "host-b"\n')
    assert main(["run", str(cfg), "--for", "100ms", "--json", "--workdir", str(tmp_path / "w")]) == 1
    out, err = capsys.readouterr()
    s = json.loads(out)
    assert s["outcome"]["status"] == "failed" and s["outcome"]["reason"].startswith(f"host 'host-b' ({proxy.address})")
    (move,) = s["migrations"]
    assert move["outcome"] == "aborted" and move["reason"].startswith("host 'host-b' was lost: ")
    assert move["freeze_ns"] is None and s["hosts"]["host-b"]["simulated_ns"] == 25_000_000   # before the blackout
    assert [(vm["Name"], vm["State"]) for vm in s["hosts"]["host-a"]["vms"]] == [("counter", "Running")]
    assert "Traceback" not in err and f"host 'host-b' ({proxy.address}): the connection closed inside" in err
    proxy.thread.join(10)


def test_a_served_host_refuses_a_migrating_vm_whose_disks_lie_outside_it(serve):
    """A VM moving in is built from what the peer sent: its disk files must be under the served
    host's work directory as the hello's are. Here they are the datacenter's run disks: the
    target refuses before opening anything, and the VM runs on on the source."""
    _, address = serve()
    text = MOVING.replace("{remote}", f'remote = "{address}"').replace(
        'memory = "16MiB"\n', 'memory = "16MiB"\ndisks = [ { path = "c.vhd", size = "16MiB" } ]\n')
    dc = Datacenter(loads(text), seed=2, workdir="run")
    try:
        dc.run("20ms")
        record = dc.move("counter", to="host-b")
        dc.run("40ms")
        assert record.outcome == "aborted" and "is not under the served host's work directory" in record.reason
        assert record.freeze_ns is None and dc.hosts["host-a"].managed.vms["counter"].state.value == "Running"
        assert dc.summary()["hosts"]["host-b"]["vms"] == []
    finally:
        dc.close()


def test_host_serve_refuses_what_it_cannot_listen_on(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["host", "serve", "--listen", f"127.0.0.1:{port}", "--workdir", "w"]) == 2
    assert main(["host", "serve", "--listen", "localhost", "--workdir", "w"]) == 2
    assert main(["host", "serve", "--listen", "127.0.0.1:0", "--timeout", "0s", "--workdir", "w"]) == 2
    assert main(["host", "serve", "--listen", "127.0.0.1:0", "--log", "no/such/dir/x.jsonl", "--workdir", "w"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == [f"hvsim host serve: Address already in use (127.0.0.1:{port})",
                       "hvsim host serve: expected HOST:PORT such as \"127.0.0.1:7000\" (port 0-65535), got 'localhost'",
                       "hvsim host serve: --timeout: expected a positive duration, got '0s'"]
    assert err[3].startswith("hvsim host serve: --log no/such/dir/x.jsonl: no directory") and len(err) == 4


def test_a_served_host_that_stops_answering_is_lost_after_remote_timeout(serve):
    import signal
    proc, address = serve()
    dc = Datacenter(loads(DC.replace("{remote}", f'remote = "{address}"\nremote_timeout = "1s"')), workdir="run")
    try:
        dc.run("1ms")
        proc.send_signal(signal.SIGSTOP)   # alive, connected, and silent
        with pytest.raises(WireError, match=rf"^host 'host-b' \({address}\): no answer within 1 s$"):
            dc.run("2ms")
        assert dc.hosts["host-b"].now == 1_000_000 and dc.summary()["hosts"]["host-b"]["lost"]
    finally:
        proc.send_signal(signal.SIGCONT)
        dc.close()


def test_ctrl_c_inside_a_round_trip_interrupts_the_run_and_loses_the_host(serve, monkeypatch):
    _, address = serve()
    dc = Datacenter(config(address), workdir="run")
    try:
        dc.run("1ms")
        stream = dc.hosts["host-b"]._stream

        def interrupted():
            raise KeyboardInterrupt
        monkeypatch.setattr(stream, "receive", interrupted)   # as a second Ctrl-C would, mid-frame
        with pytest.raises(KeyboardInterrupt):
            dc.run("2ms")
        assert dc.summary()["hosts"]["host-b"]["lost"] == "interrupted inside a round trip"
    finally:
        dc.close()
