"""`hvsim run [CONFIG]`: run a simulated host (the built-in default without a file), with a live
Get-VM table on a terminal, then a summary; --json, --log, --trace and --pcap for the records.

Everything that can be known before the run is checked first (`plan`, which `hvsim check` shares):
the file, the command-line values (as the file's own keys are checked), the disks' files and
whether every output path can be written; a problem is one line on stderr and exit status 2, with
nothing created. Once the run has started, whatever stops it early — a timeline action that fails,
an error that reaches the run loop (the VM it concerns is named), Ctrl-C — still gives the summary
so far (its `outcome` says how the run ended and why), the trace and the log (ending with a
`run.end` event); the exit status is then 1 (130 for Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a simulated host from a TOML file (the built-in default host without one)",
                       description="Run a simulated host. Without CONFIG, the built-in default host: VMs "
                                   "competing for CPU, doing disk I/O and network traffic, with heartbeats.",
                       epilog="Exit status: 0 when the run completes; 2 for a problem found before it starts "
                              "(nothing is created then); 1 when a timeline action fails or a guest raises, "
                              "130 on Ctrl-C: the summary so far, the trace and the log are still written.")
    p.add_argument("config", nargs="?", help="host configuration (TOML); see docs/configuration.md")
    add_options(p)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.set_defaults(func=run)


def add_options(p: argparse.ArgumentParser) -> None:
    """The options `hvsim run` and `hvsim check` share."""
    p.add_argument("--for", dest="duration", default="5s", metavar="DURATION",
                   help="simulated time to run, with a unit: 5s, 1.5s, 250ms (default 5s)")
    p.add_argument("--seed", default=None,
                   help="seed of the simulation, 0..2^64-1; wins over the file's [host] seed (default: the "
                        "file's, else 0)")
    p.add_argument("--workdir", default=".hvsim", metavar="DIR",
                   help="the run directory: each VM's run disks, checkpoint forks and saved states, and the "
                        "default host's disks (default .hvsim)")
    p.add_argument("--log", metavar="FILE", help="write the structured event log (JSON lines)")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome/Perfetto trace of VP scheduling")
    p.add_argument("--pcap", metavar="FILE",
                   help="capture the virtual switch's frames (pcap); with several switches, FILE.SWITCH each")
    p.add_argument("--console", action="append", default=[], metavar="VM",
                   help="print the serial console of VM (a native guest's 16550 at 0x3F8) as it writes it, "
                        "each line as 'VM| line' (on stderr with --json); may be given more than once")


class UsageError(Exception):
    """A problem found before the run: one line, without the program's name."""


@dataclass
class Plan:
    """What a run will do, checked: the configuration, where its files go, for how long, the seed."""
    config: Any                 # partitions.config_schema.Config, or DatacenterConfig
    workdir: Path
    duration: int               # ns
    seed: int | None            # None: the file's, else 0


