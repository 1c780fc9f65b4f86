"""Whole-host simulation speed: simulated seconds per wall second for the built-in default host
(three VMs: CPU contention, disk I/O, network traffic, integration services), and for a host of
64 VMs (2 VPs each, 60 % duty-cycle workloads and integration services), each against the same
host with idle guests measured in the same run (the cost of the work itself)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from partitions.config import default_config, from_dict
from partitions.management import ManagedHost


def _rate(config, workdir: Path, sim_s: float) -> tuple[float, float]:
    start = time.perf_counter()
    managed = ManagedHost(config, workdir=workdir)
    managed.start()
    built = time.perf_counter()
    managed.run(int(sim_s * 1e9))
    managed.close()
    return sim_s / (time.perf_counter() - built), built - start


def _many(n: int, kind: str) -> dict:
    workload = {"kind": "cpu-burn", "duty": 0.6} if kind == "busy" else {"kind": "idle"}
    return {"host": {"logical_processors": 64, "smt": 2, "memory": "64GiB"},
            "vm": [{"name": f"vm{i}", "processors": 2, "memory": "64MiB", "workload": workload} for i in range(n)]}


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rate, setup = _rate(default_config(tmp / "default"), tmp / "default", 2.0)
        rows.append({"case": "default host (3 VMs, disk, network, ICs)", "simulated_s_per_wall_s": rate,
                     "setup_s": setup})
        busy, setup = _rate(from_dict(_many(64, "busy"), base_dir=tmp), tmp, 1.0)
        idle, _ = _rate(from_dict(_many(64, "idle"), base_dir=tmp), tmp, 1.0)
        rows.append({"case": "64 VMs x 2 VPs, idle guests (baseline)", "simulated_s_per_wall_s": idle,
                     "vs_idle": 1.0})
        rows.append({"case": "64 VMs x 2 VPs, 60 % duty cycle", "simulated_s_per_wall_s": busy,
                     "vs_idle": busy / idle, "setup_s": setup})
    return rows
