"""The shipped isolation state machines, run as hvsim's own stateful tests: `HypervisorMachine`
(everything: partition and memory management, grants, ports and messages, raw hypercalls) and
`MessagingMachine` (its port, message and event rules without the memory churn, so most steps
carry messages)."""
from hypothesis import HealthCheck, settings

from hypervisor.testing.machine import HypervisorMachine, MessagingMachine

# Both together stay under ~20 s; a port mutation of the core (no 16-buffer limit, a message on
# the wrong connection, a purge left out, ...) fails the messaging machine within these budgets.
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]

TestHypervisorIsolation = HypervisorMachine.TestCase
TestHypervisorIsolation.settings = settings(max_examples=80, stateful_step_count=40, deadline=None,
                                            suppress_health_check=SLOW_OK)

TestMessagingIsolation = MessagingMachine.TestCase
TestMessagingIsolation.settings = settings(max_examples=170, stateful_step_count=50, deadline=None,
                                           suppress_health_check=SLOW_OK)