def plan(args: argparse.Namespace, *, create: bool) -> Plan:
    """Check everything a run needs that can be known before it starts; UsageError if anything is
    wrong. `create`: make the default host's work directory (a run does; a check does not)."""
    from partitions import run_files
    from partitions.config import ConfigError, DatacenterConfig, command_line_value, default_config, load
    try:
        duration = command_line_value("--for", args.duration, "at.time")
        seed = None if args.seed is None else command_line_value("--seed", args.seed, "host.seed")
    except ConfigError as exc:
        raise UsageError(f"{exc.key}: expected {exc.expected}, got {exc.got}"
                         + (f"; did you mean {exc.hint}?" if exc.hint else "")) from None
    try:
        workdir = Path(args.workdir).resolve()
        _check_directory(workdir, "--workdir")
        config = load(args.config) if args.config else default_config(workdir)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{exc.filename or args.config or args.workdir}: {exc.strerror or exc}") from None
    # A datacenter file is checked host by host, each host's keys under its host[i]; a remote host's
    # disks and workloads are its server's to check (at hello), and it has no trace or capture here.
    hosts = ([(f"host[{i}].", h.config, f"{args.pcap}.{h.name}") for i, h in enumerate(config.hosts)
              if h.remote is None] if isinstance(config, DatacenterConfig) else [("", config, args.pcap)])
    for prefix, host, pcap in hosts:
        try:  # the disks: the ones named exist as VHDs of their size, or can be made; run files can be
            run_files.plan_disks(host, workdir, args.config or "the default host")
        except ConfigError as exc:
            if prefix and exc.key is not None:
                exc = ConfigError(exc.file, prefix + exc.key, exc.expected, exc.got, hint=exc.hint)
            raise UsageError(str(exc)) from None
        _check_workloads(host, args.config or "the default host", prefix)
    traces = ([f"{args.trace}.{h.name}" for h in config.hosts if h.remote is None] if isinstance(config, DatacenterConfig)
              else [args.trace]) if args.trace is not None else []
    for option, path in [("--log", args.log)] + [("--trace", t) for t in traces]:
        if path is not None:
            _check_file(Path(path), option)
    if args.pcap is not None:
        switches = [(pcap, [sw.name for sw in host.switches]) for _, host, pcap in hosts]
        if not any(names for _, names in switches):
            raise UsageError(f"--pcap {args.pcap}: {args.config or 'the host'} has no [[switch]] to capture")
        for pcap, names in switches:
            for path in [pcap] if len(names) == 1 else [f"{pcap}.{name}" for name in names]:
                _check_file(Path(path), "--pcap")
    for name in getattr(args, "console", None) or []:
        vms = [vm.name for _, host, _ in hosts for vm in host.vms]
        if name not in vms:
            raise UsageError(f"--console {name}: no VM of that name in {args.config or 'the default host'}")
    if create:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{workdir}: {exc.strerror or exc}") from None
    return Plan(config, workdir, duration, seed)


def _check_file(path: Path, option: str) -> None:
    """That `path` can be created or overwritten, without touching it."""
    parent = path.absolute().parent
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {'no directory' if not parent.exists() else 'not a directory:'} {parent}")
    writable = os.access(path, os.W_OK) if path.exists() else os.access(parent, os.W_OK | os.X_OK)
    if not writable:
        raise UsageError(f"{option} {path}: not writable")


def _check_directory(path: Path, what: str) -> None:
    """That `path` is a writable directory, or can be made one (its nearest existing ancestor is)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: {existing} is not writable")


def _check_workloads(config, file: str, prefix: str = "") -> None:
    """A python workload's module can be found (as the run will import it, on this sys.path)."""
    import importlib.util

    from partitions.config_schema import PythonWorkload
    for i, vm in enumerate(config.vms):
        for j, w in enumerate(vm.workloads):
            if not isinstance(w, PythonWorkload):
                continue
            module = w.target.partition(":")[0]
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):   # a parent package that is missing, or fails to import
                found = False
            if not found:
                key = f"{prefix}vm[{i}].workload" + (f"[{j}]" if len(vm.workloads) > 1 else "")
                raise UsageError(f"{file}: {key}.target: expected a module this Python can import, got "
                                 f"{w.target!r} (no module {module!r} on sys.path)")


