"""`make bench`: every benchmark, each figure beside its goal from issue 12's targets, as ratios
against baselines measured in the same run, and min/median/max over repeated runs.

`python -m bench [NAMES...] [--repeat N] [--size tiny|default|long] [--json]`: NAMES picks
benchmarks (default: all). A benchmark that fails prints why, and the others go on; one whose
run raised, or measured nothing, is not run again (such failures are deterministic).
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
import traceback

from bench.timing import SIZES, Figure

BENCHES = ("hypercalls", "channel", "ring", "storage", "storvsc", "host", "simulation", "memory", "network",
           "dirty", "quick_migration", "migration", "emulated", "native", "api")


def measure(names, repeat: int, size: str, log=None) -> dict[str, dict]:
    """{bench: {"doc", "runs", "figures": [aggregated figure dicts], "error"}}."""
    results = {}
    for name in names:
        entry = {"doc": "", "runs": 0, "figures": [], "error": None, "seconds": 0.0}
        results[name] = entry
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            entry["doc"] = (module.__doc__ or "").strip().splitlines()[0]
        except Exception as exc:  # noqa: BLE001 - a broken bench must not stop the others
            entry["error"] = _why(exc)
            continue
        runs: list[list[Figure]] = []
        for i in range(repeat):
            if log:
                log(f"{name}: run {i + 1} of {repeat}")
            try:
                runs.append(module.run(size))
            except Exception as exc:  # noqa: BLE001
                entry["error"] = _why(exc)
                break
            if all(f.error for f in runs[-1]):
                break  # nothing measurable: the next run would fail the same way
        entry["runs"] = len(runs)
        entry["figures"] = aggregate(runs)
        entry["seconds"] = time.perf_counter() - start
    return results


def _why(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def aggregate(runs: list[list[Figure]]) -> list[dict]:
    """One dict per figure name (in first-seen order) with min/median/max of value and ratio,
    the goal, and whether the median meets it."""
    order, by_name = [], {}
    for figures in runs:
        for f in figures:
            if f.name not in by_name:
                order.append(f.name)
                by_name[f.name] = []
            by_name[f.name].append(f)
    out = []
    for name in order:
        fs = by_name[name]
        last = fs[-1]
        value, ratio = _stats(f.value for f in fs), _stats(f.ratio for f in fs)
        error = next((f.error for f in fs if f.error), None)
        goal = last.goal
        met = None
        if goal is not None and error is None:
            met = goal.met(value and value["median"], ratio and ratio["median"])
        out.append({"name": name, "unit": last.unit, "baseline": last.baseline, "value": value, "ratio": ratio,
                    "runs": len(fs), "goal": goal.text if goal else None, "goal_met": met if error is None else False,
                    "note": last.note, "error": error, "extra": last.extra})
    return out


def _num(x: float) -> str:
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1e6:
        return f"{x / 1e6:.2f}M"
    if a >= 1e4:
        return f"{x / 1e3:.1f}k"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _span(s) -> str:
    if s is None:
        return ""
    if s["min"] == s["max"]:
        return _num(s["median"])
    return f"{_num(s['median'])} ({_num(s['min'])}-{_num(s['max'])})"


def render(results: dict, repeat: int, size: str) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console(width=max(180, Console().width))
    console.print(f"median (min-max) of up to {repeat} runs, size {size!r}; ratios are against the baseline "
                  "named, measured in the same run; 'met' judges the median")
    for name, entry in results.items():
        title = f"{name}: {entry['doc']}" + (f" ({entry['seconds']:.0f} s)" if entry["seconds"] else "")
        if entry["error"] and not entry["figures"]:
            console.print(f"[bold]{title}[/bold]\n  FAILED: {entry['error']}")
            continue
        table = Table(title=title, title_justify="left")
        for col in ("figure", "value", "unit", "vs baseline", "baseline", "goal", "met"):
            table.add_column(col)
        for f in entry["figures"]:
            met = "" if f["goal"] is None else ("yes" if f["goal_met"] else "NO")
            value = f"FAILED: {f['error']}" if f["error"] else _span(f["value"])
            table.add_row(f["name"], value, f["unit"], _span(f["ratio"]) + ("x" if f["ratio"] else ""),
                          f["baseline"] or "", f["goal"] or "", met)
        console.print(table)
        for f in entry["figures"]:
            if f["note"]:
                console.print(f"  note ({f['name']}): {f['note']}")
        if entry["error"]:
            console.print(f"  FAILED after {entry['runs']} run(s): {entry['error']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {', '.join(BENCHES)})")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each benchmark (default 3)")
    parser.add_argument("--size", choices=SIZES, default="default",
                        help="tiny: a smoke test; default: a short run; long: more work per figure, less noise")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name in BENCHES:
            print(name)
        return 0
    unknown = [n for n in args.names if n not in BENCHES]
    if unknown or args.repeat < 1:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; expected some of {', '.join(BENCHES)}"
                     if unknown else "--repeat: expected at least 1")
    log = None if args.json else (lambda msg: print(f"... {msg}", file=sys.stderr, flush=True))
    results = measure(args.names or BENCHES, args.repeat, args.size, log)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        render(results, args.repeat, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
