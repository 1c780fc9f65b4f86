"""Hyper-V's integration services (ICs): heartbeat, shutdown, time sync, KVP and VSS, each a
VSP/VSC pair on the shared framing (framing.py) and exchange engine (vsp.py, vsc.py). See
README.md beside this file."""
from drivers.ic.heartbeat import DEVICE as HEARTBEAT
from drivers.ic.kvp import DEVICE as KVP
from drivers.ic.shutdown import DEVICE as SHUTDOWN
from drivers.ic.timesync import DEVICE as TIMESYNC
from drivers.ic.vss import DEVICE as VSS

DEVICES = (HEARTBEAT, SHUTDOWN, TIMESYNC, KVP, VSS)
