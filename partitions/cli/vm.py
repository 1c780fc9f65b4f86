"""`hvsim vm ...`, `hvsim events` and `hvsim clock`: the VMs, event stream and simulated clock of a
running `hvsim serve`, through its HTTP API (partitions/service/client.py), shaped like Hyper-V's
PowerShell verbs (Get-VM, Start-VM, Checkpoint-VM ...) and virsh.

Every command takes `--server URL` (else HVSIM_SERVER, else http://127.0.0.1:8450; `unix:/path`
for a Unix socket), a token (`--token-file FILE`, else HVSIM_TOKEN, else the file HVSIM_TOKEN_FILE
names; none: the local service's loopback Administrator) and `--json` (the API's own JSON document;
JSON lines for events). Exit status: 0 done; 1 the API refused (its message, one line on stderr)
or the service cannot be reached (the address named); 2 a usage error, found before any request;
130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from typing import Any, Callable

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

# The lifecycle verbs that take only the VM's name: (verb, the API's path segment, help).
LIFECYCLE = (("start", "start", "start the VM (Start-VM)"),
             ("stop", "stop", "shut the VM down through its guest (Stop-VM)"),
             ("turn-off", "turn-off", "turn the VM off at once, as pulling the plug (Stop-VM -TurnOff)"),
             ("pause", "pause", "pause the VM's processors (Suspend-VM)"),
             ("resume", "resume", "resume a paused VM (Resume-VM)"),
             ("save", "save", "save the VM's state into the service's state directory (Save-VM)"),
             ("restore", "restore", "start a saved VM from its saved state (Start-VM of a saved VM)"))

# Get-VM's columns, as `hvsim run` shows them; Host and Owner are added when they say something.
COLUMNS = ("Name", "State", "CPUUsage(%)", "MemoryAssigned(M)", "Uptime", "Status")
RIGHT = ("CPUUsage(%)", "MemoryAssigned(M)")


class UsageError(Exception):
    """A problem with the command line found before any request: one line, exit status 2."""


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", metavar="URL",
                        help="the service: http://HOST:PORT or unix:/path/to.sock (default: $HVSIM_SERVER, "
                             "else http://127.0.0.1:8450)")
    common.add_argument("--token-file", metavar="FILE",
                        help="read the bearer token from FILE (default: $HVSIM_TOKEN, else the file "
                             "$HVSIM_TOKEN_FILE names; none for a local service without --users)")
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")
    status = ("Exit status: 0 done; 1 the service refused (its message on stderr) or cannot be reached; "
              "2 a usage error; 130 Ctrl-C.")

    vm = sub.add_parser("vm", help="list, show and act on the VMs of a running hvsim service",
                        description="The VMs of a running `hvsim serve`, through its API.", epilog=status)
    verbs = vm.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    def verb(name: str, help: str, handler: Callable, *names: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, parents=[common], help=help, description=help[0].upper() + help[1:] + ".",
                             epilog=status)
        for n in names:
            p.add_argument(n, metavar=n.upper(), help="the VM's name" if n == "name" else None)
        p.set_defaults(func=main, handler=handler, prog="hvsim vm")
        return p

    verb("list", "the VMs with their state, CPU, memory and uptime (Get-VM)", _list)
    verb("show", "one VM in detail: state, CPU, memory, uptime, checkpoints, devices, measures (Get-VM NAME)",
         _show, "name")
    for name, action, help in LIFECYCLE:
        verb(name, help, _lifecycle, "name").set_defaults(action=action)
    p = verb("checkpoint", "take a checkpoint of the VM (Checkpoint-VM)", _lifecycle, "name")
    p.add_argument("--name", dest="checkpoint", metavar="CHECKPOINT",
                   help="the checkpoint's name (default: the service names it after the simulated time)")
    p.set_defaults(action="checkpoint")
    p = verb("apply", "continue the VM from one of its checkpoints (Restore-VMCheckpoint)", _lifecycle, "name")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the checkpoint's name")
    p.set_defaults(action="apply")
    p = verb("move", "move the VM to another host of the datacenter (Move-VM)", _lifecycle, "name")
    p.add_argument("--to", required=True, metavar="HOST", help="the host to move to")
    p.add_argument("--kind", default="live", help="the kind of migration (default live)")
    p.set_defaults(action="move")
    p = verb("create", "create a VM, Off, from a template or a TOML fragment (New-VM)", _create)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--template", metavar="TEMPLATE", help="a template the service offers (with --name)")
    source.add_argument("--file", metavar="FRAGMENT.toml",
                        help="a [[vm]] table's keys, as in a host file (docs/configuration.md)")
    p.add_argument("--name", metavar="NAME", help="the new VM's name (needed with --template; with --file it "
                                                  "wins over the fragment's own)")
    p.add_argument("--host", metavar="HOST", help="the host to create it on (default: the first)")
    verb("delete", "delete a VM that is Off or Saved (Remove-VM)", _delete, "name")

    p = sub.add_parser("events", parents=[common], help="the event log of a running hvsim service",
                       description="The events of a running `hvsim serve`, one line each: simulated time, "
                                   "event, VM, fields (docs/events.md). With --follow, as they happen, until "
                                   "the stream ends or Ctrl-C.", epilog=status)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing events as they happen")
    p.add_argument("--since", type=_sequence, metavar="SEQ", help="only the events after sequence number SEQ")
    p.add_argument("--vm", action="append", default=[], metavar="NAME",
                   help="only the events of this VM (may be given more than once)")
    p.add_argument("--limit", type=_sequence, metavar="N", help="at most N events (without --follow)")
    p.set_defaults(func=main, handler=_events, prog="hvsim events")

    p = sub.add_parser("clock", parents=[common], help="show or set the simulated clock of a running hvsim service",
                       description="The simulated clock of a running `hvsim serve`: its time, speed and whether "
                                   "it is paused; the options change it, then it is shown.", epilog=status)
    p.add_argument("--speed", metavar="X", help="simulated seconds per real second (1 = real time), or max")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--pause", action="store_true", help="stop simulated time")
    run.add_argument("--resume", action="store_true", help="let simulated time run again")
    p.add_argument("--step", metavar="DURATION", help="advance a paused clock by DURATION (100ms, 1s ...)")
    p.set_defaults(func=main, handler=_clock, prog="hvsim clock")


def _sequence(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


# ---- running a command --------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    """Run the command's handler with a client of the service; map what fails to a line on stderr
    and the exit status."""
    from partitions.service.client import ApiError, Client, Unreachable
    try:
        server, source = _server(args)
        try:
            client = Client(server, _token(args))
        except ValueError as exc:   # the server's URL
            raise UsageError(f"{source} {exc}") from None
        return args.handler(client, args) or 0
    except UsageError as exc:
        print(f"{args.prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ApiError, Unreachable) as exc:
        print(f"{args.prog}: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(file=sys.stderr)   # past the ^C the terminal echoed
        return EXIT_INTERRUPTED
    except BrokenPipeError:      # `hvsim events -f | head`: the reader is gone, which is not a failure
        # Point stdout at /dev/null so that the interpreter's flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _server(args: argparse.Namespace) -> tuple[str, str]:
    """(the service's URL, where it came from): --server, else $HVSIM_SERVER, else the default."""
    from partitions.service.client import DEFAULT_SERVER
    if args.server:
        return args.server, "--server"
    if os.environ.get("HVSIM_SERVER"):
        return os.environ["HVSIM_SERVER"], "HVSIM_SERVER"
    return DEFAULT_SERVER, "the default server"


def _token(args: argparse.Namespace) -> str | None:
    """--token-file, else $HVSIM_TOKEN, else the file $HVSIM_TOKEN_FILE names, else none."""
    path, option = args.token_file, "--token-file"
    if path is None:
        if os.environ.get("HVSIM_TOKEN"):
            return os.environ["HVSIM_TOKEN"].strip()
        path, option = os.environ.get("HVSIM_TOKEN_FILE") or None, "HVSIM_TOKEN_FILE"
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path}: not a text file") from None
    if not token or len(token.split()) != 1:
        raise UsageError(f"{option} {path}: expected one token (as `hvsim users add` prints it)"
                         + (", the file is empty" if not token else ""))
    return token


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _vm_path(name: str, *rest: str) -> str:
    return "/".join(["/v1/vms", urllib.parse.quote(name, safe="")] + list(rest))


