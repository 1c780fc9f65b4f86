"""The shipped isolation state machine, run as hvsim's own stateful test."""
from hypothesis import HealthCheck, settings

from hypervisor.testing.machine import HypervisorMachine

TestHypervisorIsolation = HypervisorMachine.TestCase
TestHypervisorIsolation.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])
