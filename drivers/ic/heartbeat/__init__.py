"""The heartbeat integration service: is the guest alive?"""
from drivers.device import DeviceType
from drivers.ic.heartbeat.protocol import CLASS_ID
from drivers.ic.heartbeat.vsc import HeartbeatVsc
from drivers.ic.heartbeat.vsp import HeartbeatVsp

DEVICE = DeviceType(name="heartbeat", class_id=CLASS_ID, vsp=HeartbeatVsp, vsc=HeartbeatVsc,
                    description="Hyper-V heartbeat IC: periodic liveness exchange")
