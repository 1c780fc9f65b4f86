"""`make bench`: every benchmark, each printing ratios against a baseline measured in the same run."""
from __future__ import annotations

import argparse
import importlib
import json

from rich.console import Console
from rich.table import Table

BENCHES = ("hypercalls", "simulation", "ring", "channel", "host", "network")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHES)})")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results = {}
    console = Console()
    for name in args.names or BENCHES:
        module = importlib.import_module(f"bench.{name}")
        rows = module.run()
        results[name] = rows
        if args.json:
            continue
        table = Table(title=f"{name}: {module.__doc__.strip().splitlines()[0]}")
        columns = []
        for row in rows:
            for k in row:
                if k not in columns:
                    columns.append(k)
        for c in columns:
            table.add_column(c)
        for row in rows:
            table.add_row(*[_fmt(row.get(c)) for c in columns])
        console.print(table)
    if args.json:
        print(json.dumps(results, indent=2))


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.3f}" if v < 100 else f"{v:,.0f}"
    return str(v)


if __name__ == "__main__":
    main()
