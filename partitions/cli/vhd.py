"""The `hvsim vhd` subcommand: create VHD files and describe them (`create`, `info`)."""
from __future__ import annotations

import argparse
import json
import sys

from drivers.storage.vhd import KINDS, VhdError, VirtualDisk
from hypervisor.quantities import parse_size


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "vhd", help="create and inspect VHD virtual disk files",
        description="Create and inspect VHD virtual disk files (fixed, dynamic, differencing).")
    verbs = parser.add_subparsers(dest="vhd_verb", metavar="VERB")
    verbs.required = True

    create = verbs.add_parser(
        "create", help="create a new VHD file",
        description="Create a new VHD. The file must not exist yet. A differencing disk takes "
                    "its parent's size, so --size may be left out for it.")
    create.add_argument("path", metavar="PATH", help="file to create")
    create.add_argument("--size", help="virtual size: bytes, or with a binary unit (4GiB, 512MiB, 1.5GiB); "
                                       "must come to a multiple of 512 bytes. 512MB and 4G are refused as "
                                       "ambiguous (Hyper-V reads MB as MiB, others as 10^6 bytes)")
    create.add_argument("--type", dest="kind", choices=tuple(KINDS), default="dynamic",
                        help="disk type (default: dynamic)")
    create.add_argument("--parent", metavar="PARENT", help="parent disk of a differencing disk")
    create.set_defaults(func=create_command)

    info = verbs.add_parser("info", help="describe a VHD file", description="Describe a VHD file.")
    info.add_argument("path", metavar="PATH", help="VHD file to describe")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=info_command)


def create_command(args: argparse.Namespace) -> int:
    try:
        size = None if args.size is None else parse_size(args.size, "--size")
    except ValueError as exc:
        return _fail(str(exc))
    if args.kind == "differencing":
        if args.parent is None:
            return _fail("--type differencing needs --parent PARENT")
    else:
        if args.parent is not None:
            return _fail(f"--parent is only for --type differencing, not {args.kind}")
        if size is None:
            return _fail(f"--type {args.kind} needs --size SIZE")
    try:
        with VirtualDisk.create(args.path, size, args.kind, parent=args.parent) as disk:
            disk.flush()
            print(f"created {disk.path}: {disk.kind}, {disk.size} bytes")
    except (VhdError, FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        return _fail(_describe(exc))
    except OSError as exc:
        print(f"hvsim vhd create: {_describe(exc)}", file=sys.stderr)
        return 1
    return 0


def info_command(args: argparse.Namespace) -> int:
    try:
        with VirtualDisk.open(args.path, read_only=True) as disk:
            details = disk.info()
    except (VhdError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        return _fail(_describe(exc), verb="info")
    except OSError as exc:
        print(f"hvsim vhd info: {_describe(exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(details, indent=2))
    else:
        for key, value in details.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items())
            print(f"{key.replace('_', ' ')}: {value}")
    return 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _fail(message: str, verb: str = "create") -> int:
    print(f"hvsim vhd {verb}: {message}", file=sys.stderr)
    return 2
