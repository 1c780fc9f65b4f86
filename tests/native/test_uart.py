"""The emulated 16550 at 0x3F8: a port I/O intercept that goes out to the parent, whose lines land
in the event log (guest.console) and on `hvsim run --console VM`, each access costing the exit to
the parent plus the device's own time."""
import json

from partitions.cli import main
from partitions.native_guest.cpu import NS_PER_INSTRUCTION, PARENT_EXIT_NS, UART_ACCESS_NS
from tests.native.kernels import HALT_FOREVER, Booted, build

MS = 1_000_000


def _printer(text: str) -> str:
    """Assembly writing `text` to the UART's THR, a byte per `out`, polling LSR before each."""
    body = "  mov $0x3f8, %dx\n"
    for ch in text.encode():
        body += f"  add $5, %dx\n  in %dx, %al\n  sub $5, %dx\n  mov ${ch}, %al\n  out %al, %dx\n"
    return body


def test_console_lines_and_what_each_intercept_costs(tmp_path):
    b = Booted(build(tmp_path, "hello", _printer("hi\nthere\r\n") + HALT_FOREVER)).run(1 * MS)
    assert b.uart.lines == ["hi", "there"]
    accesses = 2 * len("hi\nthere\r\n")             # an LSR read and a THR write per byte
    assert b.cpu.exits["io"] == accesses
    cost = b.cpu.instructions * NS_PER_INSTRUCTION + accesses * (PARENT_EXIT_NS + UART_ACCESS_NS)
    assert b.child.vp(0).info()["run_time_ns"] == cost


def test_a_port_without_a_device_reads_all_ones(tmp_path):
    b = Booted(build(tmp_path, "float", "  mov $0x80, %dx\n  in %dx, %al\n  mov %al, 0x220000\n"
                     + HALT_FOREVER)).run(1 * MS)
    assert b.child.read(0x220000, 1) == b"\xff"


def test_hvsim_run_console_prints_the_vms_lines_and_logs_them(tmp_path, capsys):
    elf = build(tmp_path, "hello", _printer("hello from native\n") + HALT_FOREVER)
    cfg = tmp_path / "host.toml"
    cfg.write_text(f'[[vm]]\nname = "n1"\nmemory = "4MiB"\nkernel = "{elf.name}"\n\n[[vm]]\nname = "py"\nmemory = "64MiB"\n')
    log = tmp_path / "log.jsonl"
    assert main(["run", str(cfg), "--for", "10ms", "--console", "n1", "--log", str(log),
                 "--workdir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "n1| hello from native\n" in out
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"event": "guest.console", "vm": "n1", "line": "hello from native"}.items() <= next(
        e for e in events if e["event"] == "guest.console").items()
    assert main(["run", str(cfg), "--for", "10ms", "--console", "nope", "--workdir", str(tmp_path / "w")]) == 2
    assert "--console nope: no VM of that name" in capsys.readouterr().err
