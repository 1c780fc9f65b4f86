"""`hvsim drivers`: the driver plugins installed in this Python (the `hvsim.drivers` entry points),
with their class GUIDs, VSP/VSC classes and the distributions that provide them.

Plugins that fail to load are listed in a separate "failed" section with their error, and the
command then exits 1 (like `pip check`), so that a plugin author's CI can ask "does my plugin
load?" with `hvsim drivers`. A failed plugin never stops a host: `hvsim run` skips it.
"""
from __future__ import annotations

import argparse
import json
from importlib import metadata
from typing import Any

from drivers import registry


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "drivers", help="list the installed driver plugins",
        description="List the driver plugins installed in this Python (entry points of the "
                    f"{registry.GROUP!r} group): name, class GUID, VSP and VSC classes, the "
                    "distribution that provides each and its version.",
        epilog="Plugins that fail to load are listed under 'failed' with their error; the exit "
               "status is then 1 (0 when every plugin loads).")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=drivers_command)


def listing() -> dict[str, list[dict[str, Any]]]:
    """The loaded and failed plugins, each as a plain record (the layout `--json` prints)."""
    found = registry.discover()
    loaded = []
    for name in sorted(found.devices):
        device = found.devices[name]
        # The registry's record, not a lookup of entry points by name: a refused plugin may share
        # the name of the built-in that was kept.
        distribution = found.distributions.get(name)
        loaded.append({
            "name": name,
            "class_id": str(device.class_id),
            "vsp": _qualified(device.vsp),
            "vsc": _qualified(device.vsc),
            "distribution": distribution,
            "version": _version(distribution) if distribution else None,
            "description": device.description,
        })
    failed = [{"entry_point": e.entry_point, "distribution": e.distribution,
               "version": _version(e.distribution), "error": e.message} for e in found.errors]
    return {"drivers": loaded, "failed": failed}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def drivers_command(args: argparse.Namespace) -> int:
    result = listing()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 1 if result["failed"] else 0


def _print(result: dict[str, list[dict[str, Any]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or captured: no terminal width to fit, so do not fold
        console.width = max(console.width, 160)
    table = Table(title=f"Driver plugins ({len(result['drivers'])})")
    table.add_column("name", no_wrap=True)
    table.add_column("class GUID", no_wrap=True)
    table.add_column("VSP / VSC", overflow="fold")
    table.add_column("distribution", no_wrap=True)
    table.add_column("description", overflow="fold")
    for d in result["drivers"]:
        table.add_row(d["name"], d["class_id"], f"{d['vsp']}\n{d['vsc']}",
                      f"{d['distribution'] or '?'} {d['version'] or ''}".rstrip(), d["description"])
    console.print(table)
    if result["failed"]:
        failed = Table(title=f"Failed to load ({len(result['failed'])})", title_style="bold red")
        failed.add_column("entry point", overflow="fold")
        failed.add_column("distribution", no_wrap=True)
        failed.add_column("error", overflow="fold")
        for f in result["failed"]:
            failed.add_row(f["entry_point"], f"{f['distribution']} {f['version'] or ''}".rstrip(), f["error"])
        console.print(failed)
