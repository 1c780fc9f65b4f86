"""Runs hvsim's fuzz targets (`make fuzz`): builds the libFuzzer harnesses of the C core with clang
under ASan and UBSan, runs every target for a budget, each in its own process, and prints the
executions, rate and crashes of each.

    python -m fuzz.run [--seconds S] [--runs N] [--jobs J] [target ...]

C targets (fuzz/c/*.c) are libFuzzer binaries; Python targets (fuzz/targets.py) run under atheris,
which drives the same libFuzzer engine over coverage of the instrumented hvsim modules. Each target
starts from its seed corpus (fuzz/corpus/<target>/) and dictionary (fuzz/dict/<target>.dict) and
keeps what it learns in build/fuzz/corpus/<target>/, so a second run goes on from the first. A
crash leaves its input in build/fuzz/artifacts/<target>/ (libFuzzer stops a target at its first).
`python -m fuzz.run --replay <target> <file>` runs one input again and shows the stack.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = ROOT / "build" / "fuzz"
NATIVE = ROOT / "native"

#: C targets: harness file -> the core sources it needs (all of them for the hypercall entry point).
C_TARGETS = {
    "hypercall": (HERE / "c" / "hypercall.c", sorted(NATIVE.glob("*.c"))),
    "ring": (HERE / "c" / "ring.c", [NATIVE / "ring.c"]),
}
PY_TARGETS = ("ring_py", "vmbus_control", "ic", "vstor", "nvsp", "rndis", "vhd", "savedstate", "config")
ALL = (*C_TARGETS, *PY_TARGETS)

#: C targets whose core runs in fuzz/c/arena.c's arena (the harness's persistent mode): the core's
#: sources are compiled with fuzz/c/arena.h included first, and arena.c is linked in.
ARENA_TARGETS = {"hypercall"}
ARENA_H = HERE / "c" / "arena.h"
ARENA_C = HERE / "c" / "arena.c"

CFLAGS = ["-std=c11", "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=fuzzer,address,undefined",
          "-fno-sanitize-recover=undefined"]
#: arena.c is the harness's machinery, not code under test: sanitized, but not coverage-traced.
ARENA_CFLAGS = ["-O2" if f == "-O1" else f for f in CFLAGS if not f.startswith("-fsanitize=fuzzer")] + [
    "-fsanitize=address,undefined"]
#: Core files whose coverage is traced without comparison operands: their whole-table loops (the
#: state digest, a partition's teardown walking every GPA region) otherwise spend most of each run
#: in __sanitizer_cov_trace_cmp8. Their branches are still covered.
NO_TRACE_CMP = {"host.c", "partition.c"}
SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1:allocator_may_return_null=1",
                 "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def core_flags(target: str) -> list[str]:
    """Compiler flags the core's sources of a C target need besides the sanitizers."""
    return ["-include", str(ARENA_H)] if target in ARENA_TARGETS else []


def support_sources(target: str) -> list[Path]:
    """The harness's own C files besides the harness (built without fuzzer coverage)."""
    return [ARENA_C] if target in ARENA_TARGETS else []


def build_c(target: str) -> Path:
    """The libFuzzer binary of a C target, rebuilt when the harness or any core file is newer."""
    harness, sources = C_TARGETS[target]
    out = BUILD / target
    inputs = [harness, *sources, *NATIVE.glob("*.h"), *support_sources(target), ARENA_H]
    if out.exists() and out.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
        return out
    clang = shutil.which("clang")
    if clang is None:
        raise SystemExit("fuzz: clang is not installed (make fuzz installs Debian's clang)")
    BUILD.mkdir(parents=True, exist_ok=True)
    objects = []
    support = support_sources(target)
    for src in [*sources, harness, *support]:
        own = src == harness or src in support
        obj = BUILD / "obj" / target / (("fuzz-" if own else "") + src.stem + ".o")
        obj.parent.mkdir(parents=True, exist_ok=True)
        flags = ARENA_CFLAGS if src in support else CFLAGS
        extra = ["-fno-sanitize-coverage=trace-cmp"] if src.name in NO_TRACE_CMP else []
        if not own:
            extra += core_flags(target)
        _clang([clang, *flags, *extra, f"-I{NATIVE}", "-c", str(src), "-o", str(obj)], target)
        objects.append(str(obj))
    _clang([clang, *CFLAGS, *objects, "-o", str(out)], target)
    return out


def _clang(cmd: list[str], target: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"fuzz: building {target} failed:\n{' '.join(cmd)}\n{done.stderr}")


def command(target: str, libfuzzer_args: list[str]) -> list[str]:
    if target in C_TARGETS:
        return [str(build_c(target)), *libfuzzer_args]
    return [sys.executable, "-m", "fuzz.atheris_main", target, *libfuzzer_args]


