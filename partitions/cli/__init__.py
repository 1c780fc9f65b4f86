"""The `hvsim` command: one subcommand module per verb, each with `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `hvsim --help` lists them.
SUBCOMMANDS = ("run", "vhd", "drivers", "tcb")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvsim", description="A Hyper-V-style hypervisor simulator.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"partitions.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