def _fail(message: str) -> int:
    print(f"hvsim run: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    from partitions.config_schema import DatacenterConfig
    from partitions.eventlog import EventLog
    from partitions.management import ManagedHost, ScenarioError
    with _CtrlC() as ctrl_c:
        try:
            p = plan(args, create=True)
        except UsageError as exc:
            return _fail(str(exc))
        if isinstance(p.config, DatacenterConfig):
            return _run_datacenter(args, p, ctrl_c)
        built: list = []  # the host, once built: the log's clock reads 0 until then
        log = EventLog(args.log, lambda: built[0].host.now if built else 0) if args.log else None
        try:
            managed = ManagedHost(p.config, seed=p.seed, workdir=p.workdir, event_log=log,
                                  record_scheduling=bool(args.trace), pcap=args.pcap)
        except (ScenarioError, ValueError, OSError) as exc:
            if log is not None:
                log.close()
            return _fail(str(exc))
        built.append(managed)
        out = sys.stderr if args.json else sys.stdout
        for name in args.console:
            managed.vms[name].on_console = lambda vm, line: print(f"{vm.name}| {line}", file=out, flush=True)
        records: list = []

        def progress(m: ManagedHost) -> None:
            if args.trace:
                recs, _ = m.host.introspect.take_scheduling()
                records.extend(recs)
            ctrl_c.check()

        outcome, status, crash = {"status": "completed"}, 0, None
        try:
            ctrl_c.check()
            if sys.stdout.isatty() and not args.json:
                _run_live(managed, p.duration, progress)
            else:
                managed.run(p.duration, on_progress=progress)
        except (KeyboardInterrupt, Exception) as exc:   # reported, and the records kept
            outcome, status, crash = _ending(exc, managed)
        if args.trace:   # what was scheduled since the last progress point, when the run stopped between two
            records.extend(managed.host.introspect.take_scheduling()[0])
        summary = managed.summary()
        summary["outcome"] = outcome
        if args.trace:
            _write_trace(args.trace, managed, records)
        managed.close()   # after the summary and trace: the VMs go Off, their disk files are let go
        if log is not None:
            log.event("run.end", **outcome)
            log.close()
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        _print_summary(summary)
    if crash is not None:
        print(crash, file=sys.stderr, end="")
    if status:
        print(f"hvsim run: {outcome['status']} at {managed.host.now / 1e9:g} s: {outcome['reason']}",
              file=sys.stderr)
    return status


class _CtrlC:
    """Ctrl-C during a run stops it at the next progress point (every 100 ms of simulated time),
    so that the summary, trace and log are written whole; a second Ctrl-C stops it at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:   # not the main thread: leave Ctrl-C as it is
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _ending(exc: BaseException, managed, prefix: str = "") -> tuple[dict, int, str | None]:
    """How a run that `exc` stopped ended: (its outcome, the exit status, the traceback to print
    or None). Ctrl-C is an interruption; a timeline action that fails, a guest that raised or a
    defect of hvsim's (the one with a traceback) is a failure, naming the VM where `managed` (the
    host it happened in, if known) can; `prefix` names the host in a datacenter."""
    from partitions.datacenter.remote import RemoteHostError, WireError
    from partitions.management import ScenarioError
    if isinstance(exc, KeyboardInterrupt):
        return {"status": "interrupted", "reason": "Ctrl-C"}, EXIT_INTERRUPTED, None
    if isinstance(exc, ScenarioError):
        return {"status": "failed", "reason": prefix + str(exc)}, EXIT_FAILED, None
    if isinstance(exc, (WireError, RemoteHostError)):   # their messages name the host and its address
        return {"status": "failed", "reason": str(exc)}, EXIT_FAILED, getattr(exc, "remote_traceback", None)
    reason = _naming_vms(exc, managed) if managed is not None else f"{type(exc).__name__}: {exc}"
    crash = traceback.format_exc() if not _is_guest_error(exc) else None
    return {"status": "failed", "reason": prefix + reason}, EXIT_FAILED, crash


def _is_guest_error(exc: BaseException) -> bool:
    from hypervisor.guest import GuestError
    return isinstance(exc, GuestError)


def _naming_vms(exc: BaseException, managed) -> str:
    """The error's message, with the VM named where it names only a partition id."""
    text = f"{exc}" if _is_guest_error(exc) else f"{type(exc).__name__}: {exc}"
    names = {vm.partition.id: vm.name for vm in managed.vms.values() if vm.partition is not None}
    pid = getattr(exc, "partition_id", None)
    if pid is None:
        m = re.search(r"\bpartition (\d+)\b", text)
        pid = int(m.group(1)) if m else None
    name = getattr(exc, "vm", None) or names.get(pid)
    return f"vm {name!r}: {text}" if name and f"vm {name!r}" not in text else text


