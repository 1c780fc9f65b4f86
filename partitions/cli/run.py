"""`hvsim run`: boot a simulated host and report what it did."""
from __future__ import annotations

import argparse
import json
import sys

from hypervisor import Host, PartitionState
from hypervisor.quantities import format_size
from partitions.worker import VmSpec, VmWorker

DEFAULT_HOST = {"logical_processors": 4, "smt": 2, "memory": "16GiB"}
DEFAULT_VMS = [VmSpec("vm1", memory="512MiB", processors=2, cpu_weight=100)]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="boot a simulated host (the built-in default host without a file)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation (default 0)")
    p.add_argument("--for", dest="duration", default="1s", help="simulated time to run (default 1s)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.set_defaults(func=run)


async def duty_cycle(ctx):
    """The default VM's workload: 60 % busy in 10 ms periods."""
    while True:
        await ctx.compute("6ms")
        await ctx.sleep("4ms")


def boot(seed: int) -> tuple[Host, list[VmWorker]]:
    host = Host(seed=seed, **DEFAULT_HOST)
    workers = [VmWorker(host, spec) for spec in DEFAULT_VMS]
    for w in workers:
        part = w.build()
        for vp in part.vps:
            vp.run(duty_cycle)
        host.root.resume_partition(part)
    return host, workers


def summary(host: Host, workers: list[VmWorker]) -> dict:
    intro = host.introspect
    elapsed = max(host.now, 1)
    totals = intro.totals()
    root = intro.partition_info(host.root)
    return {
        "host": {"logical_processors": host.logical_processors, "smt": host.smt,
                 "memory": format_size(host.memory_bytes), "pages": totals["pages"],
                 "hypervisor_pages": totals["hv_pages"]},
        "root": {"id": root["id"], "vps": bin(root["vp_mask"]).count("1"),
                 "memory": format_size(root["pages_owned"] * 4096), "privileges": f"{root['privileges']:#x}",
                 "hypercalls": root["hypercalls"], "hypercalls_failed": root["hypercalls_failed"]},
        "vms": [{"name": w.spec.name, "partition_id": w.partition.id,
                 "state": PartitionState(intro.partition_info(w.partition)["state"]).name.lower(),
                 "vps": bin(intro.partition_info(w.partition)["vp_mask"]).count("1"),
                 "memory": format_size(intro.partition_info(w.partition)["pages_owned"] * 4096),
                 "pool_pages": intro.partition_info(w.partition)["pool_free"] + intro.partition_info(w.partition)["pool_used"],
                 "cpu_percent": round(100 * intro.run_time_ns(w.partition) / elapsed / host.logical_processors, 2)}
                for w in workers],
        "simulated_ns": host.now,
        "trace_digest": host.trace_digest().hex(),
        "state_digest": intro.digest(memory=False).hex(),
    }


def run(args: argparse.Namespace) -> int:
    from hypervisor.quantities import parse_duration
    try:
        duration = parse_duration(args.duration, "--for")
    except ValueError as exc:
        print(f"hvsim run: {exc}", file=sys.stderr)
        return 2
    host, workers = boot(args.seed)
    host.run(duration)
    s = summary(host, workers)
    if args.json:
        json.dump(s, sys.stdout, indent=2)
        print()
        return 0
    h, r = s["host"], s["root"]
    print(f"hvsim host: {h['logical_processors']} logical processors (SMT {h['smt']}), {h['memory']} "
          f"({h['pages']} pages, {h['hypervisor_pages']} kept by the hypervisor)")
    print(f"root partition {r['id']}: {r['vps']} VPs, {r['memory']} of memory, privileges {r['privileges']}, "
          f"{r['hypercalls']} hypercalls ({r['hypercalls_failed']} failed)")
    for vm in s["vms"]:
        print(f"child partition {vm['partition_id']} ({vm['name']}): {vm['state']} and running, {vm['vps']} VPs, "
              f"{vm['memory']} mapped, {vm['pool_pages']} pool pages, CPU {vm['cpu_percent']}% of the host")
    print(f"ran {s['simulated_ns'] / 1e9:g} s of simulated time; trace digest {s['trace_digest']}, "
          f"state digest {s['state_digest']}")
    return 0
