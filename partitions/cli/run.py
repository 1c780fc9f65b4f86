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
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.set_defaults(func=run)


def boot(seed: int) -> tuple[Host, list[VmWorker]]:
    host = Host(seed=seed, **DEFAULT_HOST)
    workers = [VmWorker(host, spec) for spec in DEFAULT_VMS]
    for w in workers:
        w.build()
    return host, workers


def summary(host: Host, workers: list[VmWorker]) -> dict:
    intro = host.introspect
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
                 "pool_pages": intro.partition_info(w.partition)["pool_free"] + intro.partition_info(w.partition)["pool_used"]}
                for w in workers],
        "state_digest": intro.digest(memory=False).hex(),
    }


def run(args: argparse.Namespace) -> int:
    host, workers = boot(args.seed)
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
        print(f"child partition {vm['partition_id']} ({vm['name']}): {vm['state']}, {vm['vps']} VPs, "
              f"{vm['memory']} mapped, {vm['pool_pages']} pool pages")
    print(f"state digest {s['state_digest']}")
    return 0
