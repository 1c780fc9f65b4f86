"""The `hvsim vhd` subcommand: create VHD files and describe them (`create`, `info`)."""
from __future__ import annotations

import argparse
import json
import re
import sys

from drivers.storage.vhd import KINDS, VhdError, VirtualDisk

# Units for sizes. Bare K/M/G/T are binary, as in qemu-img, truncate and dd.
_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}
_SIZE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    """"4GiB", "512MiB", "10MB", "4G" or plain bytes → bytes. Raises ValueError naming the problem."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"size {text!r} is not a number of bytes with an optional unit (e.g. 4GiB, 512MiB, 10MB)")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"size {text!r} has unknown unit {unit!r} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")
    return int(number) * factor


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
    create.add_argument("--size", help="virtual size: bytes, or with a unit (4GiB, 512MiB, 10MB); "
                                       "must come to a multiple of 512 bytes")
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
        size = None if args.size is None else parse_size(args.size)
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
