"""Several simulated hosts in one simulated time, joined by links: the datacenter, its links and
the window protocol that advances them (docs/datacenter.md)."""
from partitions.datacenter.datacenter import MAX_WINDOW_NS, Datacenter, host_seed
from partitions.datacenter.link import Link, Message, transmission_ns
from partitions.datacenter.node import HostNode

__all__ = ["Datacenter", "HostNode", "Link", "Message", "MAX_WINDOW_NS", "host_seed", "transmission_ns"]
