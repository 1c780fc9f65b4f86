"""The isolation test kit: what hvsim uses for its own property tests, shipped for users.

- `hypervisor.testing.strategies`: hypothesis strategies for control words (valid and
  malformed) and for the input block of every hypercall the core implements.
- `hypervisor.testing.invariants`: `check_all(host)` and the single checks (INV-OWN, INV-REACH,
  INV-HV, and `check_messages`: INV-QUEUE, INV-TEARDOWN, INV-ACCOUNT) recounted from
  introspection; each raises `InvariantViolation` naming the invariant.
- `hypervisor.testing.machine`: `HypervisorMachine`, a hypothesis state machine issuing random
  management operations, port and message calls and raw hypercalls from random partitions,
  checking the invariants, INV-PRIV, INV-ATOMIC, INV-MSG and the exact status of every port call
  after every step; `MessagingMachine` is the same without memory management.
- `hypervisor.testing.vmbus_strategies`: hostile ring images, channel-management messages and
  device packets, and `fuzz_vsp` to push them at a device.

A minimal isolation test of your own::

    from hypothesis import given
    from hypervisor import Host
    from hypervisor.testing import strategies as hs
    from hypervisor.testing.invariants import check_all

    @given(hs.control_words())
    def test_any_control_word_keeps_isolation(ctl):
        host = Host(logical_processors=1, memory="1MiB")
        host.root.vp(0).hypercall(ctl, bytes(64))
        check_all(host)

Or run the shipped machine, extended with rules of your own::

    from hypervisor.testing.machine import HypervisorMachine
    TestIsolation = HypervisorMachine.TestCase

A failing example replays exactly: the simulation has no wall clock and no unseeded randomness.
See docs/isolation-testing.md for more.
"""