def run_target(target: str, seconds: int, runs: int | None) -> dict:
    work = BUILD / "corpus" / target
    artifacts = BUILD / "artifacts" / target
    work.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.iterdir())
    args = [str(work), str(HERE / "corpus" / target), f"-dict={HERE / 'dict' / f'{target}.dict'}",
            f"-max_total_time={seconds}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
            "-timeout=10", "-rss_limit_mb=4096", "-max_len=8192"]
    if runs is not None:
        args.append(f"-runs={runs}")
    env = {**os.environ, **SANITIZER_ENV, "PYTHONPATH": str(ROOT)}
    for attempt in range(3):
        start = time.monotonic()
        done = subprocess.run(command(target, args), capture_output=True, text=True, env=env, cwd=ROOT)
        wall = time.monotonic() - start
        # The core is rebuilt in place by `make core` (others may run it in the same tree): a target
        # that could not even import hvsim has run nothing and is started again a little later.
        if "hvsim's compiled core" not in done.stderr or re.search(r"^#\d+\s", done.stderr, re.M):
            break
        time.sleep(20)
    log = BUILD / f"{target}.log"
    log.write_text(done.stderr + done.stdout)
    execs = _stat(done.stderr, "number_of_executed_units")
    if execs is None:  # no final stats (it crashed): take the last progress line
        found = re.findall(r"^#(\d+)\s", done.stderr, re.M)
        execs = int(found[-1]) if found else 0
    fresh = None
    if target in ARENA_TARGETS and done.returncode == 0:
        # The persistent mode's arena hides leaks from LeakSanitizer: every input the run kept is
        # run once more with a new host on libc's heap each (HVSIM_FUZZ_FRESH=1), destroyed after.
        again = subprocess.run(command(target, [str(work), str(HERE / "corpus" / target), "-runs=0",
                                                f"-artifact_prefix={artifacts}/", "-timeout=10"]),
                               capture_output=True, text=True, env={**env, "HVSIM_FUZZ_FRESH": "1"}, cwd=ROOT)
        with log.open("a") as f:
            f.write("\n---- the kept corpus again, a fresh host per input (HVSIM_FUZZ_FRESH=1) ----\n")
            f.write(again.stderr + again.stdout)
        inited = re.search(r"^#(\d+)\s+INITED", again.stderr, re.M)
        fresh = {"inputs": int(inited.group(1)) if inited else 0, "exit": again.returncode}
    new = sorted(set(artifacts.iterdir()) - before)
    crashes = [p for p in new if p.name.split("-")[0] in ("crash", "leak", "timeout", "oom", "slow")]
    return {"target": target, "kind": "C/libFuzzer" if target in C_TARGETS else "Python/atheris",
            "executions": execs, "seconds": round(wall, 1), "exec_per_s": round(execs / wall) if wall else 0,
            "crashes": len(crashes), "crash_inputs": [str(p.relative_to(ROOT)) for p in crashes],
            "exit": done.returncode or (fresh or {}).get("exit", 0), "fresh_pass": fresh,
            "log": str(log.relative_to(ROOT))}


def _stat(text: str, name: str) -> int | None:
    m = re.search(rf"stat::{name}:\s*(\d+)", text)
    return int(m.group(1)) if m else None


def report(results: list[dict]) -> str:
    lines = [f"{'target':15} {'engine':15} {'executions':>12} {'exec/s':>9} {'seconds':>8} {'crashes':>8}"]
    for r in results:
        lines.append(f"{r['target']:15} {r['kind']:15} {r['executions']:>12,} {r['exec_per_s']:>9,} "
                     f"{r['seconds']:>8} {r['crashes']:>8}")
        for path in r["crash_inputs"]:
            lines.append(f"    crash input: {path} (replay: python -m fuzz.run --replay {r['target']} {path}; "
                         f"log: {r['log']})")
        if r.get("fresh_pass"):
            lines.append(f"    and the {r['fresh_pass']['inputs']:,} inputs it kept, a fresh host each "
                         f"(leak checks): exit {r['fresh_pass']['exit']}")
        if r["exit"] and not r["crash_inputs"]:
            lines.append(f"    exited {r['exit']} without a crash input: see {r['log']}")
    return "\n".join(lines)


def replay(target: str, path: str) -> int:
    env = {**os.environ, **SANITIZER_ENV, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command(target, [path]), env=env, cwd=ROOT).returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", help=f"targets to run (default: all of {', '.join(ALL)})")
    ap.add_argument("--seconds", type=int, default=60, help="time budget per target (default 60)")
    ap.add_argument("--runs", type=int, default=None, help="stop a target after this many executions")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="targets run at once")
    ap.add_argument("--replay", nargs=2, metavar=("TARGET", "INPUT"), help="run one input of a target again")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(*args.replay)
    unknown = [t for t in args.targets if t not in ALL]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(ALL)}")
    targets = args.targets or list(ALL)
    for t in targets:
        if t in C_TARGETS:
            build_c(t)
    print(f"fuzz: {len(targets)} targets, {args.seconds} s each"
          + (f" or {args.runs:,} executions" if args.runs else "") + f", {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda t: run_target(t, args.seconds, args.runs), targets))
    print(report(results))
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"machine: {machine}")
    summary = BUILD / "summary.json"
    summary.write_text(json.dumps({"machine": machine, "seconds": args.seconds, "runs": args.runs,
                                   "results": results}, indent=2))
    print(f"summary: {summary.relative_to(ROOT)}")
    return 1 if any(r["crashes"] or r["exit"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