def _write_trace(path: str, managed, records, slices=()) -> None:
    from partitions import perfetto
    names = {vm.partition.id: vm.name for vm in managed.vms.values() if vm.partition is not None}
    names[managed.host.root.id] = "root"
    instants = [(t, name, args) for t, name, args in (managed.vmbus.message_trace or [])]
    trace = perfetto.build([(t, lp, pid, vp, kind) for t, pid, lp, vp, kind in records], instants,
                           end_ns=managed.host.now, partition_names=names,
                           logical_processors=managed.host.logical_processors, spans=slices)
    perfetto.write(path, trace)


def _vm_table(rows, title: str):
    from rich.table import Table
    table = Table(title=title)
    for col in ("Name", "State", "CPUUsage(%)", "MemoryAssigned(M)", "Uptime", "Status"):
        table.add_column(col, justify="right" if col in ("CPUUsage(%)", "MemoryAssigned(M)") else "left")
    for r in rows:
        table.add_row(*[str(r[c]) for c in ("Name", "State", "CPUUsage(%)", "MemoryAssigned(M)", "Uptime", "Status")])
    return table


def _run_live(managed, duration: int, progress: Callable) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn
    bar = Progress(TextColumn("simulated time"), BarColumn(), TextColumn("{task.completed:.2f} / {task.total:.2f} s"))
    task = bar.add_task("run", total=duration / 1e9)
    with Live(Group(_vm_table(managed.get_vm(), "Get-VM"), bar), refresh_per_second=8) as live:
        def update(m) -> None:
            bar.update(task, completed=m.host.now / 1e9)
            live.update(Group(_vm_table(m.get_vm(), "Get-VM"), bar))
            progress(m)
        managed.run(duration, on_progress=update)


def _measure_table(rows):
    """Measure-VM's figures per VM: disk data (MB), normalized I/O and its rate, network (MB)."""
    from rich.table import Table
    columns = (("VMName", "Name"), ("AggregatedDiskDataRead(M)", "Disk read (MB)"),
               ("AggregatedDiskDataWritten(M)", "Disk written (MB)"), ("AggregatedAverageNormalizedIOPS", "IOPS"),
               ("NetworkInbound(M)", "Network in (MB)"), ("NetworkOutbound(M)", "Network out (MB)"))
    table = Table(title="Measure-VM")
    for key, title in columns:
        table.add_column(title, justify="left" if key == "VMName" else "right")
    for r in rows:
        table.add_row(*[str(r[key]) for key, _ in columns])
    return table


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    console.print(_vm_table(s["vms"], f"Get-VM after {s['simulated_ns'] / 1e9:g} s (seed {s['seed']})"))
    console.print(_measure_table(s.get("measure", [])))
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
    outcome = s.get("outcome", {})
    if outcome.get("status", "completed") != "completed":
        console.print(f"[bold red]run {outcome['status']}[/] at {s['simulated_ns'] / 1e9:g} s: {outcome['reason']}",
                      markup=True, highlight=False)


# ---- a datacenter file ------------------------------------------------------------------------------

