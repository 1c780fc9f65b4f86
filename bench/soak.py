"""The soak run (`make soak`): a fault campaign over whole hosts where one VM misbehaves at random
and the others must not notice, then the stateful isolation machines for a large number of steps
in parallel processes.

    python -m bench.soak [--steps N] [--jobs J] [--hosts H] [--rounds R] [--seed S] [--only machines|campaign]

Machines: HypervisorMachine and MessagingMachine (hypervisor.testing.machine) and the VMBus server
machine (tests/vmbus/test_server.py), each given an equal share of --steps, cut into pieces taken
in turn (so a run stopped early has run every machine about as long). Every step is followed by
the machine's invariants; a violation is reported with the seed that replays it
(`--seed S --only machines`); hypothesis does not shrink here, a soak wants breadth. SIGINT or
SIGTERM stops the run after the step each process is in, and the figures so far are printed.

Campaign: each host has three VMs with heartbeats and an echo device; one of them, chosen at random,
misbehaves as threat-model.md's guest may (random raw hypercalls, SCONTROL = 0, garbage written over
its ring indices, floods of control messages) or carries a plugin device whose VSP raises at a
random point. After every round the others must be Running with their heartbeat OK and every echo
request they sent in the round answered intact (nothing lost), no failure may name them, the run must not raise, and the core's isolation
invariants must hold.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import signal
import struct
import sys
import time
import traceback
import uuid

# -- the machines --------------------------------------------------------------------------------

MACHINES = ("hypervisor", "messaging", "vmbus")
PROGRESS_EVERY_S = 120  # a worker's progress line, for whoever watches the log (--progress-every)

_stop = None  # set by the soak's own processes: a multiprocessing.Event, or a plain flag holder


class Stopped(KeyboardInterrupt):
    """Raised by a machine's step counter once the run is asked to stop (a KeyboardInterrupt,
    which hypothesis passes through instead of recording as the test's failure)."""


def _stopping() -> bool:
    return _stop is not None and _stop.is_set()


def _raise_stopped(signum, frame) -> None:
    raise Stopped


def _worker_init(stop, progress_every: float = PROGRESS_EVERY_S) -> None:
    """In each soak process: the parent's stop event; SIGINT left to the parent (which sets the
    event); SIGTERM stops this process's piece where it is (its steps so far are returned) or,
    between pieces, ends the process; and hypothesis's per-draw check that a strategy left the
    `random` module alone switched off (it copies the module's 2.5 KiB state twice per draw, half
    of what a draw costs; the machines' strategies never touch `random`). Nothing drawn or checked
    changes."""
    global _stop, PROGRESS_EVERY_S
    _stop = stop
    PROGRESS_EVERY_S = progress_every
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        import hypothesis.strategies._internal.core as hypothesis_core
    except ImportError:  # another hypothesis layout: draws simply cost what they cost
        return
    if hasattr(hypothesis_core, "deprecate_random_in_strategy"):
        hypothesis_core.deprecate_random_in_strategy = lambda *args: contextlib.nullcontext()


def _machine_class(name: str):
    if name == "vmbus":
        from tests.vmbus.test_server import ServerMachine as base
    else:
        from hypervisor.testing.machine import HypervisorMachine, MessagingMachine
        base = HypervisorMachine if name == "hypervisor" else MessagingMachine
    from hypothesis.stateful import invariant

    class Counted(base):
        """The machine as it is, with one more invariant: it counts the steps (and stops the run
        between two steps once asked to)."""
        steps = 0

        @invariant()
        def count_step(self) -> None:
            if _stopping():
                raise Stopped  # this step is not counted: its other invariants may not have run
            type(self).steps += 1

    Counted.__name__ = base.__name__
    return Counted