def _print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2)
    print()


def _console():
    """A console as `hvsim run` prints with; into a pipe or file, wide enough that a table's rows
    stay one line each (rich would fold them at 80 columns), so `hvsim vm list | grep` works."""
    from rich.console import Console
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


# ---- hvsim vm ------------------------------------------------------------------------------------

def vm_table(rows: list[dict], title: str = "Get-VM", *, hosts: int = 1):
    """Get-VM's table, with `hvsim run`'s columns and look (its own helper has no Host or Owner);
    Host when the service has more than one host (`hosts`) or the VMs are on several, Owner when
    any VM has one (created through the API by a user)."""
    from rich.table import Table
    columns = list(COLUMNS)
    if hosts > 1 or len({r.get("Host") for r in rows}) > 1:
        columns.append("Host")
    if any(r.get("Owner") for r in rows):
        columns.append("Owner")
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in RIGHT else "left")
    for r in rows:
        table.add_row(*["" if r.get(c) is None else str(r.get(c)) for c in columns])
    return table


def _list(client, args) -> int:
    rows = client.call("GET", "/v1/vms")
    if args.json:
        _print_json(rows)
        return 0
    from partitions.service.client import ApiError
    try:   # a datacenter's hosts, so that the Host column shows even while its VMs are all on one
        hosts = len(client.call("GET", "/v1/hosts"))
    except ApiError:
        hosts = 1
    _console().print(vm_table(rows, hosts=hosts))
    return 0


