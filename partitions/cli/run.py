"""`hvsim run [CONFIG]`: run a simulated host (the built-in default without a file), with a live
Get-VM table on a terminal, then a summary; --json, --log, --trace and --pcap for the records."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hypervisor.quantities import parse_duration


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a simulated host from a TOML file (the built-in default host without one)",
                       description="Run a simulated host. Without CONFIG, the built-in default host: VMs "
                                   "competing for CPU, doing disk I/O and network traffic, with heartbeats.")
    p.add_argument("config", nargs="?", help="host configuration (TOML); see docs/configuration.md")
    p.add_argument("--for", dest="duration", default="5s", help="simulated time to run (default 5s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation (default 0)")
    p.add_argument("--workdir", default=".hvsim", help="where the default host keeps its disks (default .hvsim)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.add_argument("--log", metavar="FILE", help="write the structured event log (JSON lines)")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome/Perfetto trace of VP scheduling")
    p.add_argument("--pcap", metavar="FILE", help="capture the virtual switch's frames (pcap)")
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"hvsim run: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from partitions.config import ConfigError, default_config, load
    from partitions.eventlog import EventLog
    from partitions.management import ManagedHost, ScenarioError
    try:
        duration = parse_duration(args.duration, "--for")
    except ValueError as exc:
        return _fail(str(exc))
    try:
        if args.config:
            config = load(args.config)
            workdir = Path(args.config).resolve().parent
        else:
            workdir = Path(args.workdir).resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            config = default_config(workdir)
    except ConfigError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{args.config}: {exc.strerror or exc}")
    built: list = []  # the host, once built: the log's clock reads 0 until then
    log = EventLog(args.log, lambda: built[0].host.now if built else 0) if args.log else None
    try:
        managed = ManagedHost(config, seed=args.seed, workdir=workdir, event_log=log,
                              record_scheduling=bool(args.trace), pcap=args.pcap)
    except (ScenarioError, ValueError) as exc:
        return _fail(str(exc))
    built.append(managed)
    records: list = []

    def drain(m: ManagedHost) -> None:
        if args.trace:
            recs, _ = m.host.introspect.take_scheduling()
            records.extend(recs)

    try:
        if sys.stdout.isatty() and not args.json:
            _run_live(managed, duration, drain)
        else:
            managed.run(duration, on_progress=drain)
    except ScenarioError as exc:
        return _fail(str(exc))
    finally:
        managed.close()
        if log is not None:
            log.close()
    summary = managed.summary()
    if args.trace:
        _write_trace(args.trace, managed, records)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        _print_summary(summary)
    return 0


def _write_trace(path: str, managed, records) -> None:
    from partitions import perfetto
    names = {vm.partition.id: vm.name for vm in managed.vms.values() if vm.partition is not None}
    names[managed.host.root.id] = "root"
    instants = [(t, name, args) for t, name, args in (managed.vmbus.message_trace or [])]
    trace = perfetto.build([(t, lp, pid, vp, kind) for t, pid, lp, vp, kind in records], instants,
                           end_ns=managed.host.now, partition_names=names,
                           logical_processors=managed.host.logical_processors)
    perfetto.write(path, trace)


def _vm_table(rows, title: str):
    from rich.table import Table
    table = Table(title=title)
    for col in ("Name", "State", "CPUUsage(%)", "MemoryAssigned(M)", "Uptime", "Status"):
        table.add_column(col, justify="right" if col in ("CPUUsage(%)", "MemoryAssigned(M)") else "left")
    for r in rows:
        table.add_row(*[str(r[c]) for c in ("Name", "State", "CPUUsage(%)", "MemoryAssigned(M)", "Uptime", "Status")])
    return table


def _run_live(managed, duration: int, drain) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn
    progress = Progress(TextColumn("simulated time"), BarColumn(),
                        TextColumn("{task.completed:.2f} / {task.total:.2f} s"))
    task = progress.add_task("run", total=duration / 1e9)
    with Live(Group(_vm_table(managed.get_vm(), "Get-VM"), progress), refresh_per_second=8) as live:
        def update(m) -> None:
            drain(m)
            progress.update(task, completed=m.host.now / 1e9)
            live.update(Group(_vm_table(m.get_vm(), "Get-VM"), progress))
        managed.run(duration, on_progress=update)


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    console.print(_vm_table(s["vms"], f"Get-VM after {s['simulated_ns'] / 1e9:g} s (seed {s['seed']})"))
    parts = Table(title="Partitions")
    for col in ("partition", "name", "CPU (ms)", "hypercalls", "failed", "VMBus msgs in/out", "VMBus packets"):
        parts.add_column(col)
    for p in s["partitions"]:
        v = p["vmbus"] or {}
        parts.add_row(str(p["partition"]), p["name"], f"{p['cpu_ms']:.1f}", str(p["hypercalls"]),
                      str(p["hypercalls_failed"]), f"{v.get('messages_in', '')}/{v.get('messages_out', '')}" if v else "",
                      str(v.get("packets_in", "")) if v else "")
    console.print(parts)
    console.print(f"trace digest {s['trace_digest']}")
