"""The `hvsim` command: one subcommand module per verb, each with `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `hvsim --help` lists them.
SUBCOMMANDS = ("run", "check", "host", "vhd", "drivers", "tcb", "serve", "vm", "users")


def version() -> str:
    """"hvsim 0.1.0 (core ABI 1)": the installed package's version and the compiled core's ABI."""
    from importlib import metadata
    try:
        package = metadata.version("hvsim")
    except metadata.PackageNotFoundError:
        package = "(not installed)"
    try:
        from hypervisor._binding import ABI_VERSION   # importing it checks the core reports the same
        core = f"core ABI {ABI_VERSION}"
    except ImportError as exc:
        core = f"core not loadable: {exc}"
    return f"hvsim {package} ({core})"


class _Version(argparse.Action):
    """--version, computed only when asked for (it loads the compiled core)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print hvsim's version and its core's ABI version")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvsim", description="A Hyper-V-style hypervisor simulator.")
    parser.add_argument("--version", action=_Version)
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