def _show(client, args) -> int:
    vm = client.call("GET", _vm_path(args.name))
    if args.json:
        _print_json(vm)
        return 0
    from rich.table import Table
    table = Table(title=f"VM {vm.get('Name', args.name)}", show_header=False)
    table.add_column("property", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in _details(vm):
        table.add_row(key, value)
    _console().print(table)
    return 0


def _details(vm: dict) -> list[tuple[str, str]]:
    """The detail view's lines: Get-VM's fields, then what only `show` has."""
    rows = [("State", str(vm.get("State", ""))), ("Status", str(vm.get("Status") or ""))]
    cpu = f"{vm.get('CPUUsage(%)', 0)} % of the host's processors"
    if vm.get("processors") is not None:
        cpu += f", {vm['processors']} virtual processor{'s' if vm['processors'] != 1 else ''}"
    rows.append(("CPU", cpu))
    history = [p[1] for p in vm.get("cpu") or [] if isinstance(p, (list, tuple)) and len(p) == 2]
    if history:
        rows.append(("CPU history", f"{_sparkline(history[-60:])}  (last {min(len(history), 60)} samples, "
                                    f"peak {max(history[-60:]):.1f} %)"))
    memory = f"{vm.get('MemoryAssigned(M)', 0)} MiB assigned"
    if vm.get("memory_bytes") is not None:
        memory += f" of {vm['memory_bytes'] / 2**20:g} MiB"
    rows.append(("Memory", memory))
    rows.append(("Uptime", str(vm.get("Uptime", ""))))
    for key in ("Host", "Owner"):
        if vm.get(key):
            rows.append((key, str(vm[key])))
    rows.append(("Checkpoints", "\n".join(_checkpoint(c) for c in vm.get("checkpoints") or []) or "none"))
    rows.append(("Devices", ", ".join(map(str, vm.get("devices") or [])) or "none"))
    measure = vm.get("measure")
    if isinstance(measure, dict) and measure:
        rows.append(("Measure", _measure(measure)))
    return rows


def _checkpoint(c: Any) -> str:
    """"before-upgrade (taken at 2.000 s, consistent)"."""
    if not isinstance(c, dict):
        return str(c)
    when = f"taken at {c['time_ns'] / 1e9:.3f} s" if isinstance(c.get("time_ns"), int) else ""
    how = {True: "consistent", False: "crash-consistent"}.get(c.get("consistent"), "")
    notes = ", ".join(x for x in (when, how) if x)
    return f"{c.get('name', '?')} ({notes})" if notes else str(c.get("name", "?"))


def _measure(m: dict) -> str:
    """Measure-VM's figures in two lines: the disks', then the network's."""
    known = ("AggregatedDiskDataRead(M)", "AggregatedDiskDataWritten(M)", "AggregatedNormalizedIOCount",
             "AggregatedAverageNormalizedIOPS", "NetworkInbound(M)", "NetworkOutbound(M)")
    g = lambda key: m.get(key, 0)   # noqa: E731
    lines = [f"disk read {g(known[0])} MB, written {g(known[1])} MB, {g(known[2])} I/Os of 8 KiB "
             f"({g(known[3])} IOPS)", f"network in {g(known[4])} MB, out {g(known[5])} MB"]
    lines += [f"{k} {v}" for k, v in m.items() if k not in known and k != "VMName"]
    return "\n".join(lines)


def _sparkline(values: list[float]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    top = max(max(values), 1e-9)
    return "".join(bars[min(len(bars) - 1, int(v / top * (len(bars) - 1) + 0.5))] for v in values)


def _lifecycle(client, args) -> int:
    row = client.call("POST", _vm_path(args.name, args.action), _action_body(args))
    if args.json:
        _print_json(row)
    else:
        line = _state_line(row, args.name, host=args.action == "move")
        if args.action == "checkpoint" and args.checkpoint:
            line += f"; checkpoint {args.checkpoint!r} taken"
        print(line)
    return 0


def _action_body(args) -> dict | None:
    """The request's body: what the verb's options say (checkpoint, apply, move); none otherwise."""
    if args.action == "checkpoint":
        return {"name": args.checkpoint} if args.checkpoint else {}
    if args.action == "apply":
        return {"checkpoint": args.checkpoint}
    if args.action == "move":
        return {"to": args.to, "kind": args.kind}
    return None


def _state_line(row: Any, name: str, *, host: bool = False) -> str:
    """"vm 'web' is Running" (and where, after a move), from the VM's row the API answered."""
    if isinstance(row, dict) and "State" in row:
        where = f" on {row['Host']}" if host and row.get("Host") else ""
        return f"vm {row.get('Name', name)!r} is {row['State']}{where}"
    return f"vm {name!r}: done"


def _create(client, args) -> int:
    if args.template is not None:
        if not args.name:
            raise UsageError("--template needs --name NAME, the new VM's name")
        body: dict = {"template": args.template, "name": args.name}
    else:
        try:
            with open(args.file, encoding="utf-8") as f:
                body = {"toml": f.read()}
            if args.name:
                body["name"] = args.name
        except OSError as exc:
            raise UsageError(f"--file {args.file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--file {args.file}: not a UTF-8 text file") from None
    if args.host:
        body["host"] = args.host
    row = client.call("POST", "/v1/vms", body)
    if args.json:
        _print_json(row)
    else:
        row = row if isinstance(row, dict) else {}
        where = f" on {row['Host']}" if args.host and row.get("Host") else ""
        print(f"vm {row.get('Name', args.name)!r} created, {row.get('State', '?')}{where}")
    return 0


def _delete(client, args) -> int:
    answer = client.call("DELETE", _vm_path(args.name))
    if args.json:
        _print_json(answer if answer is not None else {"deleted": args.name})
    else:
        print(f"vm {args.name!r} deleted")
    return 0


# ---- hvsim events ------------------------------------------------------------------------------

def event_line(data: dict) -> str:
    """One event as a line: simulated time (s), event, VM (or -), then its other fields."""
    t = data.get("time_ns", data.get("t_ns"))
    when = f"{t / 1e9:12.6f} s" if isinstance(t, (int, float)) else f"{'?':>12} s"
    skip = {"seq", "time_ns", "t_ns", "event", "vm"}
    fields = " ".join(f"{k}={_value(v)}" for k, v in data.items() if k not in skip)
    return f"{when}  {str(data.get('event', '?')):<24} {str(data.get('vm') or '-'):<12} {fields}".rstrip()


def _value(v: Any) -> str:
    """A field's value: a plain word as it is, anything else as JSON (quoted, so a line splits back)."""
    if isinstance(v, str) and v and not any(c.isspace() or c in "\"'=" for c in v):
        return v
    return json.dumps(v)


def _events(client, args) -> int:
    wanted = set(args.vm)   # the server filters them; so does this, for a server that would not
    vm = args.vm or None

    def show(data: dict) -> None:
        if wanted and data.get("vm") not in wanted:
            return
        print(json.dumps(data) if args.json else event_line(data), flush=args.follow)

    if not args.follow:
        answer = client.call("GET", "/v1/events", query={"since": args.since, "limit": args.limit, "vm": vm})
        for data in answer.get("events", []) if isinstance(answer, dict) else answer or []:
            show(data)
        return 0
    if args.limit is not None:
        raise UsageError("--limit is for a list of events, not --follow")
    for event in client.follow_events(args.since, vm=vm):
        data = event.data if "event" in event.data else {**event.data, "event": event.name}
        show(data)
    return 0


# ---- hvsim clock -------------------------------------------------------------------------------

def _clock(client, args) -> int:
    change: dict = {}
    if args.speed is not None:
        change["speed"] = _speed(args.speed)
    if args.pause or args.resume:
        change["paused"] = bool(args.pause)
    if args.step is not None:
        from hypervisor.quantities import parse_duration
        try:
            if parse_duration(args.step, "--step") <= 0:
                raise ValueError(f"--step: expected a duration above zero, got {args.step!r}")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    clock = None
    if change:
        clock = client.call("PUT", "/v1/clock", change)
    if args.step is not None:
        clock = client.call("POST", "/v1/clock/step", {"by": args.step})
    if not (isinstance(clock, dict) and "now_ns" in clock):
        clock = client.call("GET", "/v1/clock")
    if args.json:
        _print_json(clock)
    else:
        print(clock_line(clock))
    return 0


def _speed(text: str) -> float | str:
    if text.strip().lower() == "max":
        return "max"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UsageError(f"--speed: expected a number above zero (1 = real time) or max, got {text!r}")
    return int(value) if value.is_integer() else value


def clock_line(clock: dict) -> str:
    """"simulated time 12.300000 s, speed 1x, running (1230 windows)"."""
    speed = clock.get("speed")
    speed_text = ("max (as fast as it can)" if speed in ("max", None) else
                  f"{speed:g}x" if isinstance(speed, (int, float)) else str(speed))
    state = "paused" if clock.get("paused") else "running"
    windows = f" ({clock['windows']} windows)" if clock.get("windows") is not None else ""
    return f"simulated time {clock.get('now_ns', 0) / 1e9:.6f} s, speed {speed_text}, {state}{windows}"