def run_machine(name: str, steps: int, seed: int, step_count: int = 100) -> dict:
    """Run machine `name` for at least `steps` steps (runs of `step_count` steps, seeded from
    `seed`, one run after another); returns steps, runs, seconds, violations and whether it was
    stopped early."""
    import hypothesis.core
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    machine = _machine_class(name)
    base = dict(stateful_step_count=step_count, deadline=None, database=None, derandomize=False,
                phases=[Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)
    violations = []
    start = last_report = time.monotonic()
    cpu_start = time.process_time()
    chunk = 0
    stopped = False
    while machine.steps < steps and not stopped:
        chunk_seed = seed * 1_000_003 + chunk
        hypothesis.core.global_force_seed = chunk_seed
        examples = max(1, min(20, -(-(steps - machine.steps) // step_count)))
        try:
            run_state_machine_as_test(machine, settings=settings(max_examples=examples, **base))
        except Stopped:
            stopped = True
        except Exception as exc:  # a violation (or the machine's own error): record it and go on
            violations.append({"seed": chunk_seed, "error": f"{type(exc).__name__}: {str(exc)[:400]}",
                               "where": traceback.format_exc(limit=-3)[-800:]})
        chunk += 1
        if _stop is not None and time.monotonic() - last_report >= PROGRESS_EVERY_S:
            last_report = time.monotonic()
            print(f"soak: {name} (piece seed {seed}): {machine.steps:,} steps, "
                  f"{machine.steps / (last_report - start):.0f} steps/s, {len(violations)} violations", flush=True)
    seconds = time.monotonic() - start
    return {"machine": name, "steps": machine.steps, "runs": chunk, "seconds": round(seconds, 1),
            "cpu_seconds": round(time.process_time() - cpu_start, 1),
            "steps_per_s": round(machine.steps / seconds, 1) if seconds else 0, "seed": seed,
            "violations": violations, "stopped": stopped}


# -- the fault campaign ----------------------------------------------------------------------------

MS, S = 1_000_000, 1_000_000_000
FAULTS = ("raw_hypercalls", "synic_off", "ring_garbage", "message_flood", "device_raises")
CALLBACKS = ("on_open", "on_packets", "timer", "on_close")
_FAILURE_WORDS = ("broken", "fail", "unreachable", "refus", "error", "crash", "rescind")


def _flaky_device(callback: str, rng: random.Random):
    """A plugin device whose VSP raises in `callback` (after a random number of packets for
    on_packets)."""
    from drivers.device import DeviceType
    from drivers.example.vsc import EchoVsc
    from drivers.example.vsp import EchoVsp
    after = rng.randint(0, 5)

    class FlakyVsp(EchoVsp):
        def on_open(self):
            if callback == "on_open":
                raise RuntimeError("flaky device: open")
            if callback == "timer":
                self.context.call_later(rng.randint(1, 500) * MS, lambda: 1 / 0)
            return super().on_open()

        def on_packets(self, *args, **kw):
            nonlocal after
            if callback == "on_packets":
                after -= 1
                if after < 0:
                    raise RuntimeError("flaky device: packets")
            return super().on_packets(*args, **kw)

        def on_close(self):
            if callback == "on_close":
                raise RuntimeError("flaky device: close")
            return super().on_close()

    return DeviceType(name="flaky", class_id=uuid.uuid5(uuid.NAMESPACE_URL, "hvsim-soak/flaky"),
                      vsp=FlakyVsp, vsc=type("FlakyVsc", (EchoVsc,), {}))


class Campaign:
    """One host, three VMs, one misbehaving."""

    def __init__(self, seed: int, rounds: int, faults: list[str] | None = None, callback: str | None = None):
        from drivers.example import DEVICE as ECHO
        from drivers.ic import HEARTBEAT
        from drivers.registry import discover
        from hypervisor import Host
        from partitions.vm import DeviceSlot, VirtualMachine
        from partitions.vmbus_parent import ParentVmbus
        from partitions.worker import VmSpec

        self.rng = random.Random(seed)
        self.seed, self.rounds = seed, rounds
        self.host = Host(logical_processors=2, memory="128MiB", seed=seed)
        self.vmbus = ParentVmbus(self.host, vp_index=1)
        registry = discover()
        self.bad_index = self.rng.randrange(3)
        self.faults = faults if faults is not None else self.rng.sample(FAULTS, self.rng.randint(1, 3))
        if "device_raises" in self.faults:
            self.callback = callback or self.rng.choice(CALLBACKS)
        else:
            self.callback = None
        self.vms = []
        for i in range(3):
            devices = [DeviceSlot(HEARTBEAT), DeviceSlot(ECHO)]
            if i == self.bad_index and self.callback:
                flaky = _flaky_device(self.callback, self.rng)
                registry.add(flaky)
                devices.append(DeviceSlot(flaky))
            self.vms.append(VirtualMachine(self.host, self.vmbus, registry, VmSpec(f"vm{i}", memory="2MiB"),
                                           devices=devices))
        self.events: list[tuple[int, str, str | None, dict]] = []
        self.vmbus.on_log = lambda pid, event, fields, device: self.events.append((pid, event, device, fields))
        self.actions = 0

    @property
    def bad(self):
        return self.vms[self.bad_index]

    def good(self):
        return [vm for i, vm in enumerate(self.vms) if i != self.bad_index]

    # -- misbehaviour -----------------------------------------------------------------------------
    def misbehave(self) -> None:
        from hypervisor.abi import CallCode, Register
        rng, part = self.rng, self.bad.partition
        if part is None:
            return
        for fault in self.faults:
            if fault == "raw_hypercalls":
                vp = part.vp(0)
                for _ in range(rng.randint(1, 40)):
                    code = rng.choice([rng.randrange(0x100), *map(int, CallCode)])
                    ctl = code | rng.choice([0, 1 << 16]) | rng.randrange(4) << 32 | rng.getrandbits(64) & rng.choice(
                        [0, 0xFFFF_0000_0000_0000, 0x0000_F000_0000_0000])
                    page = rng.randrange(512)
                    vp.hypercall(ctl, rng.randbytes(rng.choice([0, 8, 16, 24, 64, 200])),
                                 input_gpa=page * 4096, output_gpa=((page + 1) % 512) * 4096)
                    self.actions += 1
            elif fault == "synic_off":
                if rng.random() < 0.7:
                    part.set_vp_registers(None, 0, {Register.SCONTROL: 0})
                else:
                    part.set_vp_registers(None, 0, {Register.SCONTROL: 1})
                self.actions += 1
            elif fault == "ring_garbage":
                reach = {pfn: gpa for gpa, (pfn, _) in self.host.introspect.reach(part).items()}
                for grant_id in self.host.grants.ids(part):
                    grant = self.host.grants.get(part, grant_id)
                    pfns = grant.pfns if grant else []
                    if not pfns or rng.random() < 0.5:
                        continue
                    gpa = reach.get(rng.choice(pfns))
                    if gpa is not None:
                        # indices, interrupt mask, pending_send_sz: the fields a reader trusts least
                        part.write(gpa * 4096 + rng.choice([0, 4, 8, 12]), struct.pack("<I", rng.getrandbits(32)))
                        self.actions += 1
            elif fault == "message_flood":
                vp = part.vp(0)
                for _ in range(rng.randint(10, 200)):
                    size = rng.randrange(0, 241)
                    block = struct.pack("<IIII", rng.choice([1, 4, rng.randrange(16)]), 0, rng.randrange(1, 30), size)
                    vp.hypercall(int(CallCode.POST_MESSAGE), block + rng.randbytes(size))
                    self.actions += 1

    # -- checks ---------------------------------------------------------------------------------
    def send_echoes(self) -> dict[str, tuple[int, int]]:
        """Each well-behaved VM sends a few echo requests; returns (replies so far, sent now)."""
        sent = {}
        for vm in self.good():
            vsc = vm.device_vsc("echo")
            n = self.rng.randint(3, 20) if vsc is not None and vsc.ready else 0
            for i in range(n):
                vsc.echo(self.rng.randbytes(self.rng.randint(1, 200)))
            sent[vm.name] = (len(vsc.replies) if vsc is not None else 0, n)
        return sent

    def check(self, before: dict, round_: int) -> list[str]:
        from hypervisor.testing.invariants import InvariantViolation, check_all
        from partitions.vm import VmState
        problems = []
        for vm in self.good():
            if vm.state is not VmState.RUNNING:
                problems.append(f"round {round_}: {vm.name} is {vm.state.name}")
                continue
            if vm.heartbeat_status() != "OK":
                problems.append(f"round {round_}: {vm.name} heartbeat {vm.heartbeat_status()}")
            vsc = vm.device_vsc("echo")
            if vsc is None or not vsc.ready:
                problems.append(f"round {round_}: {vm.name}'s echo device is not ready")
                continue
            replies, n = before.get(vm.name, (len(vsc.replies), 0))
            # nothing lost: every request of the round answered, intact, and nothing else failed
            if vsc.outstanding or vsc.failed or len(vsc.replies) != replies + n:
                problems.append(f"round {round_}: {vm.name} echo: {n} sent, {len(vsc.replies) - replies} answered, "
                                f"{len(vsc.outstanding)} outstanding, failed {vsc.failed[:3]}")
        good_ids = {vm.partition.id for vm in self.good() if vm.partition}
        for pid, event, device, fields in self.events:
            text = f"{event} {fields.get('why', '')}".lower()
            if pid in good_ids and any(w in text for w in _FAILURE_WORDS):
                problems.append(f"round {round_}: failure logged for a well-behaved VM {pid}: {event} {fields}")
        self.events.clear()
        try:
            check_all(self.host)
        except InvariantViolation as exc:
            problems.append(f"round {round_}: {exc}")
        return problems

    def run(self) -> dict:
        problems = []
        try:
            for vm in self.vms:
                vm.start()
            self.host.run(self.host.now + 1 * S)
            problems += [f"baseline: {p}" for p in self.check({}, 0)]
            for r in range(1, self.rounds + 1):
                before = self.send_echoes()
                self.misbehave()
                self.host.run(self.host.now + self.rng.randint(200, 800) * MS)
                problems += self.check(before, r)
        except Exception as exc:  # the host stopped: the worst outcome of all
            problems.append(f"the host stopped: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-4)}")
        echoes = 0
        for vm in self.good():
            vsc = vm.device_vsc("echo")
            echoes += len(vsc.replies) if vsc is not None else 0
        for vm in self.vms:
            try:
                vm.turn_off()
            except Exception:  # the bad VM may already be Off; turning off is not what is tested
                pass
        return {"seed": self.seed, "bad": self.bad.name, "faults": self.faults, "callback": self.callback,
                "actions": self.actions, "echoes": echoes, "problems": problems}


def run_campaign(seed: int, rounds: int) -> dict | None:
    """One campaign host; None if the run was asked to stop before it began."""
    if _stopping():
        return None
    start = time.monotonic()
    try:
        result = Campaign(seed, rounds).run()
    except Stopped:
        return None
    result["seconds"] = round(time.monotonic() - start, 2)
    return result


# -- the command -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _pool(ctx, jobs: int, stop, progress_every: float = PROGRESS_EVERY_S):
    """A pool of soak processes, closed (not terminated: SIGTERM is their stop signal) at the end."""
    pool = ctx.Pool(jobs, initializer=_worker_init, initargs=(stop, progress_every))
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    pool.close()
    pool.join()


STOP_GRACE_S = 60  # after a stop, how long a piece may take to return before it is given up


def _collect(pending: list, stop) -> list:
    """The results of `pending` (AsyncResults), waiting in short slices so that the parent's
    signal handlers run while it waits. Once the run is stopped, a piece that does not return
    within STOP_GRACE_S (its process was killed) is left out."""
    results = []
    stopped_at = None
    for item in pending:
        while not item.ready():
            if stop.is_set():
                stopped_at = stopped_at or time.monotonic()
                if time.monotonic() - stopped_at > STOP_GRACE_S:
                    break
            item.wait(0.5)
        if item.ready() and item.successful():
            results.append(item.get())
    return results


def _run_machines(ctx, stop, args, seed: int, names: list[str]) -> bool:
    """The machines' pieces over `args.jobs` processes, then the table; True on a violation."""
    # Each machine's share is cut into pieces (several per process), queued machine after
    # machine in turn, so every process always has work and a run stopped early has given every
    # machine about the same time. A piece's seed depends only on the run seed and its place.
    per = max(1, args.steps // len(names))
    parts = max(1, min(999, 4 * args.jobs))
    size = -(-per // parts)
    jobs = [(name, size, seed * 10_000 + i * 1000 + k) for k in range(parts) for i, name in enumerate(names)]
    start = time.monotonic()
    with _pool(ctx, args.jobs, stop, args.progress_every) as pool:
        results = _collect([pool.apply_async(run_machine, job) for job in jobs], stop)
    wall = time.monotonic() - start
    print(f"{'machine':12} {'steps':>10} {'runs':>6} {'process s':>10} {'steps/s':>9} {'cpu ms/step':>12} "
          f"{'violations':>10}")
    total, failed = 0, False
    for name in names:
        mine = [r for r in results if r["machine"] == name]
        steps = sum(r["steps"] for r in mine)
        seconds = sum(r["seconds"] for r in mine)
        cpu = sum(r["cpu_seconds"] for r in mine)
        total += steps
        violations = [v for r in mine for v in r["violations"]]
        print(f"{name:12} {steps:>10,} {sum(r['runs'] for r in mine):>6} {seconds:>10.1f} "
              f"{steps / seconds if seconds else 0:>9.1f} {1000 * cpu / steps if steps else 0:>12.2f} "
              f"{len(violations):>10}")
        for v in violations:
            failed = True
            print(f"    violation (hypothesis seed {v['seed']}): {v['error']}\n{v['where']}")
    print(f"machines: {total:,} steps in {wall:.0f} s wall on {args.jobs} processes "
          f"({total / wall if wall else 0:.0f} steps/s)", flush=True)
    return failed


def _run_campaign(ctx, stop, args, seed: int) -> bool:
    """The campaign's hosts over `args.jobs` processes, then its summary; True on a problem."""
    start = time.monotonic()
    with _pool(ctx, args.jobs, stop) as pool:
        results = _collect([pool.apply_async(run_campaign, (seed * 1000 + h, args.rounds))
                            for h in range(args.hosts)], stop)
    results = [r for r in results if r is not None]
    wall = time.monotonic() - start
    bad_hosts = [r for r in results if r["problems"]]
    actions = sum(r["actions"] for r in results)
    echoes = sum(r["echoes"] for r in results)
    print(f"campaign: {len(results)} hosts x {args.rounds} rounds, {actions:,} misbehaving actions, "
          f"{echoes:,} echo requests of the others answered, "
          f"{len(bad_hosts)} hosts with problems, {wall:.0f} s wall", flush=True)
    for r in bad_hosts:
        print(f"  host seed {r['seed']} ({r['bad']} misbehaving: {', '.join(r['faults'])}"
              f"{', raises in ' + r['callback'] if r['callback'] else ''}):")
        for p in r["problems"][:5]:
            print(f"    {p}")
    return bool(bad_hosts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000, help="machine steps in all (default 10^6)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: CPUs)")
    ap.add_argument("--hosts", type=int, default=20, help="hosts in the fault campaign (default 20)")
    ap.add_argument("--rounds", type=int, default=8, help="misbehaviour rounds per host (default 8)")
    ap.add_argument("--seed", type=int, default=None, help="replay a run (default: a fresh seed, printed)")
    ap.add_argument("--only", choices=("machines", "campaign"), default=None)
    ap.add_argument("--machines", default=",".join(MACHINES), help=f"which machines (default {','.join(MACHINES)})")
    ap.add_argument("--progress-every", type=float, default=PROGRESS_EVERY_S, metavar="S",
                    help=f"each process prints its progress every S seconds (default {PROGRESS_EVERY_S})")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"soak: seed {seed} (replay: python -m bench.soak --seed {seed} with the same --steps, --jobs, "
          f"--hosts and --rounds)", flush=True)
    names = [m for m in args.machines.split(",") if m]
    unknown = set(names) - set(MACHINES)
    if unknown:
        ap.error(f"unknown machine(s) {', '.join(sorted(unknown))}; known: {', '.join(MACHINES)}")
    failed = False
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    interrupted: list[str] = []

    def ask_to_stop(signum, frame) -> None:
        # The workers finish the step they are in and return what they did; a second signal
        # finds the event already set and changes nothing.
        interrupted.append(signal.Signals(signum).name)
        stop.set()

    old_handlers = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.only != "machines" and args.hosts:
            failed |= _run_campaign(ctx, stop, args, seed)
        if args.only != "campaign" and not stop.is_set():
            failed |= _run_machines(ctx, stop, args, seed, names)
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    if interrupted:
        print(f"soak: stopped early by {interrupted[0]}: the figures above are what ran", flush=True)
        return 1 if failed else 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