def _run_datacenter(args: argparse.Namespace, p: Plan, ctrl_c: _CtrlC) -> int:
    """`hvsim run` of a datacenter file: its hosts in one simulated time (partitions.datacenter),
    with the same options, outcomes and exit statuses as one host; the summary is per host, plus
    the links' traffic and the datacenter's digest."""
    from partitions.datacenter import Datacenter
    from partitions.eventlog import EventLog
    from partitions.management import ScenarioError
    built: list = []   # the datacenter, once built: the log's clock reads 0 until then
    log = EventLog(args.log, lambda: built[0].clock() if built else 0) if args.log else None
    try:
        dc = Datacenter(p.config, seed=p.seed, workdir=p.workdir, event_log=log, pcap=args.pcap,
                        record_scheduling=bool(args.trace))
    except (ScenarioError, ValueError, OSError) as exc:
        if log is not None:
            log.close()
        return _fail(str(exc))
    built.append(dc)
    local = {name: node for name, node in dc.hosts.items() if hasattr(node, "managed")}   # not a remote host
    records: dict[str, list] = {name: [] for name in local}

    def take_scheduling() -> None:
        for name, node in local.items():
            records[name].extend(node.managed.host.introspect.take_scheduling()[0])

    drained = [0]

    def progress(d) -> None:
        if args.trace and d.now - drained[0] >= 100_000_000:   # as often as one host's run drains it
            drained[0] = d.now
            take_scheduling()
        ctrl_c.check()

    outcome, status, crash = {"status": "completed"}, 0, None
    try:
        ctrl_c.check()
        if sys.stdout.isatty() and not args.json:
            _run_datacenter_live(dc, p.duration, progress)
        else:
            dc.run(p.duration, on_progress=progress)
    except (KeyboardInterrupt, Exception) as exc:   # reported, and the records kept
        where = local.get(dc.stopped_in)
        outcome, status, crash = _ending(exc, where.managed if where is not None else None,
                                         f"host {dc.stopped_in!r}: ")
    summary = dc.summary()
    summary["outcome"] = outcome
    if args.trace:   # one trace per host: each has its own LPs and partitions
        take_scheduling()
        for name, node in local.items():
            _write_trace(f"{args.trace}.{name}", node.managed, records[name], _migration_slices(dc, name))
    dc.close()
    if log is not None:
        log.event("run.end", **outcome)
        log.close()
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        _print_datacenter_summary(summary)
    if crash is not None:
        print(crash, file=sys.stderr, end="")
    if status:   # the time of the host that stopped the run; Ctrl-C is heard between windows
        now = dc.hosts[dc.stopped_in].now if dc.stopped_in in dc.hosts else dc.now
        print(f"hvsim run: {outcome['status']} at {now / 1e9:g} s: {outcome['reason']}", file=sys.stderr)
    return status


def _migration_slices(dc, host: str) -> list[tuple]:
    """The trace slices of the migrations from `host` (rounds and blackout) and to it (blackout)."""
    return [s for r in dc.migrations() if host in (r.source, r.target) for s in r.slices()
            if r.source == host or s[2] == "blackout"]


def _run_datacenter_live(dc, duration: int, progress: Callable) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn
    bar = Progress(TextColumn("simulated time"), BarColumn(), TextColumn("{task.completed:.2f} / {task.total:.2f} s"))
    task = bar.add_task("run", total=duration / 1e9)

    def view():
        return Group(*[_vm_table(node.managed.get_vm() if hasattr(node, "managed") else node.summary()["vms"],
                                 f"Get-VM on {name}") for name, node in dc.hosts.items()], bar)
    with Live(view(), refresh_per_second=8) as live:
        shown = [0]

        def update(d) -> None:
            progress(d)
            if d.now - shown[0] >= 100_000_000 or d.now >= duration:   # windows can be short: redraw by 100 ms
                shown[0] = d.now
                bar.update(task, completed=d.now / 1e9)
                live.update(view())
        dc.run(duration, on_progress=update)


def _migrations_table(migrations: list[dict]):
    """One row per migration: what moved where, how, its rounds, pages per round, bytes,
    downtime, the guest's reconnect after the resume and total time (docs/migration.md)."""
    from rich.table import Table
    table = Table(title="Migrations")
    for col in ("vm", "from -> to", "kind", "outcome", "rounds", "pages per round", "bytes", "downtime (ms)",
                "reconnect (ms)", "total (ms)"):
        table.add_column(col, justify="right" if col in ("rounds", "bytes", "downtime (ms)", "reconnect (ms)",
                                                         "total (ms)") else "left")
    for m in migrations:
        pages = m["pages_per_round"]
        shown = ", ".join(map(str, pages if len(pages) <= 6 else pages[:4] + ["...", pages[-1]]))
        ms = lambda ns: "-" if ns is None else f"{ns / 1e6:.3f}"   # noqa: E731
        outcome = m["outcome"] + (f": {m['reason']}" if m["outcome"] == "aborted" else "")
        table.add_row(m["vm"], f"{m['from']} -> {m['to']}", m["kind"], outcome, str(m["rounds"]), shown,
                      str(m["bytes"]), ms(m["downtime_ns"]), ms(m.get("reconnect_ns")), ms(m["total_ns"]))
    return table


