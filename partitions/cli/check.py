"""`hvsim check CONFIG`: check a host file (or a datacenter file), and the options a run would use,
without running it.

It checks what `hvsim run` checks before it starts (the file, the disks' files, the output
paths, --for and --seed) and creates nothing: no disk, no log, no directory.
"""
from __future__ import annotations

import argparse
import sys

from partitions.cli import run as run_cli


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a host file (and run options) without running it",
                       description="Check a host configuration as `hvsim run` would before starting, "
                                   "creating nothing. Prints 'CONFIG: ok — ...' (exit 0) or the problem "
                                   "(exit 2).")
    p.add_argument("config", help="host configuration (TOML); see docs/configuration.md")
    run_cli.add_options(p)
    p.set_defaults(func=check)


def check(args: argparse.Namespace) -> int:
    from partitions.config_schema import DatacenterConfig
    try:
        plan = run_cli.plan(args, create=False)
    except run_cli.UsageError as exc:
        print(f"hvsim check: {exc}", file=sys.stderr)
        return run_cli.EXIT_USAGE
    c = plan.config
    if isinstance(c, DatacenterConfig):
        vms = sum(len(h.config.vms) for h in c.hosts)
        switches = sum(len(h.config.switches) for h in c.hosts)
        print(f"{args.config}: ok — a datacenter of {_count(len(c.hosts), 'host')}, {_count(len(c.links), 'link')}, "
              f"{_count(vms, 'VM')}, {_count(switches, 'switch')}, {_count(len(c.timeline), 'timeline action')}")
        return 0
    print(f"{args.config}: ok — {_count(len(c.vms), 'VM')}, {_count(len(c.switches), 'switch')}, "
          f"{_count(len(c.timeline), 'timeline action')}")
    return 0


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "es" if what.endswith("h") else "s")
