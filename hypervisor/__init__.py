"""hvsim's hypervisor: the Python face of the C core (host, partitions, VPs, hypercalls)."""
from hypervisor.abi import CallCode, Control, MapFlags, PartitionProperty, PartitionState, Privilege, Register, control
from hypervisor.host import Host
from hypervisor.partition import HypercallResult, Partition, VirtualProcessor
from hypervisor.status import HvError, HvStatus

__all__ = ["Host", "HvStatus", "HvError", "Partition", "VirtualProcessor", "HypercallResult", "CallCode",
           "Control", "MapFlags", "PartitionProperty", "PartitionState", "Privilege", "Register", "control"]