def _storage_tables(storage: list[dict], quick: list[dict]) -> list:
    """Each shared storage's links (what crossed from each host) and owners, and each quick
    migration (docs/datacenter.md#shared-storage)."""
    from rich.table import Table
    table = Table(title="Shared storage (" + ", ".join(f"{st['name']}: {st['kind']}" for st in storage) + ")")
    for col in ("storage", "host", "bandwidth", "latency", "requests", "bytes", "queued (ms)", "busy (%)", "owns"):
        table.add_column(col, justify="left" if col in ("storage", "host", "owns") else "right")
    for st in storage:
        for link in st["links"]:
            owned = sorted(disk for disk, host in st["owners"].items() if host == link["host"])
            table.add_row(st["name"], link["host"], f"{link['bandwidth_bps'] / 1e9:g} Gbit/s",
                          f"{link['latency_ns'] / 1e3:g} us", str(link["requests"]), str(link["bytes"]),
                          f"{link['queued_ns'] / 1e6:.3f}", f"{100 * link['utilisation']:.2f}", ", ".join(owned))
    tables = [table]
    if quick:
        moves = Table(title="Quick migrations")
        for col in ("vm", "from -> to", "storage", "outcome", "memory (MiB)", "file (MiB)", "downtime (s)"):
            moves.add_column(col, justify="right" if "(" in col else "left")
        for m in quick:
            down = "-" if m["downtime_ns"] is None else f"{m['downtime_ns'] / 1e9:.3f}"
            moves.add_row(m["vm"], f"{m['source']} -> {m['target']}", m["storage"], m["outcome"],
                          f"{m['memory_bytes'] / 2**20:g}", f"{m['file_bytes'] / 2**20:.2f}", down)
        tables.append(moves)
    return tables


def _print_datacenter_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    for name, host in s["hosts"].items():
        console.print(_vm_table(host["vms"], f"Get-VM on {name} after {host['simulated_ns'] / 1e9:g} s "
                                             f"(seed {host['seed']})"))
    links = Table(title=f"Links (windows of {s['window_ns'] / 1e3:g} us: {s['windows']})")
    for col in ("link", "bandwidth", "latency", "messages", "bytes", "queued (ms)", "busy (%)"):
        links.add_column(col, justify="left" if col == "link" else "right", no_wrap=col == "link")
    for link in s["links"]:
        for d in link["directions"]:
            links.add_row(f"{d['from']} -> {d['to']}", f"{link['bandwidth_bps'] / 1e9:g} Gbit/s",
                          f"{link['latency_ns'] / 1e3:g} us", str(d["messages"]), str(d["bytes"]),
                          f"{d['queued_ns'] / 1e6:.3f}", f"{100 * d['utilisation']:.2f}")
    console.print(links)
    for table in _storage_tables(s.get("storage", []), s.get("quick_migrations", [])) if s.get("storage") else ():
        console.print(table)
    if s.get("migrations"):
        console.print(_migrations_table(s["migrations"]))
    console.print(f"trace digest {s['trace_digest']} (seed {s['seed']}, {len(s['hosts'])} hosts)")
    outcome = s.get("outcome", {})
    if outcome.get("status", "completed") != "completed":
        console.print(f"[bold red]run {outcome['status']}[/] at {s['simulated_ns'] / 1e9:g} s: {outcome['reason']}",
                      markup=True, highlight=False)
