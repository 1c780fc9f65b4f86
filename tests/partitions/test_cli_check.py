"""`hvsim check CONFIG`: what `hvsim run` checks before it starts, without running or creating
anything; "CONFIG: ok — ..." and exit 0, or the problem and exit 2."""
import pytest

from partitions.cli import main

HOST = '''[host]
logical_processors = 2
memory = "1GiB"

[[vm]]
name = "a"
memory = "64MiB"
disks = [ { path = "disks/a.vhd", size = "8MiB" } ]
nics = [ { switch = "lan", ip = "10.0.0.2/24" } ]

[[vm]]
name = "b"
autostart = false

[[switch]]
name = "lan"

[[at]]
time = "1s"
action = "checkpoint"
vm = "a"
name = "one"

[[at]]
time = "2s"
action = "start"
vm = "b"
'''


def files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def test_a_good_file_is_ok_and_nothing_is_created(tmp_path, capsys):
    cfg = tmp_path / "host.toml"
    cfg.write_text(HOST)
    before = files(tmp_path)
    assert main(["check", str(cfg), "--log", str(tmp_path / "run.jsonl"), "--pcap", str(tmp_path / "lan.pcap")]) == 0
    assert capsys.readouterr().out == f"{cfg}: ok — 2 VMs, 1 switch, 2 timeline actions\n"
    assert files(tmp_path) == before          # no disk, no log, no capture, no directory


@pytest.mark.parametrize("change, argv, message", [
    (('memory = "64MiB"', 'memory = "64MB"'), [], 'vm[0].memory: expected a size'),
    (('action = "start"', 'action = "resume"'), [], 'at[1].action: expected an action VM "b" can take at 2s'),
    (('name = "one"', 'name = "one"\n[[at]]\ntime = "3s"\naction = "delete-checkpoint"\nvm = "a"\nname = "two"'), [],
     'at[1].name: expected the name of a checkpoint VM "a" has at 3s'),
    (None, ["--seed", "-5"], "--seed: expected an integer from 0 to 18446744073709551615, got -5"),
    (None, ["--for", "forever"], "--for: expected a duration"),
    (None, ["--trace", "/nonexistent/trace.json"], "--trace /nonexistent/trace.json: no directory /nonexistent"),
])
def test_a_problem_is_one_line_and_exit_2(tmp_path, capsys, change, argv, message):
    cfg = tmp_path / "host.toml"
    cfg.write_text(HOST.replace(*change) if change else HOST)
    assert main(["check", str(cfg), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("hvsim check: ") and message in captured.err
    assert captured.err.count("\n") == 1


def test_the_disks_a_run_would_use_are_checked(tmp_path, capsys):
    cfg = tmp_path / "host.toml"
    cfg.write_text(HOST)
    (tmp_path / "disks").mkdir()
    (tmp_path / "disks" / "a.vhd").write_bytes(b"not a disk" * 100)
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: vm[0].disks[0].path: expected a VHD file hvsim can open, got " in err and "cookie" in err
    (tmp_path / "disks" / "a.vhd").unlink()
    (tmp_path / "disks").rmdir()
    (tmp_path / "disks").write_text("a file where the disks' directory should be")
    assert main(["check", str(cfg)]) == 2
    assert "vm[0].disks[0].path" in capsys.readouterr().err


def test_a_missing_file(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.toml")]) == 2
    assert "expected a readable file" in capsys.readouterr().err


def test_a_python_workload_whose_module_cannot_be_found(tmp_path, capsys):
    cfg = tmp_path / "host.toml"
    cfg.write_text(HOST.replace('name = "b"\n', 'name = "b"\nworkload = { kind = "python", target = "no_such_mod:run" }\n'))
    assert main(["check", str(cfg)]) == 2
    assert f"{cfg}: vm[1].workload.target: expected a module this Python can import, got 'no_such_mod:run'" \
        in capsys.readouterr().err


def test_a_capture_of_a_host_without_switches_is_refused(tmp_path, capsys):
    cfg = tmp_path / "host.toml"
    cfg.write_text('[[vm]]\nname = "a"\n')
    assert main(["check", str(cfg), "--pcap", str(tmp_path / "x.pcap")]) == 2
    assert f"--pcap {tmp_path / 'x.pcap'}: {cfg} has no [[switch]] to capture" in capsys.readouterr().err
