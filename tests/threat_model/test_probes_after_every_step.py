"""Threat model case 46 (XTF-style probes): after every step of the isolation machine — whatever
bad sequence the step ended — each child that can make hypercalls tries a fixed set of protected
actions, and each is still refused, changes nothing, and is refused the same way for a partition
that exists as for an id never used: map a page of the root into itself, deposit a root page into
its pool, read and write another partition's VP registers, delete, finalize or change a sibling."""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant

from hypervisor import CallCode, PartitionProperty, Register, control
from hypervisor.abi import PAGE_SIZE
from hypervisor.testing.machine import HypervisorMachine

NEVER_USED = 0x1234_5678


def _probes(pid: int, root_page: int) -> list[tuple[str, int, bytes]]:
    """The protected actions, naming partition `pid` (and a page the root owns)."""
    return [
        ("map a root page", control(CallCode.MAP_GPA_PAGES, rep_count=1), struct.pack("<QQIIQ", pid, 200, 7, 0, root_page)),
        ("deposit a root page", control(CallCode.DEPOSIT_MEMORY, rep_count=1), struct.pack("<QQ", pid, root_page)),
        ("read its registers", control(CallCode.GET_VP_REGISTERS, rep_count=1),
         struct.pack("<QIB3sI", pid, 0, 0, bytes(3), int(Register.RAX))),
        ("write its registers", control(CallCode.SET_VP_REGISTERS, rep_count=1),
         struct.pack("<QIB3s", pid, 0, 0, bytes(3)) + struct.pack("<IIQQQ", int(Register.RAX), 0, 0, 0xBAD, 0)),
        ("delete it", control(CallCode.DELETE_PARTITION), struct.pack("<Q", pid)),
        ("finalize it", control(CallCode.FINALIZE_PARTITION), struct.pack("<Q", pid)),
        ("cap its CPU", control(CallCode.SET_PARTITION_PROPERTY),
         struct.pack("<QIIQ", pid, int(PartitionProperty.CPU_CAP), 0, 1)),
    ]


class ProbedMachine(HypervisorMachine):
    """HypervisorMachine with the fixed probes run after every step."""

    @invariant()
    def protected_actions_are_still_refused(self) -> None:
        if not hasattr(self, "root") or not self.children:
            return
        root_page = self.host.root.vp(0).input_gpa // PAGE_SIZE  # a page the root surely owns
        callers = [c for c in self._callers() if c.id != self.root.id]
        for caller in callers:
            vp = next(v for v in caller.vps)
            others = [p.id for p in self._everyone() if p.id != caller.id]
            for target in others:
                for (what, ctl, block), (_, _, block_never) in zip(_probes(target, root_page),
                                                                   _probes(NEVER_USED, root_page)):
                    seen = []
                    for data in (block, block_never):
                        vp.store_input(data)
                        before = self.host.introspect.digest()
                        result = vp.hypercall(ctl)
                        assert not result.ok, f"partition {caller.id} could {what} of partition {target}"
                        assert self.host.introspect.digest() == before, f"a refused probe ({what}) changed the state"
                        seen.append(result.status)
                    assert seen[0] == seen[1], (f"A10: {what} of partition {target} by {caller.id} gives "
                                                f"{seen[0]!r}, of an unused id {seen[1]!r}")


TestProbedMachine = ProbedMachine.TestCase
TestProbedMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
